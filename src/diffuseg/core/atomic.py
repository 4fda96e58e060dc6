"""Atomic writes and the one-writer lock: a run folder that survives kill -9 and refuses a
second writer.

Every file is written to a temporary name, flushed to disk (fsync) and renamed over the final
name, so a reader sees the old file or the new one, never half of one. One process at a time may
write a folder (a run folder, a prediction folder): ``folder_lock`` holds an advisory kernel lock
(``fcntl.flock``) on ``.diffuseg.lock``, which names the holder; the one lock of the project.

A write the file system refuses (disk full, a file-size limit, a read-only or forbidden folder, a
name too long) ends in one ``OutputError`` naming the path and the fix (``writing``), and leaves
no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from diffuseg.errors import DataError, OutputError

LOCK_NAME = ".diffuseg.lock"
_held: dict[tuple[int, Path], int] = {}  # (thread, folder) this process holds -> nesting depth
_ELSEWHERE = "choose an output folder on another disk (-o)"
WRITE_FIXES = {  # errno of a refused write -> what the user can do about it
    errno.ENOSPC: f"the disk is full: free space on it or {_ELSEWHERE}",
    errno.EDQUOT: f"the disk quota is used up: free space or {_ELSEWHERE}",
    errno.EFBIG: "a file grew past the file-size limit (ulimit -f) or the largest file the file "
                 f"system holds: raise the limit or {_ELSEWHERE}",
    errno.EROFS: "the file system is read-only: choose a writable output folder (-o)",
    errno.EACCES: "permission denied: choose a folder you may write to (-o) or fix its "
                  "permissions",
    errno.EPERM: "operation not permitted: choose a folder you may write to (-o) or fix its "
                 "permissions",
    errno.ENAMETOOLONG: "a file name is longer than the file system allows: use shorter names "
                        "or a shorter output path",
}


def write_error(err: OSError, path: Path | str) -> OutputError | None:
    """The one-line OutputError for a write the file system refused (``WRITE_FIXES``); None for
    any other OSError. It names the file the system names, unless that is one of our hidden
    temporaries beside ``path`` (``.case.tmp-<pid>/...``), which the user never sees: ``path``."""
    fix = WRITE_FIXES.get(err.errno) if isinstance(err, OSError) else None
    if fix is None:
        return None
    where = path
    if isinstance(err.filename, (str, os.PathLike)):
        named, parent = Path(err.filename), Path(path).parent
        hidden = named.is_relative_to(parent) and any(
            part.startswith(".") for part in named.relative_to(parent).parts)
        where = path if hidden else named
    return OutputError(f"cannot write '{where}' ({os.strerror(err.errno)}); {fix}")


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a refused write inside the block into ``write_error(err, path)``; other OSErrors
    pass unchanged."""
    try:
        yield
    except OSError as err:
        error = write_error(err, path)
        if error is None:
            raise
        raise error from None


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)``, fsync ``tmp``, rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with writing(path):
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):  # never hide the error that brought us here
                tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, data) -> Path:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return Path(path)


def save_tensors_atomic(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def replace_folder(new: Path, target: Path, *, aside: Path | None = None) -> None:
    """The one atomic folder swap: ``target`` is renamed to ``aside`` (default
    ``.{target}.old-{pid}``), ``new`` is renamed to ``target``, then ``aside`` is removed. Readers
    see the old folder or the new one, never a mixture; an interrupted swap leaves ``target`` or
    ``aside`` intact (a checkpoint passes ``checkpoint.old``, which ``recover_checkpoint`` finds).
    ``DIFFUSEG_TEST_CHECKPOINT_PAUSE`` (seconds) sleeps between the renames, for kill tests."""
    new, target = Path(new), Path(target)
    aside = Path(aside) if aside is not None else target.with_name(
        f".{target.name}.old-{os.getpid()}")
    with writing(target):
        remove_folder(aside)
        if target.exists():
            os.replace(target, aside)
        pause = float(os.environ.get("DIFFUSEG_TEST_CHECKPOINT_PAUSE", "0") or 0)
        if pause > 0:
            time.sleep(pause)
        try:
            os.replace(new, target)
        except OSError:  # put the previous folder back where its readers look
            if aside.exists() and not target.exists():
                os.replace(aside, target)
            raise
        fsync_dir(target.parent)
        remove_folder(aside)


def remove_folder(folder: Path) -> None:
    """Delete a folder, its completeness marker first (a half-deleted folder never looks whole)."""
    if folder.exists():
        (folder / "COMPLETE").unlink(missing_ok=True)
        shutil.rmtree(folder)


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "folder", *,
                wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold ``folder/.diffuseg.lock`` while writing into ``folder`` (created if missing). A second
    holder gets a one-line DataError naming the first one's pid, host and command; with ``wait``,
    it is told who holds the lock (``wait(holder)``, once) and blocks until it is free. The kernel
    drops the lock when its holder dies, even by kill -9, so a stale file never blocks anyone.
    Re-entrant within one thread; another thread of the same process is refused like another
    process (flock locks belong to the open file, not the process). The file is removed on
    release."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{what} '{folder}' is a file; give a folder (a new one is created)")
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    key = (threading.get_ident(), folder.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    path = folder / LOCK_NAME
    with writing(path):
        fd = _acquire(path, folder, what, wait)
    _held[key] = 1
    try:
        yield folder
    finally:
        del _held[key]
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still held: a waiter that opened it retries on a fresh file
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def lock_held_by_job(folder: str | Path) -> Iterator[Path]:
    """Write into ``folder`` while another process of the same job holds its ``folder_lock``:
    rank 0 of a torchrun job, which takes the lock before the other ranks start writing and
    releases it after they have all finished (``diffuseg.inference.prediction_folder
    .lock_output``). Inside, ``folder_lock(folder)`` calls of this thread pass through as
    re-entrant ones; a process outside the job is still refused by rank 0's kernel lock."""
    key = (threading.get_ident(), Path(folder).resolve())
    _held[key] = _held.get(key, 0) + 1
    try:
        yield Path(folder)
    finally:
        _held[key] -= 1
        if not _held[key]:
            del _held[key]


def _acquire(path: Path, folder: Path, what: str,
             wait: Callable[[str], None] | None = None) -> int:
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            if wait is None:
                os.close(fd)
                raise DataError(f"{what} '{folder}' is in use by {holder}; wait for it to finish "
                                f"or choose another {what}") from None
            wait(holder)
            wait = _silent  # said once; a retry on a fresh lock file waits without repeating it
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder we waited for may have removed the file between our open and flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} "
                              f"({' '.join(sys.argv)[:300]})\n".encode(), 0)
            except OSError:  # disk full, a file-size limit: no lock, and no lock file left
                with contextlib.suppress(OSError):
                    path.unlink()
                os.close(fd)
                raise
            return fd
        os.close(fd)
    raise DataError(f"could not lock {what} '{folder}' (its lock file keeps changing); retry")


def _silent(_: str) -> None:
    pass


def run_lock(run_dir: Path) -> contextlib.AbstractContextManager[Path]:
    """The one-writer lock of a run folder (``folder_lock``)."""
    return folder_lock(run_dir, "run folder")


def holds_files(run_dir: Path) -> bool:
    """Whether a folder holds anything but the lock and hidden temporary files."""
    return run_dir.exists() and any(not p.name.startswith(".") for p in run_dir.iterdir())

"""Atomic writes and the one-writer lock: a run folder that survives kill -9 and refuses a
second writer.

Every file is written to a temporary name, flushed to disk (fsync) and renamed over the final
name, so a reader sees the old file or the new one, never half of one. One process at a time may
write a run folder: it holds an advisory lock (``fcntl.flock``) on ``.lock``, which names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from diffuseg.errors import DataError

LOCK_NAME = ".lock"


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
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
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


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the duration; a second holder gets a one-line error naming the
    first one's pid and command. The kernel drops the lock when the holder dies, even by kill -9,
    so a stale ``.lock`` file never blocks anyone."""
    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise DataError(f"run folder '{run_dir}' is in use by {holder}; wait for it to finish "
                            "or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:300]})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def holds_files(run_dir: Path) -> bool:
    """Whether a folder holds anything but the lock and hidden temporary files."""
    return run_dir.exists() and any(not p.name.startswith(".") for p in run_dir.iterdir())

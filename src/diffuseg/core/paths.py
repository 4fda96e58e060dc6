"""Safe names and paths: case names taken from file names become one plain folder name, and a
command never writes over (or deletes) its own input.

A case name keeps printable characters except path separators and characters Windows refuses
(``/ \\ : * ? " < > |``), loses leading and trailing dots and spaces (so ``..`` and ``...png``
cannot climb out of the output folder), and keeps at most ``MAX_NAME_BYTES`` bytes of UTF-8.
When anything was changed, an 8-hex-digit hash of the original name is appended, so two
different files never share an output folder. File systems allow 255 bytes per name; the
budget leaves room for suffixes such as ``_sample_015.nii.gz``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from diffuseg.errors import DataError

MAX_NAME_BYTES = 100
_REFUSED = set('/\\:*?"<>|')


def safe_name(name: str, fallback: str = "case") -> str:
    """``name`` as one safe path component (module doc); unchanged when already safe."""
    kept = "".join(c if c.isprintable() and c not in _REFUSED else "_" for c in name)
    kept = kept.strip(" .")
    raw = kept.encode("utf-8")
    if len(raw) > MAX_NAME_BYTES:
        kept = raw[:MAX_NAME_BYTES].decode("utf-8", errors="ignore").rstrip(" .")
    if kept == name and kept:
        return name
    digest = hashlib.sha256(name.encode("utf-8", errors="surrogatepass")).hexdigest()[:8]
    return f"{kept or fallback}-{digest}"


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (symlinks resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_separate(src: str | Path, dst: str | Path, what: str = "convert") -> None:
    """Refuse a destination that is the source, lies inside it, or contains it: writing (and
    ``--overwrite`` deleting) there could destroy the input before it is read."""
    src, dst = Path(src), Path(dst)
    if inside(dst, src) or inside(src, dst):
        relation = "is" if src.resolve() == dst.resolve() else (
            "is inside" if inside(dst, src) else "contains")
        raise DataError(f"{what}: the output '{dst}' {relation} the input '{src}'; write to a "
                        "separate folder so the input is never overwritten")


def check_output(inputs: Iterable[str | Path], out_dir: str | Path,
                 case_dir: str | Path | None = None, what: str = "predict") -> None:
    """Refuse an output folder (``-o``) that is an input file, holds an input file, or lies
    inside an input folder (a DICOM series): case folders would be written among the inputs, or
    over them. ``case_dir``, the folder one case is written to, must neither be nor hold an
    input: an unfinished case folder is deleted before it is written again."""
    out = Path(out_dir)
    for path in map(Path, inputs):
        if inside(out, path):
            relation = "is" if out.resolve() == path.resolve() else "is inside"
            raise DataError(f"{what}: the output folder '{out}' {relation} the input '{path}'; "
                            "choose a separate -o so the input is never overwritten")
        if path.is_file() and out.resolve() == path.parent.resolve():
            raise DataError(f"{what}: the output folder '{out}' is the folder of the input "
                            f"'{path}'; choose a separate -o so that case folders are not "
                            "written among the inputs")
        if case_dir is not None and inside(path, Path(case_dir)):
            raise DataError(f"{what}: the input '{path}' lies inside its output folder "
                            f"'{case_dir}'; choose a separate -o so the input is never "
                            "overwritten")

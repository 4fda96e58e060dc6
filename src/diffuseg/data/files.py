"""The files of a dataset folder, listed once: what both of its fingerprints are made of.

A training start needs two fingerprints of the same folder: the run's (``fingerprint.json``,
``run.folder.dataset_fingerprint``: name and size of every file except the derived ``preprocessed/``
folder, compared on ``--resume``) and the preprocessed folder's (``data/preprocess.py``: name, size
and modification time of dataset.json and of the files of imagesTr/ and labelsTr/, compared before
streaming). Both are derived from one ``scan``: ``os.scandir`` listings (no ``Path`` per file) and
one ``stat`` per file. ``train`` scans once and hands the result to both, so a dataset of 62,000
files is listed once per training start instead of twice (docs/performance.md, LIDC).

The hashes are the same as those of the earlier per-file implementations (the same lines, in the
same order), so run folders and preprocessed folders written before stay valid. The scan descends
into the top-level case folders (imagesTr, labelsTr, imagesTs, labelsTs) even when they are
symbolic links, as ``Dataset.open`` does; other linked folders are not followed (no cycles).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

CASE_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
DERIVED = "preprocessed"  # written from the dataset, never part of its fingerprint
PREPROCESS_INPUTS = ("imagesTr", "labelsTr")  # what the preprocessed arrays are made from


# one file: (its path below the root as 'a/b', size in bytes, st_mtime_ns); plain tuples, since
# a dataclass per file costs more than its stat at 60,000 files
Entry = tuple[str, int, int]


@dataclass(frozen=True)
class DatasetFiles:
    """What the fingerprints need from a dataset folder's files (all but ``preprocessed/``); the
    listing itself is not kept (about 13 MB at 62,000 files, for the whole training run)."""

    root: Path
    files_sha256: str  # sha256 over 'path:size' lines of every file (the run's fingerprint)
    preprocess_sha256: str  # over 'path:size:mtime_ns' of dataset.json, imagesTr/*, labelsTr/*
    n_files: int


def scan(root: str | Path) -> DatasetFiles:
    """List ``root`` once (module docstring). A file removed during the scan is left out."""
    root = Path(root)
    entries: list[Entry] = []  # in the order pathlib sorts their paths (by path parts)
    _scan_folder(str(root), "", entries)
    lines = "".join(f"{name}:{size}\n" for name, size, _ in entries)
    inputs = [e for e in entries if e[0] == "dataset.json"] + [
        e for e in entries if _is_input(e[0])]
    preprocess_lines = "".join(f"{name}:{size}:{mtime}\n" for name, size, mtime in inputs)
    return DatasetFiles(root, hashlib.sha256(lines.encode()).hexdigest(),
                        hashlib.sha256(preprocess_lines.encode()).hexdigest(), len(entries))


def _is_input(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and parts[0] in PREPROCESS_INPUTS


def _scan_folder(folder: str, prefix: str, entries: list[Entry]) -> None:
    """Depth first with each folder's names sorted: the order of sorting by path parts."""
    with os.scandir(folder) as listing:
        items = sorted(listing, key=lambda item: item.name)
    for item in items:
        if not prefix and item.name == DERIVED:
            continue
        if _descend(item, top=not prefix):
            _scan_folder(item.path, f"{prefix}{item.name}/", entries)
        elif item.is_file():
            try:
                st = item.stat()
            except FileNotFoundError:
                continue
            entries.append((prefix + item.name, st.st_size, st.st_mtime_ns))


def _descend(item: os.DirEntry, top: bool) -> bool:
    if item.is_dir(follow_symlinks=False):
        return True
    return top and item.name in CASE_FOLDERS and item.is_dir()

"""The files of a dataset folder, listed once: what both of its fingerprints are made of.

A training start needs two fingerprints of the same folder: the run's (``fingerprint.json``,
``runlog.dataset_fingerprint``: name and size of every file except the derived ``preprocessed/``
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


@dataclass(frozen=True)
class Entry:
    parts: tuple[str, ...]  # the path below the dataset root, one name per level
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class DatasetFiles:
    """Every file of a dataset folder (except ``preprocessed/``), sorted by path."""

    root: Path
    entries: tuple[Entry, ...]

    def files_sha256(self) -> str:
        """sha256 over 'path:size' lines of every file (the run's ``files_sha256``)."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(f"{e.name}:{e.size}\n".encode())
        return h.hexdigest()

    def preprocess_sha256(self) -> str:
        """sha256 over 'path:size:mtime_ns' lines of dataset.json, then of the files directly in
        imagesTr/ and labelsTr/ (the preprocessed folder's fingerprint)."""
        h = hashlib.sha256()
        inputs = [e for e in self.entries if e.parts == ("dataset.json",)] + [
            e for e in self.entries if len(e.parts) == 2 and e.parts[0] in PREPROCESS_INPUTS]
        for e in inputs:
            h.update(f"{e.name}:{e.size}:{e.mtime_ns}\n".encode())
        return h.hexdigest()


def scan(root: str | Path) -> DatasetFiles:
    """List ``root`` once (module docstring). A file removed during the scan is left out."""
    root = Path(root)
    entries: list[Entry] = []
    stack: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    while stack:
        folder, parts = stack.pop()
        with os.scandir(folder) as listing:
            for item in listing:
                here = (*parts, item.name)
                if not parts and item.name == DERIVED:
                    continue
                if _descend(item, top=not parts):
                    stack.append((item.path, here))
                elif item.is_file():
                    try:
                        st = item.stat()
                    except FileNotFoundError:
                        continue
                    entries.append(Entry(here, st.st_size, st.st_mtime_ns))
    entries.sort(key=lambda e: e.parts)
    return DatasetFiles(root, tuple(entries))


def _descend(item: os.DirEntry, top: bool) -> bool:
    if item.is_dir(follow_symlinks=False):
        return True
    return top and item.name in CASE_FOLDERS and item.is_dir()

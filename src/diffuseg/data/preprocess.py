"""``diffuseg preprocess``: each case written once, resampled and normalised, as memory-mappable
``.npy`` files (nnU-Net's plan-and-preprocess habit), so that training reads patches from disk and
its memory does not grow with the dataset.

::

    DATASET/preprocessed/<plan hash>/      (or the folder given with --out)
      index.json                           plan, fingerprint, one entry per case (shape, raters)
      {case}_image.npy                     [C, *sp], float32 (or the smallest exact integer dtype
                                           when the normalised image holds only integers)
      {case}_raters.npy                    [R, *sp], uint8 labels (uint16 past 255)
      {case}_fg.npy                        int32 [N, 1 + d]: (rater, voxel) of foreground voxels,
                                           at most 10,000 per rater (data/patches.py)

The plan is what changes the arrays: spatial_dims, ``data.intensity``, ``data.ct_window`` and
``data.spacing``; its hash names the folder. The fingerprint lists every file of imagesTr/ and
labelsTr/ and dataset.json with its size and modification time: when it differs from the one in
index.json (a case added, removed or rewritten), the folder is written again. It is derived from
the listing ``data/files.scan`` makes once (``train`` passes its own, shared with the run's
fingerprint), taken before any case is read, so a file changed while preprocessing runs makes the
next check fail rather than pass. The folder is built under a temporary name and renamed when
complete, so an interrupted run leaves nothing half-done; a lock on the parent folder makes a
second process that needs the same folder wait for the first one's and read it (two trainings of a
sweep started together), and the finished folder replaces an old one in one rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from diffuseg.config import RunConfig
from diffuseg.core.atomic import folder_lock, replace_folder
from diffuseg.data import files as dataset_files
from diffuseg.data.dataset import Dataset
from diffuseg.data.files import DatasetFiles
from diffuseg.data.loader import prepare_case
from diffuseg.data.patches import foreground_locations
from diffuseg.errors import DataError

STREAM_THRESHOLD_BYTES = 1 << 30  # data.stream=None streams when the training set needs > 1 GB
FORMAT_VERSION = 1


def plan_of(config: RunConfig) -> dict[str, Any]:
    d = config.data
    return {"version": FORMAT_VERSION, "spatial_dims": config.spatial_dims,
            "intensity": d.intensity, "ct_window": list(d.ct_window),
            "spacing": list(d.spacing) if d.spacing is not None else None}


def plan_hash(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:12]


def fingerprint(root: Path, files: DatasetFiles | None = None) -> str:
    """sha256 over (name, size, mtime) of dataset.json and every file of imagesTr/, labelsTr/,
    from ``files`` (``data.files.scan(root)``) or a new scan."""
    return (files if files is not None else dataset_files.scan(root)).preprocess_sha256


def default_folder(root: Path, config: RunConfig) -> Path:
    return root / "preprocessed" / plan_hash(plan_of(config))


def is_current(folder: Path, root: Path, config: RunConfig,
               files: DatasetFiles | None = None) -> bool:
    index = folder / "index.json"
    if not index.is_file():
        return False
    data = json.loads(index.read_text())
    return (data.get("plan") == plan_of(config)
            and data.get("fingerprint") == fingerprint(root, files))


def smallest_exact_dtype(array: np.ndarray) -> np.dtype:
    """uint8 / int16 when every value is an integer in their range, else float32."""
    if array.size and np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)):
        lo, hi = float(array.min()), float(array.max())
        for dtype in (np.uint8, np.int16):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return np.dtype(dtype)
    return np.dtype(np.float32)


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array))


def write_case(args: tuple[Any, RunConfig, Path]) -> dict[str, Any]:
    """Resample, normalise and write one case; returns its index entry."""
    case, config, folder = args
    image, raters = prepare_case(case, config)
    if raters.shape[0] == 0:
        raise DataError(f"case '{case.case_id}' has no label file; training needs labelsTr/")
    label_dtype = np.uint8 if raters.max(initial=0) < 256 else np.uint16
    _save(folder / f"{case.case_id}_image.npy", image.astype(smallest_exact_dtype(image)))
    _save(folder / f"{case.case_id}_raters.npy", raters.astype(label_dtype))
    _save(folder / f"{case.case_id}_fg.npy", foreground_locations(raters))
    return {"case_id": case.case_id, "shape": list(image.shape[1:]), "raters": len(raters)}


def preprocess(dataset_dir: str | Path, config: RunConfig, out: str | Path | None = None, *,
               workers: int = 0, progress: bool = True, force: bool = False,
               dataset: Dataset | None = None, files: DatasetFiles | None = None) -> Path:
    """Write the preprocessed folder (module docstring) unless it is current; returns it.
    ``dataset`` and ``files``: the opened ``dataset_dir`` and its ``data.files.scan``, when the
    caller holds them already (``train``); otherwise they are made here."""
    dataset = dataset if dataset is not None else Dataset.open(dataset_dir)
    root = dataset.root
    files = files if files is not None else dataset_files.scan(root)
    folder = Path(out) if out is not None else default_folder(root, config)
    if not force and is_current(folder, root, config, files):
        return folder
    with folder_lock(folder.parent, "preprocessed folder", wait=_say_waiting(folder)):
        if not force and is_current(folder, root, config, files):  # written while we waited
            return folder
        _remove_stale(folder)
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        entries = _write_cases(dataset, config, tmp, workers, progress)
        index = {"plan": plan_of(config), "fingerprint": fingerprint(root, files),
                 "dataset": str(root), "cases": entries}
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        replace_folder(tmp, folder)
    return folder


def _write_cases(dataset: Dataset, config: RunConfig, tmp: Path, workers: int,
                 progress: bool) -> list[dict[str, Any]]:
    jobs = [(case, config, tmp) for case in dataset.cases]
    entries = []
    with _Progress(len(jobs), f"preprocessing {dataset.root.name}", progress) as bar:
        if workers > 0:
            with get_context("fork").Pool(workers) as pool:
                for entry in pool.imap(write_case, jobs, chunksize=8):
                    entries.append(entry)
                    bar.advance()
        else:
            for job in jobs:
                entries.append(write_case(job))
                bar.advance()
    return entries


def _say_waiting(folder: Path):
    """Two trainings started together on one dataset: the second waits for the first one's
    preprocessing and then reads its folder (replacing it under the first one's running stream
    made that run fail mid-step)."""
    def say(holder: str) -> None:
        print(f"waiting for {holder}: it is preprocessing into {folder.parent}; this run reads "
              "the result when it is done", file=sys.stderr, flush=True)
    return say


def _remove_stale(folder: Path) -> None:
    """Delete ``folder.tmp-<pid>`` left by a run that was killed (its process is gone)."""
    for stale in folder.parent.glob(f"{folder.name}.tmp-*"):
        try:
            os.kill(int(stale.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def training_bytes(dataset: Dataset, case_ids: list[str], stop_above: int | None = None) -> int:
    """What the in-memory loader would hold: 4 bytes per image voxel and channel, 8 per rater
    voxel (int64), from the file headers (nothing is decoded). With ``stop_above``, the count
    stops at the first case that takes it past that many bytes (enough to decide
    ``data.stream``; LIDC passes 1 GB after ~1,800 of its 12,492 headers)."""
    by_id = {case.case_id: case for case in dataset.cases}
    total = 0
    for case_id in case_ids:
        case = by_id[case_id]
        voxels = int(np.prod(_header_shape(case.image_paths[0])))
        total += voxels * (4 * len(case.image_paths) + 8 * len(case.label_paths))
        if stop_above is not None and total > stop_above:
            break
    return total


def _header_shape(path: Path) -> tuple[int, ...]:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel

        return tuple(nibabel.load(str(path)).shape)
    from PIL import Image

    with Image.open(path) as im:
        return (*im.size, len(im.getbands()))


class _Progress:
    """A rich progress bar on a terminal; a line every 10% of the cases otherwise."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.done, self.enabled = total, label, 0, enabled
        self.bar, self.start = None, time.monotonic()
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn())
            self.task = self.bar.add_task(label, total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif self.enabled and (self.done % max(1, self.total // 10) == 0
                               or self.done == self.total):
            print(f"{self.label}: {self.done}/{self.total} cases "
                  f"({time.monotonic() - self.start:.0f} s)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

"""What a run folder says about its data: the splits it trained with and the dataset it saw.

A run writes ``splits.json`` (the folds it used) and ``fingerprint.json`` (which data) when it
starts. From then on the run's own ``splits.json`` is the only source of truth for which cases
are held out: ``diffuseg evaluate`` and the benchmarks read it, never a split recomputed from the
dataset (which could differ, e.g. with another ``train.seed``). ``--resume`` refuses a dataset
whose fingerprint differs from the run's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from diffuseg.core.atomic import write_json_atomic
from diffuseg.data.dataset import Dataset
from diffuseg.data.splits import FOLDS, load_splits, read_splits
from diffuseg.errors import DataError

SPLITS = "splits.json"
FINGERPRINT = "fingerprint.json"
# fingerprint keys that identify the data (the path may change when a dataset is moved)
FINGERPRINT_KEYS = ("dataset_json_sha256", "files_sha256", "n_files", "n_cases")


def splits_for_run(run_dir: Path, dataset: Dataset, seed: int, *, resume: bool
                   ) -> dict[str, list[str]]:
    """A new run: the dataset's ``splits.json`` or the patient split by ``seed``, written to
    ``run_dir/splits.json``. A resumed run: the splits it recorded (never recomputed)."""
    if resume and (Path(run_dir) / SPLITS).is_file():
        return run_splits(run_dir)
    splits = load_splits(dataset.root, dataset, seed=seed)
    write_json_atomic(Path(run_dir) / SPLITS, splits)
    return splits


def run_splits(run_dir: str | Path) -> dict[str, list[str]]:
    """The folds a run trained with (``RUN/splits.json``)."""
    path = Path(run_dir) / SPLITS
    if not path.is_file():
        raise DataError(f"run folder '{run_dir}' has no {SPLITS}; give the -o folder of "
                        "'diffuseg train'")
    return read_splits(path)


def training_cases(run_dir: str | Path, cases: Sequence[str]) -> list[str]:
    """The cases among ``cases`` that the run trained on (its ``train`` fold)."""
    train = set(run_splits(run_dir)["train"])
    return [case for case in cases if case in train]


def held_out_cases(run_dir: str | Path, fold: str) -> list[str]:
    """The run's ``val`` or ``test`` cases, sorted."""
    if fold not in FOLDS[1:]:
        raise DataError(f"fold '{fold}' is not a held-out fold; use val or test")
    return sorted(run_splits(run_dir)[fold])


def check_same_dataset(run_dir: str | Path, dataset: Dataset, files=None) -> None:
    """Refuse to continue a run on other data than it started with (``fingerprint.json``);
    ``files``: the dataset's ``data.files.scan`` when the caller has made it."""
    path = Path(run_dir) / FINGERPRINT
    if not path.is_file():
        return  # a run from before fingerprints: nothing to compare
    try:
        recorded = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"'{path}' is not valid JSON; the run folder is damaged") from None
    current = dataset_fingerprint(dataset, files)
    differ = [k for k in FINGERPRINT_KEYS if recorded.get(k) != current.get(k)]
    if differ:
        raise DataError(f"cannot resume: '{dataset.root}' is not the dataset run '{run_dir}' "
                        f"started with ('{recorded.get('dataset')}'; {', '.join(differ)} differ); "
                        "resume with that dataset or start a new run")


__all__ = ["check_same_dataset", "held_out_cases", "run_splits", "splits_for_run",
           "training_cases"]


def dataset_fingerprint(dataset, files=None) -> dict:
    """Which data a run saw: dataset.json's hash and a hash over every file's name and size
    (not the derived ``preprocessed/`` folder, docs/volumes.md). ``files``: the folder's
    ``data.files.scan``, when the caller has made it already (``train`` scans once)."""
    from diffuseg.data import files as dataset_files

    root = Path(dataset.root)
    listing = files if files is not None else dataset_files.scan(root)
    return {
        "dataset": str(root.resolve()),
        "dataset_json_sha256": hashlib.sha256((root / "dataset.json").read_bytes()).hexdigest(),
        "files_sha256": listing.files_sha256,
        "n_files": listing.n_files,
        "n_cases": len(dataset.cases),
    }

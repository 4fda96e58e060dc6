"""Train/val/test splits of a dataset folder, always by group (patient).

- ``make_splits(dataset, seed)``: groups shuffled with ``seed``, cut 80/10/10
  (docs/dataset_format.md).
- ``load_splits(root, dataset, seed=...)``: the user's ``splits.json`` when present (validated:
  known cases, each listed once, and **no patient in two folds**), else ``make_splits``.
- ``save_splits(root, splits)``: writes ``splits.json`` atomically.

A run records the splits it trained with in its own folder (``diffuseg.run.folder``); after
training, that file is the only source of truth for which cases are held out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffuseg.core.atomic import write_json_atomic
from diffuseg.core.json_files import read_json
from diffuseg.data.dataset import Dataset
from diffuseg.errors import ConfigError, DataError

FOLDS = ("train", "val", "test")


def make_splits(dataset: Dataset, seed: int = 0,
                fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[str]]:
    """Split by group (patient): groups are shuffled with ``seed`` and cut into train/val/test
    with ``round(f * n_groups)`` groups for val and test (at least one each when its fraction is
    positive and there are enough groups), train takes the rest. Case lists are sorted."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {fractions} must be three non-negative numbers "
                          "summing to 1 (train, val, test)")
    groups = sorted({case.group for case in dataset.cases})
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    n = len(groups)
    sizes = [max(round(f * n), 1) if f > 0 and n >= 3 else round(f * n) for f in fractions[1:]]
    n_val, n_test = sizes[0], min(sizes[1], n - sizes[0])
    fold_of = {g: "val" for g in order[:n_val]}
    fold_of.update({g: "test" for g in order[n_val:n_val + n_test]})
    splits: dict[str, list[str]] = {fold: [] for fold in FOLDS}
    for case in dataset.cases:
        splits[fold_of.get(case.group, "train")].append(case.case_id)
    return {fold: sorted(ids) for fold, ids in splits.items()}


def save_splits(root: str | Path, splits: dict[str, list[str]]) -> Path:
    """Write ``root/splits.json`` atomically (temp file + rename)."""
    return write_json_atomic(Path(root) / "splits.json", splits)


def load_splits(root: str | Path, dataset: Dataset | None = None, *, seed: int = 0,
                fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
                ) -> dict[str, list[str]]:
    """The user's ``splits.json`` when present (validated), else ``make_splits`` (not saved)."""
    root = Path(root)
    dataset = dataset or Dataset.open(root)
    path = root / "splits.json"
    if not path.is_file():
        return make_splits(dataset, seed, fractions)
    return read_splits(path, dataset)


def read_splits(path: Path, dataset: Dataset | None = None) -> dict[str, list[str]]:
    """A ``splits.json`` file, checked for shape; against ``dataset`` when given: known cases,
    each case listed once, no patient (group) in two folds."""
    splits = read_json(path, "splits file", DataError, mapping=False)  # UTF-8, not too deep
    if not isinstance(splits, dict) or "train" not in splits or not set(splits) <= set(
            FOLDS) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in splits.values()):
        raise DataError(f"'{path}' must look like {{\"train\": [ids], \"val\": [ids], \"test\": "
                        "[ids]}; fix it or delete it to split by patient automatically")
    splits = {fold: list(splits.get(fold, [])) for fold in FOLDS}
    if dataset is not None:
        check_splits(splits, dataset, path)
    return splits


def check_splits(splits: dict[str, list[str]], dataset: Dataset, path: Path) -> None:
    """Every listed case exists and is listed once; the cases of one patient share one fold."""
    by_id = {case.case_id: case for case in dataset.cases}
    listed = [c for ids in splits.values() for c in ids]
    unknown = sorted(set(listed) - set(by_id))
    if unknown:
        raise DataError(f"'{path}' names cases not in imagesTr: {unknown[:5]}; fix or delete it")
    if len(listed) != len(set(listed)):
        twice = sorted({c for c in listed if listed.count(c) > 1})
        raise DataError(f"'{path}' lists cases in more than one place: {twice[:5]}; fix it")
    first: dict[str, tuple[str, str]] = {}  # group -> (fold, case) where it was first seen
    for fold in FOLDS:
        for case_id in splits[fold]:
            group = by_id[case_id].group
            seen = first.setdefault(group, (fold, case_id))
            if seen[0] != fold:
                raise DataError(
                    f"'{path}' puts patient '{group}' in {seen[0]} ({seen[1]}) and {fold} "
                    f"({case_id}); a patient's cases must share one fold (groups in "
                    "dataset.json), fix it or delete it to split by patient automatically")


__all__ = ["FOLDS", "check_splits", "load_splits", "make_splits", "read_splits", "save_splits",
           "write_json_atomic"]

"""The run's own splits.json is the only source of truth; resume checks the dataset."""

import json

import pytest

from diffuseg.data import Dataset, load_splits, make_splits
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import DataError
from diffuseg.run.folder import (
    check_same_dataset,
    dataset_fingerprint,
    held_out_cases,
    run_splits,
    splits_for_run,
    training_cases,
)


@pytest.fixture
def unsplit(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph", n_cases=20, size=16, n_raters=2)
    (root / "splits.json").unlink()  # a dataset without splits.json
    return Dataset.open(root)


def test_run_records_its_seeded_split_and_keeps_it(tmp_path, unsplit):
    run = tmp_path / "run"
    run.mkdir()
    seed_zero_test = set(make_splits(unsplit, 0)["test"])
    seed = next(s for s in range(1, 100) if seed_zero_test & set(make_splits(unsplit, s)["train"]))
    seeded = splits_for_run(run, unsplit, seed=seed, resume=False)
    assert seeded == make_splits(unsplit, seed)
    assert run_splits(run) == seeded
    # the leak: held-out cases recomputed from the dataset with seed 0 include training cases
    leaked = training_cases(run, load_splits(unsplit.root, unsplit)["test"])
    assert leaked  # which is why everything reads the run's splits.json instead
    assert not training_cases(run, held_out_cases(run, "test") + held_out_cases(run, "val"))
    # a resumed run reads its file, whatever the seed says now
    assert splits_for_run(run, unsplit, seed=99, resume=True) == seeded
    with pytest.raises(DataError, match="held-out fold"):
        held_out_cases(run, "train")
    with pytest.raises(DataError, match="no splits.json"):
        run_splits(tmp_path)


def test_resume_checks_the_fingerprint(tmp_path, unsplit):
    run = tmp_path / "run"
    run.mkdir()
    (run / "fingerprint.json").write_text(json.dumps(dataset_fingerprint(unsplit)))
    check_same_dataset(run, unsplit)  # the same data: fine
    moved = tmp_path / "moved"
    unsplit.root.rename(moved)
    check_same_dataset(run, Dataset.open(moved))  # moved, not changed: fine
    other = Dataset.open(write_phantom_dataset(tmp_path / "o", n_cases=21, size=16, n_raters=2))
    with pytest.raises(DataError, match="cannot resume") as err:
        check_same_dataset(run, other)
    assert "\n" not in str(err.value) and "n_cases" in str(err.value)

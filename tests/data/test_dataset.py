"""The dataset folder: write/open/load round trips, dataset.json validation, splits by patient."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from diffuseg.data import (
    Dataset,
    DatasetInfo,
    load_splits,
    make_splits,
    save_splits,
    write_dataset,
)
from diffuseg.errors import ConfigError, DataError
from diffuseg.io import Geometry


def info_2d(raters: int = 3, channels: int = 2, groups: dict | None = None) -> DatasetInfo:
    return DatasetInfo(channel_names={str(c): f"ch{c}" for c in range(channels)},
                       labels={"background": 0, "lesion": 1, "edge": 2}, num_training=0,
                       file_ending=".png", raters=raters, spatial_dims=2, groups=groups or {})


def cases_2d(n: int, raters: int = 3, channels: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(0, 256, size=(channels, 6, 5)).astype(np.float32)
        yield f"case_{i:03d}", image, rng.integers(0, 3, size=(raters, 6, 5)), \
            Geometry.identity((6, 5))


def test_round_trip_2d_with_raters(tmp_path):
    items = list(cases_2d(3))
    write_dataset(tmp_path / "ds", items, info_2d(groups={"case_000": "p0", "case_001": "p0"}))
    dataset = Dataset.open(tmp_path / "ds")
    assert [c.case_id for c in dataset.cases] == ["case_000", "case_001", "case_002"]
    assert dataset.info.num_training == 3 and dataset.info.raters == 3
    assert [c.group for c in dataset.cases] == ["p0", "p0", "case_002"]
    assert dataset.cases[0].label_paths[2].name == "case_000_r2.png"
    for case, (case_id, image, raters, _) in zip(dataset.cases, items, strict=True):
        data = case.load()
        assert data.case_id == case_id and data.image.dtype == np.float32
        assert data.raters.dtype == np.int64
        np.testing.assert_array_equal(data.image, image)
        np.testing.assert_array_equal(data.raters, raters)


def test_round_trip_3d_single_rater_keeps_geometry(tmp_path):
    affine = np.array([[0.0, -0.8, 0.1, 12.0], [0.9, 0.0, 0.0, -3.0], [0.0, 0.1, 2.5, 7.0],
                       [0.0, 0.0, 0.0, 1.0]], dtype=np.float32).astype(np.float64)
    geometry = Geometry.from_affine(affine, (4, 5, 3))
    image = np.random.default_rng(1).normal(size=(1, 4, 5, 3)).astype(np.float32)
    raters = (image > 0).astype(np.int64)
    info = DatasetInfo({"0": "MR"}, {"background": 0, "organ": 1}, 0, ".nii.gz")
    assert info.spatial_dims == 2  # the dataclass default; from_dict infers 3 from .nii.gz
    info = replace(info, spatial_dims=3)
    write_dataset(tmp_path / "ds", [("vol", image, raters, geometry)], info)
    assert (tmp_path / "ds" / "labelsTr" / "vol.nii.gz").is_file()  # one rater: plain name
    data = Dataset.open(tmp_path / "ds").cases[0].load()
    np.testing.assert_array_equal(data.image, image)
    np.testing.assert_array_equal(data.raters, raters)
    np.testing.assert_array_equal(data.geometry.affine, affine)


def test_dataset_json_validation(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        DatasetInfo.load(path)
    good = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1},
            "numTraining": 1, "file_ending": ".nii.gz"}
    assert DatasetInfo.from_dict(good).spatial_dims == 3
    assert DatasetInfo.from_dict(good).raters == 1
    for broken, message in (
        ({k: v for k, v in good.items() if k != "labels"}, r"lacks \['labels'\]"),
        ({**good, "raters": "3"}, "raters='3' must be an integer"),
        ({**good, "numTraining": True}, "numTraining=True"),
        ({**good, "labels": {"background": 0, "tumour": 2}}, "0..K-1"),
        ({**good, "labels": {"background": 0, "tumour": [1, 2]}}, "map names to integers"),
        ({**good, "file_ending": ".jpg"}, "file_ending '.jpg'"),
        ({**good, "channel_names": {"1": "CT"}}, "channel_names keys"),
        ({**good, "spatial_dims": 4}, "spatial_dims=4"),
    ):
        with pytest.raises(DataError, match=message):
            DatasetInfo.from_dict(broken)
    extra = DatasetInfo.from_dict({**good, "licence": "CC-BY"})
    assert extra.to_dict()["licence"] == "CC-BY"  # unknown keys are kept


def test_open_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Dataset.open(tmp_path / "nowhere")
    write_dataset(tmp_path / "ds", cases_2d(2), info_2d())
    (tmp_path / "ds" / "labelsTr" / "case_001_r1.png").unlink()
    with pytest.raises(DataError, match=r"case 'case_001' has no mask .*case_001_r1\.png"):
        Dataset.open(tmp_path / "ds")
    for child in (tmp_path / "ds" / "imagesTr").iterdir():
        child.unlink()
    (tmp_path / "ds" / "imagesTr").rmdir()
    with pytest.raises(DataError, match="no imagesTr"):
        Dataset.open(tmp_path / "ds")


def test_write_refuses_non_empty_folder_unless_overwrite(tmp_path):
    write_dataset(tmp_path / "ds", cases_2d(3), info_2d())
    with pytest.raises(DataError, match="not empty.*overwrite=True"):
        write_dataset(tmp_path / "ds", cases_2d(1), info_2d())
    write_dataset(tmp_path / "ds", cases_2d(1), info_2d(), overwrite=True)
    assert len(Dataset.open(tmp_path / "ds")) == 1  # stale cases are gone
    with pytest.raises(DataError, match="do not match dataset.json"):
        write_dataset(tmp_path / "other", cases_2d(1, raters=2), info_2d(raters=3))


def test_rgb_single_file_and_flat_nifti_and_test_cases(tmp_path):
    root = tmp_path / "natural"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    rgb = np.random.default_rng(2).integers(0, 256, size=(4, 6, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(root / "imagesTr" / "a_0000.png")
    Image.fromarray(rgb).save(root / "imagesTs" / "b_0000.png")
    Image.fromarray(np.eye(4, 6, dtype=np.uint8) * 255).save(root / "labelsTr" / "a.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "fg": 1},
        "numTraining": 1, "file_ending": ".png"}))
    dataset = Dataset.open(root)
    data = dataset.cases[0].load()
    assert data.image.shape == (3, 4, 6) and data.raters.shape == (1, 4, 6)
    np.testing.assert_array_equal(data.raters[0], np.eye(4, 6))  # 0/255 read as 0/1
    test = dataset.case("b").load()
    assert test.raters.shape == (0, 4, 6)

    flat = tmp_path / "flat"
    (flat / "imagesTr").mkdir(parents=True)
    (flat / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.ones((5, 4, 1), np.float32), np.eye(4)),
             flat / "imagesTr" / "c_0000.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((5, 4, 1), np.uint8), np.eye(4)),
             flat / "labelsTr" / "c.nii.gz")
    (flat / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "x"}, "labels": {"background": 0, "fg": 1}, "numTraining": 1,
        "file_ending": ".nii.gz", "spatial_dims": 2}))
    data = Dataset.open(flat).cases[0].load()
    assert data.image.shape == (1, 5, 4) and data.geometry.shape == (5, 4)


# ---------------------------------------------------------------------------------------------
# splits


def grouped_dataset(tmp_path: Path, n: int = 30) -> Dataset:
    groups = {f"case_{i:03d}": f"patient_{i // 3}" for i in range(n)}  # 10 patients, 3 cases each
    write_dataset(tmp_path / "ds", cases_2d(n, raters=1, channels=1),
                  info_2d(raters=1, channels=1, groups=groups))
    return Dataset.open(tmp_path / "ds")


def test_splits_are_by_group_and_deterministic(tmp_path):
    dataset = grouped_dataset(tmp_path)
    splits = make_splits(dataset, seed=0)
    assert splits == make_splits(dataset, seed=0)
    assert splits != make_splits(dataset, seed=1)
    fold_of = {c: fold for fold, ids in splits.items() for c in ids}
    assert sorted(fold_of) == sorted(c.case_id for c in dataset.cases)
    by_group: dict[str, set[str]] = {}
    for case in dataset.cases:
        by_group.setdefault(case.group, set()).add(fold_of[case.case_id])
    assert all(len(folds) == 1 for folds in by_group.values())  # no patient in two folds
    assert [len(splits[f]) for f in ("train", "val", "test")] == [24, 3, 3]  # 8 / 1 / 1 patients
    with pytest.raises(ConfigError, match="summing to 1"):
        make_splits(dataset, fractions=(0.5, 0.1, 0.1))


def test_user_splits_are_honoured_and_validated(tmp_path):
    dataset = grouped_dataset(tmp_path, n=6)
    root = dataset.root
    assert load_splits(root) == make_splits(dataset, seed=0)  # none saved: computed
    mine = {"train": ["case_000", "case_001"], "val": ["case_003"]}  # patients 0 and 1
    save_splits(root, mine)
    assert load_splits(root) == {**mine, "test": []}
    save_splits(root, {"train": ["case_000", "case_999"]})
    with pytest.raises(DataError, match="case_999"):
        load_splits(root)
    save_splits(root, {"train": ["case_000"], "val": ["case_000"]})
    with pytest.raises(DataError, match="more than one place"):
        load_splits(root)
    save_splits(root, {"train": ["case_000"], "test": ["case_002"]})  # one patient, two folds
    with pytest.raises(DataError, match="patient 'patient_0' in train .case_000. and test"):
        load_splits(root)
    (root / "splits.json").write_text(json.dumps([{"train": [], "val": []}]))
    with pytest.raises(DataError, match="must look like"):
        load_splits(root)

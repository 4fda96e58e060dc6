"""`check_dataset` finds each kind of problem in a deliberately broken dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from diffuseg.data import check_dataset, write_phantom_dataset

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def phantom(tmp_path) -> Path:
    return write_phantom_dataset(tmp_path / "ph", 6, size=16, seed=1)


def test_clean_dataset_passes(phantom):
    report = check_dataset(phantom)
    assert report.ok and report.n_cases == 6 and report.errors == [] and report.warnings == []
    assert "6 cases, OK" in report.format()


def test_broken_2d_dataset_reports_each_problem(phantom):
    (phantom / "labelsTr" / "phantom_0000_r1.png").unlink()
    images, labels = phantom / "imagesTr", phantom / "labelsTr"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(labels / "phantom_0001_r0.png")
    bad_labels = np.zeros((16, 16), np.uint8)
    bad_labels[0, 0] = 7
    Image.fromarray(bad_labels).save(labels / "phantom_0002_r2.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(images / "phantom_0003_0000.png")
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(images / "phantom_0004_0000.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(images / "phantom_0005_0001.png")
    report = check_dataset(phantom)
    text = report.format()
    expectations = [
        r"'phantom_0000' has no mask .*phantom_0000_r1\.png",  # found while listing files ...
        r"'phantom_0005' has channel files \[0, 1\]",
        r"phantom_0001_r0\.png' has shape \(8, 8\)",  # ... then while reading them
        r"phantom_0002_r2\.png' has values \[0, 7\]",
        r"phantom_0003_0000\.png' is all zero",
    ]
    assert len(report.errors) == len(expectations), text
    for pattern, error in zip(expectations, report.errors, strict=True):
        assert re.search(pattern, error), (pattern, error)
    assert len(report.warnings) == 1 and "phantom_0004_0000.png' is constant" in report.warnings[0]
    assert not report.ok and f"{len(expectations)} error(s)" in text


def test_nifti_problems(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph3", 3, spatial_dims=3, size=8, n_raters=2)
    image_path = root / "imagesTr" / "phantom_0000_0000.nii.gz"
    image = nib.load(image_path)
    data = image.get_fdata().astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine, image.header), image_path)
    shifted = image.affine.copy()
    shifted[0, 3] += 0.5
    mask_path = root / "labelsTr" / "phantom_0001_r1.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(mask_path).dataobj), shifted), mask_path)
    flat = root / "imagesTr" / "phantom_0002_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), flat)
    report = check_dataset(root)
    assert len(report.errors) == 3, report.format()
    assert "phantom_0000_0000.nii.gz' has 1 NaN/Inf" in report.errors[0]
    assert "phantom_0001_r1.nii.gz' has an affine 0.5 mm away" in report.errors[1]
    assert "phantom_0002_0000.nii.gz' is 2D (8, 8) but dataset.json says spatial_dims=3" in \
        report.errors[2]


def test_bad_dataset_json_and_counts(phantom):
    info = json.loads((phantom / "dataset.json").read_text())
    (phantom / "dataset.json").write_text(json.dumps({**info, "numTraining": 7}))
    assert check_dataset(phantom).errors == [
        "dataset.json says numTraining=7 but imagesTr holds 6 cases; fix numTraining"]
    (phantom / "dataset.json").write_text(json.dumps({**info, "labels": "lesion"}))
    report = check_dataset(phantom)
    assert len(report.errors) == 1 and "labels must map names to integers" in report.errors[0]
    (phantom / "dataset.json").write_text("{")
    assert "not valid JSON" in check_dataset(phantom).errors[0]
    (phantom / "splits.json").write_text(json.dumps({"train": ["ghost"]}))
    (phantom / "dataset.json").write_text(json.dumps(info))
    assert "ghost" in check_dataset(phantom).errors[0]
    assert "does not exist" in check_dataset(phantom / "nowhere").errors[0]


@pytest.mark.shared_data
def test_msd_hippocampus_is_not_a_diffuseg_dataset_yet():
    """MSD's dataset.json (labels as index -> name, images without _0000) fails clearly."""
    folder = DATA / "msd_hippocampus"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    report = check_dataset(folder)
    assert not report.ok and "lacks ['channel_names', 'file_ending']" in report.errors[0]

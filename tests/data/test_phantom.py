"""The phantom: raters are thresholds of a known lesion field, nested as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import center_of_mass

from diffuseg.data import Dataset, majority_mask, make_case, rater_thresholds, write_phantom_dataset
from diffuseg.data.phantom import over_segmenting_marks
from diffuseg.errors import ConfigError


@pytest.mark.parametrize("spatial_dims, size", [(2, 64), (3, 24)])
def test_raters_are_nested_thresholds_of_the_field(spatial_dims, size):
    for seed in range(4):
        case = make_case(spatial_dims, size, 3, np.random.default_rng(seed))
        shape = (size,) * spatial_dims
        assert case.image.shape == (1, *shape) and case.image.dtype == np.float32
        assert case.raters.shape == (3, *shape) and case.raters.dtype == np.uint8
        assert case.lesion_field.shape == shape
        for k, t in enumerate((0.5, 0.3, 0.8)):
            np.testing.assert_array_equal(case.raters[k], case.lesion_field > t)
        r0, r1, r2 = case.raters.astype(bool)
        assert r2.sum() > 0 and r2.sum() < r0.sum() < r1.sum()
        assert not np.any(r2 & ~r0) and not np.any(r0 & ~r1)  # rater 1 >= rater 0 >= rater 2
        assert case.lobe.any() and not np.any(case.lobe & ~r0)  # rater 0 traces the lobe ...
        assert not np.any(case.lobe & r2)  # ... rater 2 misses it


def test_image_shows_the_lesion():
    case = make_case(2, 64, 3, np.random.default_rng(7))
    image = case.image[0]
    assert np.array_equal(image, np.round(image)) and 0 <= image.min() and image.max() <= 255
    core = case.raters[2].astype(bool)
    ring = (case.lesion_field < 0.05) & (np.abs(np.indices(image.shape) - np.array(
        center_of_mass(core))[:, None, None]).max(0) < 16)  # nearby tissue outside the lesion
    assert image[core].mean() > image[ring].mean() + 30  # contrast >= 0.3 of 255 on the core


def test_determinism_and_variation():
    a = make_case(2, 32, 3, np.random.default_rng(3))
    b = make_case(2, 32, 3, np.random.default_rng(3))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.raters, b.raters)
    cases = [make_case(2, 32, 1, np.random.default_rng(s)) for s in range(8)]
    areas = [int(c.raters[0].sum()) for c in cases]
    centres = [center_of_mass(c.raters[0]) for c in cases]
    assert len(set(areas)) == 8 and len({tuple(np.round(c)) for c in centres}) > 4


def test_rater_thresholds_and_majority():
    assert rater_thresholds(1) == (0.5,)
    np.testing.assert_allclose(rater_thresholds(5), (0.5, 0.3, 0.8, 0.425, 0.675))
    with pytest.raises(ConfigError):
        rater_thresholds(0)
    three = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(majority_mask(three), [1, 0, 0, 0])
    two = np.array([[1, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(majority_mask(two), [1, 0, 1])  # a tie counts as foreground


def test_phantom_dataset_2d(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph", 6, size=32, seed=5)
    dataset = Dataset.open(root)
    assert len(dataset) == 6 and dataset.info.raters == 3 and dataset.info.file_ending == ".png"
    data = dataset.case("phantom_0003").load()
    expected = make_case(2, 32, 3, np.random.default_rng([5, 3]))  # independent of n_cases
    np.testing.assert_array_equal(data.image, expected.image)
    np.testing.assert_array_equal(data.raters, expected.raters)
    splits = json.loads((root / "splits.json").read_text())
    fold_of = {c: fold for fold, ids in splits.items() for c in ids}
    assert len(fold_of) == 6
    for i in range(0, 6, 2):  # cases 2i and 2i + 1 are one patient
        assert fold_of[f"phantom_{i:04d}"] == fold_of[f"phantom_{i + 1:04d}"]


def test_phantom_dataset_3d(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph3", 2, spatial_dims=3, size=16, n_raters=4)
    dataset = Dataset.open(root)
    assert dataset.info.spatial_dims == 3 and dataset.info.file_ending == ".nii.gz"
    data = dataset.cases[1].load()
    assert data.image.shape == (1, 16, 16, 16) and data.raters.shape == (4, 16, 16, 16)
    expected = make_case(3, 16, 4, np.random.default_rng([0, 1]))
    np.testing.assert_array_equal(data.raters, expected.raters)
    with pytest.raises(ConfigError, match="spatial_dims"):
        make_case(4, 8, 3, np.random.default_rng(0))


def test_over_segmenting_marks_lie_where_only_rater_1_marks():
    raters = np.zeros((3, 10, 10), np.uint8)
    raters[1, 2:8, 2:8] = 1  # rater 1 over-segments
    raters[0, 3:7, 3:7] = 1
    inside = over_segmenting_marks(raters, n=5, seed=4)
    assert inside.sum() == 5 and inside.shape == (10, 10)
    assert (raters[1][inside] == 1).all() and (raters[0][inside] == 0).all()
    assert (over_segmenting_marks(raters, n=5, seed=4) == inside).all()  # seeded
    assert over_segmenting_marks(raters, n=21) is None  # the ring holds 36 - 16 = 20 pixels
    assert over_segmenting_marks(raters, n=20).sum() == 20

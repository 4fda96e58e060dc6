"""HD95 / ASSD: closed forms with anisotropic spacing, medpy cross-checks, empty-mask rules."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import medpy.metric.binary as mb
import numpy as np
import pytest
import torch

from diffuseg.errors import DataError
from diffuseg.metrics import assd, hausdorff, hd95, image_diagonal, per_class

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_medpy_directed = getattr(mb, "__surface_distances")  # medpy's per-surface-voxel distances


def _planes(shape: tuple[int, ...], axis: int, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two one-voxel-thick planes (lines in 2-D) spanning the image, at i and i + k on `axis`."""
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[(slice(None),) * axis + (i,)] = True
    b[(slice(None),) * axis + (i + k,)] = True
    return a, b


@pytest.mark.parametrize(
    "shape, spacing, axis, k",
    [
        ((10, 6, 5), (2.5, 1.0, 0.7), 0, 3),
        ((10, 6, 5), (2.5, 1.0, 0.7), 2, 2),
        ((9, 7), (0.5, 3.0), 1, 4),
        ((9, 7), (0.5, 3.0), 0, 5),
    ],
)
def test_parallel_planes_are_k_times_spacing_apart(
    shape: tuple[int, ...], spacing: tuple[float, ...], axis: int, k: int
) -> None:
    a, b = _planes(shape, axis, 1, k)
    expected = k * spacing[axis]  # every surface voxel's nearest neighbour is straight across
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-6)
    assert assd(a, b, spacing) == pytest.approx(expected, rel=1e-6)
    assert hausdorff(a, b, spacing) == pytest.approx(expected, rel=1e-6)
    assert hd95(a, b) == pytest.approx(k, rel=1e-6)  # spacing None: voxels


@pytest.mark.parametrize("shape, spacing", [((18, 21), (0.7, 1.3)), ((9, 11, 10), (2.0, 0.8, 1.1))])
def test_random_masks_match_medpy(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.random(shape) > 0.75
        y = rng.random(shape) > 0.65
        d_xy = _medpy_directed(x, y, spacing, 1)
        d_yx = _medpy_directed(y, x, spacing, 1)
        # MONAI's HD95 is the max of the two directed 95th percentiles (medpy's hd95 pools them)
        expected_hd95 = max(np.percentile(d_xy, 95), np.percentile(d_yx, 95))
        assert hd95(x, y, spacing) == pytest.approx(expected_hd95, rel=1e-5)
        assert hausdorff(x, y, spacing) == pytest.approx(mb.hd(x, y, spacing), rel=1e-5)
        assert assd(x, y, spacing) == pytest.approx(mb.assd(x, y, spacing), rel=1e-5)


def test_anisotropic_spacing_follows_axis_order() -> None:
    a, b = _planes((8, 8), 0, 1, 3)
    assert hd95(a, b, (2.0, 0.5)) == pytest.approx(6.0, rel=1e-6)
    assert hd95(a, b, (0.5, 2.0)) == pytest.approx(1.5, rel=1e-6)


def test_empty_mask_conventions() -> None:
    empty = np.zeros((6, 7))
    mask = np.zeros((6, 7))
    mask[2:4, 2:5] = 1
    assert hd95(empty, empty) == 0.0 and assd(empty, empty, (2.0, 3.0)) == 0.0
    assert math.isnan(hd95(mask, empty)) and math.isnan(assd(empty, mask))
    diag = image_diagonal(mask.shape, (2.0, 0.5))
    assert diag == pytest.approx(math.sqrt(12.0**2 + 3.5**2))
    assert hd95(mask, empty, (2.0, 0.5), empty_penalty=diag) == diag
    assert assd(empty, mask, empty_penalty=99.0) == 99.0
    assert hd95(empty, empty, empty_penalty=99.0) == 0.0  # both empty stays 0


def test_image_diagonal_hand_value() -> None:
    assert image_diagonal((3, 4)) == pytest.approx(5.0)
    assert image_diagonal((1, 2, 2), (1.0, 1.0, 1.0)) == pytest.approx(3.0)


def test_bad_spacing_and_dimensions_are_data_errors() -> None:
    a, b = _planes((6, 6), 0, 1, 2)
    with pytest.raises(DataError, match="spacing"):
        hd95(a, b, (1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="spacing"):
        assd(a, b, (1.0, 0.0))
    with pytest.raises(DataError, match="2-D or 3-D"):
        hd95(a[0], b[0])
    with pytest.raises(DataError, match="percentile"):
        hausdorff(a, b, percentile=0.0)


def test_torch_input_and_per_class_with_spacing() -> None:
    labels = np.zeros((8, 6, 5), np.int64)
    labels[1, :, :] = 1
    labels[6, :, :] = 2
    shifted = np.zeros_like(labels)
    shifted[3, :, :] = 1  # label 1 moved 2 slices
    shifted[6, :, :] = 2  # label 2 unchanged
    spacing = (1.5, 1.0, 1.0)
    out = per_class(
        functools.partial(hd95, spacing=spacing),
        torch.from_numpy(shifted),
        torch.from_numpy(labels),
        labels=[1, 2],
    )
    assert out == pytest.approx({1: 3.0, 2: 0.0})


@pytest.mark.shared_data
def test_real_hippocampus_labels_match_medpy() -> None:
    nib = pytest.importorskip("nibabel")
    folder = DATA / "msd_hippocampus" / "labelsTr"
    if not folder.is_dir():
        pytest.skip(f"real data absent: {folder} (see ../shared/data/README.md)")
    path = sorted(p for p in folder.glob("hippocampus_*.nii.gz") if not p.name.startswith("._"))[0]
    target = np.asarray(nib.load(path).dataobj).astype(np.int64)
    pred = np.roll(target, 2, axis=1)  # a prediction off by 2 voxels along the second axis
    spacing = (1.0, 2.0, 0.5)  # anisotropic on purpose: the code must follow axis order
    for lbl in (1, 2):
        p, t = pred == lbl, target == lbl
        d_pt, d_tp = _medpy_directed(p, t, spacing, 1), _medpy_directed(t, p, spacing, 1)
        expected = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
        assert hd95(p, t, spacing) == pytest.approx(expected, rel=1e-5)
        assert assd(p, t, spacing) == pytest.approx(mb.assd(p, t, spacing), rel=1e-5)

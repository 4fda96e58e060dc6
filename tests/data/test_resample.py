"""Resampling to a spacing and back: closed-form grids, exact on linear functions, labels kept
through nearest-neighbour round trips, the original geometry restored."""

from __future__ import annotations

import numpy as np
import pytest

from diffuseg.data.resample import (
    resample_case,
    resample_to_reference,
    resample_to_spacing,
    spacing_geometry,
)
from diffuseg.errors import ConfigError
from diffuseg.io import Geometry


def oblique_geometry(shape=(20, 16, 8)) -> Geometry:
    """A rotated grid with spacing (0.7, 1.3, 3.0) mm."""
    q, _ = np.linalg.qr(np.array([[0.9, -0.3, 0.1], [0.3, 0.95, 0.05], [-0.1, 0.0, 0.99]]))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag([0.7, 1.3, 3.0])
    affine[:3, 3] = [-10.5, 20.25, 33.3]
    return Geometry.from_affine(affine, shape)


def world(geometry: Geometry) -> np.ndarray:
    """RAS mm of every voxel centre, [*shape, 3]."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1)
    return index @ geometry.affine[:3, :3].T + geometry.affine[:3, 3]


def linear(points: np.ndarray) -> np.ndarray:
    return points @ np.array([0.3, -0.2, 0.5]) + 1.0


def test_target_grid_in_closed_form():
    geometry = oblique_geometry()
    target = spacing_geometry(geometry, (1.4, 0.65, 2.0))
    expected = geometry.affine @ np.diag([2.0, 0.5, 2.0 / 3.0, 1.0])
    np.testing.assert_allclose(target.affine, expected, atol=1e-12)
    np.testing.assert_allclose(target.spacing, (1.4, 0.65, 2.0))
    # n' = ceil((n - 1) s / s') + 1: ceil(19 * .7 / 1.4) = 10, 15 * 1.3 / .65 = 30, 7 * 3 / 2 = 10.5
    assert target.shape == (11, 31, 12)


def test_linear_function_is_reproduced_both_ways():
    geometry = oblique_geometry()
    image = linear(world(geometry))[None].astype(np.float32)
    fine, target = resample_to_spacing(image, geometry, (0.35, 0.65, 1.0), "bilinear")
    assert fine.shape == (1, 39, 31, 22) and fine.dtype == np.float32
    np.testing.assert_allclose(fine[0], linear(world(target)), atol=1e-4)
    back = resample_to_reference(fine, target.affine, geometry, "bilinear")
    np.testing.assert_allclose(back, image, atol=1e-4)


def ellipsoid(geometry: Geometry, radii: tuple[float, ...], centre: np.ndarray) -> np.ndarray:
    offset = (world(geometry) - centre) / np.array(radii)
    return (offset**2).sum(-1) <= 1.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_label_round_trip_keeps_raters_nested_and_labels():
    geometry = oblique_geometry((40, 24, 12))
    centre = world(geometry)[20, 12, 6]
    labels = np.zeros(geometry.shape, np.int64)
    labels[ellipsoid(geometry, (9.0, 10.0, 12.0), centre)] = 1
    labels[ellipsoid(geometry, (5.0, 6.0, 8.0), centre)] = 2
    raters = np.stack([labels, np.minimum(labels, 1) * (labels > 1)])  # rater 1 within rater 0
    image = labels[None].astype(np.float32)
    new_image, new_raters, target = resample_case(image, raters, geometry, (1.0, 1.0, 1.0))
    assert new_raters.dtype == np.int64 and set(np.unique(new_raters)) <= {0, 1, 2}
    assert new_image.shape[1:] == new_raters.shape[1:] == target.shape
    assert np.all(new_raters[1] <= (new_raters[0] > 0))  # one grid for all raters
    back = resample_to_reference(new_raters, target.affine, geometry, "nearest")
    assert back.shape == raters.shape and back.dtype == np.int64
    # Nearest-neighbour twice moves a boundary by at most one voxel of the coarser grid, so the
    # errors lie in a shell about one voxel thick: 1 - Dice is roughly surface / volume voxels.
    for k in (1, 2):
        assert dice(back[0] == k, raters[0] == k) > 0.9
    assert dice(back[0] > 0, raters[0] > 0) > 0.95
    # finer on every axis: the fine voxel nearest an old centre lies within half a fine voxel
    # of it, so its own nearest old voxel is that centre and the round trip is exact
    fine, target = resample_to_spacing(raters, geometry, (0.5, 0.5, 1.0), "nearest")
    np.testing.assert_array_equal(resample_to_reference(fine, target.affine, geometry,
                                                        "nearest"), raters)


def test_same_grid_is_identity_and_a_shift_moves_voxels():
    geometry = oblique_geometry((6, 5, 4))
    labels = np.arange(120).reshape(1, 6, 5, 4) % 7
    same = resample_to_reference(labels, geometry.affine, geometry, "nearest")
    np.testing.assert_array_equal(same, labels)
    values = np.random.default_rng(0).normal(size=(2, 6, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(resample_to_reference(values, geometry.affine, geometry,
                                                     "bilinear"), values, atol=1e-5)
    shifted = geometry.affine.copy()
    shifted[:3, 3] += 2 * geometry.affine[:3, 0]  # the array starts two voxels further along i
    moved = resample_to_reference(labels, shifted, geometry, "nearest")
    np.testing.assert_array_equal(moved[:, 2:], labels[:, :-2])
    np.testing.assert_array_equal(moved[:, :2], labels[:, :1].repeat(2, axis=1))  # border


def test_user_mistakes_are_config_errors():
    geometry = oblique_geometry((6, 5, 4))
    array = np.zeros((1, 6, 5, 4), np.float32)
    with pytest.raises(ConfigError, match="three positive numbers"):
        resample_to_spacing(array, geometry, (1.0, 0.0, 1.0), "bilinear")
    with pytest.raises(ConfigError, match="2D"):
        resample_to_spacing(array[..., 0], Geometry.identity((6, 5)), (1.0, 1.0), "nearest")
    with pytest.raises(ConfigError, match="'cubic' is unknown"):
        resample_to_spacing(array, geometry, (1.0, 1.0, 1.0), "cubic")
    with pytest.raises(ConfigError, match="does not fit geometry"):
        resample_to_spacing(array[:, :3], geometry, (1.0, 1.0, 1.0), "nearest")

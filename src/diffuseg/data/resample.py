"""Resample 3D cases to a target voxel spacing, and map predictions back onto the original grid.

A volume on a grid with affine A (voxel index -> RAS mm, ``Geometry.affine``), shape n and
spacing s (the lengths of A's columns) is resampled onto the grid with the same origin and axis
directions and spacing s' (``spacing_geometry``):

    A' = A diag(s'_1 / s_1, s'_2 / s_2, s'_3 / s_3, 1),   n'_d = ceil((n_d - 1) s_d / s'_d) + 1,

so the new grid covers every voxel centre of the old one, and mapping back never extrapolates.
The value at new voxel v is the old array interpolated at A^-1 A' v (MONAI ``SpatialResample``,
the resampler behind ``Spacing``); new voxels past the old extent (less than one new voxel)
take the nearest border value. Images use trilinear interpolation ("bilinear"), masks nearest
neighbour, so labels stay labels; all raters' masks are resampled together as the channels of
one array, onto one grid.

The inverse, ``resample_to_reference``, samples an array given on any grid (affine B) at the
voxels of a reference Geometry G: the value at u is the array interpolated at B^-1 G.affine u.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from diffuseg.errors import ConfigError
from diffuseg.io import Geometry

Mode = Literal["bilinear", "nearest"]


def _meta(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    data = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
    return MetaTensor(data, affine=torch.as_tensor(np.asarray(affine, dtype=np.float64)))


def _restore(result: torch.Tensor, like: np.ndarray, mode: Mode) -> np.ndarray:
    """float32 for interpolated values; the input's dtype (rounded) for nearest-neighbour."""
    out = result.detach().cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)
    if mode == "nearest" and like.dtype.kind in "iub":
        return np.round(out).astype(like.dtype)
    return out.astype(np.float32)


def _check(geometry: Geometry, spacing: Sequence[float]) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if geometry.spatial_dims != 3 or len(spacing) != 3 or min(spacing) <= 0:
        raise ConfigError(f"data.spacing={list(spacing)} must be three positive numbers (mm) "
                          f"for 3D data; this case is {geometry.spatial_dims}D {geometry.shape}")
    return spacing


def spacing_geometry(geometry: Geometry, spacing: Sequence[float]) -> Geometry:
    """The grid of ``spacing`` (mm) with ``geometry``'s origin and axes (module docstring)."""
    target = np.array(_check(geometry, spacing))
    scale = target / np.array(geometry.spacing)
    affine = geometry.affine @ np.diag([*scale, 1.0])
    extent = (np.array(geometry.shape) - 1) / scale
    shape = tuple(int(np.ceil(e - 1e-6)) + 1 for e in extent)
    return Geometry.from_affine(affine, shape, geometry.kind)


def resample_to_spacing(array: np.ndarray, geometry: Geometry, spacing: Sequence[float],
                        mode: Mode) -> tuple[np.ndarray, Geometry]:
    """``array [C, X, Y, Z]`` on ``geometry`` -> the same on the grid of ``spacing`` (mm), and
    that grid's Geometry (module docstring). Integer arrays with "nearest" keep their dtype."""
    if tuple(array.shape[1:]) != geometry.shape:
        raise ConfigError(f"array {array.shape} does not fit geometry {geometry.shape}; pass "
                          "[C, *spatial] with the geometry of this array")
    target = spacing_geometry(geometry, spacing)
    return resample_to_reference(array, geometry.affine, target, mode), target


def resample_case(image: np.ndarray, raters: np.ndarray, geometry: Geometry,
                  spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """A case ``image [C, *sp]`` (trilinear) and ``raters [R, *sp]`` (nearest, all raters in
    one call) resampled onto the one grid of ``spacing``; returns both and that Geometry."""
    new_image, target = resample_to_spacing(image, geometry, spacing, "bilinear")
    if raters.shape[0] == 0:
        return new_image, np.zeros((0, *target.shape), raters.dtype), target
    return new_image, resample_to_reference(raters, geometry.affine, target, "nearest"), target


def resample_to_reference(array: np.ndarray, from_affine: np.ndarray, to_geometry: Geometry,
                          mode: Mode) -> np.ndarray:
    """``array [C, *sp]`` whose voxels lie at ``from_affine`` sampled at the voxels of
    ``to_geometry``: ``[C, *to_geometry.shape]``. Use it to put predictions made on a resampled
    grid back onto the input's grid ("bilinear" for probabilities, "nearest" for labels)."""
    if mode not in ("bilinear", "nearest"):
        raise ConfigError(f"resampling mode '{mode}' is unknown; use 'bilinear' or 'nearest'")
    if array.ndim != to_geometry.spatial_dims + 1:
        raise ConfigError(f"array {array.shape} must be [C, *spatial] with "
                          f"{to_geometry.spatial_dims} spatial axes like '{to_geometry.shape}'")
    out = SpatialResample(mode=mode, padding_mode="border")(
        _meta(array, from_affine), dst_affine=torch.as_tensor(to_geometry.affine),
        spatial_size=to_geometry.shape)
    return _restore(out.as_tensor() if isinstance(out, MetaTensor) else out, array, mode)

"""Surface-distance metrics in physical units (HD95, ASSD), wrapping MONAI's implementation.

Surfaces are the mask voxels removed by one binary erosion with the face-connected structuring
element (``mask XOR erode(mask)``, outside the image counts as background); distances are Euclidean
between voxel centres, scaled per axis by ``spacing`` (mm per voxel, same axis order as the array;
``None`` is unit spacing, i.e. voxels). This is what MONAI's ``compute_hausdorff_distance`` and
``compute_average_surface_distance`` do, and what medpy's ``__surface_distances`` does.

Empty masks (see docs/metrics.md): both empty -> 0.0; exactly one empty -> NaN, or
``empty_penalty`` when given (e.g. ``image_diagonal(shape, spacing)``, the extent of the field
of view in mm: a finite worst case that keeps means defined).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from diffuseg.errors import DataError
from diffuseg.metrics.overlap import ArrayLike, _binarise, _check_same_shape

BOTH_EMPTY_VALUE = 0.0  # surface distance of two empty masks


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Length of the image's field-of-view diagonal ``sqrt(sum_i (n_i * s_i)^2)`` in physical
    units: an upper bound of any surface distance, usable as ``empty_penalty``."""
    s = _check_spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * si) ** 2 for n, si in zip(shape, s, strict=True))))


def _check_spacing(spacing: Sequence[float] | float | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, (int, float)):
        spacing = (float(spacing),) * ndim
    s = tuple(float(v) for v in np.asarray(spacing, dtype=np.float64).reshape(-1))
    if len(s) != ndim or not all(v > 0 and math.isfinite(v) for v in s):
        raise DataError(
            f"spacing {tuple(spacing)} does not fit a {ndim}-D mask: give {ndim} positive "
            "values in mm, in the array's axis order"
        )
    return s


def _prepare(
    pred: ArrayLike, target: ArrayLike, spacing: Sequence[float] | float | None, threshold: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    p = _binarise(pred, threshold, "pred")
    t = _binarise(target, threshold, "target")
    _check_same_shape(p, t)
    if p.ndim not in (2, 3):
        raise DataError(f"surface metrics take one 2-D or 3-D mask, got shape {p.shape}")
    return p, t, _check_spacing(spacing, p.ndim)


def _empty_case(p: np.ndarray, t: np.ndarray, empty_penalty: float | None) -> float | None:
    """The conventional value when a mask is empty, else None (compute the distance)."""
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return BOTH_EMPTY_VALUE
    if p_any != t_any:
        return float("nan") if empty_penalty is None else float(empty_penalty)
    return None


@contextlib.contextmanager
def _quiet_monai() -> Iterator[None]:
    """Silence MONAI's empty-mask warnings (empty masks never reach it) and the deprecation
    notice its own surface code raises about ``always_return_as_numpy``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is all 0, this may result in nan/inf.*")
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        yield


def _onehot(mask: np.ndarray) -> torch.Tensor:
    """``[*spatial]`` bool -> ``[1, 1, *spatial]`` float, MONAI's batch-first one-hot layout."""
    return torch.from_numpy(mask[None, None].astype(np.float32))


def hausdorff(
    pred: ArrayLike,
    target: ArrayLike,
    spacing: Sequence[float] | float | None = None,
    *,
    percentile: float = 100.0,
    threshold: float = 0.5,
    empty_penalty: float | None = None,
) -> float:
    """Symmetric (percentile) Hausdorff distance, MONAI's definition:

    ``HD_q = max(P_q{d(x, ∂T) : x ∈ ∂P}, P_q{d(y, ∂P) : y ∈ ∂T})``

    with ``P_q`` the q-th percentile (linear interpolation), ``∂`` the surface voxels. Note that
    medpy's ``hd95`` pools both directions before the percentile, so it can differ.
    """
    p, t, s = _prepare(pred, target, spacing, threshold)
    if not 0.0 < percentile <= 100.0:
        raise DataError(f"percentile {percentile} is out of range: give a value in (0, 100]")
    conv = _empty_case(p, t, empty_penalty)
    if conv is not None:
        return conv
    with _quiet_monai():
        out = compute_hausdorff_distance(
            _onehot(p), _onehot(t), include_background=True, percentile=percentile, spacing=list(s)
        )
    return float(out.reshape(-1)[0])


def hd95(
    pred: ArrayLike,
    target: ArrayLike,
    spacing: Sequence[float] | float | None = None,
    *,
    threshold: float = 0.5,
    empty_penalty: float | None = None,
) -> float:
    """95th-percentile symmetric Hausdorff distance (see ``hausdorff``), in units of ``spacing``."""
    return hausdorff(
        pred, target, spacing, percentile=95.0, threshold=threshold, empty_penalty=empty_penalty
    )


def assd(
    pred: ArrayLike,
    target: ArrayLike,
    spacing: Sequence[float] | float | None = None,
    *,
    threshold: float = 0.5,
    empty_penalty: float | None = None,
) -> float:
    """Average symmetric surface distance (Heimann et al. 2009), MONAI's ``symmetric=True``:

    ``ASSD = (Σ_{x∈∂P} d(x, ∂T) + Σ_{y∈∂T} d(y, ∂P)) / (|∂P| + |∂T|)``

    i.e. the mean over the pooled distances of both surfaces (medpy's ``assd`` is the same).
    """
    p, t, s = _prepare(pred, target, spacing, threshold)
    conv = _empty_case(p, t, empty_penalty)
    if conv is not None:
        return conv
    with _quiet_monai():
        out = compute_average_surface_distance(
            _onehot(p), _onehot(t), include_background=True, symmetric=True, spacing=list(s)
        )
    return float(out.reshape(-1)[0])

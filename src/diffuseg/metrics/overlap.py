"""Overlap metrics: Dice and IoU of binary masks, pairwise matrices, and a one-vs-rest helper.

A mask is any array (NumPy or torch) of shape ``[*spatial]`` (or a stack treated as one region);
probabilities are binarised as ``x > threshold``, booleans are used as they are. Both masks empty
is a perfect agreement by convention: the score is ``empty_value`` (1.0 unless asked otherwise;
see docs/metrics.md and ``diffuseg.metrics.CONVENTIONS``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from diffuseg.errors import DataError

ArrayLike = np.ndarray | torch.Tensor

EMPTY_VALUE = 1.0  # score of two empty masks (Dice, IoU, HM-IoU pairs, CI components)


def _as_numpy(x: ArrayLike | Any, name: str = "input") -> np.ndarray:
    """A NumPy view of a NumPy array, torch tensor (any device/dtype) or nested sequence."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name}: cannot convert {type(x).__name__} to an array ({e})") from e


def _binarise(x: ArrayLike, threshold: float = 0.5, name: str = "mask") -> np.ndarray:
    """Boolean mask: booleans unchanged, anything else ``x > threshold``."""
    a = _as_numpy(x, name)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{name}: expected a numeric or boolean mask, got dtype {a.dtype}")
    return a > threshold


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: str = "pred and target") -> None:
    if a.shape != b.shape:
        raise DataError(f"{names} must have the same shape, got {a.shape} and {b.shape}")


def dice(
    pred: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, empty_value: float = EMPTY_VALUE
) -> float:
    """Sørensen-Dice coefficient ``2|P ∩ T| / (|P| + |T|)``, both binarised at ``threshold``.

    Returns ``empty_value`` when both masks are empty (0/0).
    """
    p = _binarise(pred, threshold, "pred")
    t = _binarise(target, threshold, "target")
    _check_same_shape(p, t)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return float(empty_value)
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


def iou(
    pred: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, empty_value: float = EMPTY_VALUE
) -> float:
    """Intersection over union (Jaccard index) ``|P ∩ T| / |P ∪ T|``, binarised at ``threshold``.

    Returns ``empty_value`` when both masks are empty (0/0).
    """
    p = _binarise(pred, threshold, "pred")
    t = _binarise(target, threshold, "target")
    _check_same_shape(p, t)
    union = int(np.logical_or(p, t).sum())
    if union == 0:
        return float(empty_value)
    return int(np.logical_and(p, t).sum()) / union


def per_class(
    fn: Callable[..., float],
    pred_labels: ArrayLike,
    target_labels: ArrayLike,
    labels: Sequence[int],
    **kwargs: Any,
) -> dict[int, float]:
    """``{label: fn(pred_labels == label, target_labels == label, **kwargs)}`` (one-vs-rest).

    Works for any metric taking two boolean arrays (Dice, HD95 with ``spacing=...``, and the
    distribution metrics with stacks ``[S, *spatial]`` / ``[R, *spatial]``). Only the labels listed
    are computed: background (0) counts only if it is listed.
    """
    p = _as_numpy(pred_labels, "pred_labels")
    t = _as_numpy(target_labels, "target_labels")
    if len(labels) == 0:
        raise DataError(
            "per_class: `labels` is empty; list the label values to evaluate, e.g. [1, 2]"
        )
    return {int(lbl): float(fn(p == lbl, t == lbl, **kwargs)) for lbl in labels}


def _flat_stacks(
    a: ArrayLike, b: ArrayLike, threshold: float, names: tuple[str, str] = ("a", "b")
) -> tuple[np.ndarray, np.ndarray]:
    """Two stacks ``[A, *spatial]``, ``[B, *spatial]`` -> boolean ``[A, P]``, ``[B, P]``."""
    x = _binarise(a, threshold, names[0])
    y = _binarise(b, threshold, names[1])
    for arr, name in ((x, names[0]), (y, names[1])):
        if arr.ndim < 2 or arr.shape[0] == 0:
            raise DataError(
                f"{name}: expected a non-empty stack [N, *spatial], got shape {arr.shape}"
            )
    if x.shape[1:] != y.shape[1:]:
        raise DataError(
            f"{names[0]} and {names[1]} must have the same spatial shape, "
            f"got {x.shape[1:]} and {y.shape[1:]}"
        )
    return x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)


def _pairwise_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersections ``[A, B]`` and sizes ``[A]``, ``[B]`` of boolean stacks ``[A, P]``, ``[B, P]``.

    One float64 matmul over the pixels that are foreground in at least one mask (exact counts).
    """
    assert a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1]
    keep = a.any(axis=0) | b.any(axis=0)
    af = a[:, keep].astype(np.float64)
    bf = b[:, keep].astype(np.float64)
    return af @ bf.T, af.sum(axis=1), bf.sum(axis=1)


def pairwise_iou(
    a: ArrayLike, b: ArrayLike, *, threshold: float = 0.5, empty_value: float = EMPTY_VALUE
) -> np.ndarray:
    """IoU matrix ``M[i, j] = IoU(a_i, b_j)`` of stacks ``[A, *spatial]`` and ``[B, *spatial]``.

    Both empty -> ``empty_value``.
    """
    fa, fb = _flat_stacks(a, b, threshold)
    inter, sa, sb = _pairwise_counts(fa, fb)
    union = sa[:, None] + sb[None, :] - inter
    out = np.full(inter.shape, float(empty_value))
    np.divide(inter, union, out=out, where=union > 0)
    return out


def pairwise_dice(
    a: ArrayLike, b: ArrayLike, *, threshold: float = 0.5, empty_value: float = EMPTY_VALUE
) -> np.ndarray:
    """Dice matrix ``M[i, j] = Dice(a_i, b_j)`` of two stacks; both empty -> ``empty_value``."""
    fa, fb = _flat_stacks(a, b, threshold)
    inter, sa, sb = _pairwise_counts(fa, fb)
    denom = sa[:, None] + sb[None, :]
    out = np.full(inter.shape, float(empty_value))
    np.divide(2.0 * inter, denom, out=out, where=denom > 0)
    return out

"""Ambiguity metrics comparing a set of samples ``S`` ``[S, *spatial]`` with a set of rater masks
``Y`` ``[R, *spatial]``: the generalised energy distance, Hungarian-matched IoU and CIMD's
Collective Insight score. Masks are binarised at ``threshold`` (booleans unchanged); with
``labels``, inputs are label maps and each label is taken one-vs-rest. All pairwise overlaps come
from one matmul on the flattened masks (``overlap.pairwise_iou`` / ``pairwise_dice``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from diffuseg.errors import DataError
from diffuseg.metrics.overlap import (
    ArrayLike,
    _as_numpy,
    _flat_stacks,
    pairwise_dice,
    pairwise_iou,
)

PairwiseDistance = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``d(A [A, P] bool, B [B, P] bool) -> [A, B]`` distance matrix."""


def iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``d(a_i, b_j) = 1 - IoU(a_i, b_j)``, with ``d(empty, empty) = 0`` (IoU = 1)."""
    return 1.0 - pairwise_iou(a, b, empty_value=1.0)


def _label_stacks(
    samples: ArrayLike, raters: ArrayLike, labels: Sequence[int] | None, threshold: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One ``(S [S, P] bool, Y [R, P] bool)`` pair per label (one pair when ``labels`` is None)."""
    if labels is None:
        return [_flat_stacks(samples, raters, threshold, ("samples", "raters"))]
    if len(labels) == 0:
        raise DataError("`labels` is empty: list the label values to evaluate, e.g. [1, 2]")
    s, y = _as_numpy(samples, "samples"), _as_numpy(raters, "raters")
    return [_flat_stacks(s == lbl, y == lbl, threshold, ("samples", "raters")) for lbl in labels]


def ged(
    samples: ArrayLike,
    raters: ArrayLike,
    *,
    d: PairwiseDistance = iou_distance,
    labels: Sequence[int] | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Generalised energy distance (Kohl et al. 2018; Székely & Rizzo 2013), squared form:

    ``D²_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]``

    Each expectation is the mean over ALL pairs of the finite sets, including ``i = j`` (the
    LIDC convention of the Probabilistic U-Net and PHiSeg code). The value returned as ``"ged"`` is
    this ``D²_GED``: what those papers' tables and code report as "GED" (no square root taken).
    With ``labels``, ``d`` is averaged over labels (PHiSeg's multi-class ``1 - mean_l IoU_l``).

    Returns ``{"ged", "cross": E[d(S,Y)], "sample_diversity": E[d(S,S')],
    "rater_diversity": E[d(Y,Y')]}``.
    """
    pairs = _label_stacks(samples, raters, labels, threshold)
    d_sy = np.mean([d(s, y) for s, y in pairs], axis=0)
    d_ss = np.mean([d(s, s) for s, _ in pairs], axis=0)
    d_yy = np.mean([d(y, y) for _, y in pairs], axis=0)
    cross, div_s, div_y = float(d_sy.mean()), float(d_ss.mean()), float(d_yy.mean())
    return {
        "ged": 2.0 * cross - div_s - div_y,
        "cross": cross,
        "sample_diversity": div_s,
        "rater_diversity": div_y,
    }


def hm_iou(
    samples: ArrayLike,
    raters: ArrayLike,
    *,
    labels: Sequence[int] | None = None,
    threshold: float = 0.5,
) -> float:
    """Hungarian-matched IoU (Kohl et al. 2019), with both sets repeated to a common multiple.

    With ``L = lcm(S, R)``, samples are repeated ``L/S`` times and raters ``L/R`` times; the
    one-to-one matching ``π`` minimising ``Σ 1 - IoU`` (``scipy.optimize.linear_sum_assignment``)
    gives ``HM-IoU = (1/L) Σ_i IoU(s_i, y_π(i))``. ``IoU(empty, empty) = 1``. With ``labels``,
    the IoU of a pair is the mean of its per-label IoUs.
    """
    pairs = _label_stacks(samples, raters, labels, threshold)
    m = np.mean([pairwise_iou(s, y, empty_value=1.0) for s, y in pairs], axis=0)  # [S, R]
    n_s, n_r = m.shape
    lcm = n_s * n_r // math.gcd(n_s, n_r)
    tiled = np.tile(m, (lcm // n_s, lcm // n_r))  # row i is sample i % S, column j rater j % R
    rows, cols = linear_sum_assignment(1.0 - tiled)
    return float(tiled[rows, cols].mean())


def _pairwise_dice_distances(x: np.ndarray) -> np.ndarray:
    """``{1 - Dice(x_i, x_j) : i < j}`` of a stack ``[N, P]``; Dice(empty, empty) = 1."""
    dm = 1.0 - pairwise_dice(x, x, empty_value=1.0)
    return dm[np.triu_indices(x.shape[0], k=1)]


def ci_score(samples: ArrayLike, raters: ArrayLike, *, threshold: float = 0.5) -> dict[str, float]:
    """Collective Insight score of CIMD (Rahman et al., CVPR 2023), binary masks.

    - combined sensitivity ``S_c = |∪S ∩ ∪Y| / |∪Y|`` (unions over samples and raters);
      ``S_c = 1`` when ``∪Y`` is empty (nothing to miss).
    - maximum Dice matching ``D_max = (1/R) Σ_j max_i Dice(y_j, s_i)``; Dice(empty, empty) = 1.
    - diversity agreement ``D_a = 1 - (|max V_Y - max V_S| + |min V_Y - min V_S|) / 2`` where
      ``V_X = {1 - Dice(x_i, x_k) : i < k}`` are the pairwise Dice distances within a set (our
      reading of the paper's "variance between pairs"; see docs/metrics.md). Needs S, R >= 2.
    - ``CI = 3 S_c D_max D_a / (S_c + D_max + D_a)`` as printed in the paper (``"ci"``; 0 when
      all three are 0), and the true harmonic mean ``3 / (1/S_c + 1/D_max + 1/D_a)``
      (``"harmonic_mean"``; 0 when any is 0). They agree when all three equal 1.
    """
    s, y = _flat_stacks(samples, raters, threshold, ("samples", "raters"))
    if s.shape[0] < 2 or y.shape[0] < 2:
        raise DataError(
            f"ci_score needs at least 2 samples and 2 raters for the diversity agreement, got "
            f"{s.shape[0]} samples and {y.shape[0]} raters"
        )
    union_s, union_y = s.any(axis=0), y.any(axis=0)
    n_y = int(union_y.sum())
    s_c = 1.0 if n_y == 0 else int((union_s & union_y).sum()) / n_y
    d_max = float(pairwise_dice(y, s, empty_value=1.0).max(axis=1).mean())
    v_y, v_s = _pairwise_dice_distances(y), _pairwise_dice_distances(s)
    d_a = 1.0 - (abs(v_y.max() - v_s.max()) + abs(v_y.min() - v_s.min())) / 2.0
    parts = (s_c, d_max, float(d_a))
    total = sum(parts)
    ci = 3.0 * s_c * d_max * d_a / total if total > 0 else 0.0
    harmonic = 0.0 if min(parts) <= 0 else 3.0 / sum(1.0 / v for v in parts)
    return {
        "ci": float(ci),
        "harmonic_mean": float(harmonic),
        "combined_sensitivity": float(s_c),
        "max_dice": d_max,
        "diversity_agreement": float(d_a),
    }


def reference_masks(raters: ArrayLike, labels: Sequence[int] | None = None
                    ) -> dict[str, np.ndarray]:
    """The one definition of the trivial references' masks: ``"empty"`` and ``"majority"`` (the
    raters' majority, ``diffuseg.core.consensus.majority``; binary masks when ``labels`` is None,
    else label maps over ``max(labels) + 1`` labels)."""
    from diffuseg.core.consensus import majority

    y = np.asarray(raters).astype(np.int64)
    reference = (majority((y > 0).astype(np.int64), 2) > 0 if labels is None
                 else majority(y, max(labels) + 1))
    return {"empty": np.zeros_like(reference), "majority": reference}


def trivial_references(raters: ArrayLike, n_samples: int, *,
                       labels: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """GED and HM-IoU of the two predictors that learned nothing, the bar every model must clear:

    - ``"empty"``: always the empty mask (what a model that predicts nothing scores);
    - ``"majority"``: the raters' own majority mask (``diffuseg.core.consensus.majority``)
      repeated ``n_samples`` times: the best a model can do without drawing different masks.
      With one rater it is the reference itself (GED 0, HM-IoU 1), no bar for a model.

    Both repeated ``n_samples`` times so that they are scored like ``n_samples`` samples.
    ``raters``: ``[R, *spatial]`` label maps (binary: > 0 is foreground; with ``labels``, one
    stack per label, as ``ged`` and ``hm_iou``)."""
    y = np.asarray(raters)
    if labels is None:
        y = y > 0
    by_label = {} if labels is None else {"labels": list(labels)}
    out = {}
    for name, mask in reference_masks(raters, labels).items():
        stack = np.repeat(mask[None], n_samples, axis=0)
        out[name] = {"ged": float(ged(stack, y, **by_label)["ged"]),
                     "hm_iou": float(hm_iou(stack, y, **by_label))}
    return out

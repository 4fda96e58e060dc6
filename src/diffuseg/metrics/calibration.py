"""Calibration and uncertainty-quality metrics: ECE and reliability curves against the rater-mean
(soft) mask, PHiSeg's S_NCC, the variance-vs-rater-variance NCC, and the uncertainty-error overlap.

Binary throughout: ``prob`` is the per-pixel FOREGROUND probability (e.g. the mean of the samples)
and is binned as it is (not the max-class confidence); the target is the rater mean, the fraction
of raters marking the pixel. For K classes call these per class on that class's probability.
"""

from __future__ import annotations

import numpy as np

from diffuseg.errors import DataError
from diffuseg.metrics.overlap import (
    ArrayLike,
    _as_numpy,
    _binarise,
    _check_same_shape,
    dice,
)


def _probabilities(x: ArrayLike, name: str) -> np.ndarray:
    a = _as_numpy(x, name).astype(np.float64)
    if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
        raise DataError(f"{name}: expected probabilities in [0, 1], got [{a.min()}, {a.max()}]")
    return a


def _bin_sums(
    prob: ArrayLike, target_prob: ArrayLike, n_bins: int, mask: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin counts, Σ prob and Σ target over equal-width bins ``[k/B, (k+1)/B)``, the last
    bin closed."""
    if n_bins < 1:
        raise DataError(f"n_bins must be >= 1, got {n_bins}")
    p, t = _probabilities(prob, "prob"), _probabilities(target_prob, "target_prob")
    _check_same_shape(p, t, "prob and target_prob")
    if mask is not None:
        m = _binarise(mask, 0.5, "mask")
        _check_same_shape(p, m, "prob and mask")
        p, t = p[m], t[m]
    p, t = p.reshape(-1), t.reshape(-1)
    if p.size == 0:
        raise DataError("calibration needs at least one pixel; the mask selects none")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    return counts, np.bincount(idx, p, n_bins), np.bincount(idx, t, n_bins)


def ece(
    prob: ArrayLike, target_prob: ArrayLike, n_bins: int = 10, *, mask: ArrayLike | None = None
) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017) per pixel:

    ``ECE = Σ_b (n_b / N) |mean_{i∈b} p_i - mean_{i∈b} t_i|``

    ``p`` the foreground probability, ``t`` the rater-mean mask, ``B = n_bins`` equal-width bins
    of ``p``, ``N`` the pixels (all pixels, or those in ``mask``: background pixels usually
    dominate and are well calibrated, so a region of interest gives a more telling number).
    """
    counts, sum_p, sum_t = _bin_sums(prob, target_prob, n_bins, mask)
    return float(np.abs(sum_p - sum_t).sum() / counts.sum())


def reliability_curve(
    prob: ArrayLike, target_prob: ArrayLike, n_bins: int = 10, *, mask: ArrayLike | None = None
) -> dict[str, list[float] | list[int]]:
    """The data of a reliability diagram with the bins of ``ece``: ``bin_centres``,
    ``mean_predicted`` and ``mean_observed`` per bin (NaN for an empty bin) and ``counts``."""
    counts, sum_p, sum_t = _bin_sums(prob, target_prob, n_bins, mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, mean_t = sum_p / counts, sum_t / counts
    return {
        "bin_centres": ((np.arange(n_bins) + 0.5) / n_bins).tolist(),
        "mean_predicted": mean_p.tolist(),
        "mean_observed": mean_t.tolist(),
        "counts": counts.astype(int).tolist(),
    }


def ncc(a: ArrayLike, b: ArrayLike) -> float:
    """Normalised cross-correlation (Pearson's r over pixels, population std):
    ``mean((a - ā)(b - b̄)) / (σ_a σ_b)``; NaN when either map is constant."""
    x = _as_numpy(a, "a").astype(np.float64).reshape(-1)
    y = _as_numpy(b, "b").astype(np.float64).reshape(-1)
    _check_same_shape(x, y, "the two maps")
    x, y = x - x.mean(), y - y.mean()
    sx, sy = np.sqrt((x * x).mean()), np.sqrt((y * y).mean())
    tiny = 1e-12
    if sx <= tiny or sy <= tiny:
        return float("nan")
    return float((x * y).mean() / (sx * sy))


def s_ncc_categorical(samples: ArrayLike, raters: ArrayLike, *, eps: float = 1e-8) -> float:
    """PHiSeg's S_NCC (Baumgartner et al., MICCAI 2019) for class probabilities:

    ``S_NCC = E_y[ NCC( E_s[CE(s̄, s)], E_s[CE(y, s)] ) ]``,  ``CE(a, s) = -Σ_k a_k log(s_k + eps)``

    ``samples`` ``[S, K, *spatial]`` (softmax outputs or one-hot), ``raters`` ``[R, K, *spatial]``
    one-hot, ``s̄`` the sample mean; ``E_y`` the mean over raters. As in the authors' code
    (``utils.variance_ncc_dist``), ``eps = 1e-8``. NaN when a map is constant.
    """
    s = _probabilities(samples, "samples")
    y = _probabilities(raters, "raters")
    if s.ndim < 3 or s.shape[1:] != y.shape[1:]:
        raise DataError(
            f"samples [S, K, *spatial] and raters [R, K, *spatial] must agree, got {s.shape} "
            f"and {y.shape}"
        )
    s = s.reshape(s.shape[0], s.shape[1], -1)
    y = y.reshape(y.shape[0], y.shape[1], -1)
    mean_log = np.log(s + eps).mean(axis=0)  # E_s[log s_k], [K, P]
    e_ss = -(s.mean(axis=0) * mean_log).sum(axis=0)  # E_s[CE(s̄, s)], [P]
    e_sy = -(y * mean_log[None]).sum(axis=1)  # E_s[CE(y_j, s)], [R, P]
    return float(np.mean([ncc(e_ss, e) for e in e_sy]))


def s_ncc(samples: ArrayLike, raters: ArrayLike, *, eps: float = 1e-8) -> float:
    """S_NCC for binary masks: ``samples`` ``[S, *spatial]`` foreground probabilities (soft or
    hard), ``raters`` ``[R, *spatial]`` in {0, 1}; both expanded to two classes ``[1-p, p]``
    and passed to ``s_ncc_categorical``."""
    s = _probabilities(samples, "samples")
    y = _probabilities(raters, "raters")
    return s_ncc_categorical(np.stack([1 - s, s], axis=1), np.stack([1 - y, y], axis=1), eps=eps)


def variance_ncc(uncertainty: ArrayLike, raters: ArrayLike) -> float:
    """``NCC(u, Var_R[y])``: a predicted uncertainty map ``[*spatial]`` (e.g. the sample
    variance) against the per-pixel rater variance ``Var_R[y]`` of ``raters`` ``[R, *spatial]``
    (``m (1 - m)`` for binary raters, ``m`` the rater mean)."""
    y = _probabilities(raters, "raters")
    u = _as_numpy(uncertainty, "uncertainty")
    _check_same_shape(u, y[0], "uncertainty and each rater mask")
    m = y.mean(axis=0)
    return ncc(u, ((y - m) ** 2).mean(axis=0))


def uncertainty_error_overlap(
    uncertainty: ArrayLike,
    pred: ArrayLike,
    target: ArrayLike,
    threshold: float,
    *,
    pred_threshold: float = 0.5,
    empty_value: float = 1.0,
) -> float:
    """Uncertainty-error overlap (Jungo & Reyes 2019): ``Dice(u > threshold, P xor T)`` with
    ``P``, ``T`` binarised at ``pred_threshold``; ``empty_value`` when there is neither error nor
    uncertain pixel."""
    u = _as_numpy(uncertainty, "uncertainty") > threshold
    p, t = _binarise(pred, pred_threshold, "pred"), _binarise(target, pred_threshold, "target")
    _check_same_shape(p, t)
    _check_same_shape(u, p, "uncertainty and pred")
    return dice(u, p ^ t, empty_value=empty_value)

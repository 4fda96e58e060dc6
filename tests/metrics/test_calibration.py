"""ECE, reliability curves, S_NCC and the uncertainty-error overlap on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffuseg.errors import DataError
from diffuseg.metrics import (
    ece,
    ncc,
    reliability_curve,
    s_ncc,
    s_ncc_categorical,
    uncertainty_error_overlap,
    variance_ncc,
)


def test_ece_perfectly_calibrated_is_zero() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((5, 6))
    assert ece(p, p) == pytest.approx(0.0, abs=1e-15)
    # calibrated within a bin: p = 0.25 on four pixels, one of which the raters mark
    assert ece(np.full(4, 0.25), np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.0, abs=1e-15)


def test_ece_constant_overconfidence_and_two_bins_by_hand() -> None:
    assert ece(np.full((3, 4, 2), 0.95), np.full((3, 4, 2), 0.75)) == pytest.approx(0.2)
    p = np.array([0.9, 0.9, 0.1, 0.1])
    t = np.array([1.0, 0.5, 0.0, 0.0])
    # bin 9: |0.9 - 0.75| * 2/4; bin 1: |0.1 - 0| * 2/4
    assert ece(p, t) == pytest.approx(0.125)
    assert ece(torch.tensor(p), torch.tensor(t), mask=np.array([1, 1, 0, 0])) == pytest.approx(0.15)


def test_reliability_curve_bins_counts_and_edges() -> None:
    p = np.array([0.0, 0.05, 0.1, 0.55, 1.0, 1.0])
    t = np.array([0.0, 0.0, 1.0, 0.5, 1.0, 0.5])
    out = reliability_curve(p, t, n_bins=4)
    assert out["bin_centres"] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert out["counts"] == [3, 0, 1, 2]  # [0, .25) holds 0, .05, .1; 1.0 in the last bin
    assert out["mean_predicted"][0] == pytest.approx(0.05)
    assert out["mean_observed"][0] == pytest.approx(1 / 3)
    assert math.isnan(out["mean_predicted"][1]) and math.isnan(out["mean_observed"][1])
    assert out["mean_observed"][3] == pytest.approx(0.75)
    weighted = sum(
        c / 6 * abs(mp - mo)
        for c, mp, mo in zip(
            out["counts"], out["mean_predicted"], out["mean_observed"], strict=True
        )
        if c
    )
    assert ece(p, t, n_bins=4) == pytest.approx(weighted)


def test_calibration_input_errors() -> None:
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ece(np.array([1.2, 0.1]), np.array([1.0, 0.0]))
    with pytest.raises(DataError, match="same shape"):
        ece(np.zeros(3), np.zeros(4))
    with pytest.raises(DataError, match="n_bins"):
        ece(np.zeros(3), np.zeros(3), n_bins=0)


def test_s_ncc_hand_case() -> None:
    # hard samples: CE(s_bar, s_i) = L (1 - s_bar[class of s_i]), L = -log(eps), so
    # E_s[CE(s_bar, s)] = 2 L p (1 - p) and E_s[CE(y, s)] = L |y - p|, p the sample mean
    samples = np.array([[1, 1, 0, 0], [1, 0, 0, 1]], float)  # p = [1, 1/2, 0, 1/2]
    raters = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], float)
    # rater 1: corr([0, 1/4, 0, 1/4], [0, 1/2, 0, 1/2]) = 1
    # rater 2: corr([0, 1/4, 0, 1/4], [1, 1/2, 0, 1/2]) = 0  -> S_NCC = 1/2
    assert s_ncc(samples, raters) == pytest.approx(0.5, abs=1e-6)


def _s_ncc_loops(samples: np.ndarray, raters: np.ndarray, eps: float = 1e-8) -> float:
    """Reference: PHiSeg's published algorithm with explicit loops, classes on the LAST axis."""
    mean_seg = samples.mean(axis=0)

    def xent(m_samp: np.ndarray, m_gt: np.ndarray) -> np.ndarray:
        return -np.sum(m_gt * np.log(m_samp + eps), axis=-1)

    e_ss = np.mean([xent(s, mean_seg) for s in samples], axis=0)
    nccs = []
    for y in raters:
        e_sy = np.mean([xent(s, y) for s in samples], axis=0)
        a = (e_ss - e_ss.mean()) / (e_ss.std() * e_ss.size)
        v = (e_sy - e_sy.mean()) / e_sy.std()
        nccs.append(float(np.sum(a * v)))
    return float(np.mean(nccs))


def test_s_ncc_categorical_matches_loop_reference() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 7, 8, 3))
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # [S, X, Y, K]
    raters = np.eye(3)[rng.integers(0, 3, size=(4, 7, 8))]  # one-hot [R, X, Y, K]
    expected = _s_ncc_loops(soft, raters)
    ours = s_ncc_categorical(np.moveaxis(soft, -1, 1), np.moveaxis(raters, -1, 1))
    assert ours == pytest.approx(expected, rel=1e-9)


def test_s_ncc_is_nan_without_predicted_uncertainty() -> None:
    samples = np.stack([np.array([1.0, 0.0, 1.0, 0.0])] * 3)
    raters = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    assert math.isnan(s_ncc(samples, raters))


def test_ncc_and_variance_ncc() -> None:
    rng = np.random.default_rng(2)
    a = rng.random((4, 5))
    assert ncc(a, 2 * a + 3) == pytest.approx(1.0)
    assert ncc(a, -a) == pytest.approx(-1.0)
    assert math.isnan(ncc(a, np.ones_like(a)))
    raters = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], float)  # rater variance [0, 1/4, 0, 0]
    assert variance_ncc(np.array([0.0, 0.2, 0.0, 0.0]), raters) == pytest.approx(1.0)
    # u = [0, 0, 1, 0] vs v = [0, 1/4, 0, 0]: mean centred product -1/64, stds sqrt(3)/4, sqrt(3)/16
    assert variance_ncc(np.array([0.0, 0.0, 1.0, 0.0]), raters) == pytest.approx(-1 / 3)


def test_uncertainty_error_overlap_by_hand() -> None:
    pred = np.array([1, 1, 0, 0])
    target = np.array([1, 0, 1, 0])  # errors at pixels 1 and 2
    u = np.array([0.9, 0.8, 0.1, 0.2])  # uncertain at pixels 0 and 1
    assert uncertainty_error_overlap(u, pred, target, 0.5) == pytest.approx(0.5)
    assert uncertainty_error_overlap(u, pred, target, 0.05) == pytest.approx(2 * 2 / (4 + 2))
    assert uncertainty_error_overlap(np.zeros(4), target, target, 0.5) == 1.0

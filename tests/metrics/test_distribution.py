"""GED, HM-IoU and the CI score: hand-computed cases, empty-mask rules, loop references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from diffuseg.errors import DataError
from diffuseg.metrics import ci_score, ged, hm_iou, iou, per_class


def _row(*cols: int, width: int = 8) -> np.ndarray:
    """A 1 x width mask with the given columns set."""
    m = np.zeros((1, width), bool)
    m[0, list(cols)] = True
    return m


def _stack(*masks: np.ndarray) -> np.ndarray:
    return np.stack(masks)


EMPTY = _row()
A = _row(0, 1, 2, 3)
B = _row(2, 3, 4, 5)  # |A ∩ B| = 2, |A ∪ B| = 6: IoU 1/3, d = 2/3
C = _row(6, 7)  # disjoint from A and B


def _ged_loops(samples: np.ndarray, raters: np.ndarray, labels: list[int] | None) -> float:
    """Reference: PHiSeg's loop definition, d = 1 - mean over labels of IoU (empty-empty 1)."""
    labels_ = [None] if labels is None else labels

    def d(m1: np.ndarray, m2: np.ndarray) -> float:
        return 1.0 - np.mean(
            [iou(m1 if lb is None else m1 == lb, m2 if lb is None else m2 == lb) for lb in labels_]
        )

    n, m = len(samples), len(raters)
    d_sy = sum(d(s, y) for s in samples for y in raters) / (n * m)
    d_ss = sum(d(s, t) for s in samples for t in samples) / n**2
    d_yy = sum(d(y, z) for y in raters for z in raters) / m**2
    return 2 * d_sy - d_ss - d_yy


def test_ged_all_empty_is_zero() -> None:
    out = ged(_stack(EMPTY, EMPTY, EMPTY), _stack(EMPTY, EMPTY))
    assert out == {"ged": 0.0, "cross": 0.0, "sample_diversity": 0.0, "rater_diversity": 0.0}


def test_ged_identical_single_masks_is_zero() -> None:
    assert ged(_stack(A), _stack(A))["ged"] == 0.0


def test_ged_disjoint_and_overlapping_by_hand() -> None:
    # one sample A, one rater C, disjoint: d = 1 -> GED = 2*1 - 0 - 0
    assert ged(_stack(A), _stack(C))["ged"] == pytest.approx(2.0)
    # partial overlap, d(A, B) = 2/3 -> GED = 4/3
    assert ged(_stack(A), _stack(B))["ged"] == pytest.approx(4 / 3)
    # samples {A, C}, raters {A}: E d(S,Y) = 1/2, E d(S,S') = (0+1+1+0)/4 = 1/2, E d(Y,Y') = 0
    out = ged(_stack(A, C), _stack(A))
    assert out == pytest.approx(
        {"ged": 0.5, "cross": 0.5, "sample_diversity": 0.5, "rater_diversity": 0.0}
    )


def test_ged_one_empty_rater_by_hand() -> None:
    # raters {A, empty}, samples {A, A}: cross = (0+1+0+1)/4, E d(S,S') = 0, E d(Y,Y') = 2/4
    out = ged(_stack(A, A), _stack(A, EMPTY))
    assert out["cross"] == pytest.approx(0.5)
    assert out["rater_diversity"] == pytest.approx(0.5)
    assert out["ged"] == pytest.approx(0.5)
    # samples equal to raters: GED = 0 (the i = j pairs are counted)
    assert ged(_stack(A, EMPTY), _stack(A, EMPTY))["ged"] == pytest.approx(0.0)


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 3)])
def test_ged_matches_loop_reference(spatial: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    samples = rng.random((5, *spatial)) > 0.6
    raters = rng.random((3, *spatial)) > 0.5
    samples[2] = False
    out = ged(torch.from_numpy(samples), raters)
    assert out["ged"] == pytest.approx(_ged_loops(samples, raters, None), abs=1e-12)


def test_ged_multilabel_matches_phiseg_definition() -> None:
    rng = np.random.default_rng(1)
    samples = rng.integers(0, 3, size=(4, 6, 6))
    raters = rng.integers(0, 3, size=(3, 6, 6))
    raters[0][raters[0] == 2] = 0  # label 2 absent from one rater
    out = ged(samples, raters, labels=[1, 2])
    assert out["ged"] == pytest.approx(_ged_loops(samples, raters, [1, 2]), abs=1e-12)


def test_ged_accepts_another_distance() -> None:
    def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a[:, None, :] != b[None, :, :]).mean(axis=-1)

    # one sample A, one rater B: columns 0, 1, 4, 5 differ out of 8 -> d = 1/2, GED = 1
    assert ged(_stack(A), _stack(B), d=hamming)["ged"] == pytest.approx(1.0)


def test_hm_iou_all_empty_is_one() -> None:
    assert hm_iou(_stack(EMPTY, EMPTY, EMPTY), _stack(EMPTY, EMPTY)) == 1.0


def _four_raters() -> np.ndarray:
    """Four 1 x 4 bars on separate rows of an 8 x 12 image (pairwise disjoint, far apart)."""
    raters = np.zeros((4, 8, 12), bool)
    for j in range(4):
        raters[j, 2 * j, 2 + j : 6 + j] = True
    return raters


def test_hm_iou_sixteen_samples_four_copies_of_each_rater_is_one() -> None:
    raters = _four_raters()
    samples = np.concatenate([raters] * 4)[np.random.default_rng(0).permutation(16)]
    assert hm_iou(samples, raters) == pytest.approx(1.0)


def test_hm_iou_shifted_copies_by_hand() -> None:
    raters = _four_raters()
    samples = np.roll(np.concatenate([raters] * 4), 1, axis=-1)  # each bar moved one column
    # a shifted 4-pixel bar overlaps its rater in 3 pixels of 5: IoU 3/5; other raters 0
    assert hm_iou(samples, raters) == pytest.approx(3 / 5)
    assert ged(samples, raters)["cross"] == pytest.approx(1 - (3 / 5) / 4)


def test_hm_iou_uneven_sets_use_the_lcm() -> None:
    # samples {A', B'} and raters {A', B', A' ∪ B'}: IoU matrix [[1, 0, 1/2], [0, 1, 1/2]]
    a, b = _row(0, 1), _row(2, 3)
    samples, raters = _stack(a, b), _stack(a, b, a | b)
    # lcm 6: each rater twice, each sample three times -> 4 exact matches + 2 halves: 5/6
    assert hm_iou(samples, raters) == pytest.approx(5 / 6)
    # one empty rater: samples {A, A}, raters {A, empty}: matched IoUs 1 and 0
    assert hm_iou(_stack(A, A), _stack(A, EMPTY)) == pytest.approx(0.5)


def test_hm_iou_matches_brute_force_matching() -> None:
    rng = np.random.default_rng(2)
    samples = rng.random((2, 5, 5)) > 0.5
    raters = rng.random((3, 5, 5)) > 0.5
    rows = [samples[i % 2] for i in range(6)]
    cols = [raters[j % 3] for j in range(6)]
    best = max(
        np.mean([iou(rows[i], cols[p]) for i, p in enumerate(perm)])
        for perm in itertools.permutations(range(6))
    )
    assert hm_iou(samples, raters) == pytest.approx(best, abs=1e-12)


def test_ci_score_hand_case_full_sensitivity() -> None:
    y1, y2 = _row(0, 1, 2, 3), _row(0, 1)  # Dice 2/3 -> V_Y = {1/3}
    s1 = s2 = _row(0, 1, 2, 3)  # V_S = {0}
    out = ci_score(_stack(s1, s2), _stack(y1, y2))
    # S_c = 1; D_max = (1 + 2/3) / 2 = 5/6; D_a = 1 - (1/3 + 1/3) / 2 = 2/3
    assert out["combined_sensitivity"] == pytest.approx(1.0)
    assert out["max_dice"] == pytest.approx(5 / 6)
    assert out["diversity_agreement"] == pytest.approx(2 / 3)
    assert out["ci"] == pytest.approx(3 * 1 * (5 / 6) * (2 / 3) / (1 + 5 / 6 + 2 / 3))  # 2/3
    assert out["harmonic_mean"] == pytest.approx(30 / 37)


def test_ci_score_hand_case_missed_rater() -> None:
    y1, y2 = _row(0, 1, 2, 3), _row(4, 5)  # disjoint: V_Y = {1}
    s1, s2 = _row(0, 1, 2, 3), _row(0, 1)  # Dice 2/3: V_S = {1/3}
    out = ci_score(_stack(s1, s2), _stack(y1, y2))
    # S_c = 4/6; D_max = (1 + 0) / 2; D_a = 1 - (2/3 + 2/3) / 2 = 1/3
    assert out["combined_sensitivity"] == pytest.approx(2 / 3)
    assert out["max_dice"] == pytest.approx(0.5)
    assert out["diversity_agreement"] == pytest.approx(1 / 3)
    assert out["ci"] == pytest.approx(2 / 9)
    assert out["harmonic_mean"] == pytest.approx(6 / 13)


def test_ci_score_empty_rules() -> None:
    all_empty = ci_score(_stack(EMPTY, EMPTY), _stack(EMPTY, EMPTY, EMPTY))
    assert all_empty == pytest.approx(
        {
            "ci": 1.0,
            "harmonic_mean": 1.0,
            "combined_sensitivity": 1.0,
            "max_dice": 1.0,
            "diversity_agreement": 1.0,
        }
    )
    # raters all empty, samples not: nothing to miss (S_c = 1) but no Dice match (D_max = 0)
    out = ci_score(_stack(A, A), _stack(EMPTY, EMPTY))
    assert out["combined_sensitivity"] == 1.0 and out["max_dice"] == 0.0
    assert out["ci"] == 0.0 and out["harmonic_mean"] == 0.0
    with pytest.raises(DataError, match="at least 2"):
        ci_score(_stack(A, B), _stack(A))


def test_distribution_metrics_per_class_and_errors() -> None:
    samples = np.stack([np.array([[1, 1, 2, 0]]), np.array([[1, 0, 2, 2]])])
    raters = np.stack([np.array([[1, 1, 2, 0]]), np.array([[1, 1, 2, 0]])])
    out = per_class(hm_iou, samples, raters, labels=[1, 2])
    # label 1: IoUs 1 and 1/2; label 2: IoUs 1 and 1/2 -> matched means 3/4
    assert out == pytest.approx({1: 0.75, 2: 0.75})
    with pytest.raises(DataError, match="spatial shape"):
        ged(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(DataError, match="labels"):
        hm_iou(samples, raters, labels=[])

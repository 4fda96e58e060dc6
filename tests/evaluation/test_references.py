"""``diffuseg.evaluation.references``: the trivial references on hand-made raters, computed by
hand from d = 1 - IoU (d(empty, empty) = 0, all pairs incl. i = j)."""

from __future__ import annotations

import numpy as np
import pytest

from diffuseg.evaluation.references import (
    reference_scores,
    repeated,
    repeated_mask_scores,
    set_scores,
)

LABELS = (0, 1)


def raters_abb0() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four raters on 4x4: A, A, B, empty, with A 4 pixels and B 2 of them (IoU(A, B) = 1/2)."""
    a = np.zeros((4, 4), np.int64)
    a[1:3, 1:3] = 1
    b = np.zeros((4, 4), np.int64)
    b[1, 1:3] = 1
    return np.stack([a, a, b, np.zeros_like(a)]), a, b


def test_references_by_hand():
    raters, a, _ = raters_abb0()
    # d(Y, Y') over the 16 pairs: rows A [0, 0, .5, 1], A [0, 0, .5, 1], B [.5, .5, 0, 1],
    # empty [1, 1, 1, 0]: sum 8, mean 1/2
    refs = reference_scores(raters, LABELS, 16)
    empty = refs["always_empty"]
    # d(empty, y) = 1, 1, 1, 0: 2 * 3/4 - 0 - 1/2 = 1
    assert empty["ged_16"] == pytest.approx(1.0)
    assert empty["hm_iou_16"] == pytest.approx(0.25)  # only the empty rater matches (IoU 1)
    assert empty["dice"] == 0.0  # empty consensus vs the non-empty majority
    # majority: A\B marked by 2 of 4 (a tie is foreground), B by 3 of 4 -> A
    major = refs["majority_repeated"]
    # d(A, y) = 0, 0, 1/2, 1: 2 * 3/8 - 0 - 1/2 = 1/4
    assert major["ged_16"] == pytest.approx(0.25)
    assert major["hm_iou_16"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert major["dice"] == 1.0
    assert repeated_mask_scores(a, raters, LABELS, 16) == major


def test_one_mask_repeated_does_not_depend_on_the_count():
    raters, _, b = raters_abb0()
    # d(B, y) = 1/2, 1/2, 0, 1: 2 * 1/2 - 0 - 1/2 = 1/2, for any number of copies
    for n in (2, 5, 16):
        assert repeated_mask_scores(b, raters, LABELS, n)[f"ged_{n}"] == pytest.approx(0.5)
    assert repeated(b, 3).shape == (3, 4, 4) and (repeated(b, 3) == b).all()


def test_dice_is_left_out_where_the_majority_is_empty():
    raters, a, _ = raters_abb0()
    one = np.stack([a, np.zeros_like(a), np.zeros_like(a), np.zeros_like(a)])  # 1 of 4
    scores = set_scores(repeated(a, 4), a, one, LABELS, 4)
    assert scores["dice"] is None
    # samples A, A, A, A vs raters A, 0, 0, 0: 2 * 3/4 - 0 - (6/16) = 9/8
    assert scores["ged_4"] == pytest.approx(2 * 0.75 - 6 / 16)


def test_set_scores_of_a_mixed_sample_set():
    """Samples A, B against raters A, A, B, empty: E d(S, Y) = (3/8 + 1/2) / 2 = 7/16,
    E d(S, S') = 2 * (1/2) / 4 = 1/4, so GED = 7/8 - 1/4 - 1/2 = 1/8."""
    raters, a, b = raters_abb0()
    scores = set_scores(np.stack([a, b]), a, raters, LABELS, 2)
    assert scores["ged_2"] == pytest.approx(0.125)
    assert scores["dice"] == 1.0

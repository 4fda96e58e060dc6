"""Dice / IoU: hand-computed cases, empty-mask conventions, MONAI and medpy cross-checks."""

from __future__ import annotations

import json

import medpy.metric.binary as mb
import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from diffuseg.errors import DataError
from diffuseg.metrics import CONVENTIONS, dice, iou, pairwise_dice, pairwise_iou, per_class


def _masks() -> tuple[np.ndarray, np.ndarray]:
    """pred has 4 pixels, target 6, 3 shared: Dice = 6/10, IoU = 3/7."""
    pred = np.zeros((4, 5), bool)
    target = np.zeros((4, 5), bool)
    pred[0, 0:4] = True
    target[0, 1:4] = True
    target[1, 0:3] = True
    return pred, target


def test_hand_computed_dice_and_iou() -> None:
    pred, target = _masks()
    assert dice(pred, target) == pytest.approx(0.6)
    assert iou(pred, target) == pytest.approx(3 / 7)


def test_both_empty_uses_empty_value_and_one_empty_scores_zero() -> None:
    empty = np.zeros((3, 3, 3))
    full = np.ones((3, 3, 3))
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, empty, empty_value=0.0) == 0.0
    assert iou(empty, empty, empty_value=float("nan")) != iou(empty, empty, empty_value=0.0)
    assert dice(empty, full) == 0.0 and iou(full, empty) == 0.0
    assert CONVENTIONS["dice_iou_both_empty"] == 1.0


def test_threshold_is_strict_and_torch_matches_numpy() -> None:
    prob = np.array([[0.2, 0.5, 0.6, 0.9]])
    target = np.array([[0, 1, 1, 1]])
    # 0.5 is not foreground at threshold 0.5: pred = {2, 3}, target = {1, 2, 3}
    assert dice(prob, target) == pytest.approx(4 / 5)
    assert dice(prob, target, threshold=0.1) == pytest.approx(6 / 7)
    # bf16 (8 significant bits) moves each value by at most 2^-9 ~ 0.2 % relative: 0.5 is exact
    # in bf16 and the others lie >= 20 % from the threshold, so the same pixels pass it and the
    # Dice (a ratio of counts) is equal, not merely close
    assert dice(torch.tensor(prob, dtype=torch.bfloat16), torch.tensor(target)) == dice(
        prob, target
    )


def test_shape_mismatch_is_a_data_error() -> None:
    with pytest.raises(DataError, match="same shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))


@pytest.mark.parametrize("shape", [(3, 17, 19), (3, 7, 8, 9)])
def test_dice_matches_monai_dicemetric_and_medpy(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    pred = rng.random(shape) > 0.6
    target = rng.random(shape) > 0.5
    metric = DiceMetric(include_background=True, reduction="none")
    ref = metric(torch.from_numpy(pred[:, None]).float(), torch.from_numpy(target[:, None]).float())
    for i in range(shape[0]):
        assert dice(pred[i], target[i]) == pytest.approx(float(ref[i, 0]), rel=1e-6)
        assert dice(pred[i], target[i]) == pytest.approx(mb.dc(pred[i], target[i]), rel=1e-12)
        assert iou(pred[i], target[i]) == pytest.approx(mb.jc(pred[i], target[i]), rel=1e-12)


def test_per_class_is_one_vs_rest_and_skips_unlisted_background() -> None:
    pred = np.array([[0, 1, 1, 2], [0, 0, 2, 2]])
    target = np.array([[0, 1, 2, 2], [0, 1, 2, 2]])
    # label 1: pred {(0,1),(0,2)}, target {(0,1),(1,1)} -> Dice 2/4
    # label 2: pred {(0,3),(1,2),(1,3)}, target {(0,2),(0,3),(1,2),(1,3)} -> Dice 6/7
    out = per_class(dice, pred, target, labels=[1, 2])
    assert out == pytest.approx({1: 0.5, 2: 6 / 7})
    assert set(out) == {1, 2}
    assert per_class(dice, pred, target, labels=[0])[0] == pytest.approx(2 * 2 / 5)
    assert per_class(dice, pred, target, labels=[3]) == {3: 1.0}  # absent from both: empty rule
    with pytest.raises(DataError, match="labels"):
        per_class(dice, pred, target, labels=[])


def test_pairwise_matrices_match_pairwise_loops() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((4, 5, 6, 3)) > 0.7
    b = rng.random((3, 5, 6, 3)) > 0.6
    a[1] = False
    b[2] = False  # an empty-empty pair: IoU = Dice = 1
    m_iou, m_dice = pairwise_iou(a, b), pairwise_dice(a, b)
    assert m_iou.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            assert m_iou[i, j] == pytest.approx(iou(a[i], b[j]), abs=1e-12)
            assert m_dice[i, j] == pytest.approx(dice(a[i], b[j]), abs=1e-12)
    assert m_iou[1, 2] == 1.0 and m_dice[1, 2] == 1.0
    with pytest.raises(DataError, match="spatial shape"):
        pairwise_iou(a, b[:, :4])


def test_conventions_are_json_serialisable() -> None:
    text = json.dumps(CONVENTIONS, allow_nan=False)
    assert "ged" in json.loads(text) and "hd95" in json.loads(text)

"""Validation that means something: cases across patients, stratified by an empty reference, 3D
on patches; GED and HM-IoU against the trivial references; the verdict's rule; the budget's
clock in the progress line and preprocessing outside it."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest

from diffuseg.core.progress import Progress
from diffuseg.metrics import trivial_references
from diffuseg.training.budget import Budget
from diffuseg.training.planning import MAX_USEFUL, MIN_USEFUL, min_useful_steps
from diffuseg.training.validation import Scores, choose_cases, validation_view
from diffuseg.training.verdict import judge


def fake_cases(groups: int, per_group: int, foreground_every: int):
    """``groups`` patients of ``per_group`` cases; every ``foreground_every``-th case has a
    foreground reference."""
    cases = [SimpleNamespace(case_id=f"c{g:02d}_{i:02d}", group=f"p{g}",
                             empty=(g * per_group + i) % foreground_every != 0)
             for g in range(groups) for i in range(per_group)]
    return cases, (lambda case: case.empty)


def test_cases_come_from_several_patients_half_with_foreground_seeded():
    cases, is_empty = fake_cases(groups=3, per_group=10, foreground_every=5)  # 6 of 30 foreground
    chosen = choose_cases(cases, 4, seed=0, is_empty=is_empty)
    assert len(chosen) == 4 and len({c.case_id for c in chosen}) == 4
    assert len({c.group for c in chosen}) >= 2
    assert sum(not c.empty for c in chosen) == 2  # stratified: 2 with foreground, 2 empty
    assert [c.case_id for c in choose_cases(cases, 4, seed=0, is_empty=is_empty)] == [
        c.case_id for c in chosen]  # seeded
    draws = {tuple(c.case_id for c in choose_cases(cases, 4, seed=s, is_empty=is_empty))
             for s in range(5)}
    assert len(draws) > 1  # the seed matters


def test_a_stratum_that_runs_short_is_filled_by_the_other():
    cases, is_empty = fake_cases(groups=2, per_group=3, foreground_every=100)  # 1 foreground
    chosen = choose_cases(cases, 4, seed=1, is_empty=is_empty)
    assert len(chosen) == 4 and sum(not c.empty for c in chosen) == 1
    assert choose_cases(cases, 0, seed=1, is_empty=is_empty) == []
    assert len(choose_cases(cases, 50, seed=1, is_empty=is_empty)) == 6  # all there are


def test_phantom_validation_cases_span_its_validation_patients(tmp_path):
    """On a dataset folder (groups in dataset.json), with masks read from disk."""
    from diffuseg.data import Dataset, load_splits
    from diffuseg.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "p", n_cases=40, size=16, n_raters=2, seed=0)
    dataset = Dataset.open(data)
    val = set(load_splits(data, dataset)["val"])
    cases = [c for c in dataset.cases if c.case_id in val]
    assert len({c.group for c in cases}) >= 2  # the data has several validation patients
    chosen = choose_cases(cases, 4, seed=0)
    assert len({c.group for c in chosen}) >= 2
    # the first cases of the fold (today's old rule) all came from one patient
    assert len({c.group for c in sorted(cases, key=lambda c: c.case_id)[:2]}) == 1


def test_a_3d_volume_is_validated_on_a_patch_around_its_reference():
    image = np.arange(40 * 30 * 20, dtype=np.float32).reshape(1, 40, 30, 20)
    raters = np.zeros((2, 40, 30, 20), np.int64)
    raters[:, 33:37, 2:5, 15:18] = 1  # a lesion near a corner
    crop_image, crop_raters = validation_view(image, raters, (16, 16, 16), 2)
    assert crop_image.shape == (1, 16, 16, 16) and crop_raters.shape == (2, 16, 16, 16)
    assert crop_raters.sum() == raters.sum()  # the whole lesion is inside
    assert crop_image[0, 0, 0, 0] == image[0, 24, 0, 4]  # clipped to the volume's edges
    empty = np.zeros_like(raters)
    _, centred = validation_view(image, empty, (16, 16, 16), 2)
    assert centred.shape == (2, 16, 16, 16)
    small = image[:, :16, :16, :8]
    assert validation_view(small, raters[:, :16, :16, :8], (16, 16, 16), 2)[0] is small
    flat = image[:, :, :, 0]
    assert validation_view(flat, raters[:, :, :, 0], (16, 16), 2)[0] is flat  # 2D: whole


def test_trivial_references_by_hand():
    """Rater 0 marks pixel 0, rater 1 pixels 0 and 1; their majority (a tie is foreground) is
    {0, 1}. d = 1 - IoU: d(maj, r0) = 1/2, d(maj, r1) = 0, d(r0, r1) = 1/2, d(empty, r) = 1.
    E[d(Y, Y')] over the 4 pairs = 1/4. GED(majority) = 2 * 1/4 - 0 - 1/4 = 1/4;
    GED(empty) = 2 - 0 - 1/4 = 7/4. HM-IoU: majority matches (1/2 + 1) / 2, empty 0."""
    raters = np.array([[1, 0, 0, 0], [1, 1, 0, 0]])
    refs = trivial_references(raters, 2)
    assert refs["majority"]["ged"] == pytest.approx(0.25)
    assert refs["empty"]["ged"] == pytest.approx(1.75)
    assert refs["majority"]["hm_iou"] == pytest.approx(0.75)
    assert refs["empty"]["hm_iou"] == pytest.approx(0.0)
    one = trivial_references(raters[:1], 4)  # one rater: the majority is the reference itself
    assert one["majority"]["ged"] == pytest.approx(0.0)
    assert one["majority"]["hm_iou"] == pytest.approx(1.0)


def test_scores_keep_empty_references_out_of_dice():
    """An empty reference scored by an empty prediction is counted, never a Dice of 1."""
    scores = Scores()
    empty = np.zeros((3, 4), np.int64)
    scores.add(np.zeros((2, 4), np.int64), empty, 1, "p0")  # empty vs empty
    scores.add(np.zeros((2, 4), np.int64), np.array([[1, 1, 0, 0]] * 3), 1, "p1")  # missed
    record = scores.record(step=7, chosen=2, n_samples=2, seconds=1.0)
    assert record["val_dice_nonempty"] == 0.0 and record["val_nonempty_cases"] == 1
    assert record["val_empty_cases"] == 1 and record["val_empty_predicted_empty"] == 1
    assert record["val_patients"] == 2
    # predicting nothing scores exactly the always-empty reference
    assert record["val_ged"] == record["ref_ged_empty"]
    assert record["val_hm_iou"] == record["ref_hm_iou_empty"] == 0.5
    assert judge(record, stochastic=True)[0] is False


def record(ged, hm, empty=1.7, one=0.15, hm_empty=0.0, raters=3, samples=16):
    return {"val_samples": samples, "val_ged": ged, "val_hm_iou": hm, "ref_ged_empty": empty,
            "ref_ged_majority": one, "ref_hm_iou_empty": hm_empty, "val_raters": raters}


@pytest.mark.parametrize("values,learned,beats_one", [
    ((1.7, 0.0), False, False),  # predicts nothing: exactly the always-empty reference
    ((1.68, 0.03), False, False),  # covers the image: hardly better than nothing
    ((1.0, 0.05), False, False),  # diverse noise: not nearer the one-mask reference
    ((0.21, 0.74), True, False),  # segments (the phantom after 150 steps), no better than one mask
    ((0.12, 0.80), True, True),  # and reproduces the raters' disagreement
])
def test_the_verdict_rule(values, learned, beats_one):
    ok, checks, one = judge(record(*values), stochastic=True)
    assert ok is learned and one is beats_one and len(checks) == 3
    assert judge(record(*values), stochastic=False)[2] is None  # one mask is all it draws
    assert judge(record(*values, raters=1), stochastic=True)[2] is None
    assert judge(record(*values, samples=4), stochastic=True)[2] is None  # GED4 is inflated
    assert judge(record(*values, samples=4), stochastic=True)[0] is learned
    assert judge(None, stochastic=True)[0] is False  # nothing measured: not learned


def test_min_useful_steps_follow_the_data():
    assert min_useful_steps(10, 8)[0] == MIN_USEFUL
    assert min_useful_steps(10**6, 8)[0] == MAX_USEFUL
    steps, reason = min_useful_steps(600, 2)
    assert steps == 600 and "600 training cases at batch 2" in reason
    from diffuseg.training.planning import Hardware, make_plan

    fp = {"spatial_dims": 2, "in_channels": 1, "labels": {"bg": 0, "fg": 1}, "raters": 1,
          "n_cases": 1000, "median_shape": [64, 64], "median_spacing": [1.0, 1.0]}
    plan = make_plan(".", "cpu", hardware=Hardware("cpu", 2, "avx2"), fp=fp).to_dict()
    batch = plan["values"]["train"]["batch_size"]
    assert (plan["min_useful_steps"], plan["min_useful_reason"]) == min_useful_steps(800, batch)


def test_preprocessing_is_taken_out_of_the_budget():
    budget = Budget(1.0, None, "wall", command_started=0.0)
    budget.started = budget.now() - 50.0  # 50 s spent, 30 of them preprocessing
    budget.exclude(30.0)
    assert budget.elapsed() == pytest.approx(20.0, abs=0.5)
    assert budget.remaining() == pytest.approx(40.0, abs=0.5)


def test_the_progress_line_reads_the_budgets_clock():
    """elapsed and ETA on the timer (the budget's CPU seconds), not on the wall clock."""
    wall, cpu = [0.0], [100.0]
    out = io.StringIO()
    bar = Progress("training (cpu clock)", 100, stream=out, tty=False, clock=lambda: wall[0],
                   heartbeat=False, budget_s=300.0, timer=lambda: cpu[0], interval=1.0)
    wall[0], cpu[0] = 50.0, 110.0  # 10 CPU seconds for 10 steps during 50 wall seconds
    bar.update(10)
    assert "elapsed 0:01:50" in out.getvalue()  # the budget's 110 s, not 50 s of wall
    assert bar.eta() == pytest.approx(90.0)  # 90 steps at 1 CPU s each; 190 s of budget left
    wall[0], cpu[0] = 60.0, 250.0
    assert bar.eta() == pytest.approx(50.0)  # the budget binds: 300 - 250


def test_validation_samples_with_no_more_steps_than_predict_takes():
    """LDSeg predicts with its option steps (2) whatever sample.steps says; validating it with
    train.val_steps=5 scored another sampler and chose the wrong weights (RESULTS.md)."""
    import dataclasses

    from helpers import tiny_config

    from diffuseg.config import ProcessConfig, TrainConfig
    from diffuseg.methods import build_method
    from diffuseg.training.validation import steps_at_validation

    train = TrainConfig(val_steps=5)
    ldseg = build_method(dataclasses.replace(
        tiny_config("ldseg", process=ProcessConfig(), steps=10), train=train))
    assert ldseg.default_steps() == 2 and steps_at_validation(ldseg) == 2
    ddpm = build_method(dataclasses.replace(
        tiny_config("ddpm", process=ProcessConfig(), steps=10), train=train))
    assert steps_at_validation(ddpm) == 5  # cheaper than predict's 10, as the plan chose
    unet = SimpleNamespace(config=SimpleNamespace(train=train), process=None)
    assert steps_at_validation(unet) == 5

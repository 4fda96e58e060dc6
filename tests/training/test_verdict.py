"""The end of training says plainly whether the model learned (verdict.json and one line), keeps
the best validation's weights beside the last (weights.json says which predict uses), and warns
before training when the budget cannot buy the steps the data needs."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import tiny
from safetensors.torch import load_file

from diffuseg.cli import main
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import DataError
from diffuseg.inference.predictor import Predictor
from diffuseg.run.log import read_metrics
from diffuseg.run.verdict import BEST, LAST
from diffuseg.run.weights import state_of
from diffuseg.training.budget import Budget
from diffuseg.training.loop import train
from diffuseg.training.run_state import Run
from diffuseg.training.start import build_config
from diffuseg.training.verdict import Advice, choose

TINY = tiny("train.batch_size=4", "sample.steps=2", "sample.n_samples=2", "train.precision=fp32",
            attention=True, T=100, max_steps=None, val=None)
VAL = ["train.val_cases=4", "train.val_samples=2", "train.val_steps=2"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "phantom2d", n_cases=24,
                                 spatial_dims=2, size=32, n_raters=3, seed=1)


def test_a_10_step_run_did_not_learn_and_says_so(tmp_path, phantom, monkeypatch, capsys):
    run = tmp_path / "run"
    args = [arg for item in TINY + VAL + ["train.val_every=1000"] for arg in ("--set", item)]
    monkeypatch.setattr(sys, "argv", ["diffuseg", "train", str(phantom), "-o", str(run),
                                      "--max-steps", "10", "--plan", "none", "--quiet", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    verdict = json.loads((run / "verdict.json").read_text())
    assert verdict["learned"] is False and verdict["steps"] == 10
    (line,) = [x for x in out.splitlines() if x.startswith("verdict:")]
    assert line == verdict["line"]
    assert "NOT learned" in line and "10 steps ran; this data needs about 200" in line
    assert f"-o {run} --resume --max-steps 200" in line
    record = verdict["validation"]
    assert f"GED2 {record['val_ged']:.3f}" in line  # the numbers are in the line
    assert f"always empty {record['ref_ged_empty']:.3f}" in line
    assert [c["passed"] for c in verdict["checks"]].count(False) >= 1
    text = (run / "training_log.txt").read_text()
    assert "train.max_steps=10 is below the ~200 steps" in text and verdict["line"] in text


def test_the_best_validation_weights_are_what_predict_uses(tmp_path, phantom):
    config = build_config(None, TINY + VAL + ["train.max_steps=4", "train.val_every=2"],
                          dataset=phantom)
    run = train(config, phantom, tmp_path / "run", progress=False)
    records = [r for r in read_metrics(run) if "val_ged" in r]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:  # every validation: the metrics and the trivial references beside them
        assert r["val_cases"] == r["val_cases_chosen"] >= 1
        for key in ("val_hm_iou", "ref_ged_empty", "ref_ged_majority", "ref_hm_iou_empty"):
            assert r[key] is not None
    choice = json.loads((run / "weights.json").read_text())
    best = min(records, key=lambda r: (r["val_ged"], -r["step"]))
    assert choice["best"]["step"] == best["step"] and choice["validations"] == 2
    assert len(best["val_ged_cases"]) == best["val_cases"]  # per case, for the comparison
    uses, why = choose(best, records[-1], 2)
    assert choice["predict_uses"] == uses and choice["why"] == why
    loaded = state_of(Predictor.from_run(run).method.networks())
    for key, value in load_file(str(run / uses)).items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key
    verdict = json.loads((run / "verdict.json").read_text())
    assert verdict["weights"] == uses
    assert verdict["validation"]["step"] == (best if uses == BEST else records[-1])["step"]
    (run / "weights.json").write_text(json.dumps({"predict_uses": "../elsewhere.safetensors"}))
    with pytest.raises(DataError, match="weights.json.*predict_uses"):
        Predictor.from_run(run)
    (run / "weights.json").write_text(json.dumps({"predict_uses": "gone.safetensors"}))
    with pytest.raises(DataError, match="missing"):
        Predictor.from_run(run)


def record(step: int, cases: list[float]) -> dict:
    return {"step": step, "val_ged": float(np.mean(cases)), "val_ged_cases": cases}


def test_the_best_validation_is_used_only_when_it_beats_the_last_beyond_chance():
    """30 CPU-minutes of ldseg on LIDC, validated on 4 cases, picked step 300 of 2,228 (GED16
    0.446 on 600 validation slices against 0.337 for the last weights): the lowest of K noisy
    validations is low by chance. The best is used when its paired gain over the last exceeds
    z = max(2, sqrt(2 ln K)) standard errors (hand-computed cases below)."""
    last = record(10, [0.30, 0.50, 0.20, 0.40])
    assert choose(None, last, 3)[0] == LAST
    assert choose(last, None, 3)[0] == BEST  # resumed, not validated since
    assert choose(record(10, [0.1, 0.2]), record(10, [0.1, 0.2]), 5)[0] == BEST  # the same step
    # the same gain 0.1 on every case: standard error 0, a gain beyond any z
    assert choose(record(4, [0.20, 0.40, 0.10, 0.30]), last, 50)[0] == BEST
    # differences last - best = [0.2, 0, 0.2, 0]: mean 0.1, sd 0.11547, SE 0.057735
    best = record(4, [0.10, 0.50, 0.00, 0.40])
    uses, why = choose(best, last, 2)  # z = 2: 0.1 <= 0.11547
    assert uses == LAST and "no better than chance" in why and "2.00 standard errors" in why
    # differences [0.2, 0.05, 0.2, 0.05]: mean 0.125, sd 0.0866, SE 0.0433: 2.89 SE
    best = record(4, [0.10, 0.45, 0.00, 0.35])
    assert choose(best, last, 2)[0] == BEST                 # z = 2
    assert choose(best, last, 20)[0] == BEST                # z = sqrt(2 ln 20) = 2.45
    assert choose(best, last, 100)[0] == LAST               # z = sqrt(2 ln 100) = 3.03
    # cases that cannot be paired (another count, or none recorded: older runs)
    assert choose(record(4, [0.1, 0.1, 0.1]), last, 2)[0] == LAST
    assert choose({"step": 4, "val_ged": 0.0}, last, 2)[0] == LAST


def test_no_validation_no_learned_verdict(tmp_path, phantom):
    config = build_config(None, TINY + ["train.max_steps=1", "train.val_cases=0"],
                          dataset=phantom)
    run = train(config, phantom, tmp_path / "run", progress=False)
    verdict = json.loads((run / "verdict.json").read_text())
    assert verdict["learned"] is False and verdict["validation"] is None
    assert "no validation case was scored" in verdict["line"]
    assert json.loads((run / "weights.json").read_text())["predict_uses"] == "ema.safetensors"
    Predictor.from_run(run)  # the last EMA weights


def test_a_run_that_learns_says_so(tmp_path, phantom, capsys):
    """150 steps of the tiny network on the 32x32 phantom segment it (consensus Dice ~0.8 in
    8-15 s here): the verdict is measured on validation, and it is true."""
    config = build_config(None, TINY + VAL + ["train.max_steps=150", "train.val_every=1000",
                                              "train.lr=0.001"], dataset=phantom)
    run = train(config, phantom, tmp_path / "run", progress=False)
    verdict = json.loads((run / "verdict.json").read_text())
    assert verdict["learned"] is True, verdict["line"]
    assert all(c["passed"] for c in verdict["checks"])
    assert verdict["line"].startswith("verdict: the model learned:")
    assert verdict["validation"]["val_dice_nonempty"] > 0.5
    assert "--resume" not in verdict["line"] and verdict["advice"] is None


def test_a_budget_too_small_for_the_data_is_said_before_training():
    """After the first steps (their time measured on the budget's clock, the first one, a
    warm-up, left out): the steps the budget left can buy, and the --minutes that would buy the
    ones the data needs."""
    said = []
    budget = Budget(2.0, None, "cpu")
    budget.prior, budget.step_seconds = 30.2, 0.5  # 30.2 s so far, 0.5 s a step
    config = build_config(None, ["train.max_steps=100000", "train.max_minutes=2",
                                 "train.budget_clock=cpu"], dataset=None)
    run = SimpleNamespace(config=config, budget=budget, min_useful=(400, "a reason"),
                          log=SimpleNamespace(say=said.append), loop_steps=5,
                          loop_seconds=5.0, first_step_seconds=3.0)  # then 4 x 0.5 s
    Run.check_budget(run, step=1)
    (line,) = said
    # 120 s - 30.2 s - reserve (a step, validation: 10 % of 2 min = 12 s) = 77.3 s: 1 + 154 steps
    assert "train.max_minutes=2 leaves time for about 155 steps" in line
    assert "0.50 s each on the cpu clock" in line and "needs about 400 (a reason)" in line
    # 30.2 s + 399 steps x 0.5 s + 12.5 s reserve = 242.2 s, with 10 % to spare: 5 minutes
    assert line.endswith("--minutes 5 would buy them")
    said.clear()
    budget.minutes = 10.0
    Run.check_budget(run, step=1)
    assert said == []  # enough


def test_the_advice_of_a_run_that_minutes_alone_end_names_minutes_not_steps():
    """``--minutes`` alone sets train.max_steps to BIG (``steps_for_minutes``): the advice then
    asks for more minutes; a run with a step count is told both."""
    def line(step_bound: bool, minutes: float | None) -> str:
        return Advice(300, 2000, "why", "diffuseg train D -o R --resume", minutes,
                      step_bound=step_bound).text()

    assert line(False, 25.0).endswith("'diffuseg train D -o R --resume --minutes 25'")
    assert line(True, 25.0).endswith("--resume --max-steps 2000 --minutes 25'")
    assert line(False, None).endswith("--resume --max-steps 2000'")  # no clock to extend
    assert line(True, None).endswith("--resume --max-steps 2000'")

"""The demo's whole flow on a tiny budget: dataset, run, predictions, evaluation and report."""

import json

from diffuseg.demo import run_demo


def test_demo_flow_writes_everything(tmp_path):
    text = run_demo(tmp_path / "demo", steps=2, n_cases=10, device="cpu")
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["train_steps"] == 2 and summary["n_test_cases"] >= 1
    for key in ("consensus_dice_vs_majority", "ged_16", "hm_iou_16"):
        assert 0.0 <= summary[key] <= 2.0
    assert (tmp_path / "demo" / "evaluation" / "report.html").is_file()
    case = next((tmp_path / "demo" / "predictions").iterdir())
    assert (case / "consensus.png").is_file() and (case / "sample_15.png").is_file()
    assert "consensus Dice vs majority mask" in text
    # it budgets CPU time, and ends with the run's verdict (2 steps learn nothing)
    config = json.loads((tmp_path / "demo" / "run" / "config.json").read_text())
    assert config["train"]["budget_clock"] == "cpu"
    assert summary["verdict"]["learned"] is False
    assert text.splitlines()[-1] == summary["verdict"]["line"]
    assert text.splitlines()[-1].startswith("verdict: the model has NOT learned")
    # the trivial references of the test cases, from the one home the validation uses
    assert summary["ged_16_one_mask"] < summary["ged_16_empty"]

"""benchmarks/lidc_budget.py: the patients' bootstrap by hand and against its definition, the
--quick mode end to end (tiny phantom runs trained, scored, drawn), its scores against the
evaluator's, resuming a killed scoring, the checkpoint copy, and what it refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import load_benchmark

from diffuseg.data import Dataset
from diffuseg.errors import DataError
from diffuseg.evaluation.references import reference_scores

bench = load_benchmark("lidc_budget")


def test_bootstrap_resamples_patients_not_slices():
    """Patient A has 10 slices of value 1, B and C one slice of 0 each. Resampling slices would
    give an interval around 10/12 (about [0.58, 1]); resampling patients draws no A in
    (2/3)^3 = 30 % of the resamples (mean 0) and only A in (1/3)^3 = 3.7 % (mean 1)."""
    patients = ["A"] * 10 + ["B", "C"]
    values = [1.0] * 10 + [0.0, 0.0]
    out = bench.PatientBootstrap(patients, 2000, seed=0).interval(values)
    assert out["mean"] == pytest.approx(10 / 12)
    assert out["ci95"] == [0.0, 1.0]
    assert (out["slices"], out["patients"]) == (12, 3)


def test_bootstrap_matches_its_definition():
    """Each resample: P patients drawn with replacement, the mean over all their slices."""
    rng = np.random.default_rng(5)
    patients = [f"p{int(i)}" for i in rng.integers(0, 6, size=40)]
    values = [None if i % 7 == 0 else float(v) for i, v in enumerate(rng.random(40))]
    boot = bench.PatientBootstrap(patients, 300, seed=3)
    ids = sorted(set(patients))
    draws = np.random.default_rng(3).integers(len(ids), size=(300, len(ids)))
    means = []
    for draw in draws:
        picked = [v for k in draw for p, v in zip(patients, values, strict=True)
                  if p == ids[k] and v is not None]
        if picked:
            means.append(np.mean(picked))
    out = boot.interval(values)
    assert out["ci95"] == pytest.approx(np.percentile(means, [2.5, 97.5]).tolist())
    assert out["mean"] == pytest.approx(np.mean([v for v in values if v is not None]))
    assert bench.PatientBootstrap(["a", "b"], 10, 0).interval([None, None])["mean"] is None


def test_arguments():
    args = bench.parse_args(["score", "--runs", "x/r1", "y/r2"])
    assert (args.cases, args.samples, args.steps, args.boot, args.threads) == (600, 16, None,
                                                                                 2000, 1)
    assert args.labels == ["r1", "r2"]
    for bad in (["score", "--runs", "a/r", "b/r"], ["score", "--runs", "r", "--series", "a", "b"],
                ["score", "--runs", "r", "--samples", "1"], []):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("lidc_budget")
    bench.main(["--quick", "--work", str(work)])
    return work


def test_quick_writes_scores_table_and_curve(quick):
    labels = ["ddpm_3", "ddpm_6", "unet_3", "unet_6"]
    scores = {name: json.loads((quick / "scores" / f"{name}.json").read_text())
              for name in labels}
    for name, result in scores.items():
        assert result["label"] == name and result["series"] == name.split("_")[0]
        assert set(result["metrics"]) == {"ged_16", "hm_iou_16", "dice", "own_consensus_ged"}
        assert set(result["references"]) == {"always_empty", "majority_repeated"}
        settings = result["settings"]
        assert settings["train_steps"] == int(name.split("_")[1])  # optimiser steps
        assert settings["sampler_steps"] == (3 if name.startswith("ddpm") else None)
        assert settings["budget_clock"] == "cpu" and settings["train_minutes"] > 0
        assert settings["samples"] == 16 and result["seconds_per_slice"] > 0
        ged = result["metrics"]["ged_16"]
        assert ged["ci95"][0] <= ged["mean"] <= ged["ci95"][1]
        assert result["bootstrap"] == {"resamples": 200, "seed": 0, "over": "patients"}
        # the references are model-free: the same slices give the same numbers for every run
        assert result["references"] == scores["ddpm_3"]["references"]
    # a one-mask U-Net draws the same mask 16 times: its GED is its consensus repeated
    unet = scores["unet_6"]["metrics"]
    assert unet["ged_16"]["mean"] == pytest.approx(unet["own_consensus_ged"]["mean"])
    for result in scores.values():  # the groups by raters who marked partition the slices
        groups = result["by_raters_marked"].values()
        assert sum(g["ged_16"]["slices"] for g in groups) == result["metrics"]["ged_16"]["slices"]
        assert sum(g["share"] for g in groups) == pytest.approx(result["metrics"]["ged_16"]["mean"])
    table = (quick / "scores" / "table.md").read_text().splitlines()
    # header, rule, runs, references (no published rows: a phantom), blank, the table by raters
    # who marked (caption, blank, header, rule, runs), blank, provenance
    assert len(table) == 2 + 4 + 2 + 1 + (4 + 4) + 1 + 4
    assert table[9].startswith("GED16 by how many raters marked the slice")
    assert table[-1].startswith("- unet_6: weights ema_best (step 6 of 6),")  # predict's
    assert (quick / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a score JSON of an older version (no split by raters) leads the table: a dash, no error
    older = {k: v for k, v in scores["ddpm_3"].items() if k != "by_raters_marked"}
    rows = bench.rater_table([older, scores["unet_6"]])
    assert rows[4].startswith("| ddpm_3 | - |") and rows[5].startswith("| unet_6 | ")
    assert (quick / "curves.md").read_text().splitlines() == table


def test_quick_references_and_scores_match_the_evaluator(quick, tmp_path):
    """The reference rows are the means of reference_scores over the scored slices, and a
    run's per-slice scores equal diffuseg.evaluation.evaluate on written predictions."""
    from diffuseg.evaluation.evaluate import evaluate
    from diffuseg.inference.prediction_folder import write_result
    from diffuseg.inference.predictor import Predictor

    result = json.loads((quick / "scores" / "ddpm_6.json").read_text())
    dataset = Dataset.open(quick / "data")
    rows = [json.loads(line) for line in
            (quick / "score" / "ddpm_6" / "cases.jsonl").read_text().splitlines()]
    refs = [reference_scores(dataset.case(r["case"]).load().raters, (0, 1), 16) for r in rows]
    assert result["references"]["always_empty"]["ged_16"]["mean"] == pytest.approx(
        np.mean([r["always_empty"]["ged_16"] for r in refs]))
    predictor = Predictor.from_run(quick / "runs" / "ddpm_6", device="cpu")
    for row in rows:
        data = dataset.case(row["case"]).load()
        res = predictor.segment(data.image, n_samples=16, seed=bench.case_seed(row["case"], 0))
        write_result(res, data.geometry, tmp_path / "pred" / row["case"], source=Path("x"))
    summary = evaluate(tmp_path / "pred", quick / "data", tmp_path / "eval",
                       n_samples_list=(16,), report=False)
    by_case = {c["case"]: c for c in summary["per_case"]}
    for row in rows:
        assert row["ged_16"] == pytest.approx(by_case[row["case"]]["ged_16"], abs=1e-12)
        assert row["hm_iou_16"] == pytest.approx(by_case[row["case"]]["hm_iou_16"], abs=1e-12)


def score_args(quick: Path, work: Path, *extra: str) -> list[str]:
    return ["--work", str(work), "score", "--runs", str(quick / "runs" / "ddpm_6"),
            "--dataset", str(quick / "data"), "--cases", "0", "--boot", "200", *extra]


def test_a_killed_scoring_resumes_and_other_settings_are_refused(quick, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(quick / "score" / "ddpm_6", work / "ddpm_6")
    full = json.loads((work / "ddpm_6" / "score.json").read_text())
    stream = work / "ddpm_6" / "cases.jsonl"
    lines = stream.read_text().splitlines()
    first = json.loads(lines[0])
    del first["raters_marked"]  # a row scored before the count was recorded
    stream.write_text(json.dumps(first) + "\n" + lines[1][:20])  # killed writing the second line
    again = bench.main(score_args(quick, tmp_path / "work"))[0]
    assert again["metrics"] == full["metrics"]
    assert again["by_raters_marked"] == full["by_raters_marked"]
    def timeless(rows: list[str]) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in rows]

    # the count filled in from the dataset, the rest rescored as before
    assert timeless(stream.read_text().splitlines()) == timeless(lines)
    with pytest.raises(DataError, match="other settings"):
        bench.main(score_args(quick, tmp_path / "work", "--samples", "8"))


def test_checkpoint_of_a_finished_run_scores_its_final_weights(quick, tmp_path):
    final = json.loads((quick / "scores" / "ddpm_6.json").read_text())
    copy = bench.main(score_args(quick, tmp_path / "w", "--checkpoint"))[0]
    assert copy["metrics"] == final["metrics"]
    assert (tmp_path / "w" / "ddpm_6" / "weights" / "ema.safetensors").is_file()


def test_a_run_without_final_weights_is_refused(quick, tmp_path):
    run = tmp_path / "ddpm_6"
    shutil.copytree(quick / "runs" / "ddpm_6", run)
    (run / "ema.safetensors").unlink()
    (run / "model.safetensors").unlink()
    with pytest.raises(DataError, match="--checkpoint"):
        bench.main(["--work", str(tmp_path / "w"), "score", "--runs", str(run),
                    "--dataset", str(quick / "data")])


def test_curves_refuse_runs_scored_on_other_slices(quick, tmp_path):
    other = json.loads((quick / "scores" / "unet_3.json").read_text())
    other["settings"]["cases_sha256"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(DataError, match="cases_sha256"):
        bench.main(["curve", str(quick / "scores" / "ddpm_3.json"), str(tmp_path / "other.json"),
                    "--out", str(tmp_path / "c.png")])


def test_a_run_whose_predict_uses_its_best_validation_is_labelled_with_that_step(quick, tmp_path):
    """The weights ``predict`` loads are scored; when weights.json names ema_best, the row says so
    and its steps are ema_best's (a 30-minute LIDC run was labelled with its last step, 2228,
    while its scores were those of step 300)."""
    run = tmp_path / "unet_6"
    shutil.copytree(quick / "runs" / "unet_6", run)
    (run / "weights.json").unlink()  # a run without weights.json: predict loads ema.safetensors
    state = bench.trained_state(run, run / "checkpoint")
    assert bench.used_weights(run, dict(state)) == "final" and state["train_steps"] == 6
    (run / "weights.json").write_text(json.dumps(
        {"predict_uses": "ema_best.safetensors", "best": {"step": 4}}))
    assert bench.used_weights(run, state) == "ema_best (step 4 of 6)"
    assert state["train_steps"] == 4


def scored_folder(folder: Path, values: dict[str, tuple[str, float, float, float | None]],
                  sha: str = "s") -> Path:
    """A WORK/<label> folder as 'score' writes it: case -> (patient, GED16, HM-IoU16, Dice)."""
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(
        {"samples": 16, "seed": 0, "cases": len(values), "cases_sha256": sha}))
    (folder / "cases.jsonl").write_text("".join(json.dumps(
        {"case": c, "patient": p, "ged_16": g, "hm_iou_16": h, "dice": d}) + "\n"
        for c, (p, g, h, d) in values.items()))
    return folder


def test_compare_reports_the_paired_difference_over_patients(tmp_path, capsys):
    """Hand case: the other run is 0.1 lower in GED on every slice of patient A and equal on
    B's, so the paired mean is -0.05 with every resample in [-0.1, 0]; Dice is compared only
    where both have a value."""
    base = scored_folder(tmp_path / "base", {
        "a1": ("A", 0.5, 0.4, 0.6), "a2": ("A", 0.3, 0.5, None),
        "b1": ("B", 0.9, 0.2, 0.1), "b2": ("B", 0.1, 0.8, 0.9)})
    other = scored_folder(tmp_path / "other", {
        "a1": ("A", 0.4, 0.4, 0.7), "a2": ("A", 0.2, 0.5, 0.5),
        "b1": ("B", 0.9, 0.2, 0.1), "b2": ("B", 0.1, 0.8, 0.9)})
    bench.main(["compare", str(base), str(other), "--boot", "500"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "other" and cells[1] == "4 / 2"
    mean, low, high = (float(x) for x in cells[2].replace("[", "").replace("]", "")
                       .replace(",", "").split())
    assert mean == pytest.approx(-0.05) and -0.1 <= low <= mean <= high <= 0.0
    assert cells[3].startswith("0.000")  # HM-IoU unchanged
    assert cells[4].startswith("0.033")  # Dice: (0.1 + 0 + 0) / 3 slices with both


def test_ged_by_raters_who_marked_hand_case():
    """Three slices: two marked by 1 rater (GED 0.2, 0.4; majority ref 0.1, 0.3), one by all 4
    (GED 0.9, ref 0.2), one patient each: means 0.3 / 0.9, refs 0.2 / 0.2, shares of the mean
    GED (0.5) 0.6 / 3 = 0.2 and 0.9 / 3 = 0.3."""
    rows = [{"patient": p, "raters_marked": k, "ged_16": g,
             "references": {"majority_repeated": {"ged_16": ref}}}
            for p, k, g, ref in (("A", 1, 0.2, 0.1), ("B", 1, 0.4, 0.3), ("C", 4, 0.9, 0.2))]
    boot = bench.PatientBootstrap([r["patient"] for r in rows], 200, 0)
    out = bench.by_raters_marked(rows, 16, boot)
    assert set(out) == {"1", "4"}
    assert out["1"]["ged_16"]["mean"] == pytest.approx(0.3) and out["1"]["ged_16"]["slices"] == 2
    assert out["1"]["majority_repeated"]["mean"] == pytest.approx(0.2)
    assert out["1"]["share"] == pytest.approx(0.2) and out["4"]["share"] == pytest.approx(0.3)
    assert out["4"]["ged_16"]["ci95"] == [pytest.approx(0.9), pytest.approx(0.9)]
    assert bench.raters_marked(np.array([[[0, 1]], [[0, 0]], [[2, 0]]])) == 2


def test_compare_refuses_runs_scored_on_other_slices(tmp_path):
    base = scored_folder(tmp_path / "base", {"a": ("A", 0.5, 0.4, 0.6)})
    other = scored_folder(tmp_path / "other", {"a": ("A", 0.5, 0.4, 0.6)}, sha="t")
    with pytest.raises(DataError, match="not scored on the same slices"):
        bench.main(["compare", str(base), str(other)])
    with pytest.raises(DataError, match="holds no scores"):
        bench.main(["compare", str(base), str(tmp_path)])

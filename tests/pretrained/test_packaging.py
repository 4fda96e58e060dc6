"""A run folder packaged as a model folder: the essentials, fp16 EMA weights, the manifest with
the sha256 of the weights, the card, and the refusals."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffuseg.errors import DataError
from diffuseg.pretrained.card import SECTIONS, missing_sections, unfinished
from diffuseg.pretrained.package import package_run, to_fp16
from diffuseg.pretrained.validation import bootstrap_ci, from_summary, short
from diffuseg.run.verdict import predict_weights


def test_model_folder_holds_the_run_essentials(trained_run, models_dir):
    model = models_dir / "tiny"
    assert {p.name for p in model.iterdir()} == {
        "config.json", "plan.json", "dataset.json", "fingerprint.json", "splits.json",
        "metrics.jsonl", "verdict.json", "model.safetensors", "MODEL.md", "model.json"}
    assert (model / "config.json").read_bytes() == (trained_run / "config.json").read_bytes()
    run_fp = json.loads((trained_run / "fingerprint.json").read_text())
    assert "dataset" in run_fp  # the run records its data's path; the model does not
    assert json.loads((model / "fingerprint.json").read_text()) == {
        k: v for k, v in run_fp.items() if k != "dataset"}
    run_ds = json.loads((trained_run / "dataset.json").read_text())
    assert run_ds["groups"]  # the per-case patient map is dropped, the labels are kept
    assert json.loads((model / "dataset.json").read_text()) == {
        k: v for k, v in run_ds.items() if k != "groups"}
    assert json.loads((model / "splits.json").read_text()) == json.loads(
        (trained_run / "splits.json").read_text())


def test_weights_are_the_ema_in_fp16_with_their_sha256(trained_run, models_dir):
    model = models_dir / "tiny"
    uses = predict_weights(trained_run)  # the EMA predict uses: of the best validation here
    ema, half = load_file(str(uses)), load_file(str(model / "model.safetensors"))
    assert set(ema) == set(half)
    for key, value in ema.items():
        if value.is_floating_point():
            assert half[key].dtype == torch.float16
            assert torch.equal(half[key], value.half()), key  # round to nearest, once
        else:
            assert torch.equal(half[key], value)
    manifest = json.loads((model / "model.json").read_text())
    digest = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["sha256"] == {"model.safetensors": digest}
    assert (manifest["name"], manifest["task"], manifest["spatial_dims"], manifest["raters"],
            manifest["method"]) == ("tiny", "phantom lesions", 2, 2, "ddpm")
    assert manifest["labels"] == {"background": 0, "lesion": 1}
    assert manifest["packaged"]["weights"] == uses.name
    assert manifest["parameters"] == sum(v.numel() for v in ema.values()
                                         if v.is_floating_point())


def test_the_draft_card_has_every_section_and_marks_what_the_run_cannot_know(models_dir):
    card = (models_dir / "tiny" / "MODEL.md").read_text()
    assert missing_sections(card) == []
    todo = unfinished(card)
    # the run cannot know the phantom's licence, the command, the use and the failure modes
    assert {"Licence and attribution", "Training", "Intended use",
            "Known failure modes"} <= set(todo)
    assert "Not a medical device" not in todo and "not a medical device" in card


def test_a_given_card_is_shipped_as_written(tmp_path, trained_run):
    text = "# t\n\n" + "".join(f"## {name}\n\nDone.\n\n" for name in SECTIONS)
    (tmp_path / "card.md").write_text(text)
    done = package_run(trained_run, tmp_path / "m" / "t", card=tmp_path / "card.md")
    assert (tmp_path / "m" / "t" / "MODEL.md").read_text() == text
    assert done.unfinished == []
    assert unfinished(text.replace("## Validation", "## Results")) == ["Validation"]


def test_an_existing_model_folder_needs_overwrite(tmp_path, trained_run):
    out = tmp_path / "twice"
    package_run(trained_run, out)
    (out / "stale.txt").write_text("from before")
    with pytest.raises(DataError, match="--overwrite"):
        package_run(trained_run, out)
    package_run(trained_run, out, overwrite=True)
    assert not (out / "stale.txt").exists()  # replaced as a whole


def test_refusals(tmp_path, trained_run, models_dir):
    with pytest.raises(DataError, match="config.json"):
        package_run(tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match="model folder already"):
        package_run(models_dir / "tiny", tmp_path / "again")
    with pytest.raises(DataError, match="model name 'bad name'"):
        package_run(trained_run, tmp_path / "bad name")
    with pytest.raises(DataError, match="inside"):
        package_run(trained_run, trained_run / "model")
    with pytest.raises(DataError, match=r"'big\.weight'.*fp16"):
        to_fp16({"big.weight": torch.tensor([1.0, 7e4])}, tmp_path / "w.safetensors")


def test_validation_from_an_evaluation_summary(tmp_path, trained_run):
    rng = np.random.default_rng(0)
    dice, ged = rng.uniform(0.5, 0.9, 30), rng.uniform(0.2, 0.5, 30)
    per_case = [{"case": f"c{i}", "n_samples": 16, "dice": float(d), "ged_16": float(g)}
                for i, (d, g) in enumerate(zip(dice, ged, strict=True))]
    per_case[0]["hd95"] = None  # a metric a case does not have is left out, not counted as 0
    (tmp_path / "summary.json").write_text(json.dumps({"per_case": per_case}))
    done = package_run(trained_run, tmp_path / "m", validation=tmp_path / "summary.json")
    record = done.manifest["validation"]
    assert record["cases"] == 30 and "hd95" not in record["metrics"]
    for name, values in (("dice", dice), ("ged_16", ged)):
        m = record["metrics"][name]
        assert m["n"] == 30 and m["mean"] == pytest.approx(values.mean(), abs=1e-5)
        assert m["ci95"][0] < m["mean"] < m["ci95"][1]
    assert short(record).startswith("ged_16 ")  # GED first in the listing
    with pytest.raises(DataError, match="per_case"):
        (tmp_path / "bad.json").write_text("{}")
        from_summary(tmp_path / "bad.json")


def test_bootstrap_interval_of_the_mean():
    assert bootstrap_ci([0.7] * 12) == pytest.approx((0.7, 0.7))
    x = np.random.default_rng(1).normal(3.0, 2.0, 400)
    low, high = bootstrap_ci(list(x))
    # the bootstrap standard error of a mean is sd/sqrt(n) (ddof 0); the percentile interval is
    # then mean +- 1.96 se up to the Monte-Carlo error of 2000 resamples (a few per cent)
    se = x.std() / np.sqrt(x.size)
    assert (low + high) / 2 == pytest.approx(x.mean(), abs=0.1 * se)
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    shifted = bootstrap_ci(list(x + 5.0))  # an interval of the mean moves with the data
    assert shifted == pytest.approx((low + 5.0, high + 5.0))

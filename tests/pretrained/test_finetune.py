"""``train --init``: a model's matching tensors start a new run (exactly its fp16 values), the
others are listed in one line; another method or no matching weight is refused; the run records
the model and its sha256; the loss starts below a fresh start's on the same batch and noise."""

from __future__ import annotations

import json

import pytest
import torch
from models_helpers import TINY, one_line_error
from safetensors.torch import load_file

from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import ConfigError
from diffuseg.methods import build_method
from diffuseg.pretrained.finetune import init_networks
from diffuseg.training.start import build_config


def method_for(phantom, *extra: str):
    config = build_config(None, TINY + list(extra), dataset=phantom)
    torch.manual_seed(0)
    return build_method(config)


def test_matching_tensors_are_the_models_fp16_values(with_models, phantom):
    method = method_for(phantom)
    report = init_networks(method.networks(), "tiny", "ddpm")
    model = load_file(str(with_models / "tiny" / "model.safetensors"))
    state = {f"{n}.{k}": v for n, net in method.networks().items()
             for k, v in net.state_dict().items()}
    assert report.refused == [] and sorted(report.loaded) == sorted(state)
    for key, value in state.items():
        assert value.dtype == torch.float32 or not value.is_floating_point()
        assert torch.equal(value, model[key].to(value.dtype)), key  # fp16 -> fp32 is exact
    assert report.sha256 == json.loads((with_models / "tiny" / "model.json").read_text())[
        "sha256"]["model.safetensors"]


def test_other_tensors_are_listed_in_one_line(with_models, phantom):
    method = method_for(phantom, "network.attention_levels=[false,true]")  # attention added
    before = {k: v.clone() for k, v in method.networks()["denoiser"].state_dict().items()}
    report = init_networks(method.networks(), "tiny", "ddpm")
    assert report.refused and all(why == "not in the model" for _, why in report.refused)
    assert all("attn" in key or "attention" in key for key, _ in report.refused), report.refused
    line = report.line()
    assert "\n" not in line and "not loaded" in line and report.refused[0][0] in line
    after = method.networks()["denoiser"].state_dict()
    for key, _ in report.refused:  # a fresh start where nothing matched
        assert torch.equal(after[key.split(".", 1)[1]], before[key.split(".", 1)[1]])


def test_another_method_or_no_matching_weight_is_refused(with_models, phantom):
    method = method_for(phantom)
    with pytest.raises(ConfigError, match="is a ddpm model and this run trains berdiff"):
        init_networks(method.networks(), "tiny", "berdiff")
    narrow = method_for(phantom, "network.channels=[4,8]", "network.norm_groups=2")
    with pytest.raises(ConfigError, match="no weight .* matches"):
        init_networks(narrow.networks(), "tiny", "ddpm")


def final_loss(run) -> float:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in line][-1]["loss"]


def test_train_init_starts_from_the_model_and_its_loss_is_lower(cli, with_models, tmp_path):
    """Same new data, seed, batches and diffusion noise (functions of seed and step); only the
    starting weights differ, so the first step's loss compares the two starts."""
    data = write_phantom_dataset(tmp_path / "other", n_cases=6, size=24, n_raters=2, seed=5)
    args = ["--plan", "none", "--quiet"] + [a for item in TINY + ["train.max_steps=1"]
                                             for a in ("--set", item)]
    assert cli("train", data, "-o", tmp_path / "fresh", *args)[0] == 0
    code, _, err = cli("train", data, "-o", tmp_path / "tuned", "--init", "tiny", *args)
    assert code == 0, err
    tuned = tmp_path / "tuned"
    assert final_loss(tuned) < final_loss(tmp_path / "fresh")
    record = json.loads((tuned / "init.json").read_text())
    manifest = json.loads((with_models / "tiny" / "model.json").read_text())
    assert record["source"] == "tiny" and record["refused"] == []
    assert record["sha256"] == manifest["sha256"]["model.safetensors"]
    config = json.loads((tuned / "config.json").read_text())
    assert config["train"]["init"] == "tiny"
    model_config = json.loads((with_models / "tiny" / "config.json").read_text())
    assert config["network"] == model_config["network"]  # the model's architecture
    assert "initialised from 'tiny'" in (tuned / "training_log.txt").read_text()


def test_init_with_resume_or_an_unknown_model_is_one_line(cli, with_models, tmp_path, phantom):
    one_line_error(*cli("train", phantom, "-o", tmp_path / "r", "--resume", "--init",
                        "tiny")[::2], "--init", "--resume")
    one_line_error(*cli("train", phantom, "-o", tmp_path / "r", "--init", "tinny")[::2],
                   "did you mean 'tiny'")
    assert not (tmp_path / "r").exists()

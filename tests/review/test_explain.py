"""Explanations: one trajectory frame per step ending at the sample, attention maps from every
attention layer, occlusion sensitivity on a hand-made model whose answer is known, the
counterfactual contrast change, the PNG pictures and the CLI."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch
from helpers import randomise, tiny_config

import diffuseg.methods.berdiff  # noqa: F401  (registers)
import diffuseg.methods.hidiff  # noqa: F401
import diffuseg.methods.medsegdiff_v2  # noqa: F401
from diffuseg.config import ProcessConfig, SampleConfig
from diffuseg.core.ensemble import summarise
from diffuseg.errors import ConfigError
from diffuseg.inference.predictor import Predictor
from diffuseg.methods import build_method
from diffuseg.review.explain import (
    attention_maps,
    counterfactual,
    explain_to_png,
    lower_contrast,
    occlusion,
    trajectory,
)


def predictor(name: str, process: ProcessConfig, attention=(False, True),
              precision: str = "auto") -> Predictor:
    config = tiny_config(name, 2, process=process, steps=4)
    sampler = None if process.kind == "bernoulli" else "ddim"  # None: the process's default
    config = dataclasses.replace(
        config, sample=SampleConfig(steps=4, sampler=sampler),
        network=dataclasses.replace(config.network, attention_levels=attention))
    torch.manual_seed(0)
    method = build_method(config.validate()).eval()
    for net in method.networks().values():
        randomise(net)
    return Predictor(method, config, None, torch.device("cpu"), precision)


def image(size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(100, 20, (1, size, size)).astype(np.float32)


@pytest.mark.parametrize(("name", "process"), [("ddpm", ProcessConfig(T=20)),
                                               ("berdiff", ProcessConfig(kind="bernoulli", T=20)),
                                               ("hidiff", ProcessConfig(kind="bernoulli", T=20))])
@pytest.mark.parametrize("steps", [1, 3, 4])
def test_trajectory_has_one_frame_per_step_and_ends_at_the_sample(name, process, steps):
    p = predictor(name, process)
    frames = trajectory(p, image(), steps=steps, seed=3)
    assert frames.shape == (steps, 16, 16)
    assert frames.min() >= 0 and frames.max() <= 1
    if name == "ddpm":  # deterministic DDIM: the last x0 estimate is the returned sample
        sample = p.segment(image(), n_samples=1, steps=steps, seed=3).samples[0, 0, 0].numpy()
        assert np.allclose(frames[-1], sample, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_explanations_run_in_the_precision_of_segment(precision):
    """The trajectory and the attention maps are of the sample segment returns: every denoiser
    call runs under segment's autocast (bf16 on an AVX-512 BF16 CPU by default), and the last
    frame is that sample. Same precision on both sides, so the atol covers only float32
    reordering, not a bf16 rounding (2^-8 ~ 0.004, which the test would catch)."""
    p = predictor("ddpm", ProcessConfig(T=20), precision=precision)
    seen: list = []
    p.method.denoiser.register_forward_hook(lambda m, i, o: seen.append(
        (torch.is_autocast_enabled("cpu"), o.dtype)))
    sample = p.segment(image(), n_samples=1, steps=2, seed=3).samples[0, 0, 0].numpy()
    expected = {(precision == "bf16", torch.bfloat16 if precision == "bf16" else torch.float32)}
    assert set(seen) == expected
    seen.clear()
    frames = trajectory(p, image(), steps=2, seed=3)
    assert set(seen) == expected
    np.testing.assert_allclose(frames[-1], sample, atol=1e-6)
    seen.clear()
    attention_maps(p, image(), steps=2)
    assert set(seen) == expected


def test_attention_maps_of_unet_levels_and_the_ss_former():
    maps = attention_maps(predictor("ddpm", ProcessConfig(T=20)), image(), steps=2)
    assert maps and all(m.shape == (16, 16) and (m >= 0).all() for m in maps.values())
    assert any("denoiser" in k for k in maps)
    ss = attention_maps(predictor("medsegdiff_v2", ProcessConfig(T=20)), image(), steps=2)
    assert any(k.endswith("attn1") for k in ss) and any(k.endswith("attn2") for k in ss)
    with pytest.raises(ConfigError, match="no attention"):
        attention_maps(predictor("ddpm", ProcessConfig(T=20), (False, False)), image(), steps=2)


def blob_model(im: np.ndarray):
    """A known 'model': foreground probability rises with intensity (a bright blob = lesion);
    9 samples whose thresholds spread over 110..190, so that the share of samples marking a
    pixel (the probability the maps show) rises with intensity too."""
    offsets = np.linspace(-40.0, 40.0, 9)[:, None, None]
    p = 1 / (1 + np.exp(-(im[0][None] - 150 + offsets) / 10))
    return summarise(torch.from_numpy(p).float()[:, None, None])


def blob_image() -> np.ndarray:
    y, x = np.mgrid[:32, :32]
    im = np.full((32, 32), 100.0) + 100.0 * ((y - 20) ** 2 + (x - 10) ** 2 <= 16)
    return im[None].astype(np.float32)


def test_occlusion_highlights_the_region_the_model_depends_on():
    maps = occlusion(blob_model, blob_image(), patch=6)
    box = np.zeros((32, 32), bool)
    box[16:25, 6:15] = True
    for name, values in maps.items():
        assert values.shape == (32, 32) and (values >= 0).all()
        assert box[np.unravel_index(values.argmax(), values.shape)], name
        assert values[box].mean() > 3 * values[~box].mean(), name  # per pixel, on the blob
    with pytest.raises(ConfigError):
        occlusion(blob_model, blob_image(), patch=1)


def test_counterfactual_lowers_the_contrast_inside_the_consensus():
    im = blob_image()
    region = im[0] > 150
    lowered = lower_contrast(im, region, 0.5)
    assert np.allclose(lowered[0][region], 150.0) and (lowered[0][~region] == im[0][~region]).all()
    rows = counterfactual(blob_model, im)
    assert [a for a, _, _ in rows] == [0.0, 0.25, 0.5]
    volumes = [float(r.probability.sum()) for _, _, r in rows]
    assert volumes[0] > volumes[1] > volumes[2]  # less contrast, less lesion


def test_pictures_and_cli(tmp_path, monkeypatch):
    p = predictor("ddpm", ProcessConfig(T=20))
    for kind in ("trajectory", "occlusion", "counterfactual", "attention"):
        path = explain_to_png(p, image(), kind, tmp_path / f"{kind}.png", n_samples=2, steps=2,
                              patch=8)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from diffuseg.cli import main

    monkeypatch.setattr(sys, "argv", ["diffuseg", "explain", str(tmp_path / "missing"), "-i",
                                      str(tmp_path), "-o", str(tmp_path / "o"),
                                      "--kinds", "nope"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2

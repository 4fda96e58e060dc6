"""Inference speed-ups keep the answer: bf16 autocast, channels-last weights and torch.compile
give the masks of plain fp32 eager sampling (docs/performance.md has the timings)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import diffuseg.methods.ldseg  # noqa: F401  (registers "ldseg")
from diffuseg.config import (
    DataConfig,
    MethodConfig,
    NetworkConfig,
    ProcessConfig,
    RunConfig,
    SampleConfig,
)
from diffuseg.core.ensemble import summarise
from diffuseg.data.phantom import majority_mask, make_case
from diffuseg.methods import build_method
from diffuseg.metrics.overlap import dice
from diffuseg.training.loop import autocast

OPTIONS = {"ddpm": {}, "ldseg": {"width": 8}}


def tiny(name: str) -> RunConfig:
    return RunConfig(
        network=NetworkConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4,
                              num_heads=2),
        process=ProcessConfig(T=100), data=DataConfig(patch_size=(16, 16)),
        sample=SampleConfig(steps=2), method=MethodConfig(name=name, options=OPTIONS[name]),
    ).validate()  # fmt: skip


def randomised(name: str, seed: int = 0):
    """Every weight N(0, 0.2^2) (the denoiser's output conv is zero-initialised), eval mode,
    weights left in the default (contiguous) layout."""
    method = build_method(tiny(name))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return method.eval()


def case() -> tuple[torch.Tensor, np.ndarray]:
    c = make_case(2, 16, 3, np.random.default_rng(0))
    image = (c.image - c.image.mean()) / c.image.std()
    return torch.from_numpy(image)[None], majority_mask(c.raters)


def draw(method, image: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    with autocast(torch.device("cpu"), dtype):
        return method.sample(image, 4, steps=2, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_bf16_consensus_dice_within_0_01_of_fp32(name):
    """bf16 autocast (slow on AVX2-only CPUs, fast with AVX-512 BF16/AMX or on GPUs) changes
    the consensus Dice against the rater majority by at most 0.01."""
    image, target = case()
    for seed in range(10):  # the first random weights with a non-trivial consensus (5-95 %)
        method = randomised(name, seed)
        fp32 = summarise(draw(method, image).float())
        if 0.05 < fp32.consensus.float().mean() < 0.95:
            break
    else:
        pytest.fail("no random weights among 10 seeds gave a non-trivial consensus")
    bf16 = summarise(draw(method, image, torch.bfloat16).float())
    d32, d16 = (dice(r.consensus[0].numpy(), target) for r in (fp32, bf16))
    assert abs(d16 - d32) <= 0.01
    assert dice(bf16.consensus.numpy(), fp32.consensus.numpy()) >= 0.99


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_channels_last_weights_give_the_same_samples(name):
    """Method.to() makes conv weights channels-last; the samples equal the default layout's."""
    method = randomised(name)
    image, _ = case()
    contiguous = draw(method, image)
    method.to("cpu")
    convs = [m for net in method.networks().values() for m in net.modules()
             if isinstance(m, nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    # both fp32; channels-last convolutions take other oneDNN kernels (another summation order):
    # 2^-24 ~ 6e-8 relative per rounding, ~1e-6 on O(1) samples after 2 steps; 1e-5 leaves 10x
    torch.testing.assert_close(draw(method, image), contiguous, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_denoiser_gives_the_same_samples():
    """torch.compile of the denoiser (20-80 s to compile on this CPU, hence slow)."""
    method = randomised("ddpm")
    image, _ = case()
    eager = draw(method, image)
    method.denoiser = torch.compile(method.denoiser, dynamic=False)
    torch.testing.assert_close(draw(method, image), eager, atol=1e-4, rtol=0)

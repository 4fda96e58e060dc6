"""BerDiff (Chen et al., MICCAI 2023): loss terms, the sampler's wiring, windows, errors (shapes,
seeding, gradients and round trips: tests/contracts/test_methods.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import SIZE, gen, randomise, tiny_config

import diffuseg.methods.berdiff  # noqa: F401  (registers "berdiff")
from diffuseg.config import (
    ProcessConfig,
    RunConfig,
)
from diffuseg.errors import ConfigError
from diffuseg.methods import build_method
from diffuseg.processes import bernoulli_loss_terms


def config(spatial_dims: int = 2, num_classes: int = 1, kind: str | None = None,
           **options) -> RunConfig:
    return tiny_config("berdiff", spatial_dims, num_classes,
                       process=ProcessConfig(kind=kind, T=100),
                       steps=4, **options)


def build(*args, **kw):
    torch.manual_seed(0)
    method = build_method(config(*args, **kw))
    randomise(method.denoiser)
    return method


def batch(spatial_dims: int, b: int = 2, seed: int = 0) -> dict:
    g = gen(seed)
    sp = SIZE[spatial_dims]
    return {"image": torch.randn(b, 1, *sp, generator=g),
            "mask": torch.randint(0, 2, (b, 1, *sp), generator=g)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_loss_is_kl_plus_weighted_bce_of_the_same_draws(spatial_dims):
    """Re-drawing t and x_t from the same generator reproduces the terms exactly."""
    method = build(spatial_dims, bce_weight=0.5)
    data = batch(spatial_dims)
    terms = method.loss(data, generator=gen(7))
    g = gen(7)
    x0 = data["mask"].float()
    t = method.process.sample_t(2, generator=g)
    x_t = method.process.q_sample(x0, t, generator=g)
    with torch.no_grad():
        logits = method.denoiser(x_t, t, data["image"])
    ref = bernoulli_loss_terms(method.process, x0, x_t, t, logits)
    torch.testing.assert_close(terms["kl"].detach(), ref["kl"])
    torch.testing.assert_close(terms["bce"].detach(), ref["bce"])
    torch.testing.assert_close(terms["loss"].detach(), ref["kl"] + 0.5 * ref["bce"])


def test_loss_follows_the_generator():
    method = build()
    data = batch(2)
    a = method.loss(data, generator=gen(3))["loss"]
    assert a == method.loss(data, generator=gen(3))["loss"]
    assert a != method.loss(data, generator=gen(4))["loss"]


def test_sample_is_ancestral_sampling_over_respaced_steps():
    """x_T ~ B(1/2), then x_{t_p} ~ B(theta_post(x_t, x0_hat)) over process.timesteps(steps), and
    the last x0_hat is returned: written out here with the same generator."""
    method = build().eval()
    image = batch(2, b=1)["image"]
    s = method.sample(image, 2, steps=3, generator=gen(1))
    proc, g = method.process, gen(1)
    x = (torch.rand((2, 1, 16, 16), generator=g) < 0.5).float()
    timesteps = proc.timesteps(3)
    assert timesteps == [99, 66, 32]
    with torch.no_grad():
        for t, t_prev in zip(timesteps, [*timesteps[1:], -1], strict=True):
            logits = method.denoiser(x, torch.full((2,), t), image.repeat(2, 1, 1, 1))
            x0_hat = torch.sigmoid(logits)
            theta = proc.posterior_probs(x, t, t_prev, x0_hat)
            x = theta if t_prev == -1 else (torch.rand(x.shape, generator=g) < theta).float()
    torch.testing.assert_close(s, x.reshape(2, 1, 1, 16, 16))


def test_sliding_windows_cover_a_larger_volume():
    method = build(3).eval()
    method.window = (8, 8, 8)
    s = method.segment(torch.randn(1, 1, 8, 16, 12, generator=gen(0)), 2, steps=2,
                       generator=gen(1))
    assert s.shape == (2, 1, 1, 8, 16, 12)
    assert torch.isfinite(s).all()


def test_errors():
    with pytest.raises(ConfigError, match="num_classes=1"):
        build_method(config(num_classes=3))
    with pytest.raises(ConfigError, match="process.kind='gaussian' contradicts"):
        build_method(config(kind="gaussian"))
    assert build_method(config(kind="bernoulli")).process.kind == "bernoulli"
    with pytest.raises(ConfigError, match="bce_weight"):
        build_method(config(bce_weight=-1.0))
    with pytest.raises(ConfigError, match="did you mean 'method.options.bce_weight'"):
        build_method(config(bce_wieght=1.0))

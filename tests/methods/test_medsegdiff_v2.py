"""The MedSegDiff-V2 method (Wu et al., AAAI 2024): diffusion + anchor loss, the condition encoded
once per image, padding and windows for other input sizes, in 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from helpers import SIZE, gen, randomise, tiny_config

import diffuseg.methods.medsegdiff_v2  # noqa: F401  (registers "medsegdiff_v2")
from diffuseg.config import (
    ProcessConfig,
    RunConfig,
)
from diffuseg.errors import ConfigError, DataError
from diffuseg.methods import build_method, one_hot
from diffuseg.methods.medsegdiff_v2 import pad_to, window_slices
from diffuseg.methods.parts import dice_ce


def config(spatial_dims: int = 2, num_classes: int = 1, **options) -> RunConfig:
    return tiny_config("medsegdiff_v2", spatial_dims, num_classes, process=ProcessConfig(T=50),
                       steps=3, **options)


def build(*args, **kw):
    torch.manual_seed(0)
    method = build_method(config(*args, **kw))
    randomise(method.denoiser)
    return method


def batch(spatial_dims: int, num_classes: int = 1, b: int = 2, seed: int = 0) -> dict:
    g = gen(seed)
    sp = SIZE[spatial_dims]
    labels = torch.randint(0, max(num_classes, 2), (b, 1, *sp), generator=g)
    return {"image": torch.randn(b, 1, *sp, generator=g), "mask": labels}


@pytest.mark.parametrize("spatial_dims, num_classes", [(2, 1), (2, 3), (3, 1)])
def test_loss_is_mse_plus_weighted_anchor_loss(spatial_dims, num_classes):
    """Re-drawing t and the noise from the same generator reproduces both terms."""
    method = build(spatial_dims, num_classes, anchor_weight=2.0)
    data = batch(spatial_dims, num_classes)
    terms = method.loss(data, generator=gen(4))
    g = gen(4)
    y = one_hot(data["mask"], num_classes)
    x0 = 2 * y - 1
    t = method.process.sample_t(2, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        out, anchor = method.denoiser(method.process.q_sample(x0, t, noise=noise), t,
                                      data["image"])
    mse = (out - method.process.training_target(x0, noise, t)).pow(2).mean()
    torch.testing.assert_close(terms["mse"].detach(), mse)
    torch.testing.assert_close(terms["anchor"].detach(), dice_ce(num_classes)(anchor, y))
    torch.testing.assert_close(terms["loss"].detach(), mse + 2.0 * terms["anchor"].detach())


def test_forward_is_denoise_of_the_encoded_condition():
    net = build().denoiser.eval()
    data = batch(2)
    x, t = torch.randn(2, 1, 16, 16, generator=gen(1)), torch.tensor([3, 40])
    with torch.no_grad():
        out, anchor = net(x, t, data["image"])
        condition = net.encode_condition(data["image"])
        torch.testing.assert_close(net.denoise(x, t, condition), out)
    torch.testing.assert_close(condition[1], anchor)


@pytest.mark.parametrize("shape, windows", [((16, 16), 1), ((16, 40), 3), ((8, 8), 1)])
def test_the_condition_is_encoded_once_per_window(shape, windows):
    """Not once per step: 3 sampler steps, S = 2 samples, one encoding per window."""
    method = build().eval()
    calls = []
    encode = method.denoiser.encode_condition
    method.denoiser.encode_condition = lambda c: calls.append(c.shape) or encode(c)
    s = method.segment(torch.randn(1, 1, *shape, generator=gen(0)), 2, steps=3, generator=gen(1))
    assert s.shape == (2, 1, 1, *shape)
    assert len(calls) == windows and all(c == (1, 1, 16, 16) for c in calls)


def test_windows_blend_to_the_network_output_where_only_one_covers():
    """Columns 0..7 of a 16 x 24 image (windows 0..15 and 8..23) lie in the first window only:
    there the blended output is that window's own prediction; everywhere it is a convex blend
    (a constant stays constant)."""
    method = build().eval()
    image, x_t = torch.randn(2, 1, 16, 24, generator=gen(0)), torch.randn(2, 1, 16, 24)
    t = torch.tensor([10, 10])
    with torch.no_grad():
        out = method.denoise_fn(image, 1)(x_t, t)
        first = method.denoiser.denoise(x_t[..., :16], t,
                                        method.denoiser.encode_condition(image[..., :16]))
    torch.testing.assert_close(out[..., :8], first[..., :8])
    method.denoiser.denoise = lambda x, t, c: torch.full_like(x, 0.3)
    torch.testing.assert_close(method.denoise_fn(image, 1)(x_t, t), torch.full_like(x_t, 0.3))


def test_window_slices_and_padding():
    slices = window_slices((16, 40), (16, 16))  # interval int(16 * 3/4) = 12, the last flush
    assert [s[1] for s in slices] == [slice(0, 16), slice(12, 28), slice(24, 40)]
    covered = torch.zeros(16, 40)
    for s in slices:
        covered[s] += 1
    assert covered.min() >= 1
    small = torch.arange(6.0).reshape(1, 1, 2, 3)
    padded = pad_to(small, (4, 3))
    assert padded.shape == (1, 1, 4, 3) and torch.equal(padded[0, 0, 3], small[0, 0, 1])


def test_errors():
    method = build()
    with pytest.raises(DataError, match="patch_size"):
        method.loss({"image": torch.zeros(1, 1, 8, 8), "mask": torch.zeros(1, 1, 8, 8)})
    with pytest.raises(ConfigError, match="anchor_weight"):
        build_method(config(anchor_weight=-1.0))

"""Tests of the MedSegDiff-V2 denoiser and its parts (FF-Parser, Gaussian anchor attention,
SS-Former), in 2D and 3D."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SIZE
from torch import nn

from diffuseg.errors import ConfigError, DataError
from diffuseg.networks import MedSegDiffV2
from diffuseg.networks.medsegdiff_v2 import AnchorAttention, FFParser, SSFormer, gaussian_smooth


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """N(0, scale^2) weights: the output conv starts at zero, which would hide input effects."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def tensor(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def small_net(spatial_dims: int, **kw) -> MedSegDiffV2:
    args = dict(
        spatial_dims=spatial_dims, in_channels=1, cond_channels=2, out_channels=1,
        spatial_size=SIZE[spatial_dims], channels=(8, 16), attention_levels=(False, True),
        norm_groups=4, num_heads=2,
    )  # fmt: skip
    args.update(kw)
    return MedSegDiffV2(**args)


def inputs(spatial_dims: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    sp = SIZE[spatial_dims]
    return tensor(batch, 1, *sp, seed=1), torch.tensor([5, 800][:batch]), tensor(batch, 2, *sp)


# ------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes(spatial_dims):
    sp = SIZE[spatial_dims]
    net = small_net(spatial_dims, out_channels=3, emb_channels=4)
    out, anchor = net(tensor(2, 1, *sp), torch.tensor([0, 9]), tensor(2, 2, *sp), tensor(2, 4))
    assert out.shape == (2, 3, *sp) and anchor.shape == (2, 3, *sp)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv


def test_three_levels_and_anchor_channels():
    net = MedSegDiffV2(
        2, 3, 1, 3, (16, 8), (8, 16, 16), 2, (False, True, True), 4, 0.1, 2, anchor_channels=1
    )
    out, anchor = net(tensor(1, 3, 16, 8), torch.tensor([1]), tensor(1, 1, 16, 8))
    assert out.shape == (1, 3, 16, 8) and anchor.shape == (1, 1, 16, 8)


# ------------------------------------------------------------------------------------------
# FF-Parser: closed forms


@pytest.mark.parametrize("size", [(6, 5), (8, 8), (4, 6, 5)])
def test_ff_parser_identity_filter_is_identity(size):
    x = tensor(2, 3, *size)
    parser = FFParser(3, size)  # initial filter A = 1 + 0i
    torch.testing.assert_close(parser(x), x, rtol=0, atol=1e-5)
    with torch.no_grad():
        parser.weight[..., 0] = 2.5  # real scalar filter: m' = 2.5 m
    torch.testing.assert_close(parser(x), 2.5 * x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(6, 5), (4, 6, 5)])
def test_ff_parser_dc_only_filter_gives_the_mean(size):
    x = tensor(2, 3, *size)
    parser = FFParser(3, size)
    with torch.no_grad():
        parser.weight.zero_()
        parser.weight[(slice(None), *([0] * len(size)), 0)] = 1.0  # keep frequency 0 only
    dims = tuple(range(2, x.ndim))
    torch.testing.assert_close(parser(x), x.mean(dim=dims, keepdim=True).expand_as(x))


def test_ff_parser_phase_ramp_is_a_circular_shift():
    """Shift theorem: A(k) = exp(-2 pi i sum_d k_d s_d / N_d)  =>  m'(n) = m(n - s)."""
    size, shift = (6, 8), (2, -3)
    k0 = torch.fft.fftfreq(size[0]) * size[0]
    k1 = torch.fft.rfftfreq(size[1]) * size[1]
    phase = -2 * math.pi * (k0[:, None] * shift[0] / size[0] + k1[None] * shift[1] / size[1])
    parser = FFParser(2, size)
    with torch.no_grad():
        parser.weight[..., 0] = torch.cos(phase)
        parser.weight[..., 1] = torch.sin(phase)
    x = tensor(1, 2, *size)
    torch.testing.assert_close(parser(x), torch.roll(x, shift, dims=(2, 3)), rtol=0, atol=1e-5)


def test_ff_parser_refuses_other_sizes():
    with pytest.raises(DataError, match="built for"):
        FFParser(1, (8, 8))(tensor(1, 1, 8, 6))


# ------------------------------------------------------------------------------------------
# Gaussian anchor attention: closed forms


def test_gaussian_smooth_of_an_impulse_is_the_kernel():
    sigma, r = 1.3, 2
    i = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(i**2) / (2 * sigma**2))
    k = k / k.sum()
    impulse2 = torch.zeros(1, 1, 9, 9)
    impulse2[0, 0, 4, 4] = 1.0
    expected2 = torch.zeros(1, 1, 9, 9)
    expected2[0, 0, 2:7, 2:7] = k[:, None] * k[None, :]
    torch.testing.assert_close(gaussian_smooth(impulse2, sigma, r), expected2)
    impulse3 = torch.zeros(1, 2, 7, 7, 7)
    impulse3[:, :, 3, 3, 3] = 1.0
    expected3 = torch.zeros(1, 2, 7, 7, 7)
    expected3[:, :, 1:6, 1:6, 1:6] = k[:, None, None] * k[None, :, None] * k[None, None, :]
    torch.testing.assert_close(gaussian_smooth(impulse3, sigma, r), expected3)
    constant = torch.full((1, 1, 5, 6), 3.0)
    torch.testing.assert_close(gaussian_smooth(constant, sigma, r), constant)


def test_anchor_attention_closed_form():
    block = AnchorAttention(2, anchor_channels=1)
    f = tensor(2, 4, 8, 8)
    with torch.no_grad():
        block.to_map.weight.fill_(1.0)
        block.to_map.bias.fill_(0.5)
    constant = torch.full((2, 1, 8, 8), -1.0)  # blur(c) = c, max(c, c) = c
    expected = f * (1 + torch.sigmoid(torch.tensor(-1.0 + 0.5)))
    torch.testing.assert_close(block(f, constant), expected)
    impulse = torch.full((1, 1, 8, 8), -4.0)
    impulse[0, 0, 4, 4] = 4.0  # max(blur(a), a) keeps the peak and widens it
    ones = torch.ones(1, 4, 8, 8)
    with torch.no_grad():
        gate = block(ones, impulse) - 1  # = sigmoid(f_anc + 0.5)
    f_anc = torch.logit(gate[0, 0]) - 0.5
    assert (f_anc >= impulse[0, 0] - 1e-4).all()
    assert f_anc[4, 4].item() == pytest.approx(4.0, abs=1e-4)
    k = torch.exp(-(torch.arange(-2.0, 3.0) ** 2) / 2)  # sigma = exp(0) = 1 at initialisation
    k = k / k.sum()
    # the neighbour is raised by the blur: -4 + 8 k(0) k(1) = -3.213
    assert f_anc[4, 5].item() == pytest.approx(-4.0 + 8 * k[2].item() * k[3].item(), abs=1e-4)


# ------------------------------------------------------------------------------------------
# the whole network


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cond_time_and_x_matter_and_anchor_sees_only_cond(spatial_dims):
    net = randomise(small_net(spatial_dims)).eval()
    x, t, cond = inputs(spatial_dims)
    with torch.no_grad():
        out, anchor = net(x, t, cond)
        out_c, anchor_c = net(x, t, cond.flip(0))
        out_t, anchor_t = net(x, t + 100, cond)
        out_x, anchor_x = net(-x, t, cond)
    for changed in (out_c, out_t, out_x):
        assert (changed - out).abs().amax(dim=(1, 2, 3)).min() > 1e-3 * out.abs().max()
    assert (anchor_c - anchor).abs().amax(dim=(1, 2, 3)).min() > 1e-3 * anchor.abs().max()
    assert torch.equal(anchor_t, anchor) and torch.equal(anchor_x, anchor)


def test_gradients_reach_every_parameter():
    net = randomise(small_net(2, emb_channels=2)).train()
    x, t, cond = inputs(2)
    out, anchor = net(x, t, cond, tensor(2, 2))
    (out.square().mean() + anchor.square().mean()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_ssformer_attends_to_the_condition():
    block = randomise(SSFormer(8, (2, 2), num_heads=2))
    h, c = tensor(2, 8, 2, 2), tensor(2, 8, 2, 2, seed=2)
    out = block(h, c)
    assert out.shape == h.shape
    assert not torch.allclose(out, block(h, c.flip(0)))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bf16_autocast_close_to_fp32(spatial_dims):
    net = randomise(small_net(spatial_dims)).eval()
    x, t, cond = inputs(spatial_dims)
    with torch.no_grad():
        out, anchor = net(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out16, anchor16 = net(x, t, cond)
    for low, ref in ((out16, out), (anchor16, anchor)):
        assert low.dtype == torch.bfloat16
        # bf16 unit roundoff 2^-9: a few dozen layers stay well under 5% relative error
        assert (low.float() - ref).norm() / ref.norm() < 0.05


def test_errors():
    net = small_net(2)
    x, t, cond = inputs(2)
    with pytest.raises(DataError, match=r"spatial size \[16, 16\]"):
        net(tensor(2, 1, 8, 8), t, tensor(2, 2, 8, 8))
    with pytest.raises(DataError, match="cond .* required"):
        net(x, t, None)
    with pytest.raises(DataError, match="must share the batch"):
        net(x, t, cond[:1])
    with pytest.raises(ConfigError, match="divisible by 2"):
        small_net(2, spatial_size=(16, 15))
    with pytest.raises(ConfigError, match="num_heads=3"):
        small_net(2, num_heads=3)
    with pytest.raises(ConfigError, match="norm_groups=3"):
        small_net(2, norm_groups=3)

"""Window positions, the Gaussian map and blending; per-step windowed sampling of a volume that fits
one window equals whole-volume sampling."""

from __future__ import annotations

import pytest
import torch
from helpers import gen, randomise, tiny_config

from diffuseg.config import ProcessConfig
from diffuseg.methods import build_method
from diffuseg.sampling.windows import (
    gaussian_importance,
    sliding_blend,
    window_slices,
    window_starts,
)


def test_window_starts_cover_the_axis_with_the_overlap():
    assert window_starts(64, 64, 0.25) == [0]
    assert window_starts(40, 64, 0.25) == [0]
    starts = window_starts(256, 64, 0.25)
    assert starts[0] == 0 and starts[-1] == 256 - 64
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert max(gaps) <= 48 and min(gaps) > 0  # overlap >= 64 - 48 = 16 voxels
    assert len(window_slices((256, 100, 64), (64, 64, 64), 0.25)) == len(starts) * 2 * 1


def test_gaussian_importance_is_centred_positive_and_symmetric():
    g = gaussian_importance((9, 8, 7))
    assert g.shape == (9, 8, 7) and float(g.min()) > 0
    assert float(g.max()) <= 1.0 and g[4, 3:5, 3].min() == g.max()
    torch.testing.assert_close(g, g.flip(0).flip(1).flip(2))


@pytest.mark.parametrize("spatial, window", [((40, 24), (16, 16)), ((20, 12, 28), (8, 8, 8))])
def test_blending_a_constant_field_is_exact(spatial, window):
    x = torch.full((2, 3, *spatial), 0.7)
    out = sliding_blend(lambda v: v, x, window, overlap=0.5, max_items=3)
    torch.testing.assert_close(out, x, rtol=1e-6, atol=0)  # exact up to float32 rounding
    const = sliding_blend(lambda v: torch.full_like(v[:, :1], -2.5), x, window)
    torch.testing.assert_close(const, torch.full((2, 1, *spatial), -2.5), rtol=0, atol=1e-6)


def test_blending_a_pointwise_function_leaves_no_seams():
    """A voxel-wise fn gives every window the same value at a shared voxel: the blend equals the
    whole-volume result everywhere (no seam), whatever the weights."""
    x = torch.randn((1, 2, 30, 22), generator=gen(0))
    fn = lambda v: torch.tanh(v[:, :1] * 2 + v[:, 1:])  # noqa: E731
    torch.testing.assert_close(sliding_blend(fn, x, (8, 8), max_items=5), fn(x),
                               rtol=0, atol=1e-6)


def test_no_call_gets_more_than_max_items_crops_and_the_split_changes_nothing():
    calls = []

    def fn(v):
        calls.append(v.shape[0])
        return torch.tanh(v * 3)

    x = torch.randn((2, 1, 24, 24), generator=gen(4))
    whole = sliding_blend(fn, x, (8, 8), overlap=0.0, max_items=8)
    assert calls == [8, 8] + [2]  # 9 windows x 2 items: 4 whole windows per call
    calls.clear()
    many = torch.randn((5, 1, 24, 24), generator=gen(5))  # 5 items > max_items = 4
    split = sliding_blend(fn, many, (8, 8), overlap=0.5, max_items=4)
    assert calls == [4, 1] * 25  # 25 windows, each one's 5 items in pieces of 4 and 1
    torch.testing.assert_close(split, sliding_blend(fn, many, (8, 8), overlap=0.5,
                                                    max_items=100), rtol=0, atol=1e-6)
    torch.testing.assert_close(whole, sliding_blend(fn, x, (8, 8), overlap=0.0, max_items=1),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_windowed_sampling_of_a_volume_inside_one_window_equals_whole_sampling(spatial_dims):
    config = tiny_config("ddpm", spatial_dims, process=ProcessConfig(T=50), steps=3)
    method = build_method(config)
    randomise(method.denoiser, 1)
    size = (8, 8) if spatial_dims == 2 else (8, 8, 8)
    image = torch.randn((1, 1, *size), generator=gen(2))
    whole = method.sample(image, 2, generator=gen(3))
    method.window = tuple(2 * s for s in size)  # larger than the volume: one window
    windowed = method.sample(image, 2, generator=gen(3))
    torch.testing.assert_close(windowed, whole, rtol=0, atol=1e-6)
    method.window = size  # exactly the volume: one window
    torch.testing.assert_close(method.sample(image, 2, generator=gen(3)), whole, rtol=0, atol=1e-6)


def test_windowed_sampling_of_a_larger_volume_runs_every_step_on_one_field():
    """Every step calls the denoiser on all windows of one x_t: 4 windows x 3 steps."""
    config = tiny_config("ddpm", 2, process=ProcessConfig(T=50), steps=3)
    method = build_method(config)
    randomise(method.denoiser, 1)
    method.window = (16, 16)
    seen = []
    forward = method.denoiser.forward
    method.denoiser.forward = lambda x, t, c: (seen.append(x.shape), forward(x, t, c))[1]
    out = method.sample(torch.randn((1, 1, 16, 32), generator=gen(2)), 2, generator=gen(3))
    assert out.shape == (2, 1, 1, 16, 32) and torch.isfinite(out).all()
    assert len(seen) == 3 and all(s[0] == 2 * 3 for s in seen)  # 3 windows, 2 samples, one call


def test_sampling_memory_estimate_counts_windowed_calls_and_the_state():
    """Hand-computed: 16 hypotheses of 256^3 in 64^3 windows with width 8 and one channel."""
    from diffuseg.sampling.memory import STATE_COPIES, sampling_bytes

    v, w = 256**3, 64**3
    calls = 16 * 8 * w * 8  # 16 crops per call (MAX_ITEMS), 2 float32 per activation
    state = 16 * v * 4 * STATE_COPIES
    assert sampling_bytes(16, v, 8, window_voxels=w) == calls + state
    # 64 hypotheses: the call stays at 16 crops, the state grows 4x
    assert sampling_bytes(64, v, 8, window_voxels=w) == calls + 4 * state
    assert sampling_bytes(2, w, 8) == 2 * 8 * w * 8 + 2 * w * 4 * STATE_COPIES  # no windows

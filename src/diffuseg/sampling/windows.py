"""Overlapping windows over a volume, a Gaussian importance map and blending: pure functions.

Whole-volume diffusion sampling with a network trained on patches runs *every* denoising step
over the full volume: the state x_t is one global field (one shared noise field, so windows agree),
and only the denoiser call is split into windows whose outputs are blended. This is the
``sliding_window_inference`` of MONAI and nnU-Net, applied per step, not independent per-window
sampling chains (which disagree at their borders and leave seams).

Windows along an axis of size n with window w and overlap o start at

    s_j = round(j (n - w) / (m - 1)),  j = 0..m-1,  m = ceil((n - w) / (w (1 - o))) + 1,

so the first starts at 0, the last ends at n and neighbours overlap by at least o w. The blended
output at voxel v is

    y(v) = sum_i g(v - s_i) f_i(v) / sum_i g(v - s_i),

with g the Gaussian importance map of nnU-Net (sigma = w / 8 per axis, centre weight 1, floored
at its smallest positive value so that no voxel has weight 0). Because the weights sum to the
denominator, blending a constant field returns that constant, and a volume that fits one window
gets exactly ``fn(volume)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Window = tuple[slice, ...]

# window crops per call of ``fn`` (windows x the batch's items): bounds the activations of one
# denoiser call whatever the volume size and the number of hypotheses (16 crops of 64^3 through
# the [8, 16, 32] U-Net peak at 2.2 GB; docs/performance.md, 3D volumes)
MAX_ITEMS = 16


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``window`` voxels covering ``[0, size)`` (module docstring)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap} must lie in [0, 1)")
    if window >= size:
        return [0]
    stride = max(1.0, window * (1.0 - overlap))
    count = math.ceil((size - window) / stride) + 1
    return [round(j * (size - window) / (count - 1)) for j in range(count)]


def window_slices(spatial: Sequence[int], window: Sequence[int], overlap: float) -> list[Window]:
    """Every window (one slice per spatial axis) of the grid ``spatial``, in C order."""
    sizes = [min(w, s) for s, w in zip(spatial, window, strict=True)]
    per_axis = [[slice(a, a + w) for a in window_starts(s, w, overlap)]
                for s, w in zip(spatial, sizes, strict=True)]
    return list(itertools.product(*per_axis))


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """The separable Gaussian map ``[*window]``: centre weight 1, sigma = ``sigma_scale`` w per
    axis (nnU-Net's 1/8), values floored at the smallest positive one."""
    maps = []
    for w in window:
        x = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
        sigma = max(w * sigma_scale, 1e-6)
        maps.append(torch.exp(-0.5 * (x / sigma) ** 2))
    g = maps[0]
    for m in maps[1:]:
        g = g[..., None] * m
    g = g / g.max()
    positive = g[g > 0]
    return g.clamp_min(float(positive.min())).to(dtype)


def sliding_blend(fn: Callable[[Tensor], Tensor], inputs: Tensor, window: Sequence[int], *,
                  overlap: float = 0.25, max_items: int = MAX_ITEMS,
                  importance: Tensor | None = None) -> Tensor:
    """``fn`` applied to ``inputs [B, C, *sp]`` in overlapping windows, blended with Gaussian
    weights (module docstring). Each call of ``fn`` gets at most ``max_items`` crops: whole
    windows (all B items of each) when B <= ``max_items``, else one window's items in pieces.
    ``fn`` maps ``[N, C, *w]`` to ``[N, C_out, *w]`` item by item. When the volume fits one
    window this is exactly ``fn(inputs)``."""
    spatial = tuple(inputs.shape[2:])
    slices = window_slices(spatial, window, overlap)
    if len(slices) == 1:
        return fn(inputs)
    size = tuple(s.stop - s.start for s in slices[0])
    weight_map = (importance if importance is not None else gaussian_importance(size)).to(
        inputs.device)
    b = inputs.shape[0]
    out: Tensor | None = None
    norm = torch.zeros(spatial, dtype=torch.float32, device=inputs.device)
    if max_items < 1:
        raise ValueError(f"max_items={max_items} must be at least 1")
    per_call = max(1, max_items // b)  # windows per call
    for first in range(0, len(slices), per_call):
        group = slices[first:first + per_call]
        crops = torch.cat([inputs[(..., *w)] for w in group], dim=0)
        result = torch.cat([fn(piece) for piece in crops.split(max_items)])
        if out is None:
            out = torch.zeros((b, result.shape[1], *spatial), dtype=torch.float32,
                              device=inputs.device)
        for i, w in enumerate(group):
            out[(..., *w)] += result[i * b:(i + 1) * b].float() * weight_map
            norm[w] += weight_map
    assert out is not None
    return (out / norm).to(inputs.dtype)

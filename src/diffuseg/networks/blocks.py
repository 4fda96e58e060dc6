"""Building blocks shared by the denoisers and segmentors, for ``spatial_dims`` in {2, 3}.

The design follows the U-Net of improved-diffusion (Nichol & Dhariwal 2021) as used for
segmentation by Wolleb et al. (2022) and MedSegDiff (Wu et al. 2023), written from scratch:

* ``timestep_embedding``: sinusoidal embedding of the diffusion step (Vaswani et al. 2017, §3.5;
  Ho et al. 2020, App. B).
* ``ResBlock``: GroupNorm -> SiLU -> conv -> GroupNorm -> FiLM(emb) -> SiLU -> dropout -> conv,
  plus a (1x1 conv) skip path. FiLM is the "scale-shift norm" of improved-diffusion (AdaGN in
  Dhariwal & Nichol 2021, §3): ``h = GroupNorm(h) * (1 + s) + b``, ``(s, b) = Linear(SiLU(emb))``.
* ``AttentionBlock``: multi-head self-attention over the flattened spatial positions.
* ``Downsample`` (strided conv) and ``Upsample`` (nearest neighbour + conv).

Every block whose behaviour depends on the embedding accepts ``emb=None``; the segmentors use the
same blocks without any time input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuseg.errors import ConfigError

__all__ = [
    "AttentionBlock",
    "Downsample",
    "ResBlock",
    "Upsample",
    "check_heads",
    "check_width",
    "conv_nd",
    "dropout",
    "multihead_attention",
    "timestep_embedding",
]


def conv_nd(
    spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> nn.Module:
    """An ``nn.Conv2d`` or ``nn.Conv3d`` with "same" padding for odd kernels."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims={spatial_dims} is not supported; use 2 or 3")
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return conv(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def check_width(channels: int, norm_groups: int, what: str = "a channel width") -> None:
    """Raise ConfigError unless GroupNorm with ``norm_groups`` groups can normalise ``channels``."""
    if norm_groups < 1 or channels % norm_groups:
        raise ConfigError(
            f"norm_groups={norm_groups} does not divide {what} {channels}; "
            "choose channel widths that are multiples of norm_groups"
        )


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t w_i), sin(t w_i)]`` with ``w_i = max_period^(-i / (dim/2))``.

    ``t`` is ``[B]`` (integer or real steps); returns ``[B, dim]`` float32 (a zero column is
    appended when ``dim`` is odd). Vaswani et al. (2017) §3.5, as in Ho et al. (2020).
    """
    half = dim // 2
    i = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * i / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _broadcast(v: Tensor, ndim: int) -> Tensor:
    """``[B, C]`` -> ``[B, C, 1, ..., 1]`` with ``ndim`` dims in all."""
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


class ResBlock(nn.Module):
    """Residual block with optional FiLM conditioning and (MC-)dropout.

    ``out = skip(x) + conv2(dropout(SiLU(FiLM(GN(conv1(SiLU(GN(x))))))))``, where
    ``FiLM(h) = h * (1 + s) + b`` and ``(s, b) = Linear(SiLU(emb))`` when ``emb_dim > 0``.
    Dropout is active in training mode, or whenever ``mc_dropout=True`` is passed (MC dropout,
    Gal & Ghahramani 2016); its masks are drawn from ``generator`` when one is given.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        emb_dim: int = 0,
        norm_groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_width(in_channels, norm_groups)
        check_width(out_channels, norm_groups)
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = conv_nd(spatial_dims, in_channels, out_channels, 3)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.conv2 = conv_nd(spatial_dims, out_channels, out_channels, 3)
        self.film = nn.Linear(emb_dim, 2 * out_channels) if emb_dim > 0 else None
        self.dropout = dropout
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else conv_nd(spatial_dims, in_channels, out_channels, 1)
        )

    def forward(
        self,
        x: Tensor,
        emb: Tensor | None = None,
        mc_dropout: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            if emb is None:
                raise ValueError("this ResBlock was built with emb_dim > 0 and needs emb")
            scale, shift = self.film(F.silu(emb)).chunk(2, dim=1)
            h = h * (1 + _broadcast(scale, h.ndim)) + _broadcast(shift, h.ndim)
        h = F.silu(h)
        h = dropout(h, self.dropout, self.training or mc_dropout, generator)
        return self.skip(x) + self.conv2(h)


def dropout(x: Tensor, p: float, active: bool, generator: torch.Generator | None) -> Tensor:
    """Inverted dropout ``x * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` drawn from ``generator``
    (the global RNG when None, as ``F.dropout``); the identity when inactive or ``p = 0``."""
    if not active or p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


def multihead_attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int) -> Tensor:
    """Scaled dot-product attention ``softmax(q k^T / sqrt(d)) v`` per head (Vaswani et al. 2017,
    eq. 1): q ``[B, N, C]``, k and v ``[B, M, C]`` -> ``[B, N, C]``, ``d = C / num_heads``."""
    b, n, c = q.shape
    assert c % num_heads == 0, "channels must be divisible by num_heads (checked at build)"

    def split(x: Tensor) -> Tensor:
        return x.reshape(b, x.shape[1], num_heads, c // num_heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, n, c)


def check_heads(channels: int, num_heads: int) -> None:
    if num_heads < 1 or channels % num_heads:
        raise ConfigError(
            f"num_heads={num_heads} does not divide the attention width {channels}; "
            "choose num_heads dividing every channel width that uses attention"
        )


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over all spatial positions (2D or 3D):
    ``x + proj(MHA(GN(x)))`` with q, k, v from one 1x1 projection of the normalised tokens."""

    def __init__(self, channels: int, num_heads: int = 4, norm_groups: int = 8) -> None:
        super().__init__()
        check_width(channels, norm_groups)
        check_heads(channels, num_heads)
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        tokens = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # [B, N, C]
        q, k, v = self.qkv(tokens).chunk(3, dim=2)
        h = self.proj(multihead_attention(q, k, v, self.num_heads))
        return x + h.transpose(1, 2).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Halve every spatial size with a 3x3 (x3) convolution of stride 2."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims, channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double every spatial size: nearest-neighbour interpolation, then a 3x3 (x3) convolution."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims, channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

"""The conditional denoiser U-Net and the plain segmentation U-Net (docs/architecture.md).

Both share ``UNetBody``: an encoder of ``num_res_blocks`` residual blocks (+ self-attention where
``attention_levels`` says so) per level with a strided-conv downsampling between levels, a middle
(res, attention if the last level has it, res), and a decoder of ``num_res_blocks + 1`` residual
blocks per level fed with the encoder's skip connections, as in improved-diffusion
(Nichol & Dhariwal 2021) and its segmentation uses (Wolleb et al. 2022; Wu et al. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuseg.errors import ConfigError, DataError
from diffuseg.networks.blocks import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    check_heads,
    check_width,
    conv_nd,
    timestep_embedding,
)

__all__ = [
    "ConditionalUNet",
    "OutputHead",
    "SegmentationUNet",
    "TimeEmbedding",
    "UNetBody",
    "check_input",
    "count_parameters",
]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable (``requires_grad``) scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_input(x: Tensor, name: str, spatial_dims: int, channels: int, levels: int) -> None:
    """Raise DataError unless ``x`` is ``[B, channels, *spatial]`` with every spatial size
    divisible by ``2^(levels-1)`` (the U-Net halves the size ``levels - 1`` times)."""
    if x.ndim != spatial_dims + 2:
        raise DataError(
            f"{name} has shape {list(x.shape)} but spatial_dims={spatial_dims} needs "
            f"{spatial_dims + 2} dimensions [B, C, *spatial]"
        )
    if x.shape[1] != channels:
        raise DataError(
            f"{name} has {x.shape[1]} channels but the network was built for {channels}; "
            "check in_channels/cond_channels against the data"
        )
    factor = 2 ** (levels - 1)
    if any(s % factor for s in x.shape[2:]):
        raise DataError(
            f"{name} spatial size {list(x.shape[2:])} is not divisible by {factor} "
            f"(2^(levels-1) for {levels} levels); pad or crop to a multiple of {factor}"
        )


class UNetBody(nn.Module):
    """Encoder, middle and decoder of the U-Net at widths ``channels``; input and output have
    ``channels[0]`` features. ``emb_dim = 0`` builds blocks without any embedding input."""

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        num_res_blocks: int,
        attention_levels: Sequence[bool],
        norm_groups: int,
        dropout: float,
        num_heads: int,
        emb_dim: int,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        if len(attention_levels) != len(channels):
            raise ConfigError(
                f"attention_levels has {len(attention_levels)} entries but channels has "
                f"{len(channels)}; give one true/false per level"
            )
        if num_res_blocks < 1:
            raise ConfigError(f"num_res_blocks={num_res_blocks} must be at least 1")
        for c in channels:
            check_width(c, norm_groups, "channel width")
        for c, use in zip(channels, attention_levels, strict=True):
            if use:
                check_heads(c, num_heads)
        self.levels = len(channels)
        levels = self.levels

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(spatial_dims, cin, cout, emb_dim, norm_groups, dropout)

        def attn(c: int, use: bool) -> nn.Module:
            return AttentionBlock(c, num_heads, norm_groups) if use else nn.Identity()

        skip_widths, ch = [channels[0]], channels[0]
        self.enc_res, self.enc_attn, self.down = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level, (c, use) in enumerate(zip(channels, attention_levels, strict=True)):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(res(ch, c))
                attns.append(attn(c, use))
                ch = c
                skip_widths.append(c)
            self.enc_res.append(blocks)
            self.enc_attn.append(attns)
            if level < levels - 1:
                self.down.append(Downsample(spatial_dims, c))
                skip_widths.append(c)

        self.mid_res1 = res(ch, ch)
        self.mid_attn = attn(ch, attention_levels[-1])
        self.mid_res2 = res(ch, ch)

        dec_res: list[nn.ModuleList] = [nn.ModuleList() for _ in range(levels)]
        dec_attn: list[nn.ModuleList] = [nn.ModuleList() for _ in range(levels)]
        up: list[nn.Module] = [nn.Identity() for _ in range(levels - 1)]
        for level in reversed(range(levels)):
            c, use = channels[level], attention_levels[level]
            for _ in range(num_res_blocks + 1):
                dec_res[level].append(res(ch + skip_widths.pop(), c))
                dec_attn[level].append(attn(c, use))
                ch = c
            if level > 0:
                up[level - 1] = Upsample(spatial_dims, c)
        assert not skip_widths, "every encoder skip must be consumed by the decoder"
        self.dec_res, self.dec_attn = nn.ModuleList(dec_res), nn.ModuleList(dec_attn)
        self.up = nn.ModuleList(up)

    def encode(
        self,
        h: Tensor,
        emb: Tensor | None,
        mc_dropout: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Encoder: returns the coarsest features and the skips (finest first)."""
        skips = [h]
        for level in range(self.levels):
            for res, attn in zip(self.enc_res[level], self.enc_attn[level], strict=True):
                h = attn(res(h, emb, mc_dropout, generator))
                skips.append(h)
            if level < self.levels - 1:
                h = self.down[level](h)
                skips.append(h)
        return h, skips

    def middle(
        self,
        h: Tensor,
        emb: Tensor | None,
        mc_dropout: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        h = self.mid_res1(h, emb, mc_dropout, generator)
        return self.mid_res2(self.mid_attn(h), emb, mc_dropout, generator)

    def decode(
        self,
        h: Tensor,
        skips: list[Tensor],
        emb: Tensor | None,
        mc_dropout: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Decoder: consumes ``skips`` (popped coarsest first); returns ``channels[0]`` features."""
        skips = list(skips)
        for level in reversed(range(self.levels)):
            for res, attn in zip(self.dec_res[level], self.dec_attn[level], strict=True):
                h = torch.cat([h, skips.pop()], dim=1)
                h = attn(res(h, emb, mc_dropout, generator))
            if level > 0:
                h = self.up[level - 1](h)
        return h

    def forward(
        self,
        h: Tensor,
        emb: Tensor | None,
        mc_dropout: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        h, skips = self.encode(h, emb, mc_dropout, generator)
        h = self.middle(h, emb, mc_dropout, generator)
        return self.decode(h, skips, emb, mc_dropout, generator)


class OutputHead(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv to ``out_channels``; ``zero_init`` zeroes the conv so that
    an untrained denoiser predicts 0 (improved-diffusion's convention)."""

    def __init__(
        self, spatial_dims: int, channels: int, out_channels: int, norm_groups: int, zero_init: bool
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.conv = conv_nd(spatial_dims, channels, out_channels, 3)
        if zero_init:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(F.silu(self.norm(h)))


class TimeEmbedding(nn.Module):
    """``MLP(sinusoid(t)) [+ Linear(emb)]``: ``[B] -> [B, 4 * base]`` (improved-diffusion)."""

    def __init__(self, base: int, emb_channels: int = 0) -> None:
        super().__init__()
        self.base = base
        dim = 4 * base
        self.mlp = nn.Sequential(nn.Linear(base, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.extra = nn.Linear(emb_channels, dim) if emb_channels > 0 else None

    def forward(self, t: Tensor, batch: int, emb: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, device=self.mlp[0].weight.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise DataError(f"t has shape {list(t.shape)}; give one step per example, [{batch}]")
        out = self.mlp(timestep_embedding(t, self.base))
        if self.extra is None:
            if emb is not None:
                raise DataError("emb was given but the network was built with emb_channels=0")
            return out
        if emb is None or emb.shape != (batch, self.extra.in_features):
            got = None if emb is None else list(emb.shape)
            raise DataError(
                f"emb must be [{batch}, {self.extra.in_features}] (emb_channels), got {got}"
            )
        return out + self.extra(emb)


class ConditionalUNet(nn.Module):
    """Denoiser ``f(x_t, t, cond[, emb])``: the image ``cond`` is concatenated to ``x_t`` along
    channels at the input (Wolleb et al. 2022); ``t`` (and the optional ``emb``, e.g. CIMD's
    latent z) modulate every residual block by FiLM. The output conv is zero-initialised."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        cond_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] = (False, False, True),
        norm_groups: int = 8,
        dropout: float = 0.0,
        num_heads: int = 4,
        emb_channels: int = 0,
    ) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.cond_channels, self.out_channels = cond_channels, out_channels
        self.time = TimeEmbedding(channels[0], emb_channels)
        self.stem = conv_nd(spatial_dims, in_channels + cond_channels, channels[0], 3)
        self.body = UNetBody(
            spatial_dims, channels, num_res_blocks, attention_levels, norm_groups, dropout,
            num_heads, 4 * channels[0],
        )  # fmt: skip
        self.head = OutputHead(spatial_dims, channels[0], out_channels, norm_groups, True)

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, emb: Tensor | None = None
    ) -> Tensor:
        """x ``[B, in, *sp]``, t ``[B]`` (or a scalar), cond ``[B, cond, *sp]``,
        emb ``[B, emb_channels]`` -> ``[B, out, *sp]``."""
        check_input(x, "x", self.spatial_dims, self.in_channels, self.body.levels)
        if self.cond_channels > 0:
            if cond is None:
                raise DataError(
                    f"cond (the image, {self.cond_channels} channels) is required by this network"
                )
            check_input(cond, "cond", self.spatial_dims, self.cond_channels, self.body.levels)
            if cond.shape[0] != x.shape[0] or cond.shape[2:] != x.shape[2:]:
                raise DataError(
                    f"cond shape {list(cond.shape)} does not match x shape {list(x.shape)} in "
                    "batch and spatial size"
                )
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise DataError("cond was given but the network was built with cond_channels=0")
        h = self.body(self.stem(x), self.time(t, x.shape[0], emb))
        return self.head(h)


class SegmentationUNet(nn.Module):
    """Plain U-Net segmentor ``x -> logits`` with the same blocks and no time input
    (``attention_levels=None`` means no attention at any level).

    MC dropout: dropout is active in ``train()`` mode, and in ``eval()`` mode when
    ``forward(x, mc_dropout=True)`` is called, so that repeated calls draw different masks from
    the approximate posterior (Gal & Ghahramani 2016). It needs ``dropout > 0``. The dropout masks
    are drawn from ``generator`` (same seed, same masks); from torch's global RNG when None.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128),
        num_res_blocks: int = 1,
        norm_groups: int = 8,
        dropout: float = 0.0,
        attention_levels: Sequence[bool] | None = None,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        if attention_levels is None:
            attention_levels = (False,) * len(channels)
        self.spatial_dims, self.in_channels, self.out_channels = (
            spatial_dims, in_channels, out_channels,
        )  # fmt: skip
        self.stem = conv_nd(spatial_dims, in_channels, channels[0], 3)
        self.body = UNetBody(
            spatial_dims, channels, num_res_blocks, attention_levels, norm_groups, dropout,
            num_heads, 0,
        )  # fmt: skip
        self.head = OutputHead(spatial_dims, channels[0], out_channels, norm_groups, False)

    def forward(
        self, x: Tensor, *, mc_dropout: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """x ``[B, in, *sp]`` -> logits ``[B, out, *sp]``."""
        check_input(x, "x", self.spatial_dims, self.in_channels, self.body.levels)
        return self.head(self.body(self.stem(x), None, mc_dropout, generator))

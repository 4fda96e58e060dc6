"""The mask autoencoder and the image encoder of latent diffusion segmentation (LDSeg: Zaman et
al., "Latent diffusion for medical image segmentation: end to end learning for fast sampling and
accuracy", 2024, Sec. III), for ``spatial_dims`` in {2, 3}.

* ``MaskAutoencoder``: the label encoder z_l(0) = f_enc(y) and label decoder y_hat = f_dec(z).
  A mask ``[B, K, *sp]`` becomes a latent ``[B, latent_channels, *sp / 2^d]`` (d =
  ``downsamples``). The latent is bounded, z = tanh(h), so that it lives in [-1, 1] like the
  masks that pixel-space diffusion denoises and the sampler's x0_hat can be clamped to [-1, 1].
* ``ImageEncoder``: the image embedding z_i = f_img(X) ``[B, out_channels, *sp / 2^d]``, at the
  latent resolution, which conditions the latent denoiser (concatenated to its input).

Both encoders are the same stack: a 3x3 stem, then per level a residual block (GroupNorm, SiLU,
conv; no time input) with a stride-2 convolution between levels, then GroupNorm, SiLU and a 1x1
convolution to the output channels. The decoder mirrors it with nearest-neighbour upsampling,
narrowing the channels before each upsampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuseg.errors import DataError
from diffuseg.networks.blocks import Downsample, ResBlock, Upsample, check_width, conv_nd

__all__ = ["ConvEncoder", "ImageEncoder", "MaskAutoencoder", "MaskDecoder", "level_widths"]


def level_widths(width: int, downsamples: int) -> tuple[int, ...]:
    """Widths per level: ``width * 2^level`` for levels 0..downsamples."""
    return tuple(width * 2**level for level in range(downsamples + 1))


def check_spatial(x: Tensor, name: str, spatial_dims: int, channels: int, factor: int) -> None:
    """Raise DataError unless ``x`` is ``[B, channels, *sp]`` with each size divisible by factor."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != channels:
        raise DataError(f"{name} has shape {list(x.shape)}; it must be [B, {channels}, *spatial] "
                        f"with {spatial_dims} spatial axes")
    if any(s % factor for s in x.shape[2:]):
        raise DataError(f"{name} spatial size {list(x.shape[2:])} is not divisible by {factor}; "
                        f"pad or crop to a multiple of {factor}")


class ConvEncoder(nn.Module):
    """``[B, in, *sp] -> [B, out, *sp / 2^d]``: stem, (ResBlock, Downsample) x d, ResBlock,
    GroupNorm, SiLU, 1x1 conv; ``d = len(channels) - 1``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int], norm_groups: int = 8) -> None:
        super().__init__()
        channels = tuple(channels)
        for c in channels:
            check_width(c, norm_groups, "autoencoder width")
        self.spatial_dims, self.in_channels, self.out_channels = (
            spatial_dims, in_channels, out_channels)
        self.factor = 2 ** (len(channels) - 1)
        self.stem = conv_nd(spatial_dims, in_channels, channels[0], 3)
        blocks: list[nn.Module] = []
        ch = channels[0]
        for level, c in enumerate(channels):
            if level > 0:
                blocks.append(Downsample(spatial_dims, ch))
            blocks.append(ResBlock(spatial_dims, ch, c, 0, norm_groups))
            ch = c
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.GroupNorm(norm_groups, ch)
        self.out = conv_nd(spatial_dims, ch, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_spatial(x, "encoder input", self.spatial_dims, self.in_channels, self.factor)
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.out(F.silu(self.norm(h)))


class MaskDecoder(nn.Module):
    """``[B, latent, *sp'] -> logits [B, out, *sp' * 2^d]``; ``channels`` finest first.

    A 3x3 stem to the coarsest width, then per level a residual block that already narrows to
    the next (finer) level's width, followed by nearest-neighbour upsampling + 3x3 conv at that
    narrow width; GroupNorm, SiLU and a 3x3 conv to the logits. Narrowing before upsampling
    keeps the wide convolutions at low resolution: the decoder runs once per sample at full
    size, so its cost counts S times at inference (docs/performance.md)."""

    def __init__(self, spatial_dims: int, latent_channels: int, out_channels: int,
                 channels: Sequence[int], norm_groups: int = 8) -> None:
        super().__init__()
        widths = tuple(reversed(tuple(channels)))  # coarsest first
        for c in widths:
            check_width(c, norm_groups, "autoencoder width")
        self.spatial_dims, self.latent_channels = spatial_dims, latent_channels
        self.stem = conv_nd(spatial_dims, latent_channels, widths[0], 3)
        blocks: list[nn.Module] = []
        ch = widths[0]
        for level in range(len(widths)):
            c = widths[min(level + 1, len(widths) - 1)]
            blocks.append(ResBlock(spatial_dims, ch, c, 0, norm_groups))
            if level < len(widths) - 1:
                blocks.append(Upsample(spatial_dims, c))
            ch = c
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.GroupNorm(norm_groups, ch)
        self.out = conv_nd(spatial_dims, ch, out_channels, 3)

    def forward(self, z: Tensor) -> Tensor:
        check_spatial(z, "latent", self.spatial_dims, self.latent_channels, 1)
        h = self.stem(z)
        for block in self.blocks:
            h = block(h)
        return self.out(F.silu(self.norm(h)))


class MaskAutoencoder(nn.Module):
    """Label encoder and decoder: ``encode(mask) -> z in [-1, 1]``, ``decode(z) -> logits``.

    The encoder reads the mask as 2m - 1 (one-hot ``[B, K, *sp]`` in {0, 1}); z = tanh(f_enc)
    has ``latent_channels`` channels at ``1 / 2^downsamples`` of the mask's size; the decoder
    returns K logits at full size (sigmoid for K = 1, softmax over K otherwise)."""

    def __init__(self, spatial_dims: int, num_classes: int, latent_channels: int = 4,
                 width: int = 16, downsamples: int = 2, norm_groups: int = 8) -> None:
        super().__init__()
        channels = level_widths(width, downsamples)
        self.spatial_dims, self.num_classes = spatial_dims, num_classes
        self.latent_channels, self.factor = latent_channels, 2**downsamples
        self.encoder = ConvEncoder(spatial_dims, num_classes, latent_channels, channels,
                                   norm_groups)
        self.decoder = MaskDecoder(spatial_dims, latent_channels, num_classes, channels,
                                   norm_groups)

    def encode(self, mask: Tensor) -> Tensor:
        """One-hot mask ``[B, K, *sp]`` in {0, 1} -> z ``[B, latent, *sp / 2^d]`` in (-1, 1)."""
        return torch.tanh(self.encoder(mask * 2.0 - 1.0))

    def decode(self, z: Tensor) -> Tensor:
        """z ``[B, latent, *sp']`` -> logits ``[B, K, *sp' * 2^d]``."""
        return self.decoder(z)

    def forward(self, mask: Tensor) -> Tensor:
        return self.decode(self.encode(mask))


class ImageEncoder(ConvEncoder):
    """Image embedding z_i = f_img(X): ``[B, C, *sp] -> [B, out_channels, *sp / 2^d]``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int = 8,
                 width: int = 16, downsamples: int = 2, norm_groups: int = 8) -> None:
        super().__init__(spatial_dims, in_channels, out_channels,
                         level_widths(width, downsamples), norm_groups)

"""The MedSegDiff-V2 denoiser (Wu et al., AAAI 2024, "MedSegDiff-V2: Diffusion-based medical image
segmentation with transformer"), built from diffuseg's U-Net blocks, in 2D and 3D.

Two networks run at every step:

* the **condition model** ``ConditionEncoder`` sees only the image: a conv encoder giving
  multi-scale features ``f_c^l``, a light top-down path back to full resolution, and a
  segmentation head giving the coarse **anchor** logits (supervised by the method with an extra
  loss, e.g. Dice + CE as in the paper);
* the **diffusion model** (``UNetBody``) sees the noisy mask ``x_t`` and the time ``t``. Its first
  features ``f_d^0`` are fused with the anchor by Gaussian spatial attention (paper §"Anchor
  Condition"), and its bottleneck features attend to the deepest condition features ("semantic
  embedding") through the **SS-Former** (§"Semantic Condition"):

      f_anc  = max(G_sigma * a, a)                     a: anchor logits, G_sigma: Gaussian kernel
      f_d^0' = sigmoid(Conv1x1(f_anc)) . f_d^0 + f_d^0
      h      = SSFormer(h, FF-Parser(f_c^deepest))

The **FF-Parser** is that of MedSegDiff-V1 (Wu et al., MIDL 2023, §"FF-Parser"):
``m' = F^-1[A . F[m]]`` with ``F`` the (real, orthonormal) FFT over the spatial axes and ``A`` a
learnable complex attentive map. The SS-Former here is two cross-attention layers (noise features
query, condition features key/value) with the spectrum-space step (FFT, learnable filter, iFFT:
the paper's NN-Fourier / band-pass filter, realised as another ``FFParser``) between them, and an
MLP. Simplifications (documented, not the paper's exact layers): one SS-Former block by default,
the condition model is a small conv encoder + top-down path instead of a full U-Net/TransUNet.

Because the learnable spectral maps have one entry per frequency, the network is built for one
``spatial_size`` (the training patch size); other sizes raise DataError.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuseg.errors import ConfigError, DataError
from diffuseg.networks.blocks import (
    ResBlock,
    check_heads,
    check_width,
    conv_nd,
    multihead_attention,
)
from diffuseg.networks.unet import OutputHead, TimeEmbedding, UNetBody, check_input

__all__ = [
    "AnchorAttention",
    "ConditionEncoder",
    "FFParser",
    "MedSegDiffV2",
    "SSFormer",
    "gaussian_smooth",
]


def gaussian_smooth(x: Tensor, sigma: Tensor | float, radius: int = 2) -> Tensor:
    """Separable Gaussian blur of every channel over all spatial axes (2D or 3D), replicate padding.

    Kernel ``k_i = exp(-i^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2))``, ``|i| <= radius``;
    differentiable in ``sigma``. A constant field is unchanged.
    """
    nd, c = x.ndim - 2, x.shape[1]
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
    k = torch.exp(-(offsets**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    conv = F.conv2d if nd == 2 else F.conv3d
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = 2 * radius + 1
        pad = [0] * (2 * nd)  # F.pad lists the last axis first
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius
        weight = k.reshape(1, 1, *shape).expand(c, 1, *shape)
        x = conv(F.pad(x, pad, mode="replicate"), weight, groups=c)
    return x


class FFParser(nn.Module):
    """``m' = irfftn(A . rfftn(m))`` over the spatial axes (MedSegDiff-V1 FF-Parser).

    ``A`` is a learnable complex map ``[C, *freq]`` (``freq`` = the rfft grid of
    ``spatial_size``), initialised to 1 so that the module starts as the identity. The FFT runs in
    float32 outside autocast (torch.fft has no bfloat16 kernels).
    """

    def __init__(self, channels: int, spatial_size: Sequence[int]) -> None:
        super().__init__()
        self.spatial_size = tuple(int(s) for s in spatial_size)
        freq = (*self.spatial_size[:-1], self.spatial_size[-1] // 2 + 1)
        weight = torch.zeros(channels, *freq, 2)
        weight[..., 0] = 1.0  # real part 1, imaginary part 0: identity
        self.weight = nn.Parameter(weight)  # stored as (real, imag) for safetensors

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.spatial_size:
            raise DataError(
                f"features of spatial size {list(x.shape[2:])} reach an FF-Parser built for "
                f"{list(self.spatial_size)}; use the network's spatial_size (the patch size)"
            )
        dims = tuple(range(2, x.ndim))
        with torch.autocast(device_type=x.device.type, enabled=False):
            spectrum = torch.fft.rfftn(x.float(), dim=dims, norm="ortho")
            spectrum = spectrum * torch.view_as_complex(self.weight.float())
            out = torch.fft.irfftn(spectrum, s=self.spatial_size, dim=dims, norm="ortho")
        return out.to(x.dtype)


class AnchorAttention(nn.Module):
    """Gaussian spatial attention of the anchor on the noise features (paper §"Anchor Condition"):
    ``f_anc = max(G_sigma * a, a)``, ``f' = sigmoid(Conv1x1(f_anc)) . f + f``; ``sigma`` is learnt
    (initially 1 pixel). The max keeps the anchor's peaks while the blur widens its support."""

    def __init__(self, spatial_dims: int, anchor_channels: int, radius: int = 2) -> None:
        super().__init__()
        self.radius = radius
        self.log_sigma = nn.Parameter(torch.zeros(()))
        self.to_map = conv_nd(spatial_dims, anchor_channels, 1, 1)

    def forward(self, f: Tensor, anchor_logits: Tensor) -> Tensor:
        smoothed = gaussian_smooth(anchor_logits, self.log_sigma.exp(), self.radius)
        f_anc = torch.maximum(smoothed, anchor_logits)
        return f * torch.sigmoid(self.to_map(f_anc)).to(f.dtype) + f


class ConditionEncoder(nn.Module):
    """Condition model: image ``[B, C, *sp]`` -> (features ``f_c^l`` at every level, finest
    first, of widths ``channels``; anchor logits ``[B, anchor_channels, *sp]``). The anchor is read
    from a top-down path ``d_l = up(d_{l+1}) + Conv1x1(f_c^l)`` back to full resolution."""

    def __init__(
        self,
        spatial_dims: int,
        cond_channels: int,
        channels: Sequence[int],
        norm_groups: int,
        anchor_channels: int,
    ) -> None:
        super().__init__()
        c0 = channels[0]
        self.stem = conv_nd(spatial_dims, cond_channels, c0, 3)
        self.down = nn.ModuleList(
            conv_nd(spatial_dims, channels[i - 1], channels[i - 1], 3, stride=2)
            for i in range(1, len(channels))
        )
        widths = [c0, *channels[:-1]]
        self.res = nn.ModuleList(
            ResBlock(spatial_dims, cin, cout, 0, norm_groups)
            for cin, cout in zip(widths, channels, strict=True)
        )
        self.lateral = nn.ModuleList(conv_nd(spatial_dims, c, c0, 1) for c in channels)
        self.refine = ResBlock(spatial_dims, c0, c0, 0, norm_groups)
        self.head = OutputHead(spatial_dims, c0, anchor_channels, norm_groups, zero_init=False)

    def forward(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        h = self.stem(image)
        feats = []
        for level, res in enumerate(self.res):
            if level > 0:
                h = self.down[level - 1](h)
            h = res(h)
            feats.append(h)
        d = self.lateral[-1](feats[-1])
        for level in reversed(range(len(feats) - 1)):
            up = F.interpolate(d, scale_factor=2.0, mode="nearest")
            d = up + self.lateral[level](feats[level])
        return feats, self.head(self.refine(d))


class CrossAttention(nn.Module):
    """``Wo MHA(Wq LN(h), Wk LN(c), Wv LN(c))`` on token sequences ``[B, N, C]``, ``[B, M, C]``."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_q, self.norm_kv = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.q, self.kv = nn.Linear(channels, channels), nn.Linear(channels, 2 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        k, v = self.kv(self.norm_kv(c)).chunk(2, dim=-1)
        return self.out(multihead_attention(self.q(self.norm_q(h)), k, v, self.num_heads))


class SSFormer(nn.Module):
    """Spectrum-space transformer block on the bottleneck (paper §"Semantic Condition"):

        h <- h + CA_1(h, c);   h <- F^-1[A . F[h]];   h <- h + CA_2(h, c);   h <- h + MLP(LN(h))

    with noise features ``h`` as queries, semantic features ``c`` as keys/values, and the
    NN-Fourier filter ``A`` (an ``FFParser``) between the two cross-attention layers.
    """

    def __init__(self, channels: int, spatial_size: Sequence[int], num_heads: int) -> None:
        super().__init__()
        check_heads(channels, num_heads)
        self.attn1 = CrossAttention(channels, num_heads)
        self.fourier = FFParser(channels, spatial_size)
        self.attn2 = CrossAttention(channels, num_heads)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels)
        )

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        b, ch, *spatial = h.shape
        tokens = h.flatten(2).transpose(1, 2)  # [B, N, C]
        c_tokens = c.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn1(tokens, c_tokens)
        grid = self.fourier(tokens.transpose(1, 2).reshape(b, ch, *spatial))
        tokens = grid.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn2(tokens, c_tokens)
        tokens = tokens + self.mlp(self.norm(tokens))
        return tokens.transpose(1, 2).reshape(b, ch, *spatial)


class MedSegDiffV2(nn.Module):
    """MedSegDiff-V2 denoiser.

    ``forward(x, t, cond, emb=None) -> (out, anchor_logits)``: ``out`` ``[B, out_channels, *sp]``
    is the denoiser's prediction (zero at initialisation); ``anchor_logits``
    ``[B, anchor_channels, *sp]`` is the condition model's coarse segmentation, on which the
    method adds the anchor loss. It depends on ``cond`` only. ``spatial_size`` is the one input
    size the network accepts (each spatial size divisible by ``2^(levels-1)``).
    ``anchor_channels`` defaults to ``out_channels`` (one logit per mask channel).
    ``forward`` = ``denoise(x, t, encode_condition(cond), emb)``: a sampler encodes the image once
    and calls ``denoise`` at every step.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        cond_channels: int,
        out_channels: int,
        spatial_size: Sequence[int],
        channels: Sequence[int] = (32, 64, 128),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] = (False, False, True),
        norm_groups: int = 8,
        dropout: float = 0.0,
        num_heads: int = 4,
        emb_channels: int = 0,
        anchor_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels, self.cond_channels = (
            spatial_dims, in_channels, cond_channels,
        )  # fmt: skip
        self.spatial_size = tuple(int(s) for s in spatial_size)
        factor = 2 ** (len(channels) - 1)
        if len(self.spatial_size) != spatial_dims or any(s % factor for s in self.spatial_size):
            raise ConfigError(
                f"spatial_size={list(self.spatial_size)} needs {spatial_dims} sizes divisible by "
                f"{factor} (2^(levels-1)); use the training patch size"
            )
        if cond_channels < 1:
            raise ConfigError("MedSegDiffV2 needs an image: cond_channels must be at least 1")
        for c in channels:
            check_width(c, norm_groups, "channel width")
        bottleneck = tuple(s // factor for s in self.spatial_size)
        anchor_channels = anchor_channels or out_channels
        self.time = TimeEmbedding(channels[0], emb_channels)
        self.condition = ConditionEncoder(
            spatial_dims, cond_channels, channels, norm_groups, anchor_channels
        )
        self.ff_parser = FFParser(channels[-1], bottleneck)
        self.stem = conv_nd(spatial_dims, in_channels, channels[0], 3)
        self.anchor = AnchorAttention(spatial_dims, anchor_channels)
        self.body = UNetBody(
            spatial_dims, channels, num_res_blocks, attention_levels, norm_groups, dropout,
            num_heads, 4 * channels[0],
        )  # fmt: skip
        self.ssformer = SSFormer(channels[-1], bottleneck, num_heads)
        self.head = OutputHead(spatial_dims, channels[0], out_channels, norm_groups, True)

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None, emb: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        check_input(x, "x", self.spatial_dims, self.in_channels, self.body.levels)
        if cond is None:
            raise DataError(f"cond (the image, {self.cond_channels} channels) is required")
        same = cond.shape[0] == x.shape[0] and cond.shape[2:] == x.shape[2:]
        if tuple(x.shape[2:]) != self.spatial_size or not same:
            raise DataError(
                f"x {list(x.shape)} and cond {list(cond.shape)} must share the batch and the "
                f"spatial size {list(self.spatial_size)} this network was built for"
            )
        condition = self.encode_condition(cond.to(x.dtype))
        return self.denoise(x, t, condition, emb), condition[1]

    def encode_condition(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """The part that sees only the image: ``(semantic, anchor_logits)``, the FF-parsed deepest
        condition features and the anchor. Sampling computes it once per image and passes it to
        ``denoise`` at every step."""
        check_input(cond, "cond", self.spatial_dims, self.cond_channels, self.body.levels)
        if tuple(cond.shape[2:]) != self.spatial_size:
            raise DataError(
                f"cond {list(cond.shape)} must have the spatial size {list(self.spatial_size)} "
                "this network was built for"
            )
        feats, anchor_logits = self.condition(cond)
        return self.ff_parser(feats[-1]), anchor_logits

    def denoise(
        self, x: Tensor, t: Tensor, condition: tuple[Tensor, Tensor], emb: Tensor | None = None
    ) -> Tensor:
        """The diffusion model's prediction from ``x_t``, ``t`` and ``encode_condition(cond)``."""
        semantic, anchor_logits = condition
        check_input(x, "x", self.spatial_dims, self.in_channels, self.body.levels)
        if tuple(x.shape[2:]) != self.spatial_size or anchor_logits.shape[0] != x.shape[0]:
            raise DataError(
                f"x {list(x.shape)} must have the spatial size {list(self.spatial_size)} and the "
                f"batch of the condition ({anchor_logits.shape[0]})"
            )
        temb = self.time(t, x.shape[0], emb)
        h = self.anchor(self.stem(x), anchor_logits.to(x.dtype))
        h, skips = self.body.encode(h, temb)
        h = self.ssformer(self.body.middle(h, temb), semantic.to(h.dtype))
        return self.head(self.body.decode(h, skips, temb))

"""Latent-variable networks for ambiguous segmentation, for ``spatial_dims`` in {2, 3}.

* ``GaussianEncoder``: the prior net p(z | X) and posterior net q(z | X, Y) of the Probabilistic
  U-Net (Kohl et al., NeurIPS 2018, eqs. 1 and 3), also CIMD's Ambiguity Modelling and Ambiguity
  Controlling Networks (Rahman et al., CVPR 2023): a convolutional encoder, a global average pool
  and a 1x1 convolution (a linear layer on the pooled features) giving the mean and log standard
  deviation of an axis-aligned Gaussian N(mu, diag(sigma^2)).
* ``kl_diag_gaussians``: KL(q || p) between two such Gaussians, in closed form.
* ``sample_latent``: z = mu + sigma * eps, eps ~ N(0, I) (the reparameterisation trick, Kingma &
  Welling 2014, Sec. 2.4), drawn from a ``torch.Generator``.
* ``LatentSegmentationUNet``: the Probabilistic U-Net's segmentor S(X, z) = f_comb(f_UNet(X), z)
  (Kohl et al. 2018, eq. 2): z is broadcast over space, concatenated to the U-Net's last feature
  map and mapped to logits by three 1x1 convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuseg.errors import DataError
from diffuseg.networks.blocks import Downsample, ResBlock, check_width, conv_nd
from diffuseg.networks.unet import UNetBody, check_input

__all__ = ["GaussianEncoder", "LatentSegmentationUNet", "kl_diag_gaussians", "sample_latent"]


def kl_diag_gaussians(mu_q: Tensor, logsig_q: Tensor, mu_p: Tensor, logsig_p: Tensor) -> Tensor:
    """KL(N(mu_q, diag sigma_q^2) || N(mu_p, diag sigma_p^2)) per example, summed over the last
    (latent) axis, computed in float32:

        KL = sum_i [ log sigma_p,i - log sigma_q,i
                     + (sigma_q,i^2 + (mu_q,i - mu_p,i)^2) / (2 sigma_p,i^2) - 1/2 ].

    Inputs ``[..., L]``; returns ``[...]``. Zero when the two Gaussians are equal."""
    mu_q, logsig_q, mu_p, logsig_p = (v.float() for v in (mu_q, logsig_q, mu_p, logsig_p))
    var_ratio = torch.exp(2.0 * (logsig_q - logsig_p))  # sigma_q^2 / sigma_p^2
    mahalanobis = (mu_q - mu_p).pow(2) * torch.exp(-2.0 * logsig_p)
    return (logsig_p - logsig_q + 0.5 * (var_ratio + mahalanobis) - 0.5).sum(-1)


def sample_latent(
    mu: Tensor,
    log_sigma: Tensor,
    n_samples: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """z = mu + exp(log_sigma) * eps with eps ~ N(0, I) drawn from ``generator`` (on its device,
    then moved). ``mu`` and ``log_sigma`` are ``[B, L]``; returns ``[B, L]`` when ``n_samples`` is
    None, else ``[n_samples, B, L]`` (one independent z per sample and example). Differentiable
    in mu and log_sigma."""
    shape = tuple(mu.shape) if n_samples is None else (n_samples, *mu.shape)
    draw_on = generator.device if generator is not None else mu.device
    eps = torch.randn(shape, generator=generator, device=draw_on).to(mu.device)
    return mu.float() + torch.exp(log_sigma.float()) * eps


class GaussianEncoder(nn.Module):
    """``x [B, in_channels, *sp] -> (mu, log_sigma)``, each ``[B, latent_dim]``.

    Encoder: a 3x3 stem, then per level a residual block (GroupNorm, SiLU, conv; no time input)
    at width ``channels[level]``, with a stride-2 downsampling between levels; GroupNorm + SiLU;
    a global average pool over all spatial positions; a linear map (the 1x1 convolution of Kohl et
    al. 2018) to ``2 * latent_dim`` values split into mu and log sigma. Any spatial size works.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        latent_dim: int,
        channels: Sequence[int] = (32, 64, 128),
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        for c in channels:
            check_width(c, norm_groups, "channel width")
        self.spatial_dims, self.in_channels, self.latent_dim = spatial_dims, in_channels, latent_dim
        self.stem = conv_nd(spatial_dims, in_channels, channels[0], 3)
        blocks: list[nn.Module] = []
        ch = channels[0]
        for level, c in enumerate(channels):
            if level > 0:
                blocks.append(Downsample(spatial_dims, ch))
            blocks.append(ResBlock(spatial_dims, ch, c, 0, norm_groups))
            ch = c
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.GroupNorm(norm_groups, ch)
        self.head = nn.Linear(ch, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise DataError(
                f"Gaussian encoder input has shape {list(x.shape)}; it needs [B, "
                f"{self.in_channels}, *spatial] with {self.spatial_dims} spatial axes"
            )
        h = F.silu(self.norm(self.blocks(self.stem(x))))
        pooled = h.mean(dim=tuple(range(2, h.ndim)))
        mu, log_sigma = self.head(pooled).chunk(2, dim=1)
        return mu, log_sigma


class LatentSegmentationUNet(nn.Module):
    """``(x, z) -> logits``: U-Net features f_UNet(x) at ``channels[0]`` (GroupNorm + SiLU), z
    ``[B, latent_dim]`` tiled over space and concatenated, then f_comb = three 1x1 convolutions
    with ReLU between them (Kohl et al. 2018, Sec. 2 and eq. 2).

    ``features(x)`` and ``combine(features, z)`` are exposed so that the U-Net runs once per
    image and only f_comb runs once per sample."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        latent_dim: int,
        channels: Sequence[int] = (32, 64, 128),
        num_res_blocks: int = 1,
        norm_groups: int = 8,
        attention_levels: Sequence[bool] | None = None,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        if attention_levels is None:
            attention_levels = (False,) * len(channels)
        self.spatial_dims, self.in_channels, self.latent_dim = spatial_dims, in_channels, latent_dim
        self.stem = conv_nd(spatial_dims, in_channels, channels[0], 3)
        self.body = UNetBody(
            spatial_dims, channels, num_res_blocks, attention_levels, norm_groups, 0.0,
            num_heads, 0,
        )  # fmt: skip
        self.norm = nn.GroupNorm(norm_groups, channels[0])
        width = channels[0]
        self.fcomb = nn.Sequential(
            conv_nd(spatial_dims, width + latent_dim, width, 1),
            nn.ReLU(),
            conv_nd(spatial_dims, width, width, 1),
            nn.ReLU(),
            conv_nd(spatial_dims, width, out_channels, 1),
        )

    def features(self, x: Tensor) -> Tensor:
        """f_UNet(x): ``[B, in, *sp] -> [B, channels[0], *sp]``."""
        check_input(x, "image", self.spatial_dims, self.in_channels, self.body.levels)
        return F.silu(self.norm(self.body(self.stem(x), None)))

    def combine(self, features: Tensor, z: Tensor) -> Tensor:
        """f_comb(features, z): z ``[B, latent_dim]`` is tiled over the spatial axes."""
        if z.shape != (features.shape[0], self.latent_dim):
            raise DataError(
                f"z has shape {list(z.shape)}; it must be [{features.shape[0]}, {self.latent_dim}]"
            )
        tiled = z.to(features.dtype).reshape(*z.shape, *([1] * self.spatial_dims))
        tiled = tiled.expand(*z.shape, *features.shape[2:])
        return self.fcomb(torch.cat([features, tiled], dim=1))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.combine(self.features(x), z)

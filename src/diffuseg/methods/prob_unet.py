"""The Probabilistic U-Net (Kohl et al., NeurIPS 2018).

A U-Net f_UNet(X), a prior net P(z | X) = N(mu_prior(X), diag sigma_prior^2(X)) (eq. 1), a posterior
net Q(z | X, Y) (eq. 3) and f_comb, which maps the U-Net's last feature map with z tiled over space
to logits, S(X, z) = f_comb(f_UNet(X), z) (eq. 2). Training minimises (eq. 4)

    L(Y, X) = E_{z ~ Q(.|X,Y)} [ -log P_c(Y | S(X, z)) ] + beta KL(Q(z | X, Y) || P(z | X)),

with one reparameterised z per example, the cross-entropy (sigmoid for K = 1, softmax over K
labels) summed over pixels and averaged over the batch, and the KL in closed form. Sampling draws
z_s ~ P(z | X) once per sample; the U-Net runs once per image and f_comb once per sample.

Options (``method.options``, ``ProbUNetOptions``): ``latent_dim`` (6, as the paper's LIDC model),
``beta`` (1.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.parts import at_least, probabilities, repeat_samples, windowed
from diffuseg.networks.latent import (
    GaussianEncoder,
    LatentSegmentationUNet,
    kl_diag_gaussians,
    sample_latent,
)


def reconstruction_loss(logits: Tensor, y: Tensor) -> Tensor:
    """-log P_c(Y | S) per example, summed over pixels, averaged over the batch: binary
    cross-entropy on the single foreground channel (K = 1), softmax cross-entropy otherwise."""
    logits = logits.float()
    if logits.shape[1] == 1:
        nll = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none")
    else:
        nll = F.cross_entropy(logits, y.argmax(1), reduction="none")
    return nll.reshape(nll.shape[0], -1).sum(1).mean()


@dataclass
class ProbUNetOptions:
    latent_dim: int = 6  # dimensions of z (the paper's LIDC model: 6)
    beta: float = 1.0  # weight of KL(Q || P) (eq. 4)

    def __post_init__(self) -> None:
        at_least(self, 1, "latent_dim")
        at_least(self, 0, "beta")


@register("prob_unet")
class ProbabilisticUNet(Method):
    options_type = ProbUNetOptions

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.latent_dim, self.beta = self.options.latent_dim, self.options.beta
        net, c, k = config.network, config.in_channels, config.num_classes
        self.unet = LatentSegmentationUNet(
            config.spatial_dims, c, k, self.latent_dim, net.channels, net.num_res_blocks,
            net.norm_groups, net.attention_levels, net.num_heads,
        )  # fmt: skip
        self.prior = GaussianEncoder(config.spatial_dims, c, self.latent_dim, net.channels,
                                     net.norm_groups)
        self.posterior = GaussianEncoder(config.spatial_dims, c + k, self.latent_dim,
                                         net.channels, net.norm_groups)

    def networks(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "prior": self.prior, "posterior": self.posterior}

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        image = batch["image"]
        y = one_hot(batch["mask"], self.config.num_classes)
        mu_q, ls_q = self.posterior(torch.cat([image, y.to(image.dtype)], dim=1))
        mu_p, ls_p = self.prior(image)
        z = sample_latent(mu_q, ls_q, generator=generator)
        rec = reconstruction_loss(self.unet(image, z), y)
        kl = kl_diag_gaussians(mu_q, ls_q, mu_p, ls_p).mean()
        return {"loss": rec + self.beta * kl, "reconstruction": rec, "kl": kl}

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``[S, B, K, *sp]`` probabilities, z_s ~ P(z | X) per sample (``steps`` is unused)."""
        b = image.shape[0]
        mu, log_sigma = self.prior(image)
        z = sample_latent(mu, log_sigma, n_samples, generator=generator)
        z = z.reshape(-1, self.latent_dim)  # sample-major [S*B, L]
        spatial = image.shape[2:]
        if self.window is None or all(s <= w for s, w in zip(spatial, self.window, strict=True)):
            features = self.unet.features(image)  # the U-Net once per image
            tiled = repeat_samples(features, n_samples)
            logits = self.unet.combine(tiled, z)
        else:
            logits = windowed(self, lambda x, e: self.unet(x, e).to(x.dtype),
                              repeat_samples(image, n_samples), z)
        p = probabilities(logits)
        return p.reshape(n_samples, b, *p.shape[1:])

"""CIMD: "Ambiguous Medical Image Segmentation using Diffusion Models" (Rahman et al., CVPR 2023).

The paper trains an image-conditioned diffusion segmenter (Wolleb et al. 2022, as ``ddpm``) with two
axis-aligned Gaussian latent encoders in the manner of the Probabilistic U-Net:

* the Ambiguity Modelling Network (AMN), q(z | I, Y): it sees the image and a ground-truth mask;
* the Ambiguity Controlling Network (ACN), p(z | I, x0_hat): it sees the image and the denoiser's
  prediction; KL(AMN || ACN) is added to the diffusion loss so that the distribution of the
  denoiser's predictions is pulled towards the distribution of the experts' masks. In the
  released code the term is ``KL(posterior(image, mask) || prior(image, model_output)) / 1000``
  (``training_losses_segmentation``), hence the default weight ``gamma = 1e-3``; there only the
  denoiser's parameters are optimised, so both encoders keep their random weights. Here all are
  trained.

There, inference is plain diffusion sampling: the latent encoders are not used. Here, by default
(option ``condition_on_z = true``), z also conditions the denoiser, as in a conditional VAE:

    training:   z ~ q(z | I, Y) by reparameterisation; output f(x_t, t, I, z) -> x0_hat;
                loss = mean ||f - target||^2 + beta KL(q(z|I,Y) || p(z|I))
                                             + gamma KL(q(z|I,Y) || p_ACN(z|I,x0_hat))
    inference:  per hypothesis s, z_s ~ p(z | I) once, then the DDIM/DDPM sampler of
                ``config.sample`` denoises x_T with z_s fixed at every step.

z enters through the denoiser's time embedding (``ConditionalUNet(emb_channels=latent_dim)``:
FiLM in every residual block). ``condition_on_z = false`` gives the paper's released structure:
no prior net, no z in the denoiser, loss = diffusion loss + gamma KL(AMN || ACN).

Options (``method.options``, ``CIMDOptions``): ``latent_dim`` (6), ``beta`` (1e-3), ``gamma``
(1e-3), ``condition_on_z`` (true). The default (z-conditioned) is this project's variant, not the
published or released CIMD; ``condition_on_z = false`` is the faithful configuration. The AMN and
ACN see masks in the diffused space: x0 = 2Y - 1 for the AMN and the sampler's clamped x0_hat for
the ACN, so that both read the same kind of input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.errors import ConfigError, DataError
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.parts import (
    at_least,
    build_denoiser,
    conditioned_denoiser,
    noised,
    regression_loss,
    repeat_samples,
)
from diffuseg.methods.targets import build_target
from diffuseg.networks.latent import GaussianEncoder, kl_diag_gaussians, sample_latent
from diffuseg.sampling.repaint import KnownPixels
from diffuseg.sampling.samplers import Denoise


@dataclass
class CIMDOptions:
    latent_dim: int = 6  # dimensions of z
    beta: float = 1e-3  # weight of KL(q(z|I,Y) || p(z|I)); used when condition_on_z
    gamma: float = 1e-3  # weight of KL(AMN || ACN); the released code divides it by 1000
    condition_on_z: bool = True  # z conditions the denoiser (this project's variant); false:
    # the published/released structure (no prior net, plain diffusion sampling)

    def __post_init__(self) -> None:
        at_least(self, 1, "latent_dim")
        at_least(self, 0, "beta", "gamma")


@register("cimd")
class CIMD(Method):
    """Diffusion segmentation with an Ambiguity Modelling Network (posterior), an Ambiguity
    Controlling Network and (by default) a prior p(z | I) whose z conditions the denoiser."""

    process_kind = "gaussian"
    guidable = True  # sample(known=): guided resampling
    options_type = CIMDOptions
    onnx_exportable = True

    def __init__(self, config: RunConfig):
        super().__init__(config)
        o: CIMDOptions = self.options
        self.latent_dim, self.beta, self.gamma = o.latent_dim, o.beta, o.gamma
        self.condition_on_z = o.condition_on_z
        self.target = build_target(config.method.target)
        self.denoiser = build_denoiser(config,
                                       emb_channels=self.latent_dim if self.condition_on_z else 0)
        k, c = config.num_classes, config.in_channels

        def encoder(in_channels: int) -> GaussianEncoder:
            net = config.network
            return GaussianEncoder(config.spatial_dims, in_channels, self.latent_dim,
                                   net.channels, net.norm_groups)

        self.posterior = encoder(c + k)  # AMN: q(z | I, Y)
        self.acn = encoder(c + k)  # ACN: p(z | I, x0_hat)
        self.prior = encoder(c) if self.condition_on_z else None  # p(z | I)

    def networks(self) -> dict[str, nn.Module]:
        nets = {"denoiser": self.denoiser, "posterior": self.posterior, "acn": self.acn}
        if self.prior is not None:
            nets["prior"] = self.prior
        return nets

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        image = batch["image"]
        x0 = self.target.encode(one_hot(batch["mask"], self.config.num_classes))
        mu_q, ls_q = self.posterior(torch.cat([image, x0.to(image.dtype)], dim=1))
        z = sample_latent(mu_q, ls_q, generator=generator) if self.condition_on_z else None
        t, noise, x_t = noised(self.process, x0, generator)
        out = self.denoiser(x_t, t, image, emb=z).float()
        mse = regression_loss(self.process, out, x0, noise, t)
        x0_hat = self.process.predict_x0(x_t, t, out)
        if self.target.clip is not None:
            x0_hat = x0_hat.clamp(-self.target.clip, self.target.clip)
        mu_a, ls_a = self.acn(torch.cat([image, x0_hat.to(image.dtype)], dim=1))
        kl_acn = kl_diag_gaussians(mu_q, ls_q, mu_a, ls_a).mean()
        terms = {"mse": mse, "kl_acn": kl_acn}
        loss = mse + self.gamma * kl_acn
        if self.prior is not None:
            mu_p, ls_p = self.prior(image)
            terms["kl_prior"] = kl_diag_gaussians(mu_q, ls_q, mu_p, ls_p).mean()
            loss = loss + self.beta * terms["kl_prior"]
        return {"loss": loss, **terms}

    def prior_z(self, image: Tensor, n_samples: int, *,
                generator: torch.Generator | None = None) -> Tensor:
        """One z per hypothesis and image from p(z | I): ``[S, B, latent_dim]``."""
        if self.prior is None:
            raise ConfigError("this CIMD was built with method.options.condition_on_z=false and "
                              "has no prior over z; set it to true to sample z")
        mu, log_sigma = self.prior(image)
        return sample_latent(mu, log_sigma, n_samples, generator=generator)

    def denoise_fn(self, cond: Tensor, emb: Tensor | None) -> Denoise:
        """The denoiser as the sampler sees it: (x_t, t) -> output, with image and z fixed."""
        return conditioned_denoiser(self, self.denoiser, cond, emb)

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None, z: Tensor | None = None,
               known: KnownPixels | None = None) -> Tensor:
        """``[S, B, K, *sp]`` probabilities. z ``[S, B, latent_dim]`` fixes each hypothesis's
        latent; when None it is drawn from the prior (before x_T, from the same generator).
        ``known``: pixels every sample holds (guided resampling, ``Method.diffuse``)."""
        b, spatial = image.shape[0], image.shape[2:]
        emb = self._latents(image, n_samples, z, generator)
        shape = (n_samples * b, self.config.num_classes, *spatial)
        x_T = self.process.prior_sample(shape, generator=generator, device=image.device)
        x0 = self.diffuse(self.denoise_fn(repeat_samples(image, n_samples), emb), x_T, steps,
                          generator=generator, clip=self.target.clip, known=known)
        return self.target.decode(x0).reshape(n_samples, b, *x0.shape[1:])

    def _latents(self, image: Tensor, n_samples: int, z: Tensor | None,
                 generator: torch.Generator | None) -> Tensor | None:
        """z as ``[S*B, latent_dim]`` (sample-major), or None when the denoiser takes no z."""
        if not self.condition_on_z:
            if z is not None:
                raise ConfigError("z was given but method.options.condition_on_z=false: this "
                                  "denoiser takes no latent; drop z or set the option to true")
            return None
        if z is None:
            z = self.prior_z(image, n_samples, generator=generator)
        expected = (n_samples, image.shape[0], self.latent_dim)
        if tuple(z.shape) != expected:
            raise DataError(f"z has shape {list(z.shape)}; it must be {list(expected)} "
                            "[n_samples, batch, latent_dim]")
        return z.reshape(-1, self.latent_dim).to(image.device)

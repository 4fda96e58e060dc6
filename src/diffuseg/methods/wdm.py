"""Wavelet diffusion segmentation (after WDM, Friedrich et al., DGM4MICCAI 2024).

WDM diffuses the Haar wavelet coefficients of a volume instead of its voxels: one level of the
discrete wavelet transform turns a 3D volume x into 8 sub-bands at half resolution
(x_lll, ..., x_hhh; WDM Sec. 2, Fig. 1), which are concatenated along channels and diffused by a
standard DDPM (Ho et al. 2020, eq. 4 forward q(x_t | x_0), eq. 14 "simple" loss); the sampled
coefficients are mapped back by the inverse DWT (WDM Sec. 2). The network therefore sees 1/8 of
the voxels per channel in 3D, and a whole 128^3 volume fits one network call where voxel-space
diffusion needs windows.

Here, for segmentation, the diffused x_0 is the Haar transform of the mask scaled to [-1, 1]
(2m - 1, Wolleb et al. 2022) and the condition is the Haar transform of the image, concatenated
to x_t at the input of the denoiser (the image-conditioned variant of WDM's unconditional model).
The transform (diffuseg.wavelets) is orthonormal, so Gaussian noise on the coefficients is
Gaussian noise of the same variance on the voxels and the inverse is exact. Options
(``method.options``):

* ``levels`` (1): wavelet levels L; the denoiser works at 1/2^L of the resolution with
  2^(d L) channels per mask channel (L > 1 transforms every band again, a wavelet packet);
* ``chunk`` (0): at most this many hypotheses per denoiser call while sampling (0: all at once),
  which bounds the activation memory of a large volume.

Sampling runs on the whole volume (one window, the point of the method); x0_hat is clipped to
+-2^(d L / 2), the largest magnitude a coefficient of a [-1, 1] mask can take.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.errors import ConfigError
from diffuseg.methods.base import Method, one_hot, register, run_sampler
from diffuseg.networks import ConditionalUNet
from diffuseg.processes import GaussianProcess
from diffuseg.wavelets import haar_forward, haar_inverse

DEFAULTS = {"levels": 1, "chunk": 0}


def wdm_options(config: RunConfig) -> dict[str, int]:
    """``method.options`` over DEFAULTS; unknown keys and non-integers raise ConfigError."""
    out = dict(DEFAULTS)
    for key, value in (config.method.options or {}).items():
        if key not in DEFAULTS:
            raise ConfigError(f"method.options.{key} is not an option of method 'wdm'; valid "
                              f"options: {sorted(DEFAULTS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"method.options.{key}={value!r} must be a whole number >= 0")
        out[key] = value
    if out["levels"] < 1:
        raise ConfigError("method.options.levels=0 must be at least 1 (one Haar level)")
    return out


@register("wdm")
class WaveletDiffusion(Method):
    """``loss``: mean squared error on the process's training target, in wavelet space."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        options = wdm_options(config)
        self.levels, self.chunk = options["levels"], options["chunk"]
        self.bands = 2 ** (config.spatial_dims * self.levels)
        self.clip = float(self.bands) ** 0.5
        self.process = GaussianProcess.from_config(config.process)
        net = config.network
        self.denoiser = ConditionalUNet(
            spatial_dims=config.spatial_dims,
            in_channels=config.num_classes * self.bands,
            cond_channels=config.in_channels * self.bands,
            out_channels=config.num_classes * self.bands,
            channels=net.channels, num_res_blocks=net.num_res_blocks,
            attention_levels=net.attention_levels, norm_groups=net.norm_groups,
            dropout=net.dropout, num_heads=net.num_heads,
        )  # fmt: skip

    def networks(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser}

    def size_multiple(self) -> int:
        """The network's own multiple, times 2^levels for the wavelet halvings."""
        return super().size_multiple() * 2 ** self.levels

    def encode(self, mask: Tensor) -> Tensor:
        """One-hot mask ``[B, K, *sp]`` -> x0 = DWT(2 m - 1) ``[B, K 2^(dL), *sp / 2^L]``."""
        return haar_forward(mask * 2.0 - 1.0, self.levels)

    def decode(self, x0: Tensor) -> Tensor:
        """x0 -> probabilities ``[B, K, *sp]``: inverse DWT, (x + 1) / 2, renormalised (K > 1)."""
        p = ((haar_inverse(x0.float(), self.levels) + 1.0) / 2.0).clamp(0.0, 1.0)
        if p.shape[1] > 1:
            p = p / p.sum(1, keepdim=True).clamp_min(1e-6)
        return p

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        cond = haar_forward(batch["image"].float(), self.levels)
        x0 = self.encode(one_hot(batch["mask"], self.config.num_classes))
        t = self.process.sample_t(x0.shape[0], generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t = self.process.q_sample(x0, t, noise=noise)
        out = self.denoiser(x_t, t, cond)
        mse = (out.float() - self.process.training_target(x0, noise, t)).pow(2).mean()
        return {"loss": mse, "mse": mse}

    def denoise_fn(self, cond: Tensor):
        """(x_t, t) -> network output on the whole coefficient volume, ``chunk`` items a call."""

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            size = self.chunk or x_t.shape[0]
            outs = [self.denoiser(x, t[:1].expand(x.shape[0]), c).to(x_t.dtype)
                    for x, c in zip(x_t.split(size), cond.split(size), strict=True)]
            return torch.cat(outs)

        return denoise

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        s = self.config.sample
        b = image.shape[0]
        coeffs = haar_forward(image.float(), self.levels)
        cond = coeffs.repeat(n_samples, *([1] * (coeffs.ndim - 1))).to(image.dtype)
        shape = (n_samples * b, self.config.num_classes * self.bands, *coeffs.shape[2:])
        x_T = self.process.prior_sample(shape, generator=generator, device=image.device)
        x0 = run_sampler(s, self.process, self.clip, self.denoise_fn(cond), x_T,
                         steps or s.steps, generator)
        masks = self.decode(x0)
        return masks.reshape(n_samples, b, *masks.shape[1:])

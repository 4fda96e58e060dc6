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
The transform (diffuseg.methods.wavelets) is orthonormal, so Gaussian noise on the coefficients is
Gaussian noise of the same variance on the voxels and the inverse is exact. Options
(``method.options``):

* ``levels`` (1): wavelet levels L; the denoiser works at 1/2^L of the resolution with
  2^(d L) channels per mask channel (L > 1 transforms every band again, a wavelet packet);
* ``chunk`` (0): at most this many hypotheses per denoiser call while sampling (0: all at once),
  which bounds the activation memory of a large volume.

Sampling runs on the whole volume (one window, the point of the method); x0_hat is clipped to
+-2^(d L / 2), the largest magnitude a coefficient of a [-1, 1] mask can take.

Guided resampling (``diffuseg.sampling.repaint``): since the transform is orthonormal, the RePaint
replacement is done exactly on the pixels: x_{t_prev} is inverse-transformed, its known pixels
replaced by q(x_{t_prev} | 2m - 1), and transformed back (``guide``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.parts import at_least, build_denoiser, noised, regression_loss
from diffuseg.methods.wavelets import haar_forward, haar_inverse
from diffuseg.processes import Process
from diffuseg.sampling.repaint import KnownPixels, check_supported, repaint
from diffuseg.sampling.samplers import Constrain, Denoise


@dataclass
class WDMOptions:
    levels: int = 1  # Haar levels L: the denoiser works at 1/2^L of the resolution
    chunk: int = 0  # at most this many hypotheses per denoiser call while sampling (0: all)

    def __post_init__(self) -> None:
        at_least(self, 1, "levels")
        at_least(self, 0, "chunk")


@register("wdm")
class WaveletDiffusion(Method):
    """``loss``: mean squared error on the process's training target, in wavelet space."""

    process_kind = "gaussian"
    onnx_exportable = True  # its per-step denoiser exports (diffuseg.inference.onnx)
    options_type = WDMOptions
    guidable = True  # sample(known=): guided resampling, in pixel space (``guide``)

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.levels, self.chunk = self.options.levels, self.options.chunk
        self.bands = 2 ** (config.spatial_dims * self.levels)
        self.clip = float(self.bands) ** 0.5
        self.denoiser = build_denoiser(config, in_channels=config.num_classes * self.bands,
                                       cond_channels=config.in_channels * self.bands,
                                       out_channels=config.num_classes * self.bands)

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
        t, noise, x_t = noised(self.process, x0, generator)
        mse = regression_loss(self.process, self.denoiser(x_t, t, cond), x0, noise, t)
        return {"loss": mse, "mse": mse}

    def denoise_fn(self, cond: Tensor) -> Denoise:
        """(x_t, t) -> network output on the whole coefficient volume, ``chunk`` items a call."""

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            size = self.chunk or x_t.shape[0]
            outs = [self.denoiser(x, t[:1].expand(x.shape[0]), c).to(x_t.dtype)
                    for x, c in zip(x_t.split(size), cond.split(size), strict=True)]
            return torch.cat(outs)

        return denoise

    def guide(self, process: Process, known: KnownPixels | None, chains: int,
              generator: torch.Generator | None) -> Constrain | None:
        """RePaint on the pixels: the coefficients are mapped to pixels by the inverse Haar
        transform, the known pixels replaced (encoded 2m - 1), and mapped back (module
        docstring; orthonormal, so the pixels' forward noise is q(x_t | x_0) of the mask)."""
        if known is None:
            return None
        check_supported(self.name, self.config.num_classes, None)
        levels = self.levels
        return repaint(process, known, chains // known.values.shape[0],
                       encode=lambda m: m * 2.0 - 1.0, generator=generator,
                       to_pixels=lambda c: haar_inverse(c, levels),
                       from_pixels=lambda x: haar_forward(x, levels))

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None,
               known: KnownPixels | None = None) -> Tensor:
        """``[S, B, K, *sp]``; ``known``: pixels every sample holds (guided resampling)."""
        b = image.shape[0]
        coeffs = haar_forward(image.float(), self.levels)
        cond = coeffs.repeat(n_samples, *([1] * (coeffs.ndim - 1))).to(image.dtype)
        shape = (n_samples * b, self.config.num_classes * self.bands, *coeffs.shape[2:])
        x_T = self.process.prior_sample(shape, generator=generator, device=image.device)
        x0 = self.diffuse(self.denoise_fn(cond), x_T, steps, generator=generator, clip=self.clip,
                          known=known)
        masks = self.decode(x0)
        return masks.reshape(n_samples, b, *masks.shape[1:])

"""The image-conditioned mask model shared by the methods that differ only in their process: a
U-Net that sees the image concatenated to x_t predicts the process's training target (eps, x0 or
v for a Gaussian process; the velocity or x0 for flow matching) under a mean squared error
(Ho et al. 2020, eq. 14, the "simple" loss; Lipman et al. 2023, eq. 22). Each sample starts from
its own x_T, so n samples form an implicit ensemble (Wolleb et al. 2022, Sec. 2); all samples of
all images are denoised as one batch per step. A leaf method sets ``process_kind`` and registers
itself (``methods/ddpm.py``, ``methods/flow_matching.py``). No options.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.methods.base import Method, one_hot
from diffuseg.methods.parts import (
    build_denoiser,
    conditioned_denoiser,
    noised,
    regression_loss,
    repeat_samples,
)
from diffuseg.methods.targets import build_target
from diffuseg.sampling.repaint import KnownPixels
from diffuseg.sampling.samplers import Denoise


class ConditionalMaskMethod(Method):
    """``loss`` is the mean squared error on the process's training target."""

    guidable = True  # sample(known=): guided resampling
    onnx_exportable = True

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.target = build_target(config.method.target)
        self.denoiser = build_denoiser(config)

    def networks(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser}

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        x0 = self.target.encode(one_hot(batch["mask"], self.config.num_classes))
        t, noise, x_t = noised(self.process, x0, generator)
        mse = regression_loss(self.process, self.denoiser(x_t, t, batch["image"]), x0, noise, t)
        return {"loss": mse, "mse": mse}

    def denoise_fn(self, cond: Tensor) -> Denoise:
        """The denoiser as the sampler sees it: (x_t, t) -> output, with the image fixed."""
        return conditioned_denoiser(self, self.denoiser, cond)

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None,
               known: KnownPixels | None = None) -> Tensor:
        b, spatial = image.shape[0], image.shape[2:]
        shape = (n_samples * b, self.config.num_classes, *spatial)
        x_T = self.process.prior_sample(shape, generator=generator, device=image.device)
        x0 = self.diffuse(self.denoise_fn(repeat_samples(image, n_samples)), x_T, steps,
                          generator=generator, clip=self.target.clip, known=known)
        return self.target.decode(x0).reshape(n_samples, b, *x0.shape[1:])

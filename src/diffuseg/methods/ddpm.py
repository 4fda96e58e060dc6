"""Image-conditioned diffusion segmentation (Wolleb et al., MIDL 2022; MedSegDiff-V1 design).

The mask x0 is diffused by a Gaussian process; a U-Net that sees the image concatenated to x_t
predicts eps, x0 or v (Ho et al. 2020 eq. 14, "simple" loss). Each sample starts from its own x_T,
so n samples form an implicit ensemble (Wolleb et al., Sec. 2). All samples of all images are
denoised as one batch per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.guidance import KnownPixels
from diffuseg.methods.base import Method, one_hot, register, run_sampler
from diffuseg.methods.targets import build_target
from diffuseg.networks import ConditionalUNet
from diffuseg.processes import GaussianProcess


def build_denoiser(config: RunConfig, extra_cond: int = 0, emb_channels: int = 0) -> nn.Module:
    net = config.network
    return ConditionalUNet(
        spatial_dims=config.spatial_dims,
        in_channels=config.num_classes,
        cond_channels=config.in_channels + extra_cond,
        out_channels=config.num_classes,
        channels=net.channels,
        num_res_blocks=net.num_res_blocks,
        attention_levels=net.attention_levels,
        norm_groups=net.norm_groups,
        dropout=net.dropout,
        num_heads=net.num_heads,
        emb_channels=emb_channels,
    )


@register("ddpm")
class DDPMSegmentation(Method):
    """``loss`` is the mean squared error on the process's training target."""

    guidable = True

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.process = GaussianProcess.from_config(config.process)
        self.target = build_target(config.method.target)
        self.denoiser = build_denoiser(config)

    def networks(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser}

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        image = batch["image"]
        x0 = self.target.encode(one_hot(batch["mask"], self.config.num_classes))
        t = self.process.sample_t(x0.shape[0], generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t = self.process.q_sample(x0, t, noise=noise)
        out = self.denoiser(x_t, t, image)
        mse = (out.float() - self.process.training_target(x0, noise, t)).pow(2).mean()
        return {"loss": mse, "mse": mse}

    def denoise_fn(self, cond: Tensor):
        """The denoiser as the sampler sees it: (x_t, t) -> output, with the image fixed."""
        k = self.config.num_classes

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            def window(inputs: Tensor) -> Tensor:
                tb = t[:1].expand(inputs.shape[0])
                return self.denoiser(inputs[:, :k], tb, inputs[:, k:]).to(inputs.dtype)

            return self.windowed(window, torch.cat([x_t, cond], dim=1))

        return denoise

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None,
               known: KnownPixels | None = None) -> Tensor:
        s = self.config.sample
        steps = steps or s.steps
        b, spatial = image.shape[0], image.shape[2:]
        cond = image.repeat(n_samples, *([1] * (image.ndim - 1)))  # [S*B, C, *sp], sample-major
        shape = (n_samples * b, self.config.num_classes, *spatial)
        x_T = self.process.prior_sample(shape, generator=generator, device=image.device)
        constrain = self.guide(self.process, known, n_samples, generator, self.target)
        x0 = run_sampler(s, self.process, self.target.clip, self.denoise_fn(cond), x_T, steps,
                         generator, constrain=constrain)
        return self.target.decode(x0).reshape(n_samples, b, *x0.shape[1:])

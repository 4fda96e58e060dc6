"""BerDiff: "Conditional Bernoulli Diffusion Model for Medical Image Segmentation" (Chen, Wang and
Shan, MICCAI 2023).

Binary masks x0 in {0, 1} are diffused by the Bernoulli process of ``processes/bernoulli.py`` with
its prior p = 1/2 (BerDiff eqs. 1-4): each step keeps a pixel with probability alpha_t and
otherwise redraws it from B(1/2). A U-Net that sees the image concatenated to x_t
(``ConditionalUNet``, as ``ddpm``) outputs the logits of x0; x0_hat = sigmoid(logits). The loss is
BerDiff's (Sec. 2.2; the released code's ``LossType.MIX``):

    L = L_KL + lambda_BCE L_BCE,
    L_KL  = KL(B(theta_post(x_t, x0)) || B(theta_post(x_t, x0_hat))), at t = 0 the decoder NLL,
    L_BCE = BCE(logits, x0),

means over pixels, in nats (the released code reports bits: both terms divided by log 2, which
leaves their ratio unchanged); ``lambda_BCE`` (option ``bce_weight``) defaults to 1, the released
code's unweighted sum. Sampling starts from x_T ~ B(1/2) and runs ancestral steps
(``samplers.ddpm``, the Bernoulli process's default and only sampler) over ``steps`` respaced
timesteps (``process.timesteps``; BerDiff samples with 10), each drawing x_{t_p} ~
B(theta_post(x_t, x0_hat)) with the one-step alpha of the respaced pair ab_t / ab_p.

Each sample returned is the last step's x0_hat: a probability map in [0, 1], as BerDiff's sampler
returns (its last step outputs the mean, not a draw). A binary draw B(x0_hat) would add only
independent per-pixel noise; the diversity between samples comes from x_T and the intermediate
draws. Binary only (``num_classes = 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.parts import at_least, build_denoiser, conditioned_denoiser, repeat_samples
from diffuseg.processes import bernoulli_loss_terms
from diffuseg.sampling.repaint import KnownPixels


@dataclass
class BerDiffOptions:
    bce_weight: float = 1.0  # lambda_BCE; the released code's unweighted sum is 1

    def __post_init__(self) -> None:
        at_least(self, 0, "bce_weight")


@register("berdiff")
class BerDiff(Method):
    """Bernoulli diffusion of binary masks; the U-Net predicts the logits of x0."""

    process_kind = "bernoulli"
    onnx_exportable = True  # its per-step denoiser exports (diffuseg.inference.onnx)
    guidable = True  # sample(known=): guided resampling
    options_type = BerDiffOptions
    binary_only = True

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.denoiser = build_denoiser(config)

    def networks(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser}

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        """kl + bce_weight * bce at one t ~ U{0..T-1} per example, x_t ~ q(x_t | x0)."""
        x0 = one_hot(batch["mask"], 1)
        t = self.process.sample_t(x0.shape[0], generator=generator, device=x0.device)
        x_t = self.process.q_sample(x0, t, generator=generator)
        logits = self.denoiser(x_t, t, batch["image"]).float()
        terms = bernoulli_loss_terms(self.process, x0, x_t, t, logits)
        return {"loss": terms["kl"] + self.options.bce_weight * terms["bce"], **terms}

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None,
               known: KnownPixels | None = None) -> Tensor:
        """``[S, B, 1, *sp]``: each sample's final x0_hat. All S x B chains are one batch, sample-
        major; x_T is drawn before the intermediate states, all from ``generator``. ``known``:
        pixels every sample holds (guided resampling, ``Method.diffuse``)."""
        b, spatial = image.shape[0], image.shape[2:]
        x_T = self.process.prior_sample((n_samples * b, 1, *spatial), generator=generator,
                                        device=image.device)
        denoise = conditioned_denoiser(self, self.denoiser, repeat_samples(image, n_samples))
        x0 = self.diffuse(denoise, x_T, steps, generator=generator, known=known)
        return x0.float().reshape(n_samples, b, 1, *spatial)

"""BerDiff: "Conditional Bernoulli Diffusion Model for Medical Image Segmentation" (Chen, Wang and
Shan, MICCAI 2023).

Binary masks x0 in {0, 1} are diffused by the Bernoulli process of ``processes/bernoulli.py``
(BerDiff eqs. 1-4): each step keeps a pixel with probability alpha_t and otherwise redraws it from
B(1/2). A U-Net that sees the image concatenated to x_t (``ConditionalUNet``, as ``ddpm``) outputs
the logits of x0; x0_hat = sigmoid(logits). The loss is BerDiff's (Sec. 2.2; the released code's
``LossType.MIX``):

    L = L_KL + lambda_BCE L_BCE,
    L_KL  = KL(B(theta_post(x_t, x0)) || B(theta_post(x_t, x0_hat))), at t = 0 the decoder NLL,
    L_BCE = BCE(logits, x0),

means over pixels, in nats (the released code reports bits: both terms divided by log 2, which
leaves their ratio unchanged); ``lambda_BCE`` (option ``bce_weight``) defaults to 1, the released
code's unweighted sum. Sampling starts from x_T ~ B(1/2) and runs ancestral steps
(``samplers.ddpm``) over ``steps`` respaced timesteps (``process.timesteps``; BerDiff samples with
10), each drawing x_{t_p} ~ B(theta_post(x_t, x0_hat)) with the one-step alpha of the respaced pair
ab_t / ab_p.

Each sample returned is the last step's x0_hat: a probability map in [0, 1], as BerDiff's sampler
returns (its last step outputs the mean, not a draw). A binary draw B(x0_hat) would add only
independent per-pixel noise; the diversity between samples comes from x_T and the intermediate
draws. ``sample.sampler`` and ``sample.eta`` are not used: DDIM needs a Gaussian process.

Binary only (``num_classes = 1``) and ``process.kind = bernoulli``; other settings raise
ConfigError.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.errors import ConfigError
from diffuseg.guidance import KnownPixels
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.baselines import read_options
from diffuseg.methods.ddpm import build_denoiser
from diffuseg.processes import BernoulliProcess, bernoulli_loss_terms
from diffuseg.samplers import Denoise, ddpm, last

DEFAULTS = {"bce_weight": 1.0}


def check_binary_bernoulli(config: RunConfig) -> None:
    """The Bernoulli methods model one foreground channel with a Bernoulli process."""
    name = config.method.name
    if config.num_classes != 1:
        raise ConfigError(
            f"method '{name}' diffuses binary masks but num_classes={config.num_classes}; use "
            "num_classes=1 (merge the labels), or a Gaussian method (ddpm, cimd) for multi-class"
        )
    if config.process.kind != "bernoulli":
        raise ConfigError(
            f"method '{name}' needs a Bernoulli process but process.kind="
            f"{config.process.kind!r}; set process.kind=bernoulli"
        )


def conditioned_denoiser(method: Method, net: nn.Module, cond: Tensor) -> Denoise:
    """``(x_t, t) -> net(x_t, t, cond)`` with ``cond`` fixed, through ``method.windowed`` (sliding
    windows when the input is larger than ``method.window``)."""

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        k = x_t.shape[1]

        def window(inputs: Tensor) -> Tensor:
            tb = t[:1].expand(inputs.shape[0])  # the samplers give every example the same t
            return net(inputs[:, :k], tb, inputs[:, k:]).to(inputs.dtype)

        return method.windowed(window, torch.cat([x_t, cond.to(x_t.dtype)], dim=1))

    return denoise


@register("berdiff")
class BerDiff(Method):
    """Bernoulli diffusion of binary masks; the U-Net predicts the logits of x0."""

    guidable = True

    def __init__(self, config: RunConfig):
        super().__init__(config)
        opts = read_options(config, DEFAULTS)
        if opts["bce_weight"] < 0:
            raise ConfigError(f"method.options.bce_weight={opts['bce_weight']} must be >= 0; "
                              "BerDiff uses 1")
        check_binary_bernoulli(config)
        self.bce_weight = opts["bce_weight"]
        self.process = BernoulliProcess.from_config(config.process)
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
        return {"loss": terms["kl"] + self.bce_weight * terms["bce"], **terms}

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None,
               known: KnownPixels | None = None) -> Tensor:
        """``[S, B, 1, *sp]``: each sample's final x0_hat. All S x B chains are one batch, sample-
        major; x_T is drawn before the intermediate states, all from ``generator``."""
        b, spatial = image.shape[0], image.shape[2:]
        cond = image.repeat(n_samples, *([1] * (image.ndim - 1)))
        x_T = self.process.prior_sample((n_samples * b, 1, *spatial), generator=generator,
                                        device=image.device)
        timesteps = self.process.timesteps(steps or self.config.sample.steps)
        denoise = conditioned_denoiser(self, self.denoiser, cond)
        constrain = self.guide(self.process, known, n_samples, generator)
        x0 = last(ddpm(denoise, self.process, x_T, timesteps, generator=generator,
                       constrain=constrain))
        return x0.float().reshape(n_samples, b, 1, *spatial)

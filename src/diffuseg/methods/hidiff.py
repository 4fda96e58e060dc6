"""HiDiff: "Hybrid Diffusion Framework for Medical Image Segmentation" (Chen et al., IEEE TMI 2024).

A discriminative segmentor f (``SegmentationUNet``) gives a prior probability map p = sigmoid(f(I));
a Bernoulli diffusion refiner (BBDM) refines it. BBDM's forward process is anchored at the prior
(released code, ``PriorBinomialDiffusion``): a step keeps y with probability alpha_t and otherwise
redraws it from B(p), not from B(1/2) as BerDiff does, so that (0-indexed t, ab = alpha_bar)

    q(y_t | y_0, p) = B(ab_t y_0 + (1 - ab_t) p),            y_T ~ B(p),
    q(y_{t_p} | y_t, y_0, p) = B(theta_1 / (theta_1 + theta_0)),
    theta_1 = [a y_t + (1 - a) P(y_t)] [ab_p y_0 + (1 - ab_p) p],
    theta_0 = [a (1 - y_t) + (1 - a) P(y_t)] [ab_p (1 - y_0) + (1 - ab_p) (1 - p)],

with P(y_t) = p^y_t (1 - p)^(1 - y_t) the prior's probability of y_t and a = ab_t / ab_p the
one-step keep probability of a respaced pair (p = 1/2 gives BerDiff's eqs. 3-4). This is the
Bernoulli process of ``processes/bernoulli.py`` with a prior map: ``process.with_prior(p)`` binds it
to one batch's p, and ``samplers.ddpm`` runs it unchanged. The refiner (``ConditionalUNet``, cond =
[image, p]) predicts the logits of y_0; its loss is the released code's ``MIX``: KL between the
posteriors (decoder NLL at t = 0) plus ``recon_weight`` x focal loss (gamma = ``focal_gamma``; gamma
= 0 is the BCE of BerDiff).

Alternate-collaborative training (paper Sec. II-C; released ``TrainLoop.run_step``, which per batch
first steps the refiner with the prior detached, then steps the segmentor). Here the training loop
makes one optimiser step per ``loss`` call, so the two updates take turns by step:

    even steps: L = L_BBDM(refiner; p.detach())                     (segmentor gets no gradient)
    odd steps:  L = L_seg(f) + feedback * L_BBDM(refiner frozen; p)  (refiner gets no gradient)

L_seg is Dice + BCE (MONAI ``DiceCELoss``). The refiner is frozen in odd steps by calling it with
detached copies of its weights (``torch.func.functional_call``), so its parameters get no gradient
and AdamW skips them; the feedback reaches the segmentor through p in the posteriors and in the
refiner's input. The step count lives in a persistent buffer (network ``"steps"``), saved with the
weights and the checkpoint, so a resumed run keeps the same alternation; it advances only when
``loss`` is called in training mode.

Inference: p from the segmentor, y_T ~ B(p) per sample, ancestral steps of the anchored process
over ``steps`` respaced timesteps; each sample is the last x0_hat (probabilities), as in BerDiff.
Binary only (``num_classes = 1``). Options: ``feedback`` (1), ``recon_weight`` (1),
``focal_gamma`` (2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from diffuseg.config import RunConfig
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.parts import (
    at_least,
    build_denoiser,
    build_segmentor,
    conditioned_denoiser,
    dice_ce,
    repeat_samples,
)
from diffuseg.processes import BernoulliProcess, bernoulli_loss_terms
from diffuseg.sampling.repaint import KnownPixels

KL_EPS = 1e-6  # the true posterior is kept in [eps, 1 - eps] inside the KL (bbdm_loss_terms)


@dataclass
class HiDiffOptions:
    feedback: float = 1.0  # weight of L_BBDM in the segmentor's steps
    recon_weight: float = 1.0  # weight of the focal loss in L_BBDM
    focal_gamma: float = 2.0  # focal loss gamma; 0 gives BerDiff's BCE

    def __post_init__(self) -> None:
        at_least(self, 0, "feedback", "recon_weight", "focal_gamma")


def focal_loss(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Mean of (1 - p_t)^gamma BCE (Lin et al. 2017, eq. 4 with alpha = 1), p_t = exp(-BCE) the
    probability given to the true label; gamma = 0 gives the BCE."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return ((1 - torch.exp(-bce)).clamp_min(1e-12) ** gamma * bce).mean()


def bbdm_loss_terms(process: BernoulliProcess, y0: Tensor, y_t: Tensor, t: Tensor,
                    logits: Tensor, gamma: float) -> dict[str, Tensor]:
    """kl = KL(q(y_{t-1} | y_t, y_0, p) || q(y_{t-1} | y_t, x0_hat, p)) (decoder NLL at t = 0),
    the KL of ``bernoulli_loss_terms`` for the process anchored at p, and the focal loss of the
    logits against y_0; means over all elements, nats. q_true depends on p, so the segmentor's
    step differentiates it: it is clamped away from {0, 1} (``KL_EPS``)."""
    kl = bernoulli_loss_terms(process, y0, y_t, t, logits, q_eps=KL_EPS)["kl"]
    return {"kl": kl, "focal": focal_loss(logits, y0, gamma)}


class StepCounter(nn.Module):
    """Training steps taken: a persistent buffer, saved with the weights and the checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(1, dtype=torch.long))


@register("hidiff")
class HiDiff(Method):
    """Segmentor prior + anchored Bernoulli refiner, trained in alternate steps."""

    process_kind = "bernoulli"
    guidable = True  # sample(known=): guided resampling
    options_type = HiDiffOptions
    binary_only = True

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.segmentor = build_segmentor(config)
        self.refiner = build_denoiser(config, cond_channels=config.in_channels + 1)  # [image, p]
        self.steps = StepCounter()
        self.criterion = dice_ce(1)

    def networks(self) -> dict[str, nn.Module]:
        return {"segmentor": self.segmentor, "refiner": self.refiner, "steps": self.steps}

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        """The refiner's step (even count) or the segmentor's (odd); the same named terms in
        both: loss, segmentor (Dice + BCE), refiner (kl + recon_weight focal), kl, focal."""
        refiner_turn = int(self.steps.count) % 2 == 0
        if self.segmentor.training:
            self.steps.count += 1
        image, y0 = batch["image"], one_hot(batch["mask"], 1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not refiner_turn):
            logits = self.segmentor(image, generator=generator).float()
        seg = self.criterion(logits, y0)
        terms = self.refiner_terms(image, y0, torch.sigmoid(logits), generator,
                                   frozen=not refiner_turn)
        refine = terms["kl"] + self.options.recon_weight * terms["focal"]
        loss = refine if refiner_turn else seg + self.options.feedback * refine
        return {"loss": loss, "segmentor": seg.detach(), "refiner": refine.detach(), **terms}

    def refiner_terms(self, image: Tensor, y0: Tensor, p: Tensor,
                      generator: torch.Generator | None, *, frozen: bool) -> dict[str, Tensor]:
        """BBDM's terms at one t ~ U{0..T-1} per example; ``frozen``: no gradient to the
        refiner's weights (they enter as detached copies)."""
        process = self.process.with_prior(p)
        t = process.sample_t(y0.shape[0], generator=generator, device=y0.device)
        y_t = process.q_sample(y0, t, generator=generator)
        args = (y_t, t, torch.cat([image, p.to(image.dtype)], dim=1))
        if frozen:
            weights = [*self.refiner.named_parameters(), *self.refiner.named_buffers()]
            out = functional_call(self.refiner, {k: v.detach() for k, v in weights}, args)
        else:
            out = self.refiner(*args)
        return bbdm_loss_terms(process, y0, y_t, t, out.float(), self.options.focal_gamma)

    @torch.no_grad()
    def prior(self, image: Tensor) -> Tensor:
        """The segmentor's foreground probability p ``[B, 1, *sp]`` (sliding windows when larger
        than ``self.window``)."""
        logits = self.windowed(lambda x: self.segmentor(x).to(x.dtype), image)
        return torch.sigmoid(logits.float())

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None,
               known: KnownPixels | None = None) -> Tensor:
        """``[S, B, 1, *sp]``: segmentor, then S refinement chains from y_T ~ B(p) as one batch
        (sample-major); each sample is its final x0_hat."""
        b, spatial = image.shape[0], image.shape[2:]
        p = repeat_samples(self.prior(image), n_samples)
        cond = torch.cat([repeat_samples(image, n_samples), p.to(image.dtype)], dim=1)
        process = self.process.with_prior(p)
        y_T = process.prior_sample(p.shape, generator=generator, device=image.device)
        denoise = conditioned_denoiser(self, self.refiner, cond)
        y0 = self.diffuse(denoise, y_T, steps, generator=generator, process=process, known=known)
        return y0.float().reshape(n_samples, b, 1, *spatial)

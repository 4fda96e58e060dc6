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
one-step keep probability of a respaced pair (p = 1/2 gives BerDiff's eqs. 3-4).
``AnchoredBernoulli`` is this process bound to one batch's p; it satisfies the Process protocol, so
``samplers.ddpm`` runs it unchanged. The refiner (``ConditionalUNet``, cond = [image, p]) predicts
the logits of y_0; its loss is the released code's ``MIX``: KL between the posteriors (decoder NLL
at t = 0) plus ``recon_weight`` x focal loss (gamma = ``focal_gamma``; gamma = 0 is the BCE of
BerDiff).

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
Binary only (``num_classes = 1``), ``process.kind = bernoulli``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from diffuseg.config import RunConfig
from diffuseg.errors import ConfigError
from diffuseg.guidance import KnownPixels
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.baselines import build_segmentor, dice_ce, read_options
from diffuseg.methods.berdiff import check_binary_bernoulli, conditioned_denoiser
from diffuseg.methods.ddpm import build_denoiser
from diffuseg.processes import BernoulliProcess, kl_bernoulli
from diffuseg.processes.schedules import Timestep, check_step, coef, rand_like
from diffuseg.samplers import ddpm, last

DEFAULTS = {"feedback": 1.0, "recon_weight": 1.0, "focal_gamma": 2.0}
PRIOR_EPS = 1e-4  # p is kept in [eps, 1 - eps] so that every transition stays possible
KL_EPS = 1e-6  # the true posterior is kept in [eps, 1 - eps] inside the KL (bbdm_loss_terms)


class AnchoredBernoulli:
    """BBDM's process bound to a prior map p ``[N, 1, *sp]`` (module docstring); immutable."""

    def __init__(self, schedule: BernoulliProcess, p: Tensor) -> None:
        self.schedule = schedule
        self.p = p.clamp(PRIOR_EPS, 1 - PRIOR_EPS)
        self.T = schedule.T

    def timesteps(self, n: int) -> list[int]:
        return self.schedule.timesteps(n)

    def sample_t(self, batch: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        return self.schedule.sample_t(batch, generator=generator, device=device)

    def q_probs(self, y0: Tensor, t: Timestep) -> Tensor:
        """P(y_t = 1 | y_0, p) = ab_t y_0 + (1 - ab_t) p."""
        ab = coef(self.schedule.alpha_bar_at(t), y0)
        return ab * y0 + (1 - ab) * self.p

    def q_sample(self, y0: Tensor, t: Timestep, *, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """y_t = [u < q_probs] with u ~ U[0, 1) (``noise``); not differentiable in p."""
        u = rand_like(y0, generator) if noise is None else noise
        return (u < self.q_probs(y0, t)).to(y0.dtype)

    def prior_sample(self, shape: tuple[int, ...] | torch.Size, *,
                     generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """y_T ~ B(p); ``shape`` must be p's."""
        assert tuple(shape) == tuple(self.p.shape), "the prior map fixes the shape of y_T"
        u = rand_like(self.p.float(), generator)
        return (u < self.p).to(dtype).to(device or self.p.device)

    def predict_x0(self, y_t: Tensor, t: Timestep, model_output: Tensor) -> Tensor:
        return torch.sigmoid(model_output)

    def posterior_probs(self, y_t: Tensor, t: Timestep, t_prev: Timestep, y0_prob: Tensor
                        ) -> Tensor:
        """theta_post (module docstring); y0_prob itself at t_prev = -1 (the decoder B(x0_hat))."""
        check_step(t, t_prev)
        if isinstance(t_prev, int) and t_prev == -1:
            return y0_prob
        ab_t, ab_p = self.schedule.alpha_bar_at(t), self.schedule.alpha_bar_at(t_prev)
        a, ab_p_ = coef(ab_t / ab_p, y_t), coef(ab_p, y_t)
        p = self.p
        prior_of_y_t = y_t * p + (1 - y_t) * (1 - p)
        theta_1 = (a * y_t + (1 - a) * prior_of_y_t) * (ab_p_ * y0_prob + (1 - ab_p_) * p)
        theta_0 = (a * (1 - y_t) + (1 - a) * prior_of_y_t) * (
            ab_p_ * (1 - y0_prob) + (1 - ab_p_) * (1 - p))
        theta = theta_1 / (theta_1 + theta_0)
        if isinstance(t_prev, Tensor):
            theta = torch.where(coef(t_prev, y_t) < 0, y0_prob, theta)
        return theta

    def ancestral_step(self, y_t: Tensor, t: Timestep, t_prev: Timestep, x0_hat: Tensor, *,
                       generator: torch.Generator | None = None) -> Tensor:
        """y_{t_p} ~ B(posterior_probs); x0_hat itself at t_p = -1 (no draw)."""
        theta = self.posterior_probs(y_t, t, t_prev, x0_hat)
        if isinstance(t_prev, int) and t_prev == -1:
            return theta
        y = (rand_like(y_t, generator) < theta).to(y_t.dtype)
        if isinstance(t_prev, Tensor):
            y = torch.where(coef(t_prev, y_t) < 0, x0_hat, y)
        return y


def focal_loss(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Mean of (1 - p_t)^gamma BCE (Lin et al. 2017, eq. 4 with alpha = 1), p_t = exp(-BCE) the
    probability given to the true label; gamma = 0 gives the BCE."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return ((1 - torch.exp(-bce)).clamp_min(1e-12) ** gamma * bce).mean()


def bbdm_loss_terms(process: AnchoredBernoulli, y0: Tensor, y_t: Tensor, t: Tensor,
                    logits: Tensor, gamma: float) -> dict[str, Tensor]:
    """kl = KL(q(y_{t-1} | y_t, y_0, p) || q(y_{t-1} | y_t, x0_hat, p)) (decoder NLL at t = 0) and
    the focal loss of the logits against y_0; means over all elements, nats."""
    x0_hat = torch.sigmoid(logits)
    # q_true depends on p, so the segmentor's step differentiates it: clamped away from {0, 1},
    # where d/dq [q log q] is infinite (the entropy this adds is below 2e-5 nats)
    q_true = process.posterior_probs(y_t, t, t - 1, y0).clamp(KL_EPS, 1 - KL_EPS)
    q_model = process.posterior_probs(y_t, t, t - 1, x0_hat)
    return {"kl": kl_bernoulli(q_true, q_model).mean(), "focal": focal_loss(logits, y0, gamma)}


class StepCounter(nn.Module):
    """Training steps taken: a persistent buffer, saved with the weights and the checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(1, dtype=torch.long))


@register("hidiff")
class HiDiff(Method):
    """Segmentor prior + anchored Bernoulli refiner, trained in alternate steps."""

    guidable = True

    def __init__(self, config: RunConfig):
        super().__init__(config)
        opts = read_options(config, DEFAULTS)
        for key, value in opts.items():
            if value < 0:
                raise ConfigError(f"method.options.{key}={value} must be >= 0")
        check_binary_bernoulli(config)
        self.feedback, self.recon_weight = opts["feedback"], opts["recon_weight"]
        self.gamma = opts["focal_gamma"]
        self.schedule = BernoulliProcess.from_config(config.process)
        self.segmentor = build_segmentor(config, dropout=config.network.dropout)
        self.refiner = build_denoiser(config, extra_cond=1)  # cond = [image, p]
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
        refine = terms["kl"] + self.recon_weight * terms["focal"]
        loss = refine if refiner_turn else seg + self.feedback * refine
        return {"loss": loss, "segmentor": seg.detach(), "refiner": refine.detach(), **terms}

    def refiner_terms(self, image: Tensor, y0: Tensor, p: Tensor,
                      generator: torch.Generator | None, *, frozen: bool) -> dict[str, Tensor]:
        """BBDM's terms at one t ~ U{0..T-1} per example; ``frozen``: no gradient to the
        refiner's weights (they enter as detached copies)."""
        process = AnchoredBernoulli(self.schedule, p)
        t = process.sample_t(y0.shape[0], generator=generator, device=y0.device)
        y_t = process.q_sample(y0, t, generator=generator)
        args = (y_t, t, torch.cat([image, p.to(image.dtype)], dim=1))
        if frozen:
            weights = [*self.refiner.named_parameters(), *self.refiner.named_buffers()]
            out = functional_call(self.refiner, {k: v.detach() for k, v in weights}, args)
        else:
            out = self.refiner(*args)
        return bbdm_loss_terms(process, y0, y_t, t, out.float(), self.gamma)

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
        p = self.prior(image).repeat(n_samples, *([1] * (image.ndim - 1)))
        cond = torch.cat([image.repeat(n_samples, *([1] * (image.ndim - 1))), p.to(image.dtype)],
                         dim=1)
        process = AnchoredBernoulli(self.schedule, p)
        y_T = process.prior_sample(p.shape, generator=generator, device=image.device)
        timesteps = process.timesteps(steps or self.config.sample.steps)
        denoise = conditioned_denoiser(self, self.refiner, cond)
        constrain = self.guide(process, known, n_samples, generator)
        y0 = last(ddpm(denoise, process, y_T, timesteps, generator=generator, constrain=constrain))
        return y0.float().reshape(n_samples, b, 1, *spatial)

"""Bernoulli diffusion for binary masks, with a prior p: BerDiff (Chen et al., MICCAI 2023) at
p = 1/2, HiDiff's BBDM (Chen et al., IEEE TMI 2024; released ``PriorBinomialDiffusion``) with p a
prior probability map from a segmentor.

Masks live in {0, 1}. Each forward step keeps a pixel with probability alpha_t and otherwise
redraws it from Bernoulli(p), so (BerDiff eqs. 1-2 with 1/2 replaced by p; 0-indexed t,
ab = alpha_bar)
    q(x_t | x_{t-1}) = B(x_t; alpha_t x_{t-1} + (1 - alpha_t) p),
    q(x_t | x_0)     = B(x_t; ab_t x_0 + (1 - ab_t) p),         x_T ~ B(p),
and the posterior (BerDiff eqs. 3-4) is q(x_{t_p} | x_t, x_0) = B(theta_post) with
    theta_post = theta_1 / (theta_1 + theta_0),
    theta_1 = [a x_t + (1 - a) P(x_t)] [ab_p x_0 + (1 - ab_p) p],
    theta_0 = [a (1 - x_t) + (1 - a) P(x_t)] [ab_p (1 - x_0) + (1 - ab_p) (1 - p)],
where P(x_t) = p^x_t (1 - p)^(1 - x_t) is the prior's probability of x_t (1/2 for BerDiff) and,
for a respaced pair t -> t_p, a = ab_t / ab_p is the one-step keep probability (the composition of
the skipped steps is again a keep-or-redraw step). The network outputs logits of x_0; x0_hat =
sigmoid(logits) is a probability and may replace x_0 above (the mixture over x_0 ~ B(x0_hat)).
A prior map is kept in [PRIOR_EPS, 1 - PRIOR_EPS] so that every transition stays possible.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.processes.registry import register_process
from diffuseg.processes.schedules import (
    Schedule,
    Timestep,
    check_step,
    coef,
    make_betas,
    rand_like,
)

PRIOR_EPS = 1e-4  # a prior map is kept in [eps, 1 - eps]


@register_process
class BernoulliProcess(Schedule):
    """Bernoulli diffusion towards the prior B(p): p = 1/2 (BerDiff) or a map ``[N, 1, *sp]``
    (HiDiff, see ``with_prior``); network output = logits of x_0."""

    kind = "bernoulli"
    predictions = ("x0",)  # logits of x_0
    data_range = (0.0, 1.0)  # the mask itself

    def __init__(self, betas: Tensor, prior: float = 0.5) -> None:
        super().__init__(betas)
        if not 0.0 < prior < 1.0:
            raise ConfigError(f"Bernoulli prior p={prior} must lie in (0, 1); BerDiff uses 1/2")
        self.prior: float | Tensor = prior

    def with_prior(self, p: Tensor) -> BernoulliProcess:
        """The same schedule anchored at the prior map ``p`` (HiDiff's BBDM); a new object, the
        tables shared. ``prior_sample`` then draws shapes of p's shape."""
        anchored = copy.copy(self)
        anchored.prior = p.clamp(PRIOR_EPS, 1 - PRIOR_EPS)
        return anchored

    @classmethod
    def from_config(cls, config: ProcessConfig) -> BernoulliProcess:
        if config.kind not in (None, "bernoulli"):
            raise ConfigError(f"process.kind={config.kind!r} is not 'bernoulli'; use build_process")
        if config.prediction != "x0":
            raise ConfigError(
                f"process.prediction={config.prediction!r}: the Bernoulli process predicts x0 "
                "(logits); set process.prediction=x0"
            )
        return cls(make_betas(config))

    def q_probs(self, x0: Tensor, t: Timestep) -> Tensor:
        """P(x_t = 1 | x_0) = ab_t x_0 + (1 - ab_t) p (BerDiff eq. 2); x_0 may be a
        probability."""
        ab = coef(self.alpha_bar_at(t), x0)
        return ab * x0 + (1 - ab) * self.prior

    def q_sample(
        self,
        x0: Tensor,
        t: Timestep,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x_t ~ B(q_probs(x0, t)) as {0, 1} in x0's dtype; `noise` is the uniform [0, 1) draw
        u, and x_t = [u < q_probs]."""
        if noise is None:
            noise = rand_like(x0, generator)
        return (noise < self.q_probs(x0, t)).to(x0.dtype)

    def forward_step(self, x_s: Tensor, s: int, t: int, *,
                     generator: torch.Generator | None = None) -> Tensor:
        """x_t ~ q(x_t | x_s) = B(a x_s + (1 - a) p), a = ab_t / ab_s, for s < t (s = -1: x_s is
        x_0): the skipped steps compose to one keep-or-redraw step (module docstring), so
        composed with q(x_s | x_0) it gives q(x_t | x_0); p is the prior (HiDiff's map when
        anchored). ``x_s`` may be a probability (a mixture over x_s ~ B(x_s)). RePaint's jump
        back (Lugmayr et al. 2022, Alg. 1)."""
        if not -1 <= s < t:
            raise ConfigError(f"forward_step needs -1 <= s < t; got s={s}, t={t}")
        a = coef(self.alpha_bar_at(t) / self.alpha_bar_at(s), x_s)
        probs = a * x_s + (1 - a) * self.prior
        return (rand_like(x_s, generator) < probs).to(x_s.dtype)

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """x_T ~ B(p) in {0, 1} (the limit of q(x_T | x_0) as ab_T -> 0); with a prior map,
        ``shape`` must be p's."""
        p = self.prior
        if isinstance(p, Tensor) and tuple(shape) != tuple(p.shape):
            raise ConfigError(f"prior_sample shape {tuple(shape)} differs from the prior map's "
                              f"{tuple(p.shape)}; the prior fixes the shape of x_T")
        draw_on = generator.device if generator is not None else device
        u = torch.rand(tuple(shape), generator=generator, device=draw_on, dtype=dtype)
        x = (u < (p.to(u.device) if isinstance(p, Tensor) else p)).to(dtype)
        return x.to(device) if device is not None else x

    def predict_x0(self, x_t: Tensor, t: Timestep, model_output: Tensor) -> Tensor:
        """x0_hat = sigmoid(logits): the probability that each pixel of x_0 is 1."""
        return torch.sigmoid(model_output)

    def output_for_x0(self, x_t: Tensor, t: Timestep, x0: Tensor) -> Tensor:
        """The logits that ``predict_x0`` reads as ``x0``: logit(x0), with 0 and 1 taken as
        1e-13 and 1 - 1e-13 (logits of about -/+30, computed in float64)."""
        return torch.logit(x0.double().clamp(1e-13, 1 - 1e-13)).to(x0.dtype)

    def posterior_probs(
        self, x_t: Tensor, t: Timestep, t_prev: Timestep, x0_prob: Tensor
    ) -> Tensor:
        """theta_post of q(x_{t_p} | x_t, x_0 ~ B(x0_prob)) (module docstring). At t_p = -1 it
        returns x0_prob itself, as BerDiff does (p_mean at t = 0): the decoder is B(x0_hat)."""
        check_step(t, t_prev)
        if isinstance(t_prev, int) and t_prev == -1:
            return x0_prob
        ab_t, ab_p = self.alpha_bar_at(t), self.alpha_bar_at(t_prev)
        a, ab_p_, p = coef(ab_t / ab_p, x_t), coef(ab_p, x_t), self.prior
        prior_of_x_t = x_t * p + (1 - x_t) * (1 - p)
        theta_1 = (a * x_t + (1 - a) * prior_of_x_t) * (ab_p_ * x0_prob + (1 - ab_p_) * p)
        theta_0 = (a * (1 - x_t) + (1 - a) * prior_of_x_t) * (
            ab_p_ * (1 - x0_prob) + (1 - ab_p_) * (1 - p))
        theta = theta_1 / (theta_1 + theta_0)
        if isinstance(t_prev, Tensor):
            theta = torch.where(coef(t_prev, x_t) < 0, x0_prob, theta)
        return theta

    def ancestral_step(
        self,
        x_t: Tensor,
        t: Timestep,
        t_prev: Timestep,
        x0_hat: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw x_{t_p} ~ B(posterior_probs(x_t, t, t_p, x0_hat)); t_p = -1 returns x0_hat
        (probabilities, not a draw; an int t_p = -1 draws nothing)."""
        theta = self.posterior_probs(x_t, t, t_prev, x0_hat)
        if isinstance(t_prev, int) and t_prev == -1:
            return theta
        x = (rand_like(x_t, generator) < theta).to(x_t.dtype)
        if isinstance(t_prev, Tensor):
            x = torch.where(coef(t_prev, x_t) < 0, x0_hat, x)
        return x


def kl_bernoulli(p: Tensor, q: Tensor, eps: float = 1e-7) -> Tensor:
    """Elementwise KL(B(p) || B(q)) = p log(p / q) + (1 - p) log((1 - p) / (1 - q)) in nats,
    with 0 log 0 = 0 and q clamped to [eps, 1 - eps] (BerDiff's binomial_kl clamps likewise)."""
    q = q.clamp(eps, 1 - eps)
    r = 1 - p
    return torch.xlogy(p, p) - torch.xlogy(p, q) + torch.xlogy(r, r) - torch.xlogy(r, 1 - q)


def bernoulli_loss_terms(
    process: BernoulliProcess, x0: Tensor, x_t: Tensor, t: Timestep, x0_logits: Tensor, *,
    q_eps: float = 0.0,
) -> dict[str, Tensor]:
    """BerDiff's training terms (Sec. 2.2; loss = kl + lambda * bce), means over all elements:
        kl  = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t, x0_hat)), which at t = 0 is the
              decoder NLL -log B(x_0; x0_hat) (BerDiff's t == 0 case);
        bce = BCE(x0_logits, x_0).
    Nats (BerDiff reports bits: divide both by log 2; their ratio is unchanged). ``q_eps`` > 0
    keeps the true posterior in [q_eps, 1 - q_eps]: needed when it depends on a prior map that is
    differentiated (HiDiff), since d/dq [q log q] is infinite at 0 (the entropy this adds is
    below 2e-5 nats for 1e-6)."""
    x0_hat = process.predict_x0(x_t, t, x0_logits)
    t_prev = t - 1
    q_true = process.posterior_probs(x_t, t, t_prev, x0)
    if q_eps > 0:
        q_true = q_true.clamp(q_eps, 1 - q_eps)
    p_model = process.posterior_probs(x_t, t, t_prev, x0_hat)
    kl = kl_bernoulli(q_true, p_model).mean()
    bce = F.binary_cross_entropy_with_logits(x0_logits, x0)
    return {"kl": kl, "bce": bce}

"""Bernoulli diffusion for binary masks: BerDiff (Chen et al., MICCAI 2023).

Masks live in {0, 1}. Each forward step keeps a pixel with probability alpha_t and otherwise
redraws it from Bernoulli(1/2), so (BerDiff eqs. 1-2, 0-indexed t, ab = alpha_bar)
    q(x_t | x_{t-1}) = B(x_t; alpha_t x_{t-1} + (1 - alpha_t) / 2),
    q(x_t | x_0)     = B(x_t; ab_t x_0 + (1 - ab_t) / 2),
and the posterior (BerDiff eqs. 3-4) is q(x_{t_p} | x_t, x_0) = B(theta_post) with
    theta_post = theta_1 / (theta_1 + theta_0),
    theta_1 = [alpha x_t + (1 - alpha) / 2] [ab_p x_0 + (1 - ab_p) / 2],
    theta_0 = [alpha (1 - x_t) + (1 - alpha) / 2] [ab_p (1 - x_0) + (1 - ab_p) / 2],
where for a respaced pair t -> t_p the one-step alpha is ab_t / ab_p (the composition of the
skipped flips is again a flip of that form). The network outputs logits of x_0; x0_hat =
sigmoid(logits) is a probability and may replace x_0 above (the mixture over x_0 ~ B(x0_hat)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.processes.schedules import (
    Schedule,
    Timestep,
    check_step,
    coef,
    make_betas,
    rand_like,
)


class BernoulliProcess(Schedule):
    """BerDiff's Bernoulli process: x_T ~ B(1/2), network output = logits of x_0."""

    @classmethod
    def from_config(cls, config: ProcessConfig) -> BernoulliProcess:
        if config.kind != "bernoulli":
            raise ConfigError(f"process.kind={config.kind!r} is not 'bernoulli'; use build_process")
        if config.prediction != "x0":
            raise ConfigError(
                f"process.prediction={config.prediction!r}: the Bernoulli process predicts x0 "
                "(logits); set process.prediction=x0"
            )
        return cls(make_betas(config))

    def q_probs(self, x0: Tensor, t: Timestep) -> Tensor:
        """P(x_t = 1 | x_0) = ab_t x_0 + (1 - ab_t) / 2 (BerDiff eq. 2); x_0 may be a
        probability."""
        ab = coef(self.alpha_bar_at(t), x0)
        return ab * x0 + (1 - ab) / 2

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

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """x_T ~ B(1/2) in {0, 1} (the limit of q(x_T | x_0) as ab_T -> 0)."""
        draw_on = generator.device if generator is not None else device
        u = torch.rand(tuple(shape), generator=generator, device=draw_on, dtype=dtype)
        x = (u < 0.5).to(dtype)
        return x.to(device) if device is not None else x

    def predict_x0(self, x_t: Tensor, t: Timestep, model_output: Tensor) -> Tensor:
        """x0_hat = sigmoid(logits): the probability that each pixel of x_0 is 1."""
        return torch.sigmoid(model_output)

    def posterior_probs(
        self, x_t: Tensor, t: Timestep, t_prev: Timestep, x0_prob: Tensor
    ) -> Tensor:
        """theta_post of q(x_{t_p} | x_t, x_0 ~ B(x0_prob)) (module docstring). At t_p = -1 it
        returns x0_prob itself, as BerDiff does (p_mean at t = 0): the decoder is B(x0_hat)."""
        check_step(t, t_prev)
        if isinstance(t_prev, int) and t_prev == -1:
            return x0_prob
        ab_t, ab_p = self.alpha_bar_at(t), self.alpha_bar_at(t_prev)
        alpha, ab_p_ = coef(ab_t / ab_p, x_t), coef(ab_p, x_t)
        theta_1 = (alpha * x_t + (1 - alpha) / 2) * (ab_p_ * x0_prob + (1 - ab_p_) / 2)
        theta_0 = (alpha * (1 - x_t) + (1 - alpha) / 2) * (ab_p_ * (1 - x0_prob) + (1 - ab_p_) / 2)
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
    process: BernoulliProcess, x0: Tensor, x_t: Tensor, t: Timestep, x0_logits: Tensor
) -> dict[str, Tensor]:
    """BerDiff's training terms (Sec. 2.2; loss = kl + lambda * bce), means over all elements:
        kl  = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t, x0_hat)), which at t = 0 is the
              decoder NLL -log B(x_0; x0_hat) (BerDiff's t == 0 case);
        bce = BCE(x0_logits, x_0).
    Nats (BerDiff reports bits: divide both by log 2; their ratio is unchanged)."""
    x0_hat = process.predict_x0(x_t, t, x0_logits)
    t_prev = t - 1
    q_true = process.posterior_probs(x_t, t, t_prev, x0)
    p_model = process.posterior_probs(x_t, t, t_prev, x0_hat)
    kl = kl_bernoulli(q_true, p_model).mean()
    bce = F.binary_cross_entropy_with_logits(x0_logits, x0)
    return {"kl": kl, "bce": bce}

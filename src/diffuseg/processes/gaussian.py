"""Gaussian diffusion (Ho et al. 2020) with respaced sampling steps, eps/x0/v parametrisations
(Salimans & Ho 2022). The solvers that walk it back (DDIM, DPM-Solver++) are in samplers.py.

Notation: ab_t = alpha_bar_t, ab_p = alpha_bar at the next (earlier) sampling timestep t_p, and
the respaced one-step alpha_t = ab_t / ab_p (Nichol & Dhariwal 2021, Sec. 4). `t` is an int or a
LongTensor [B] broadcast over the remaining dims; t_p = -1 is the clean data (ab = 1).
Tables are float64; every result has the dtype and device of the input tensors.
"""

from __future__ import annotations

from typing import Literal

import torch
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
    randn_like,
)

Prediction = Literal["eps", "x0", "v"]


@register_process
class GaussianProcess(Schedule):
    """q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I); the network predicts eps, x0 or v."""

    kind = "gaussian"
    predictions = ("eps", "x0", "v")  # what the network may predict (process.prediction)
    data_range = (-1.0, 1.0)  # a {0, 1} mask is diffused as 2m - 1 (methods/targets.py)

    def __init__(self, betas: Tensor, prediction: Prediction = "eps") -> None:
        super().__init__(betas)
        if prediction not in ("eps", "x0", "v"):
            raise ConfigError(f"prediction={prediction!r} is unknown; use 'eps', 'x0' or 'v'")
        self.prediction: Prediction = prediction

    @classmethod
    def from_config(cls, config: ProcessConfig) -> GaussianProcess:
        if config.kind not in (None, "gaussian"):
            raise ConfigError(f"process.kind={config.kind!r} is not 'gaussian'; use build_process")
        return cls(make_betas(config), prediction=config.prediction)

    # -- forward process ---------------------------------------------------------------------

    def q_sample(
        self,
        x0: Tensor,
        t: Timestep,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, eps ~ N(0, I) (Ho et al. 2020, eq. 4)."""
        if noise is None:
            noise = randn_like(x0, generator)
        ab = self.alpha_bar_at(t)
        return coef(ab.sqrt(), x0) * x0 + coef((1 - ab).sqrt(), x0) * noise

    def forward_step(self, x_s: Tensor, s: int, t: int, *,
                     generator: torch.Generator | None = None) -> Tensor:
        """x_t ~ q(x_t | x_s) for s < t (s = -1: x_s is x_0): with a = ab_t / ab_s,
        x_t = sqrt(a) x_s + sqrt(1 - a) eps (Ho et al. 2020, eq. 2 composed over s+1..t), so
        composed with q(x_s | x_0) it gives q(x_t | x_0). RePaint's jump back (Lugmayr et al.
        2022, Alg. 1)."""
        if not -1 <= s < t:
            raise ConfigError(f"forward_step needs -1 <= s < t; got s={s}, t={t}")
        a = self.alpha_bar_at(t) / self.alpha_bar_at(s)
        noise = randn_like(x_s, generator)
        return coef(a.sqrt(), x_s) * x_s + coef((1 - a).sqrt(), x_s) * noise

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """x_T ~ N(0, I), drawn on the generator's device and moved to `device`."""
        draw_on = generator.device if generator is not None else device
        x = torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype)
        return x.to(device) if device is not None else x

    # -- conversions (Salimans & Ho 2022, Sec. 4 and App. D: v = sqrt(ab) eps - sqrt(1-ab) x0) -

    def x0_from_eps(self, x_t: Tensor, t: Timestep, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) (Ho et al. 2020, eq. 4 inverted)."""
        ab = self.alpha_bar_at(t)
        return coef((1 / ab).sqrt(), x_t) * x_t - coef((1 / ab - 1).sqrt(), x_t) * eps

    def eps_from_x0(self, x_t: Tensor, t: Timestep, x0: Tensor) -> Tensor:
        """eps = (x_t - sqrt(ab_t) x_0) / sqrt(1 - ab_t)."""
        ab = self.alpha_bar_at(t)
        return coef((1 / (1 - ab)).sqrt(), x_t) * x_t - coef((ab / (1 - ab)).sqrt(), x_t) * x0

    def v_from(self, x0: Tensor, eps: Tensor, t: Timestep) -> Tensor:
        """v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0 (Salimans & Ho 2022, eq. 9 for VP)."""
        ab = self.alpha_bar_at(t)
        return coef(ab.sqrt(), x0) * eps - coef((1 - ab).sqrt(), x0) * x0

    def x0_from_v(self, x_t: Tensor, t: Timestep, v: Tensor) -> Tensor:
        """x_0 = sqrt(ab_t) x_t - sqrt(1 - ab_t) v."""
        ab = self.alpha_bar_at(t)
        return coef(ab.sqrt(), x_t) * x_t - coef((1 - ab).sqrt(), x_t) * v

    def eps_from_v(self, x_t: Tensor, t: Timestep, v: Tensor) -> Tensor:
        """eps = sqrt(1 - ab_t) x_t + sqrt(ab_t) v."""
        ab = self.alpha_bar_at(t)
        return coef((1 - ab).sqrt(), x_t) * x_t + coef(ab.sqrt(), x_t) * v

    def training_target(self, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
        """What the network regresses for x_t = q_sample(x0, t, noise=noise): eps, x0 or v."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.v_from(x0, noise, t)

    def output_for_x0(self, x_t: Tensor, t: Timestep, x0: Tensor) -> Tensor:
        """The network output that ``predict_x0(x_t, t, .)`` reads as ``x0`` (Salimans & Ho
        2022, App. D): what guidance through x0 hands back to the sampler."""
        return self.training_target(x0, self.eps_from_x0(x_t, t, x0), t)

    def predict_x0(self, x_t: Tensor, t: Timestep, model_output: Tensor) -> Tensor:
        """The network output, read according to `prediction`, as x0_hat."""
        if self.prediction == "eps":
            return self.x0_from_eps(x_t, t, model_output)
        if self.prediction == "x0":
            return model_output
        return self.x0_from_v(x_t, t, model_output)

    # -- reverse process ---------------------------------------------------------------------

    def q_posterior(
        self, x0: Tensor, x_t: Tensor, t: Timestep, t_prev: Timestep | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t_p} | x_t, x_0) = N(mean, variance) (Ho et al. 2020, eqs. 6-7) for the respaced
        pair t -> t_p (default t - 1), with alpha = ab_t / ab_p and beta = 1 - alpha:
            mean = sqrt(ab_p) beta / (1 - ab_t) x_0 + sqrt(alpha) (1 - ab_p) / (1 - ab_t) x_t
            variance = (1 - ab_p) / (1 - ab_t) beta   (diffusers' "fixed_small")
        variance and log_variance broadcast against x_t; log_variance = log(max(var, 1e-20)),
        finite at t_p = -1 where the variance is 0 (diffusers clamps the same way)."""
        t_p = t - 1 if t_prev is None else t_prev
        c_x0, c_xt, var = self._posterior_coefs(t, t_p)
        mean = coef(c_x0, x_t) * x0 + coef(c_xt, x_t) * x_t
        log_var = var.clamp(min=1e-20).log()
        like = {"dtype": x_t.dtype, "device": x_t.device}
        return mean, coef(var, x_t).to(**like), coef(log_var, x_t).to(**like)

    def _posterior_coefs(self, t: Timestep, t_prev: Timestep) -> tuple[Tensor, Tensor, Tensor]:
        check_step(t, t_prev)
        ab_t, ab_p = self.alpha_bar_at(t), self.alpha_bar_at(t_prev)
        alpha = ab_t / ab_p
        beta = 1 - alpha
        c_x0 = ab_p.sqrt() * beta / (1 - ab_t)
        c_xt = alpha.sqrt() * (1 - ab_p) / (1 - ab_t)
        return c_x0, c_xt, (1 - ab_p) / (1 - ab_t) * beta

    def ancestral_step(
        self,
        x_t: Tensor,
        t: Timestep,
        t_prev: Timestep,
        x0_hat: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw x_{t_p} ~ q(x_{t_p} | x_t, x0_hat), the respaced DDPM step (Ho et al. 2020,
        Alg. 2 with eq. 7; Nichol & Dhariwal 2021, Sec. 4). An int t_p = -1 returns x0_hat and
        draws nothing."""
        if isinstance(t_prev, int) and t_prev == -1:
            check_step(t, t_prev)
            return x0_hat
        c_x0, c_xt, var = self._posterior_coefs(t, t_prev)
        mean = coef(c_x0, x_t) * x0_hat + coef(c_xt, x_t) * x_t
        return mean + coef(var.sqrt(), x_t) * randn_like(x_t, generator)

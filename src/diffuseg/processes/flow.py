"""Flow matching on a straight path (conditional flow matching with the optimal-transport path,
Lipman et al., ICLR 2023, eq. 20-23 with sigma_min = 0; rectified flow, Liu et al., ICLR 2023,
eq. 1): noise and data joined by a line, and a network that learns the velocity along it.

Notation (time runs as in the diffusion processes, data at 0 and noise at 1; Lipman et al. and
Liu et al. put the data at 1, so their t is our 1 - sigma; Esser et al. 2024 use ours):

    x_sigma = (1 - sigma) x0 + sigma eps,   eps ~ N(0, I),   sigma in [0, 1]          (1)
    u = d x_sigma / d sigma = eps - x0      (the conditional velocity, Lipman eq. 23)   (2)

The T training timesteps t = 0 .. T-1 sit at sigma_t = (t + 1) / T (so t = T - 1 is pure noise),
and t = -1 is the data (sigma = 0), as for the other processes. The network predicts the
velocity (``prediction = "v"``, the flow-matching loss ||v_theta - u||^2, Lipman eq. 22) or x0
(``"x0"``, the clean mask, then v = (x_sigma - x0_hat) / sigma); both give x0_hat:

    x0_hat = x_sigma - sigma v_hat                                                       (3)

Sampling integrates the ODE dx/dsigma = v from sigma = 1 to 0. One Euler step from sigma to
sigma' < sigma (``ancestral_step``, the process's own step, deterministic):

    x_sigma' = x_sigma + (sigma' - sigma) v,   v = (x_sigma - x0_hat) / sigma           (4)

which equals (1 - sigma') x0_hat + sigma' eps_hat with eps_hat = (x_sigma - (1 - sigma) x0_hat)
/ sigma: on a straight path (one data point) it is exact. Heun's second-order step is in
``diffuseg.sampling.samplers.heun``; it reads ``sigma_at`` and ``velocity``.

Where we differ: sigma_min = 0 (Lipman et al. keep a small sigma_min > 0; with masks in
{-1, 1} the end point is the mask itself); timesteps are the T-point grid of the other processes
rather than continuous, and uniform rather than logit-normal (Esser et al. 2024).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.processes.registry import register_process
from diffuseg.processes.schedules import TimeGrid, Timestep, check_step, coef, randn_like

Prediction = Literal["v", "x0"]


@register_process
class FlowProcess(TimeGrid):
    """The straight path (1) between data (sigma = 0) and N(0, I) (sigma = 1) on T steps."""

    kind = "flow"
    predictions = ("v", "x0")
    data_range = (-1.0, 1.0)  # a {0, 1} mask is transported as 2m - 1 (methods/targets.py)

    def __init__(self, T: int, prediction: Prediction = "v") -> None:
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ConfigError(f"T={T!r} must be an integer >= 1")
        if prediction not in self.predictions:
            raise ConfigError(f"process.prediction={prediction!r}: flow matching predicts the "
                              "velocity ('v') or the clean mask ('x0'); set one of them")
        self.T = T
        self.prediction: Prediction = prediction
        # index t + 1: entry 0 is sigma at t = -1 (the data) = 0
        self._sigma = torch.arange(T + 1, dtype=torch.float64) / T

    @classmethod
    def from_config(cls, config: ProcessConfig) -> FlowProcess:
        return cls(config.T, prediction=config.prediction)  # type: ignore[arg-type]

    # -- time ------------------------------------------------------------------------------------

    def sigma_at(self, t: Timestep) -> Tensor:
        """sigma_t = (t + 1) / T in float64 (0 at t = -1); an int gives a 0-dim CPU tensor."""
        if isinstance(t, Tensor):
            return self._sigma.to(t.device)[t.long() + 1]
        if not -1 <= t < self.T:
            raise ConfigError(f"timestep t={t} is outside [-1, {self.T - 1}] for T={self.T}")
        return self._sigma[t + 1]

    def alpha_bar_at(self, t: Timestep) -> Tensor:
        """The signal share of x_sigma, (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2): the alpha_bar of
        the variance-preserving process with the same signal-to-noise ratio (1 at t = -1)."""
        s = self.sigma_at(t)
        return (1 - s) ** 2 / ((1 - s) ** 2 + s**2)

    # -- the path --------------------------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Timestep, *, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """x_sigma = (1 - sigma) x0 + sigma eps (eq. 1)."""
        eps = randn_like(x0, generator) if noise is None else noise
        s = coef(self.sigma_at(t), x0)
        return (1 - s) * x0 + s * eps

    def forward_step(self, x_s: Tensor, s: int, t: int, *,
                     generator: torch.Generator | None = None) -> Tensor:
        """x_t from x_s (s < t) with the marginals of (1) kept: x_t = a x_s + b eps' with
        a = (1 - sigma_t) / (1 - sigma_s) and b^2 = sigma_t^2 - (a sigma_s)^2 >= 0 (RePaint's
        jumps; the path itself fixes no transition, this is the Gaussian one with its marginals)."""
        check_step(t, s)
        sig_s, sig_t = float(self.sigma_at(s)), float(self.sigma_at(t))
        a = (1 - sig_t) / (1 - sig_s) if sig_s < 1 else 0.0
        b = math.sqrt(max(sig_t**2 - (a * sig_s) ** 2, 0.0))
        return a * x_s + b * randn_like(x_s, generator)

    def prior_sample(self, shape: tuple[int, ...] | torch.Size, *,
                     generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """x at sigma = 1: N(0, I)."""
        draw_on = generator.device if generator is not None else device
        x = torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype)
        return x.to(device) if device is not None else x

    # -- what the network predicts ---------------------------------------------------------------

    def training_target(self, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
        """The velocity u = eps - x0 (eq. 2) for ``prediction = "v"``, else x0."""
        return noise - x0 if self.prediction == "v" else x0

    def predict_x0(self, x_t: Tensor, t: Timestep, model_output: Tensor) -> Tensor:
        """x0_hat = x_sigma - sigma v_hat (eq. 3), or the output itself for x0 prediction."""
        if self.prediction == "x0":
            return model_output
        return x_t - coef(self.sigma_at(t), x_t) * model_output

    def output_for_x0(self, x_t: Tensor, t: Timestep, x0: Tensor) -> Tensor:
        """The output that ``predict_x0`` reads as ``x0``: v = (x_sigma - x0) / sigma."""
        if self.prediction == "x0":
            return x0
        return self.velocity(x_t, t, x0)

    def velocity(self, x_t: Tensor, t: Timestep, x0_hat: Tensor) -> Tensor:
        """The ODE's velocity at x_sigma given x0_hat: (x_sigma - x0_hat) / sigma (eq. 4)."""
        return (x_t - x0_hat) / coef(self.sigma_at(t), x_t)

    # -- walking back ----------------------------------------------------------------------------

    def ancestral_step(self, x_t: Tensor, t: Timestep, t_prev: Timestep, x0_hat: Tensor, *,
                       generator: torch.Generator | None = None) -> Tensor:
        """One Euler step of the ODE from sigma_t to sigma_{t_prev} (eq. 4); deterministic, so
        ``generator`` is unused. t_prev = -1 returns x0_hat."""
        check_step(t, t_prev)
        if isinstance(t_prev, int) and t_prev == -1:
            return x0_hat
        s, s_prev = coef(self.sigma_at(t), x_t), coef(self.sigma_at(t_prev), x_t)
        return x0_hat + (s_prev / s) * (x_t - x0_hat)

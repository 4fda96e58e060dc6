"""Discrete noise schedules and the table reading that both diffusion processes share.

Timesteps are 0-indexed: t = 0..T-1 is step t+1 of the papers, and t = -1 stands for the clean
data (alpha_bar = 1). Schedules are 1-D float64 tensors of betas; `Schedule` turns them into
alpha_t = 1 - beta_t and alpha_bar_t = prod_{s <= t} alpha_s (Ho et al. 2020, eq. 4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError

Timestep = int | Tensor  # a Python int, or a LongTensor [B] of per-example timesteps


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al. 2020 (Sec. 4): beta_t linear from `beta_start` to `beta_end` over T steps.

    The defaults suit T = 1000; with far fewer steps alpha_bar_{T-1} stays well above 0 and the
    prior N(0, I) no longer matches q(x_T | x_0) (prefer the cosine schedule there).
    """
    _check_T(T)
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"{name}={value} must lie in (0, 1]; the default is Ho et al.'s")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0) with
    f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), and beta_t = min(1 - alpha_bar_t /
    alpha_bar_{t-1}, max_beta) (the clipping of their Sec. 3.2)."""
    _check_T(T)
    if s < 0.0:
        raise ConfigError(f"cosine schedule offset s={s} must be >= 0; the paper uses 0.008")
    if not 0.0 < max_beta <= 1.0:
        raise ConfigError(f"max_beta={max_beta} must lie in (0, 1]; the paper uses 0.999")
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)


def make_betas(config: ProcessConfig) -> Tensor:
    """The betas named by `config.schedule` for `config.T` steps."""
    if config.schedule == "linear":
        return linear_betas(config.T, config.beta_start, config.beta_end)
    if config.schedule == "cosine":
        return cosine_betas(config.T)
    raise ConfigError(f"process.schedule={config.schedule!r} is unknown; use 'linear' or 'cosine'")


def _check_T(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ConfigError(f"number of diffusion steps T={T!r} must be an integer >= 1")


class TimeGrid:
    """The T training timesteps 0 .. T-1 of a process (t = -1 is the clean data): how sampling
    steps are spaced and how training draws them. Shared by every process kind."""

    T: int

    def timesteps(self, n: int) -> list[int]:
        """n descending timesteps with "trailing" spacing (Lin et al. 2024, Table 2; diffusers'
        timestep_spacing="trailing"): t_i = round(T (n - i) / n) - 1, so the first is T - 1."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.T:
            raise ConfigError(
                f"number of sampling steps n={n!r} must be an integer in [1, {self.T}]"
            )
        return [round(self.T * (n - i) / n) - 1 for i in range(n)]

    def sample_t(
        self,
        batch: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Training timesteps, uniform over {0, ..., T-1}: a LongTensor [batch]."""
        draw_on = generator.device if generator is not None else device
        t = torch.randint(0, self.T, (batch,), generator=generator, device=draw_on)
        return t.to(device) if device is not None else t



class Schedule(TimeGrid):
    """alpha_bar and timestep bookkeeping over betas [T]; the base of both processes.

    Tables are float64 on the CPU; copies on other devices are memoised on first use (a cache,
    not state: no call changes what any method returns).
    """

    def __init__(self, betas: Tensor) -> None:
        betas = torch.as_tensor(betas).detach().to("cpu", torch.float64).clone()
        if betas.dim() != 1 or betas.numel() < 1:
            shape = tuple(betas.shape)
            raise ConfigError(f"betas must be a non-empty 1-D tensor, got shape {shape}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ConfigError("betas must all lie in (0, 1]; build them with linear/cosine_betas")
        self.T: int = int(betas.numel())
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        # index t + 1: entry 0 is alpha_bar at t = -1 (clean data) = 1
        self._alpha_bar_ext = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar])
        self._device_tables: dict[torch.device, Tensor] = {}

    def alpha_bar_at(self, t: int | Tensor) -> Tensor:
        """alpha_bar_t in float64, with alpha_bar_{-1} = 1. An int gives a 0-dim CPU tensor; a
        LongTensor gives a tensor of its shape on its device (values are not range-checked, to
        avoid a device sync)."""
        if isinstance(t, Tensor):
            table = self._device_tables.get(t.device)
            if table is None:
                table = self._device_tables.setdefault(t.device, self._alpha_bar_ext.to(t.device))
            return table[t.long() + 1]
        if not -1 <= t < self.T:
            raise ConfigError(f"timestep t={t} is outside [-1, {self.T - 1}] for T={self.T}")
        return self._alpha_bar_ext[t + 1]


def coef(value: Tensor, like: Tensor) -> Tensor:
    """Broadcast a float64 coefficient from `Schedule.alpha_bar_at` against `like` [B, ...].

    0-dim (int t) values stay 0-dim float64 CPU scalars: torch applies them in `like`'s dtype and
    on its device without a sync. Per-example [B] values are cast and reshaped to [B, 1, ...].
    """
    if value.dim() == 0:
        return value
    return value.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device (then moved), so that
    a CPU generator gives the same numbers whatever the target device (as diffusers does)."""
    draw_on = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=draw_on, dtype=x.dtype).to(x.device)


def rand_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) noise shaped like x; see `randn_like` for the device rule."""
    draw_on = generator.device if generator is not None else x.device
    return torch.rand(x.shape, generator=generator, device=draw_on, dtype=x.dtype).to(x.device)


def check_step(t: Timestep, t_prev: Timestep) -> None:
    """Int timesteps must go down and t_prev >= -1; tensors are not checked (no device sync)."""
    if isinstance(t, int) and isinstance(t_prev, int) and not -1 <= t_prev < t:
        raise ConfigError(f"step from t={t} to t_prev={t_prev}: need -1 <= t_prev < t")

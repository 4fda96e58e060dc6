"""Samplers: small functions over (denoise, process, x_T, timesteps) yielding the trajectory.

Each step calls `denoise(x, t_batch)` with t_batch a LongTensor [B] on x's device, turns the
output into x0_hat with `process.predict_x0`, optionally clamps it to [-clip, clip], and asks the
process for the state at the next timestep of `timesteps` (-1 after the last one: the clean
data, where every sampler returns x0_hat). Coefficients for int timesteps are host scalars, so
no step waits on the device (no `.item()` on device tensors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from diffuseg.errors import ConfigError
from diffuseg.processes import Process

Denoise = Callable[[Tensor, Tensor], Tensor]  # (x_t, t LongTensor [B]) -> network output
# Guided resampling (diffuseg.guidance): (x_{t_prev}, t_prev) -> x_{t_prev} with the known pixels
# replaced; every sampler applies it to its new state after each step, before yielding it.
Constrain = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class Step:
    """One sampling step: x is the new state x_{t_prev}; x0_hat was predicted from x_t at t."""

    x: Tensor
    x0_hat: Tensor
    t: int


def ddpm(
    denoise: Denoise,
    process: Process,
    x_T: Tensor,
    timesteps: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    clip: float | None = None,
    constrain: Constrain | None = None,
) -> Iterator[Step]:
    """Ancestral sampling (Ho et al. 2020, Alg. 2) over respaced `timesteps`: x_{t_p} ~
    q(x_{t_p} | x_t, x0_hat) via `process.ancestral_step`; works for every Process."""
    pairs = _pairs(timesteps, process.T)

    def run() -> Iterator[Step]:
        x = x_T
        for t, t_prev in pairs:
            x0_hat = _predict(denoise, process, x, t, clip)
            x = process.ancestral_step(x, t, t_prev, x0_hat, generator=generator)
            x = _constrained(x, t_prev, constrain)
            yield Step(x=x, x0_hat=x0_hat, t=t)

    return run()


def ddim(
    denoise: Denoise,
    process: Process,
    x_T: Tensor,
    timesteps: Sequence[int],
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip: float | None = None,
    constrain: Constrain | None = None,
) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12) via `process.ddim_step`; eta = 0 is deterministic given
    x_T. Needs a process with `ddim_step` (the Gaussian one)."""
    pairs = _pairs(timesteps, process.T)
    step = _require(process, "ddim_step", "DDIM")
    if eta < 0:
        raise ConfigError(f"DDIM eta={eta} must be >= 0 (0 = deterministic, 1 = DDPM)")

    def run() -> Iterator[Step]:
        x = x_T
        for t, t_prev in pairs:
            x0_hat = _predict(denoise, process, x, t, clip)
            x = step(x, t, t_prev, x0_hat, eta=eta, generator=generator)
            x = _constrained(x, t_prev, constrain)
            yield Step(x=x, x0_hat=x0_hat, t=t)

    return run()


def dpm_solver_pp(
    denoise: Denoise,
    process: Process,
    x_T: Tensor,
    timesteps: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    clip: float | None = None,
    constrain: Constrain | None = None,
) -> Iterator[Step]:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): first order at the first step, second-order
    multistep after, and x0_hat at the final step to t = -1 (as diffusers' multistep scheduler
    with solver_order=2, final_sigmas_type="zero"). Deterministic; `generator` is unused and
    kept for the shared signature. Needs a process with `dpm_solver_pp_step`."""
    del generator
    pairs = _pairs(timesteps, process.T)
    step = _require(process, "dpm_solver_pp_step", "DPM-Solver++")

    def run() -> Iterator[Step]:
        x, history = x_T, None
        for t, t_prev in pairs:
            x0_hat = _predict(denoise, process, x, t, clip)
            x = _constrained(step(x, t, t_prev, x0_hat, history), t_prev, constrain)
            history = (t, x0_hat)
            yield Step(x=x, x0_hat=x0_hat, t=t)

    return run()


def last(steps: Iterable[Step]) -> Tensor:
    """The final state of a trajectory (consumes it)."""
    final = None
    for final in steps:  # noqa: B007 - the loop variable is the result
        pass
    if final is None:
        raise ConfigError("last() got an empty trajectory; give at least one timestep")
    return final.x


def _constrained(x: Tensor, t_prev: int, constrain: Constrain | None) -> Tensor:
    return x if constrain is None else constrain(x, t_prev)


def _predict(denoise: Denoise, process: Process, x: Tensor, t: int, clip: float | None) -> Tensor:
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    x0_hat = process.predict_x0(x, t, denoise(x, t_batch))
    return x0_hat if clip is None else x0_hat.clamp(-clip, clip)


def _pairs(timesteps: Sequence[int] | Tensor, T: int) -> list[tuple[int, int]]:
    """(t, t_prev) pairs of a strictly descending sequence in [0, T), ending with t_prev = -1."""
    ts = [int(t) for t in (timesteps.tolist() if isinstance(timesteps, Tensor) else timesteps)]
    if not ts:
        raise ConfigError("timesteps is empty; use process.timesteps(n) with n >= 1")
    if ts[0] >= T or ts[-1] < 0 or any(a <= b for a, b in pairwise(ts)):
        raise ConfigError(
            f"timesteps {ts[:4]}... must descend strictly within [0, {T - 1}]; "
            "use process.timesteps(n)"
        )
    return list(pairwise([*ts, -1]))


def _require(process: Process, name: str, sampler: str) -> Callable[..., Tensor]:
    method = getattr(process, name, None)
    if method is None:
        raise ConfigError(
            f"{sampler} sampling needs a process with {name}(); {type(process).__name__} has "
            "none: use the ddpm sampler (sample.sampler=ddpm)"
        )
    return method

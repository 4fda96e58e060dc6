"""Samplers: small functions over (denoise, process, x_T, timesteps) yielding the trajectory.

Every sampler runs the same loop (`_trajectory`): call `denoise(x, t_batch)` with t_batch a
LongTensor [B] on x's device, turn the output into x0_hat with `process.predict_x0`, optionally
clamp it to [-clip, clip], and apply the sampler's update to reach the next timestep of
`timesteps` (-1 after the last one: the clean data, where every update returns x0_hat). The
samplers differ only in that update:

* `ddpm`: the process's own ancestral step (Gaussian and Bernoulli processes);
* `ddim`: Song et al. 2021, eq. 12 (`ddim_update`, Gaussian processes only);
* `dpm_solver_pp`: Lu et al. 2022, DPM-Solver++(2M) (`dpm_solver_pp_update`, Gaussian only);
* `euler`, `heun`: Euler's (the flow process's own step) and Heun's method on the ODE of a flow
  process (processes/flow.py).

Every sampler takes `constrain` (`Constrain`, or None): the loop applies it to each new state
with the next timestep; guided resampling (`diffuseg.sampling.repaint`, RePaint) uses it to hold the
pixels a reviewer marked. `jumps` = r > 1 adds RePaint's resampling (Lugmayr et al. 2022,
Alg. 1): after the step t -> t_prev the state goes back to t by `process.forward_step`
(q(x_t | x_{t_prev})) and the step is redone, r times in all (not for the last step to -1); one
Step is yielded per (t, t_prev), the last attempt.

The solver maths live here, not in the processes: a process gives q, its posterior and the
conversions; a sampler decides how to walk back. Which sampler a process kind can run, and its
default, are stated once in `SUPPORTED` and `DEFAULT`; `check_sampler` refuses the others.
Coefficients for int timesteps are host scalars, so no step waits on the device.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from diffuseg.errors import ConfigError
from diffuseg.processes import Process
from diffuseg.processes.schedules import Timestep, check_step, coef, randn_like

Denoise = Callable[[Tensor, Tensor], Tensor]  # (x_t, t LongTensor [B]) -> network output
# (x_t, t, t_prev, x0_hat) -> x_{t_prev}; a multistep update keeps its own history
Update = Callable[[Tensor, int, int, Tensor], Tensor]
# Guided resampling (diffuseg.sampling.repaint): (x_{t_prev}, t_prev) -> x_{t_prev} with the known
# pixels
# replaced; the loop applies it to the new state after every update, before yielding it.
Constrain = Callable[[Tensor, int], Tensor]

SUPPORTED = {"ddpm": ("gaussian", "bernoulli"), "ddim": ("gaussian",),
             "dpm_solver_pp": ("gaussian",), "euler": ("flow",),
             "heun": ("flow",)}  # sampler -> the process kinds it can run
# process kind -> sampler when none is set
DEFAULT = {"gaussian": "ddim", "bernoulli": "ddpm", "flow": "euler"}


@dataclass(frozen=True)
class Step:
    """One sampling step: x is the new state x_{t_prev}; x0_hat was predicted from x_t at t."""

    x: Tensor
    x0_hat: Tensor
    t: int


def check_sampler(name: str | None, kind: str) -> str:
    """The sampler to use for a process of `kind`: `name`, or the kind's default when None;
    a sampler that cannot run that process is refused (ConfigError naming the fix)."""
    if name is None:
        return DEFAULT[kind]
    if name not in SUPPORTED:
        raise ConfigError(f"sample.sampler={name!r} is unknown; use one of {sorted(SUPPORTED)}")
    if kind not in SUPPORTED[name]:
        usable = sorted(s for s, kinds in SUPPORTED.items() if kind in kinds)
        raise ConfigError(f"sample.sampler={name!r} cannot run a {kind} process; use "
                          f"{' or '.join(usable)} (or leave sample.sampler unset)")
    return name


def ddpm(denoise: Denoise, process: Process, x_T: Tensor, timesteps: Sequence[int], *,
         generator: torch.Generator | None = None, clip: float | None = None,
         constrain: Constrain | None = None, jumps: int = 1) -> Iterator[Step]:
    """Ancestral sampling (Ho et al. 2020, Alg. 2) over respaced `timesteps`: x_{t_p} ~
    q(x_{t_p} | x_t, x0_hat) via `process.ancestral_step`; works for every Process."""

    def update(x: Tensor, t: int, t_prev: int, x0_hat: Tensor) -> Tensor:
        return process.ancestral_step(x, t, t_prev, x0_hat, generator=generator)

    return _trajectory(denoise, process, x_T, timesteps, update, clip, constrain,
                       jumps=jumps, generator=generator)


def ddim(denoise: Denoise, process: Process, x_T: Tensor, timesteps: Sequence[int], *,
         eta: float = 0.0, generator: torch.Generator | None = None,
         clip: float | None = None, constrain: Constrain | None = None,
         jumps: int = 1) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12; `ddim_update`); eta = 0 is deterministic given x_T.
    Needs a Gaussian process."""
    _require_kind(process, "ddim")
    _check_eta(eta)

    def update(x: Tensor, t: int, t_prev: int, x0_hat: Tensor) -> Tensor:
        return ddim_update(process, x, t, t_prev, x0_hat, eta=eta, generator=generator)

    return _trajectory(denoise, process, x_T, timesteps, update, clip, constrain,
                       jumps=jumps, generator=generator)


def dpm_solver_pp(denoise: Denoise, process: Process, x_T: Tensor, timesteps: Sequence[int], *,
                  generator: torch.Generator | None = None, clip: float | None = None,
                  constrain: Constrain | None = None, jumps: int = 1) -> Iterator[Step]:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): first order at the first step, second-order
    multistep after, and x0_hat at the final step to t = -1 (as diffusers' multistep scheduler
    with solver_order=2, final_sigmas_type="zero"). Deterministic; `generator` only draws the
    resampling jumps' noise. Needs a Gaussian process. A redone step (jumps) replaces its own
    history entry, so the multistep term always uses the previous timestep."""
    _require_kind(process, "dpm_solver_pp")
    history: list[tuple[int, Tensor]] = []

    def update(x: Tensor, t: int, t_prev: int, x0_hat: Tensor) -> Tensor:
        if history and history[-1][0] == t:  # this step again, after a resampling jump
            history.pop()
        x_prev = dpm_solver_pp_update(process, x, t, t_prev, x0_hat,
                                      history[-1] if history else None)
        history.append((t, x0_hat))
        return x_prev

    return _trajectory(denoise, process, x_T, timesteps, update, clip, constrain,
                       jumps=jumps, generator=generator)


def euler(denoise: Denoise, process: Process, x_T: Tensor, timesteps: Sequence[int], *,
          generator: torch.Generator | None = None, clip: float | None = None,
          constrain: Constrain | None = None, jumps: int = 1) -> Iterator[Step]:
    """Euler's method on a flow process's ODE: its own (deterministic) step,
    ``FlowProcess.ancestral_step`` (processes/flow.py, eq. 4). One network call per step."""
    _require_kind(process, "euler")
    return ddpm(denoise, process, x_T, timesteps, generator=generator, clip=clip,
                constrain=constrain, jumps=jumps)


def heun(denoise: Denoise, process: Process, x_T: Tensor, timesteps: Sequence[int], *,
         generator: torch.Generator | None = None, clip: float | None = None,
         constrain: Constrain | None = None, jumps: int = 1) -> Iterator[Step]:
    """Heun's second-order method on a flow process's ODE (Karras et al. 2022, Alg. 1 without
    churn): an Euler step to sigma', the velocity there, and the step again with the mean of the
    two velocities, x' = x + (sigma' - sigma) (v + v') / 2; the last step (to sigma = 0) is Euler's,
    as in Karras et al. Two network calls per step but the last."""
    _require_kind(process, "heun")

    def update(x: Tensor, t: int, t_prev: int, x0_hat: Tensor) -> Tensor:
        x_euler = process.ancestral_step(x, t, t_prev, x0_hat)
        if t_prev < 0:
            return x_euler
        v = process.velocity(x, t, x0_hat)
        v_next = process.velocity(x_euler, t_prev,
                                  _x0_hat(denoise, process, x_euler, t_prev, clip))
        return x + (process.sigma_at(t_prev) - process.sigma_at(t)) * (v + v_next) / 2

    return _trajectory(denoise, process, x_T, timesteps, update, clip, constrain,
                       jumps=jumps, generator=generator)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpm_solver_pp": dpm_solver_pp, "euler": euler,
            "heun": heun}


def sample(name: str, denoise: Denoise, process: Process, x_T: Tensor,
           timesteps: Sequence[int], *, generator: torch.Generator | None = None,
           clip: float | None = None, eta: float = 0.0,
           constrain: Constrain | None = None, jumps: int = 1) -> Tensor:
    """The final state of sampler `name` (checked against the process's kind); `eta` is used by
    DDIM only; `jumps`: RePaint resamplings per step (module docstring)."""
    check_sampler(name, process.kind)
    extra = {"eta": eta} if name == "ddim" else {}
    return last(SAMPLERS[name](denoise, process, x_T, timesteps, generator=generator, clip=clip,
                               constrain=constrain, jumps=jumps, **extra))


StepHook = Callable[[int, Step], None]  # (k, the k-th Step of a trajectory) -> None
_STEP_HOOK: contextvars.ContextVar[StepHook | None] = contextvars.ContextVar(
    "diffuseg_step_hook", default=None)


@contextlib.contextmanager
def on_step(hook: StepHook | None) -> Iterator[None]:
    """Call ``hook(k, step)`` after the k-th step of every trajectory that ``last`` consumes
    inside the block, with the whole ``Step`` (state, x0_hat, t): progress of long sampling runs
    (``Predictor.segment(progress=...)``) and the explanation's trajectory (``review.explain``),
    without touching the method or its process."""
    token = _STEP_HOOK.set(hook)
    try:
        yield
    finally:
        _STEP_HOOK.reset(token)


def last(steps: Iterable[Step]) -> Tensor:
    """The final state of a trajectory (consumes it)."""
    final = None
    hook = _STEP_HOOK.get()
    for k, final in enumerate(steps, 1):  # noqa: B007 - the loop variable is the result
        if hook is not None:
            hook(k, final)
    if final is None:
        raise ConfigError("last() got an empty trajectory; give at least one timestep")
    return final.x


# -- the solver updates (Gaussian processes: alpha_bar_at, eps_from_x0) ------------------------


def ddim_update(process, x_t: Tensor, t: Timestep, t_prev: Timestep, x0_hat: Tensor, *,
                eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Song et al. 2021, eq. 12 with sigma from eq. 16:
        x_{t_p} = sqrt(ab_p) x0_hat + sqrt(1 - ab_p - sigma^2) eps_hat + sigma z,
        sigma = eta sqrt((1 - ab_p) / (1 - ab_t)) sqrt(1 - ab_t / ab_p),
    with eps_hat = eps_from_x0(x_t, t, x0_hat) (diffusers' use_clipped_model_output=True).
    eta = 0 is deterministic; eta = 1 is the ancestral (DDPM) step. An int t_p = -1 returns
    x0_hat."""
    _check_eta(eta)
    check_step(t, t_prev)
    if isinstance(t_prev, int) and t_prev == -1:
        return x0_hat
    ab_t, ab_p = process.alpha_bar_at(t), process.alpha_bar_at(t_prev)
    sigma = eta * ((1 - ab_p) / (1 - ab_t) * (1 - ab_t / ab_p)).sqrt()
    eps_hat = process.eps_from_x0(x_t, t, x0_hat)
    dir_coef = (1 - ab_p - sigma**2).clamp(min=0).sqrt()
    x_prev = coef(ab_p.sqrt(), x_t) * x0_hat + coef(dir_coef, x_t) * eps_hat
    if eta > 0:
        x_prev = x_prev + coef(sigma, x_t) * randn_like(x_t, generator)
    return x_prev


def dpm_solver_pp_update(process, x_t: Tensor, t: int, t_prev: int, x0_hat: Tensor,
                         history: tuple[int, Tensor] | None = None) -> Tensor:
    """One DPM-Solver++ update in data prediction (Lu et al. 2022, "DPM-Solver++", Alg. 2).

    With alpha = sqrt(ab), sigma = sqrt(1 - ab), lambda = log(alpha / sigma), h = lambda_p -
    lambda_t, the first-order update (their eq. 8, = DDIM with eta 0) is
        x_p = (sigma_p / sigma_t) x_t - alpha_p (e^{-h} - 1) D,   D = x0_hat;
    given `history` = (t_last, x0_hat_last) from the previous step, the 2M update uses
        D = (1 + 1 / (2 r)) x0_hat - 1 / (2 r) x0_hat_last,  r = (lambda_t - lambda_last) / h.
    t_p = -1 (sigma_p = 0) returns x0_hat, as diffusers' final_sigmas_type="zero" does.
    """
    check_step(t, t_prev)
    if t_prev == -1:
        return x0_hat
    lam_t, _, sigma_t = _log_snr(process, t)
    lam_p, alpha_p, sigma_p = _log_snr(process, t_prev)
    h = lam_p - lam_t
    d = x0_hat
    if history is not None:
        t_last, x0_last = history
        r = (lam_t - _log_snr(process, t_last)[0]) / h
        d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_last
    return (sigma_p / sigma_t) * x_t - alpha_p * math.expm1(-h) * d


def _log_snr(process, t: int) -> tuple[float, float, float]:
    ab = float(process.alpha_bar_at(t))
    alpha, sigma = math.sqrt(ab), math.sqrt(1 - ab)
    return math.log(alpha) - math.log(sigma), alpha, sigma


# -- the one loop ------------------------------------------------------------------------------


def _trajectory(denoise: Denoise, process: Process, x_T: Tensor, timesteps: Sequence[int],
                update: Update, clip: float | None,
                constrain: Constrain | None = None, *, jumps: int = 1,
                generator: torch.Generator | None = None) -> Iterator[Step]:
    """Checks `timesteps` and `jumps` now (at the call), then yields one Step per (t, t_prev)
    pair; `constrain` (when given) replaces each new state by `constrain(x, t_prev)`; `jumps` > 1
    redoes each step but the last after a jump back to t (module docstring)."""
    pairs = _pairs(timesteps, process.T)
    if isinstance(jumps, bool) or not isinstance(jumps, int) or jumps < 1:
        raise ConfigError(f"jumps={jumps!r} must be an integer >= 1 (1 = no resampling)")

    def step(x: Tensor, t: int, t_prev: int) -> tuple[Tensor, Tensor]:
        x0_hat = _x0_hat(denoise, process, x, t, clip)
        x = update(x, t, t_prev, x0_hat)
        if constrain is not None:
            x = constrain(x, t_prev)
        return x, x0_hat

    def run() -> Iterator[Step]:
        x = x_T
        for t, t_prev in pairs:
            x_new, x0_hat = step(x, t, t_prev)
            for _ in range(jumps - 1 if t_prev >= 0 else 0):  # RePaint Alg. 1, lines 4-10
                x_t = process.forward_step(x_new, t_prev, t, generator=generator)
                x_new, x0_hat = step(x_t, t, t_prev)
            x = x_new
            yield Step(x=x, x0_hat=x0_hat, t=t)

    return run()


def _x0_hat(denoise: Denoise, process: Process, x: Tensor, t: int, clip: float | None) -> Tensor:
    """The network's estimate of x0 at (x, t), clamped to [-clip, clip] when ``clip`` is set."""
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


def _require_kind(process: Process, sampler: str) -> None:
    kind = getattr(process, "kind", None)
    if kind not in SUPPORTED[sampler]:
        raise ConfigError(f"{sampler} sampling needs a Gaussian process; {type(process).__name__} "
                          "is not one: use the ddpm sampler (sample.sampler=ddpm)")


def _check_eta(eta: float) -> None:
    if eta < 0:
        raise ConfigError(f"DDIM eta={eta} must be >= 0 (0 = deterministic, 1 = DDPM)")

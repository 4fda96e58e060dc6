"""Diffusion processes: maths only, no nn.Module, no state changed by calls.

Both processes satisfy `Process` (docs/architecture.md) and pass tests/contracts/test_processes.py.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.processes.registry import PROCESSES

for _module in pkgutil.iter_modules(__path__):  # each process module registers its kind
    importlib.import_module(f"{__name__}.{_module.name}")

from diffuseg.processes.bernoulli import (  # noqa: E402
    BernoulliProcess,
    bernoulli_loss_terms,
    kl_bernoulli,
)
from diffuseg.processes.gaussian import GaussianProcess  # noqa: E402
from diffuseg.processes.schedules import (  # noqa: E402
    Schedule,
    cosine_betas,
    linear_betas,
    make_betas,
)


@runtime_checkable
class Process(Protocol):
    """Everything samplers, guidance and methods call on any process. `t` is an int or a
    LongTensor [B]. Kind-specific extras are declared in `RegressionProcess` and `PriorProcess`;
    docs/adding_a_method.md says how a new kind joins (its class, `PROCESSES`, its samplers)."""

    T: int
    kind: str  # its key in PROCESSES: which samplers can run it (samplers.SUPPORTED)
    predictions: tuple[str, ...]  # what its network may predict (process.prediction)
    data_range: tuple[float, float]  # a {0, 1} mask maps to low + (high - low) m

    def alpha_bar_at(self, t: int | Tensor) -> Tensor: ...  # the signal share at t; 1 at t = -1

    def timesteps(self, n: int) -> list[int]: ...

    def sample_t(
        self,
        batch: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor: ...

    def q_sample(
        self,
        x0: Tensor,
        t: int | Tensor,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...

    def forward_step(
        self, x_s: Tensor, s: int, t: int, *, generator: torch.Generator | None = None
    ) -> Tensor: ...  # x_t ~ q(x_t | x_s), s < t (RePaint's resampling jumps)

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor: ...

    def predict_x0(self, x_t: Tensor, t: int | Tensor, model_output: Tensor) -> Tensor: ...

    def output_for_x0(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor: ...
    # the output predict_x0 reads as x0 (guidance through x0, the contract's oracle)

    def ancestral_step(
        self,
        x_t: Tensor,
        t: int | Tensor,
        t_prev: int | Tensor,
        x0_hat: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


@runtime_checkable
class RegressionProcess(Process, Protocol):
    """A process whose network output is regressed on a target (Gaussian: eps, x0 or v): what
    the Gaussian methods' losses and the deterministic samplers (DDIM, DPM-Solver++) call."""

    prediction: str  # what the network predicts

    def training_target(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor: ...

    def eps_from_x0(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor: ...

    def v_from(self, x0: Tensor, eps: Tensor, t: int | Tensor) -> Tensor: ...


@runtime_checkable
class PriorProcess(Process, Protocol):
    """A process with a per-pixel stationary prior (Bernoulli; HiDiff anchors it on a segmentor's
    map): the KL loss terms and ``with_prior``."""

    def with_prior(self, p: Tensor) -> PriorProcess: ...

    def posterior_probs(self, x_t: Tensor, t: int | Tensor, t_prev: int | Tensor,
                        x0: Tensor) -> Tensor: ...


@runtime_checkable
class ODEProcess(Process, Protocol):
    """A process walked back along an ODE in sigma (flow matching): what the Euler and Heun
    samplers call."""

    def sigma_at(self, t: int | Tensor) -> Tensor: ...

    def velocity(self, x_t: Tensor, t: int | Tensor, x0_hat: Tensor) -> Tensor: ...


def build_process(config: ProcessConfig, kind: str | None = None) -> Process:
    """The process of `kind` (a method's declared kind; default `config.kind`), with the schedule
    `config.schedule` over config.T. The one place a process is chosen: an explicit
    `config.kind` that contradicts `kind` is refused; `config.kind = None` follows `kind`."""
    kind = kind or config.kind
    if kind not in PROCESSES:
        raise ConfigError(f"process.kind={kind!r} is unknown; use one of {sorted(PROCESSES)}")
    if config.kind is not None and config.kind != kind:
        raise ConfigError(f"process.kind={config.kind!r} contradicts the method, whose process is "
                          f"{kind!r}; drop process.kind (the method chooses) or set it to {kind}")
    return PROCESSES[kind].from_config(config)


__all__ = [
    "BernoulliProcess",
    "GaussianProcess",
    "ODEProcess",
    "PROCESSES",
    "PriorProcess",
    "Process",
    "RegressionProcess",
    "Schedule",
    "bernoulli_loss_terms",
    "build_process",
    "cosine_betas",
    "kl_bernoulli",
    "linear_betas",
    "make_betas",
]

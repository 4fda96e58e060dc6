"""Diffusion processes: maths only, no nn.Module, no state changed by calls.

Both processes satisfy `Process` (docs/architecture.md) and pass tests/test_process_contract.py.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.processes.bernoulli import BernoulliProcess, bernoulli_loss_terms, kl_bernoulli
from diffuseg.processes.gaussian import GaussianProcess
from diffuseg.processes.schedules import Schedule, cosine_betas, linear_betas, make_betas


@runtime_checkable
class Process(Protocol):
    """What samplers and methods rely on. `t` is an int or a LongTensor [B]."""

    T: int

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

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor: ...

    def predict_x0(self, x_t: Tensor, t: int | Tensor, model_output: Tensor) -> Tensor: ...

    def ancestral_step(
        self,
        x_t: Tensor,
        t: int | Tensor,
        t_prev: int | Tensor,
        x0_hat: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


def build_process(config: ProcessConfig) -> GaussianProcess | BernoulliProcess:
    """The process named by `config.kind`, with the schedule `config.schedule` over config.T."""
    if config.kind == "gaussian":
        return GaussianProcess.from_config(config)
    if config.kind == "bernoulli":
        return BernoulliProcess.from_config(config)
    raise ConfigError(f"process.kind={config.kind!r} is unknown; use 'gaussian' or 'bernoulli'")


__all__ = [
    "BernoulliProcess",
    "GaussianProcess",
    "Process",
    "Schedule",
    "bernoulli_loss_terms",
    "build_process",
    "cosine_betas",
    "kl_bernoulli",
    "linear_betas",
    "make_betas",
]

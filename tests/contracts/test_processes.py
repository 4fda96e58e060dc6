"""The contract every Process satisfies (docs/architecture.md), in 2D and 3D.

The cases are every registered process kind (``PROCESSES``) with every prediction it supports,
with masks in its domain (``data_range``: {-1, 1} for Gaussian and flow, {0, 1} for Bernoulli)
and the oracle network output that makes predict_x0 return the true x0 (``output_for_x0``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import pytest
import torch
from torch import Tensor

from diffuseg.config import ProcessConfig
from diffuseg.processes import PROCESSES, BernoulliProcess, Process, cosine_betas
from diffuseg.sampling.samplers import ddpm, last

T = 100


@dataclass(frozen=True)
class Case:
    make: Callable[[], Process]
    to_domain: Callable[[Tensor], Tensor]  # {0, 1} mask -> the process's data space
    oracle: Callable[[Process, Tensor, Tensor, Tensor], Tensor]  # (process, x_t, t, x0) -> output


def _oracle(process: Process, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """The output that makes predict_x0 return the true x0."""
    return process.output_for_x0(x_t, t, x0)


def _case(make: Callable[[], Process]) -> Case:
    low, high = make().data_range
    return Case(make=make, to_domain=lambda m: low + (high - low) * m, oracle=_oracle)


# every registered kind with every prediction it supports (a new kind is tested by registering)
CASES = {
    f"{kind}-{p}": _case(lambda cls=cls, p=p: cls.from_config(ProcessConfig(T=T, prediction=p)))
    for kind, cls in sorted(PROCESSES.items()) for p in cls.predictions
} | {  # the chain redraws from B(0.3), not B(1/2): HiDiff's kind
    "bernoulli-prior": _case(lambda: BernoulliProcess(cosine_betas(T), prior=0.3)),
}
SHAPES = {"2d": (2, 1, 8, 8), "3d": (2, 1, 4, 4, 4)}


def _mask(shape: tuple[int, ...], seed: int = 0) -> Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


@pytest.mark.parametrize("name", CASES)
class TestProcessContract:
    def test_is_a_process(self, name: str) -> None:
        assert isinstance(CASES[name].make(), Process)

    @pytest.mark.parametrize("dims", SHAPES)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_shapes_and_dtypes_preserved(self, name: str, dims: str, dtype: torch.dtype) -> None:
        case, shape = CASES[name], SHAPES[dims]
        process = case.make()
        gen = torch.Generator().manual_seed(0)
        x0 = case.to_domain(_mask(shape)).to(dtype)
        x_T = process.prior_sample(shape, generator=gen, dtype=dtype)
        for t in (T - 1, process.sample_t(shape[0], generator=gen)):
            x_t = process.q_sample(x0, t, generator=gen)
            x0_hat = process.predict_x0(x_t, t, case.oracle(process, x_t, t, x0))
            x_prev = process.ancestral_step(x_t, t, 0, x0_hat, generator=gen)
            for out in (x_T, x_t, x0_hat, x_prev):
                assert out.shape == shape and out.dtype == dtype

    @pytest.mark.parametrize("n", [1, 3, 10, T])
    def test_timesteps_descend_uniquely_from_T_minus_1(self, name: str, n: int) -> None:
        ts = CASES[name].make().timesteps(n)
        assert len(ts) == n and ts[0] == T - 1 and ts[-1] >= 0
        assert all(isinstance(t, int) for t in ts) and all(a > b for a, b in pairwise(ts))

    def test_sample_t_in_range_and_seeded(self, name: str) -> None:
        process = CASES[name].make()
        t = process.sample_t(500, generator=torch.Generator().manual_seed(1))
        assert t.dtype == torch.long and 0 <= t.min().item() and t.max().item() < T
        assert torch.equal(t, process.sample_t(500, generator=torch.Generator().manual_seed(1)))

    def test_final_ancestral_step_returns_x0_hat(self, name: str) -> None:
        case = CASES[name]
        process = case.make()
        x_t = process.prior_sample(SHAPES["2d"], generator=torch.Generator().manual_seed(2))
        x0_hat = process.predict_x0(x_t, 5, torch.randn(SHAPES["2d"]))
        assert torch.equal(process.ancestral_step(x_t, 5, -1, x0_hat), x0_hat)

    def test_prior_sample_seeded(self, name: str) -> None:
        process = CASES[name].make()

        def draw(seed: int) -> Tensor:
            return process.prior_sample(SHAPES["3d"], generator=torch.Generator().manual_seed(seed))

        assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))

    def test_q_sample_at_t0_is_close_to_x0_and_far_at_T(self, name: str) -> None:
        case = CASES[name]
        process = case.make()
        x0 = case.to_domain(_mask((4, 1, 16, 16)))
        gen = torch.Generator().manual_seed(5)
        near = (process.q_sample(x0, 0, generator=gen) - x0).abs().mean().item()
        far = (process.q_sample(x0, T - 1, generator=gen) - x0).abs().mean().item()
        assert near < 0.05 and far > 0.4

    @pytest.mark.parametrize("dims", SHAPES)
    def test_ancestral_chain_with_oracle_ends_at_x0(self, name: str, dims: str) -> None:
        case = CASES[name]
        process = case.make()
        x0 = case.to_domain(_mask(SHAPES[dims], seed=6))
        gen = torch.Generator().manual_seed(7)
        x_T = process.prior_sample(x0.shape, generator=gen)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            return case.oracle(process, x, t, x0)

        out = last(ddpm(denoise, process, x_T, process.timesteps(5), generator=gen))
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)

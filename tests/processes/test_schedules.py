"""Schedules: closed forms of Ho et al. 2020 / Nichol & Dhariwal 2021, diffusers' tables,
trailing timesteps and the argument checks."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.processes.schedules import Schedule, cosine_betas, linear_betas, make_betas

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("T", [1, 7, 50, 1000])
def test_linear_matches_ho_and_diffusers(T: int) -> None:
    betas = linear_betas(T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert betas[0].item() == pytest.approx(1e-4)
    if T > 1:
        assert betas[-1].item() == pytest.approx(0.02)
        steps = betas.diff()
        torch.testing.assert_close(steps, torch.full_like(steps, (0.02 - 1e-4) / (T - 1)))
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear").betas
    torch.testing.assert_close(betas, ref.double(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("T", [1, 7, 50, 1000])
def test_cosine_matches_eq17_and_diffusers(T: int) -> None:
    betas = cosine_betas(T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)

    def f(t: float) -> float:  # Nichol & Dhariwal 2021, eq. 17
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    alpha_bar = torch.cumprod(1 - betas, 0)
    unclipped = [t for t in range(T) if 1 - f(t + 1) / f(t) < 0.999]
    expected = torch.tensor([f(t + 1) / f(0) for t in unclipped], dtype=torch.float64)
    torch.testing.assert_close(alpha_bar[unclipped], expected, rtol=1e-12, atol=1e-15)
    assert betas.max().item() <= 0.999
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").betas
    torch.testing.assert_close(betas, ref.double(), rtol=1e-6, atol=1e-9)


def test_cosine_final_step_is_clipped_and_alpha_bar_vanishes() -> None:
    betas = cosine_betas(1000)
    assert betas[-1].item() == 0.999
    assert torch.cumprod(1 - betas, 0)[-1].item() < 1e-8


@pytest.mark.parametrize(
    "call",
    [
        lambda: linear_betas(0),
        lambda: linear_betas(-3),
        lambda: linear_betas(2.5),  # type: ignore[arg-type]
        lambda: linear_betas(10, beta_start=0.0),
        lambda: linear_betas(10, beta_end=1.5),
        lambda: cosine_betas(0),
        lambda: cosine_betas(10, s=-0.1),
        lambda: cosine_betas(10, max_beta=0.0),
    ],
)
def test_bad_schedule_arguments_raise_config_error(call) -> None:
    with pytest.raises(ConfigError):
        call()


def test_make_betas_follows_config() -> None:
    torch.testing.assert_close(
        make_betas(ProcessConfig(schedule="linear", T=20, beta_start=1e-3, beta_end=0.1)),
        linear_betas(20, 1e-3, 0.1),
    )
    torch.testing.assert_close(make_betas(ProcessConfig(schedule="cosine", T=20)), cosine_betas(20))
    with pytest.raises(ConfigError, match="schedule"):
        make_betas(ProcessConfig(schedule="sigmoid", T=20))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "betas", [torch.zeros(5), torch.full((5,), 1.5), torch.ones(2, 3) * 0.1, torch.tensor([])]
)
def test_schedule_refuses_invalid_betas(betas: torch.Tensor) -> None:
    with pytest.raises(ConfigError):
        Schedule(betas)


def test_alpha_bar_at_int_and_tensor() -> None:
    sched = Schedule(linear_betas(10))
    expected = torch.cumprod(1 - linear_betas(10), 0)
    assert sched.alpha_bar_at(-1).item() == 1.0
    assert sched.alpha_bar_at(3).item() == pytest.approx(expected[3].item(), rel=1e-15)
    t = torch.tensor([-1, 0, 9, 4])
    torch.testing.assert_close(
        sched.alpha_bar_at(t), torch.cat([torch.ones(1, dtype=torch.float64), expected[[0, 9, 4]]])
    )
    for bad in (10, -2):
        with pytest.raises(ConfigError):
            sched.alpha_bar_at(bad)


@pytest.mark.parametrize(
    "T, n", [(1000, 10), (1000, 7), (1000, 1), (1000, 33), (999, 10), (100, 3), (10, 4), (50, 50)]
)
def test_trailing_timesteps_match_diffusers(T: int, n: int) -> None:
    ts = Schedule(cosine_betas(T)).timesteps(n)
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    ref.set_timesteps(n)
    assert ts == ref.timesteps.tolist()
    assert ts[0] == T - 1 and len(ts) == n and len(set(ts)) == n
    assert all(a > b for a, b in pairwise(ts)) and ts[-1] >= 0


def test_timesteps_examples_and_errors() -> None:
    sched = Schedule(cosine_betas(10))
    assert sched.timesteps(10) == list(range(9, -1, -1))
    assert sched.timesteps(4) == [9, 7, 4, 1]  # round(7.5) = 8, round(2.5) = 2 (half to even)
    assert sched.timesteps(1) == [9]
    for bad in (0, 11, -1, 2.0, True):
        with pytest.raises(ConfigError, match="sampling steps"):
            sched.timesteps(bad)  # type: ignore[arg-type]


def test_sample_t_uniform_range_and_seeded() -> None:
    sched = Schedule(cosine_betas(5))
    t = sched.sample_t(4000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (4000,)
    assert set(t.tolist()) == {0, 1, 2, 3, 4}
    counts = torch.bincount(t, minlength=5).double() / 4000
    assert (counts - 0.2).abs().max().item() < 0.03  # 4.7 standard errors
    again = sched.sample_t(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)

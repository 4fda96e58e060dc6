"""Samplers against diffusers' schedulers, an oracle denoiser, and their argument checks.

Conventions matched: diffusers with timestep_spacing="trailing", clip_sample=False,
set_alpha_to_one=True (DDIM), variance_type="fixed_small" (DDPM), and the same generator so both
draw the same noise. diffusers' DDIM steps to t - T // n rather than to the next timestep of its
list; the two agree only when n divides T, so the DDIM comparison uses T = 1000, n = 10 (our
sampler always steps to the next listed timestep, as diffusers' DDPM does). diffusers recomputes
nothing from a clipped x0 unless use_clipped_model_output=True; without clipping the two agree.
"""

from __future__ import annotations

import pytest
import torch

from diffuseg.errors import ConfigError
from diffuseg.processes import BernoulliProcess, GaussianProcess, cosine_betas
from diffuseg.sampling.samplers import Step, ddim, ddpm, dpm_solver_pp, last

diffusers = pytest.importorskip("diffusers")

T, N = 1000, 10
SHAPE = (2, 1, 4, 4)
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
CLOSE = {"rtol": 1e-5, "atol": 1e-5}


def toy_denoiser(shape: tuple[int, ...] = SHAPE, seed: int = 3):
    """A fixed random linear function of x and t: (0.9 + 0.1 s) w x + 0.1 (1 - s) u, s = t / T."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(shape, generator=g, dtype=torch.float64)
    w = 1 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = (t.to(torch.float64) / T).view(-1, *[1] * (x.dim() - 1))
        return ((0.9 + 0.1 * s) * w * x + 0.1 * (1 - s) * u).to(x.dtype)

    return denoise


def _x_T(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=dtype)


def _reference_loop(scheduler, denoise, x: torch.Tensor, **step_kwargs) -> list[torch.Tensor]:
    states = []
    for t in scheduler.timesteps:
        x = scheduler.step(denoise(x, t.repeat(x.shape[0])), t, x, **step_kwargs).prev_sample
        states.append(x)
    return states


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers(schedule: str, prediction: str, eta: float) -> None:
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule=SCHEDULES[schedule],
        prediction_type=PREDICTIONS[prediction],
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    ref.set_timesteps(N)
    denoise = toy_denoiser()
    expected = _reference_loop(
        ref, denoise, _x_T(), eta=eta, generator=torch.Generator().manual_seed(5)
    )
    process = GaussianProcess(ref.betas.double(), prediction=prediction)  # type: ignore[arg-type]
    ours = list(
        ddim(
            denoise,
            process,
            _x_T(),
            process.timesteps(N),
            eta=eta,
            generator=torch.Generator().manual_seed(5),
        )
    )
    assert [s.t for s in ours] == ref.timesteps.tolist()
    for step, x_ref in zip(ours, expected, strict=True):
        torch.testing.assert_close(step.x, x_ref, **CLOSE)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("n", [N, 7])
def test_ddpm_matches_diffusers_fixed_small(schedule: str, prediction: str, n: int) -> None:
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule=SCHEDULES[schedule],
        prediction_type=PREDICTIONS[prediction],
        variance_type="fixed_small",
        clip_sample=False,
        timestep_spacing="trailing",
    )
    ref.set_timesteps(n)
    denoise = toy_denoiser()
    # diffusers adds sqrt(1e-20) * noise at its last step (variance clamped at 1e-20); we add none
    expected = _reference_loop(ref, denoise, _x_T(), generator=torch.Generator().manual_seed(5))
    process = GaussianProcess(ref.betas.double(), prediction=prediction)  # type: ignore[arg-type]
    ours = list(
        ddpm(
            denoise,
            process,
            _x_T(),
            process.timesteps(n),
            generator=torch.Generator().manual_seed(5),
        )
    )
    for step, x_ref in zip(ours, expected, strict=True):
        torch.testing.assert_close(step.x, x_ref, **CLOSE)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpm_solver_pp_matches_diffusers(schedule: str, prediction: str) -> None:
    """diffusers computes this scheduler in float32 whatever the input (sigmas and sample are
    cast), so compare in float32. One case is irreducibly looser: eps prediction with the cosine
    schedule starts at ab_{T-1} ~ 2.4e-9, where x0_hat = (x - sigma eps) / alpha amplifies float32
    round-off by 1 / alpha ~ 2e4; both implementations then sit ~1e-5 (ours) and ~4e-5 (diffusers)
    relative from a float64 run, so that case is compared at 1e-4. Its first step is DDIM, which
    test_ddim_matches_diffusers checks at 1e-5 in float64."""
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule=SCHEDULES[schedule],
        prediction_type=PREDICTIONS[prediction],
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
    )
    ref.set_timesteps(N)
    tol = 1e-4 if (schedule, prediction) == ("cosine", "eps") else 1e-5
    denoise = toy_denoiser()
    expected = _reference_loop(ref, denoise, _x_T(torch.float32))
    process = GaussianProcess(ref.betas.double(), prediction=prediction)  # type: ignore[arg-type]
    ours = list(dpm_solver_pp(denoise, process, _x_T(torch.float32), process.timesteps(N)))
    assert [s.t for s in ours] == ref.timesteps.tolist()
    for step, x_ref in zip(ours, expected, strict=True):
        assert step.x.dtype == torch.float32
        torch.testing.assert_close(step.x, x_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_with_oracle_reconstructs_x0_along_the_way(prediction: str) -> None:
    """With x0_hat = x0, every DDIM (eta 0) state is q_sample(x0, t_prev, noise=eps)."""
    process = GaussianProcess(cosine_betas(100), prediction=prediction)  # type: ignore[arg-type]
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return process.training_target(x0, process.eps_from_x0(x, t, x0), t)

    x_T = process.q_sample(x0, process.T - 1, noise=eps)
    steps = list(ddim(oracle, process, x_T, process.timesteps(8)))
    for step, t_prev in zip(steps[:-1], process.timesteps(8)[1:], strict=True):
        expected = process.q_sample(x0, t_prev, noise=eps)
        torch.testing.assert_close(step.x, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(steps[-1].x, x0, rtol=1e-6, atol=1e-6)


def test_same_seed_same_samples_and_seed_matters() -> None:
    process = GaussianProcess(cosine_betas(100), prediction="x0")
    denoise = toy_denoiser()

    def run(sampler, seed: int, **kw) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x_T = process.prior_sample(SHAPE, generator=g, dtype=torch.float64)
        return last(sampler(denoise, process, x_T, process.timesteps(6), generator=g, **kw))

    assert torch.equal(run(ddpm, 0), run(ddpm, 0))
    assert not torch.allclose(run(ddpm, 0), run(ddpm, 1))
    assert torch.equal(run(ddim, 0, eta=0.3), run(ddim, 0, eta=0.3))
    torch.testing.assert_close(run(ddim, 4, eta=1.0), run(ddpm, 4), rtol=1e-10, atol=1e-10)


def test_denoise_gets_long_batch_timesteps_and_clip_applies() -> None:
    process = GaussianProcess(cosine_betas(100), prediction="x0")
    calls: list[torch.Tensor] = []

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return 3.0 * torch.ones_like(x)

    steps = list(ddim(denoise, process, torch.zeros(SHAPE), [99, 50, 10], clip=1.0))
    assert all(c.dtype == torch.long and c.shape == (SHAPE[0],) for c in calls)
    assert [c.tolist() for c in calls] == [[99, 99], [50, 50], [10, 10]]
    assert [s.t for s in steps] == [99, 50, 10] and all(isinstance(s, Step) for s in steps)
    assert all(s.x0_hat.max().item() == 1.0 for s in steps)
    assert torch.equal(steps[-1].x, torch.ones(SHAPE))


def test_samplers_refuse_processes_without_their_step() -> None:
    bern = BernoulliProcess(cosine_betas(20))
    x = torch.zeros(SHAPE)
    with pytest.raises(ConfigError, match="ddim sampling needs a Gaussian process"):
        ddim(toy_denoiser(), bern, x, bern.timesteps(4))  # raised at the call, not on iteration
    with pytest.raises(ConfigError, match="dpm_solver_pp sampling needs a Gaussian process"):
        dpm_solver_pp(toy_denoiser(), bern, x, bern.timesteps(4))
    with pytest.raises(ConfigError, match="eta"):
        ddim(toy_denoiser(), GaussianProcess(cosine_betas(20)), x, [5], eta=-1.0)


@pytest.mark.parametrize("timesteps", [[], [19, 19], [3, 10], [20, 5], [5, -1]])
def test_bad_timesteps_raise(timesteps: list[int]) -> None:
    process = GaussianProcess(cosine_betas(20))
    with pytest.raises(ConfigError, match="timesteps"):
        ddpm(toy_denoiser(), process, torch.zeros(SHAPE), timesteps)


def test_last_of_empty_trajectory_raises() -> None:
    with pytest.raises(ConfigError, match="empty"):
        last(iter([]))

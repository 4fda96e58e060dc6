"""GaussianProcess against closed forms written independently of the implementation."""

from __future__ import annotations

import math

import pytest
import torch

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.processes import GaussianProcess, build_process, cosine_betas, linear_betas
from diffuseg.sampling.samplers import ddim_update, dpm_solver_pp_update

T = 50


def _alpha_bar_loop(betas: torch.Tensor, t: int) -> float:
    """prod_{s <= t} (1 - beta_s), with the empty product (t = -1) equal to 1."""
    out = 1.0
    for s in range(t + 1):
        out *= 1.0 - float(betas[s])
    return out


@pytest.fixture
def process() -> GaussianProcess:
    return GaussianProcess(cosine_betas(T), prediction="eps")


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_q_sample_marginal_by_monte_carlo(process: GaussianProcess) -> None:
    """E[x_t] = sqrt(ab_t) x0 and Var[x_t] = 1 - ab_t (Ho et al. 2020, eq. 4)."""
    n, t = 20000, 17
    x0 = torch.tensor([-1.0, 0.3, 1.0], dtype=torch.float64).expand(n, 3)
    x_t = process.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
    ab = _alpha_bar_loop(process.betas, t)
    se_mean = math.sqrt((1 - ab) / n)
    mean_err = (x_t.mean(0) - math.sqrt(ab) * x0[0]).abs().max().item()
    assert mean_err < 5 * se_mean
    var_err = (x_t.var(0) - (1 - ab)).abs().max().item()
    assert var_err < 5 * (1 - ab) * math.sqrt(2 / n)


def test_q_sample_given_noise_and_per_example_t(process: GaussianProcess) -> None:
    x0, eps = _randn(3, 2, 4, 4, seed=1), _randn(3, 2, 4, 4, seed=2)
    t = torch.tensor([0, 20, 49])
    x_t = process.q_sample(x0, t, noise=eps)
    for i, ti in enumerate(t.tolist()):
        ab = _alpha_bar_loop(process.betas, ti)
        expected = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i]
        torch.testing.assert_close(x_t[i], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            process.q_sample(x0[i : i + 1], ti, noise=eps[i : i + 1])[0], x_t[i]
        )


def test_q_posterior_matches_ho_eq7(process: GaussianProcess) -> None:
    x0, x_t = _randn(2, 1, 3, 3, seed=3), _randn(2, 1, 3, 3, seed=4)
    betas = process.betas
    for t in (1, 10, 49):
        beta, ab, ab_prev = (
            float(betas[t]),
            _alpha_bar_loop(betas, t),
            _alpha_bar_loop(betas, t - 1),
        )
        mean_ref = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (
            math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        ) * x_t
        var_ref = (1 - ab_prev) / (1 - ab) * beta
        mean, var, log_var = process.q_posterior(x0, x_t, t)
        torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=1e-12)
        assert var.item() == pytest.approx(var_ref, rel=1e-12)
        assert log_var.item() == pytest.approx(math.log(var_ref), rel=1e-12)


@pytest.mark.parametrize("t, t_prev", [(49, 39), (30, 3), (5, 0)])
def test_respaced_posterior_is_gaussian_conditioning(
    process: GaussianProcess, t: int, t_prev: int
) -> None:
    """Joint of (x_p, x_t) given x0: x_p = sqrt(ab_p) x0 + sqrt(1-ab_p) e1, x_t = sqrt(a) x_p +
    sqrt(1-a) e2 with a = ab_t / ab_p; condition the bivariate normal on x_t."""
    x0, x_t = _randn(2, 1, 3, 3, seed=5), _randn(2, 1, 3, 3, seed=6)
    ab_t, ab_p = _alpha_bar_loop(process.betas, t), _alpha_bar_loop(process.betas, t_prev)
    cov = math.sqrt(ab_t / ab_p) * (1 - ab_p)
    mean_ref = math.sqrt(ab_p) * x0 + cov / (1 - ab_t) * (x_t - math.sqrt(ab_t) * x0)
    var_ref = (1 - ab_p) - cov**2 / (1 - ab_t)
    mean, var, _ = process.q_posterior(x0, x_t, t, t_prev)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-10, atol=1e-10)
    assert var.item() == pytest.approx(var_ref, rel=1e-9)


def test_posterior_to_clean_data(process: GaussianProcess) -> None:
    x0, x_t = _randn(2, 1, 3, 3, seed=7), _randn(2, 1, 3, 3, seed=8)
    mean, var, log_var = process.q_posterior(x0, x_t, 9, -1)
    torch.testing.assert_close(mean, x0, rtol=1e-12, atol=1e-12)
    assert var.item() == 0.0 and math.isfinite(log_var.item())
    t = torch.tensor([0, 12])
    mean, var, _ = process.q_posterior(x0, x_t, t)  # t_prev = t - 1 = [-1, 11]
    assert var.shape == (2, 1, 1, 1) and var[0].item() == 0.0 and var[1].item() > 0
    torch.testing.assert_close(mean[0], x0[0], rtol=1e-12, atol=1e-12)


def test_conversions_round_trip(process: GaussianProcess) -> None:
    x0, eps = _randn(3, 2, 5, seed=9), _randn(3, 2, 5, seed=10)
    for t in (0, 25, torch.tensor([3, 30, 49])):
        x_t = process.q_sample(x0, t, noise=eps)
        v = process.v_from(x0, eps, t)
        close = {"rtol": 1e-7, "atol": 1e-7}
        torch.testing.assert_close(process.x0_from_eps(x_t, t, eps), x0, **close)
        torch.testing.assert_close(process.eps_from_x0(x_t, t, x0), eps, **close)
        torch.testing.assert_close(process.x0_from_v(x_t, t, v), x0, **close)
        torch.testing.assert_close(process.eps_from_v(x_t, t, v), eps, **close)


def test_v_definition_by_hand(process: GaussianProcess) -> None:
    x0, eps = _randn(1, 1, 4, seed=11), _randn(1, 1, 4, seed=12)
    ab = _alpha_bar_loop(process.betas, 20)
    expected = math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0  # Salimans & Ho 2022
    torch.testing.assert_close(process.v_from(x0, eps, 20), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_training_target_and_predict_x0_agree(prediction: str) -> None:
    process = GaussianProcess(linear_betas(T), prediction=prediction)  # type: ignore[arg-type]
    x0, eps = _randn(2, 1, 6, seed=13), _randn(2, 1, 6, seed=14)
    t = torch.tensor([4, 44])
    x_t = process.q_sample(x0, t, noise=eps)
    target = process.training_target(x0, eps, t)
    expected = {"eps": eps, "x0": x0, "v": process.v_from(x0, eps, t)}[prediction]
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(process.predict_x0(x_t, t, target), x0, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(process: GaussianProcess, dtype: torch.dtype) -> None:
    x0 = _randn(2, 1, 4, 4, 4, seed=15, dtype=dtype)
    for t in (7, torch.tensor([7, 8])):
        x_t = process.q_sample(x0, t, generator=torch.Generator().manual_seed(0))
        outs = [
            x_t,
            process.x0_from_eps(x_t, t, x0),
            process.v_from(x0, x0, t),
            *process.q_posterior(x0, x_t, t),
            process.ancestral_step(x_t, t, 3, x0, generator=torch.Generator().manual_seed(0)),
            ddim_update(process, x_t, t, 3, x0, eta=0.5,
                        generator=torch.Generator().manual_seed(0)),
        ]
        assert all(o.dtype == dtype for o in outs)
        assert outs[0].shape == x0.shape


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_ancestral(process: GaussianProcess) -> None:
    """Song et al. 2021, eq. 16: eta = 1 gives the DDPM posterior, step for step."""
    x_t, x0_hat = _randn(2, 1, 8, seed=16), _randn(2, 1, 8, seed=17)
    a = ddim_update(process, x_t, 40, 20, x0_hat, generator=torch.Generator().manual_seed(1))
    b = ddim_update(process, x_t, 40, 20, x0_hat, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    ddim1 = ddim_update(
        process, x_t, 40, 20, x0_hat, eta=1.0, generator=torch.Generator().manual_seed(3)
    )
    ddpm = process.ancestral_step(x_t, 40, 20, x0_hat, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ddim1, ddpm, rtol=1e-10, atol=1e-10)
    with pytest.raises(ConfigError, match="eta"):
        ddim_update(process, x_t, 40, 20, x0_hat, eta=-0.1)


def test_ddim_eta_zero_keeps_the_noise_direction(process: GaussianProcess) -> None:
    """x_{t_p} = sqrt(ab_p) x0 + sqrt(1 - ab_p) eps when x0_hat is the true x0 (eq. 12)."""
    x0, eps = _randn(2, 1, 8, seed=18), _randn(2, 1, 8, seed=19)
    x_t = process.q_sample(x0, 45, noise=eps)
    out = ddim_update(process, x_t, 45, 12, x0)
    torch.testing.assert_close(out, process.q_sample(x0, 12, noise=eps), rtol=1e-10, atol=1e-10)


def test_final_steps_return_x0_hat(process: GaussianProcess) -> None:
    x_t, x0_hat = _randn(2, 1, 8, seed=20), _randn(2, 1, 8, seed=21)
    assert process.ancestral_step(x_t, 5, -1, x0_hat) is x0_hat
    assert ddim_update(process, x_t, 5, -1, x0_hat, eta=1.0) is x0_hat
    assert dpm_solver_pp_update(process, x_t, 5, -1, x0_hat) is x0_hat
    out = process.ancestral_step(
        x_t, torch.tensor([0, 5]), torch.tensor([-1, 4]), x0_hat, generator=torch.Generator()
    )
    torch.testing.assert_close(out[0], x0_hat[0], rtol=0, atol=1e-12)
    assert not torch.allclose(out[1], x0_hat[1])


def test_first_order_dpm_solver_pp_is_ddim(process: GaussianProcess) -> None:
    x_t, x0_hat = _randn(2, 1, 8, seed=22), _randn(2, 1, 8, seed=23)
    torch.testing.assert_close(
        dpm_solver_pp_update(process, x_t, 30, 20, x0_hat),
        ddim_update(process, x_t, 30, 20, x0_hat),
        rtol=1e-10,
        atol=1e-10,
    )


def test_step_order_is_checked(process: GaussianProcess) -> None:
    x = _randn(1, 1, 2)
    for t, t_prev in ((5, 5), (5, 7), (5, -2)):
        with pytest.raises(ConfigError, match="t_prev"):
            process.ancestral_step(x, t, t_prev, x)


def test_from_config_and_build_process() -> None:
    config = ProcessConfig(kind="gaussian", schedule="linear", T=30, prediction="v")
    process = build_process(config)
    assert isinstance(process, GaussianProcess) and process.prediction == "v" and process.T == 30
    torch.testing.assert_close(process.betas, linear_betas(30))
    with pytest.raises(ConfigError, match="kind"):
        GaussianProcess.from_config(ProcessConfig(kind="bernoulli"))
    with pytest.raises(ConfigError, match="prediction"):
        GaussianProcess(linear_betas(10), prediction="score")  # type: ignore[arg-type]

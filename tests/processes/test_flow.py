"""The flow-matching process (processes/flow.py) against closed forms: the straight path, the
velocity target, x0 from the velocity, the Euler step exact on a straight path, Heun's step of
second order on a curved field, and forward jumps that keep the path's marginals. The contract
every process meets is tests/contracts/test_processes.py."""

from __future__ import annotations

import pytest
import torch

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.processes import PROCESSES, build_process
from diffuseg.processes.flow import FlowProcess
from diffuseg.sampling.samplers import DEFAULT, check_sampler, euler, heun, last

T = 100


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_path_is_a_straight_line_from_data_to_noise():
    process = FlowProcess(T)
    x0, eps = torch.randn(2, 1, 4, 4, generator=gen(0)), torch.randn(2, 1, 4, 4, generator=gen(1))
    for t in (0, 37, T - 1):
        sigma = (t + 1) / T
        expected = (1 - sigma) * x0 + sigma * eps
        torch.testing.assert_close(process.q_sample(x0, t, noise=eps), expected)
    torch.testing.assert_close(process.q_sample(x0, T - 1, noise=eps), eps)  # sigma = 1
    t = torch.tensor([3, 50])  # per-example timesteps
    sigma = ((t + 1) / T).view(-1, 1, 1, 1).float()
    torch.testing.assert_close(process.q_sample(x0, t, noise=eps), (1 - sigma) * x0 + sigma * eps)


def test_the_velocity_target_and_x0_from_the_velocity():
    v_process, x_process = FlowProcess(T, "v"), FlowProcess(T, "x0")
    x0, eps = torch.randn(3, 1, 5, generator=gen(2)), torch.randn(3, 1, 5, generator=gen(3))
    t = torch.tensor([0, 40, T - 1])
    x_t = v_process.q_sample(x0, t, noise=eps)
    u = v_process.training_target(x0, eps, t)
    torch.testing.assert_close(u, eps - x0)  # Lipman et al. 2023, eq. 23 (sigma_min = 0)
    torch.testing.assert_close(v_process.predict_x0(x_t, t, u), x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(x_process.training_target(x0, eps, t), x0)
    for process in (v_process, x_process):
        out = process.output_for_x0(x_t, t, x0)
        torch.testing.assert_close(process.predict_x0(x_t, t, out), x0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("t, t_prev", [(T - 1, -1), (T - 1, 49), (60, 10), (5, 0)])
def test_one_euler_step_is_exact_on_a_straight_path(t, t_prev):
    """With the true x0 the velocity is the path's own, so one step lands on the path."""
    process = FlowProcess(T)
    x0, eps = torch.randn(2, 1, 6, generator=gen(4)), torch.randn(2, 1, 6, generator=gen(5))
    x_t = process.q_sample(x0, t, noise=eps)
    x_prev = process.ancestral_step(x_t, t, t_prev, x0)
    sigma_prev = (t_prev + 1) / T
    torch.testing.assert_close(x_prev, (1 - sigma_prev) * x0 + sigma_prev * eps,
                               rtol=0, atol=1e-6)


def test_euler_and_heun_with_the_true_x0_end_at_x0():
    process = FlowProcess(T)
    x0 = torch.randn(2, 1, 8, 8, generator=gen(6))
    x_T = process.prior_sample(x0.shape, generator=gen(7))

    def oracle(x, t):
        return process.output_for_x0(x, t, x0)

    for sampler in (euler, heun):
        out = last(sampler(oracle, process, x_T, process.timesteps(3)))
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


def test_heun_is_second_order_and_euler_first_on_a_curved_field():
    """x0_hat = c x makes dx/dsigma = (1 - c) x / sigma, solved by x(s') = x(s) (s'/s)^(1-c).
    Halving the step divides Euler's error by about 2 and Heun's by about 4."""
    process, c = FlowProcess(1000, "x0"), 0.3
    x_T = torch.ones(1, 1, 1, dtype=torch.float64)

    def denoise(x, t):
        return c * x  # x0 prediction

    def error(sampler, n: int) -> float:
        """At sigma = 0.5 after n equal steps from sigma = 1 (then one more step to 0)."""
        ts = [999 - k * 500 // n for k in range(n + 1)]  # t = 499 is sigma = 0.5
        x = list(sampler(denoise, process, x_T, ts))[-2].x  # the state at sigma = 0.5
        exact = 0.5 ** (1 - c)  # from x = 1 at sigma = 1
        return abs(float(x) - exact)

    e1, e2 = error(euler, 10), error(euler, 20)
    h1, h2 = error(heun, 10), error(heun, 20)
    assert 1.6 < e1 / e2 < 2.6  # first order
    assert 3.2 < h1 / h2 < 5.0  # second order
    assert h2 < e2 / 10


def test_forward_jumps_keep_the_marginals_of_the_path():
    process = FlowProcess(T)
    x0 = torch.full((200_000,), 0.7)
    s, t = 20, 70
    x_s = process.q_sample(x0, s, generator=gen(8))
    x_t = process.forward_step(x_s, s, t, generator=gen(9))
    sigma_t = (t + 1) / T
    # mean (1 - sigma_t) x0 and std sigma_t; 200,000 draws: standard errors about 0.0016
    assert abs(x_t.mean().item() - (1 - sigma_t) * 0.7) < 0.01
    assert abs(x_t.std().item() - sigma_t) < 0.01


def test_alpha_bar_is_one_on_the_data_and_falls_to_zero():
    process = FlowProcess(T)
    ab = torch.stack([process.alpha_bar_at(t) for t in range(-1, T)])
    assert ab[0] == 1 and ab[-1] == 0 and bool((ab[1:] < ab[:-1]).all())


def test_the_kind_is_registered_and_its_samplers_checked():
    assert PROCESSES["flow"] is FlowProcess and DEFAULT["flow"] == "euler"
    process = build_process(ProcessConfig(T=50, prediction="v"), "flow")
    assert isinstance(process, FlowProcess) and process.prediction == "v"
    assert check_sampler("heun", "flow") == "heun"
    for sampler in ("ddim", "dpm_solver_pp", "ddpm"):
        with pytest.raises(ConfigError, match="cannot run a flow process"):
            check_sampler(sampler, "flow")
    with pytest.raises(ConfigError, match="predicts the velocity"):
        build_process(ProcessConfig(prediction="eps"), "flow")

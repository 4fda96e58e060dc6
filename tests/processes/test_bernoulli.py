"""BernoulliProcess (BerDiff) against the chain enumerated by hand: marginals as products of
2x2 flip matrices, posteriors by Bayes' rule over the two outcomes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.processes import BernoulliProcess, bernoulli_loss_terms, build_process, kl_bernoulli
from diffuseg.processes.schedules import cosine_betas, linear_betas
from diffuseg.sampling.samplers import ddpm, last

T = 40


@pytest.fixture
def process() -> BernoulliProcess:
    return BernoulliProcess(cosine_betas(T))


def _transition(betas: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """P[i, j] = P(x_stop = j | x_start = i), composing one-step flips s = start+1..stop, each
    keeping the pixel with prob 1 - beta_s and redrawing it from B(1/2) otherwise; start = -1 is
    x_0."""
    P = torch.eye(2, dtype=torch.float64)
    for s in range(start + 1, stop + 1):
        b = float(betas[s])
        P = P @ torch.tensor([[1 - b / 2, b / 2], [b / 2, 1 - b / 2]], dtype=torch.float64)
    return P


def _bayes_posterior(betas: torch.Tensor, x_t: int, t: int, t_prev: int, x0_prob: float) -> float:
    """P(x_{t_prev} = 1 | x_t, x0 ~ B(x0_prob)) by enumerating x0 and x_{t_prev}."""
    prior_x0 = torch.tensor([1 - x0_prob, x0_prob], dtype=torch.float64)
    p_prev = prior_x0 @ _transition(betas, -1, t_prev)  # P(x_{t_prev} = j)
    joint = p_prev * _transition(betas, t_prev, t)[:, x_t]  # times P(x_t | x_{t_prev} = j)
    return float(joint[1] / joint.sum())


@pytest.mark.parametrize("t", [0, 7, 39])
def test_marginal_matches_composed_flips(process: BernoulliProcess, t: int) -> None:
    x0 = torch.tensor([0.0, 1.0, 0.3], dtype=torch.float64)
    P = _transition(process.betas, -1, t)
    expected = (1 - x0) * P[0, 1] + x0 * P[1, 1]
    torch.testing.assert_close(process.q_probs(x0, t), expected, rtol=1e-12, atol=1e-12)


def test_q_sample_frequency_by_monte_carlo(process: BernoulliProcess) -> None:
    n, t = 20000, 15
    x0 = torch.tensor([0.0, 1.0]).expand(n, 2)
    x_t = process.q_sample(x0, t, generator=torch.Generator().manual_seed(0))
    assert set(x_t.unique().tolist()) <= {0.0, 1.0}
    p = process.q_probs(torch.tensor([0.0, 1.0]), t)
    se = (p * (1 - p) / n).sqrt()
    assert ((x_t.mean(0) - p).abs() < 5 * se).all()


@pytest.mark.parametrize("t, t_prev", [(1, 0), (20, 19), (39, 29), (39, 3), (12, 0)])
@pytest.mark.parametrize("x0_prob", [0.0, 1.0, 0.25])
def test_posterior_matches_bayes(
    process: BernoulliProcess, t: int, t_prev: int, x0_prob: float
) -> None:
    x_t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    x0 = torch.full((2,), x0_prob, dtype=torch.float64)
    theta = process.posterior_probs(x_t, t, t_prev, x0)
    expected = [_bayes_posterior(process.betas, v, t, t_prev, x0_prob) for v in (0, 1)]
    torch.testing.assert_close(
        theta, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12
    )


def test_posterior_with_per_example_timesteps(process: BernoulliProcess) -> None:
    gen = torch.Generator().manual_seed(1)
    x_t = (torch.rand(3, 1, 4, 4, generator=gen) < 0.5).double()
    x0 = torch.rand(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 9, 39])
    theta = process.posterior_probs(x_t, t, t - 1, x0)
    assert ((theta >= 0) & (theta <= 1)).all()
    torch.testing.assert_close(theta[0], x0[0])  # t_prev = -1: BerDiff's decoder B(x0_hat)
    for i in (1, 2):
        ti = int(t[i])
        torch.testing.assert_close(theta[i], process.posterior_probs(x_t[i], ti, ti - 1, x0[i]))


def test_cosine_marginal_at_T_is_half() -> None:
    process = BernoulliProcess(cosine_betas(1000))
    x0 = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(process.q_probs(x0, 999), torch.full((2,), 0.5), rtol=0, atol=1e-6)
    prior = process.prior_sample((20000,), generator=torch.Generator().manual_seed(2))
    assert set(prior.unique().tolist()) == {0.0, 1.0}
    assert abs(prior.mean().item() - 0.5) < 5 * 0.5 / math.sqrt(20000)
    far = process.q_sample(torch.ones(20000), 999, generator=torch.Generator().manual_seed(3))
    assert abs(far.mean().item() - 0.5) < 5 * 0.5 / math.sqrt(20000)


def test_ancestral_step_draws_from_the_posterior(process: BernoulliProcess) -> None:
    n = 20000
    x_t = torch.tensor([0.0, 1.0]).repeat(n, 1)
    x0_hat = torch.tensor([0.8, 0.1]).repeat(n, 1)
    draws = process.ancestral_step(x_t, 10, 5, x0_hat, generator=torch.Generator().manual_seed(4))
    theta = process.posterior_probs(x_t[0], 10, 5, x0_hat[0])
    se = (theta * (1 - theta) / n).sqrt()
    assert ((draws.mean(0) - theta).abs() < 5 * se).all()
    assert process.ancestral_step(x_t, 10, -1, x0_hat) is x0_hat
    mixed = process.ancestral_step(
        x_t[:2],
        torch.tensor([0, 10]),
        torch.tensor([-1, 5]),
        x0_hat[:2],
        generator=torch.Generator(),
    )
    assert torch.equal(mixed[0], x0_hat[0]) and set(mixed[1].tolist()) <= {0.0, 1.0}


def test_kl_bernoulli_closed_form() -> None:
    p = torch.tensor([0.3, 0.0, 1.0, 0.5], dtype=torch.float64)
    q = torch.tensor([0.6, 0.2, 0.9, 0.5], dtype=torch.float64)
    expected = torch.tensor(
        [
            0.3 * math.log(0.3 / 0.6) + 0.7 * math.log(0.7 / 0.4),
            math.log(1 / 0.8),
            math.log(1 / 0.9),
            0.0,
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(kl_bernoulli(p, q), expected, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(kl_bernoulli(torch.tensor([1.0]), torch.tensor([0.0]))).all()


def test_loss_terms(process: BernoulliProcess) -> None:
    gen = torch.Generator().manual_seed(5)
    x0 = (torch.rand(2, 1, 4, 4, generator=gen) < 0.5).float()
    logits = torch.randn(2, 1, 4, 4, generator=gen)
    t = torch.tensor([0, 20])
    x_t = process.q_sample(x0, t, generator=gen)
    terms = bernoulli_loss_terms(process, x0, x_t, t, logits)
    assert set(terms) == {"kl", "bce"} and all(v.dim() == 0 for v in terms.values())
    prob = torch.sigmoid(logits)
    bce = -(x0 * prob.log() + (1 - x0) * (1 - prob).log()).mean()
    torch.testing.assert_close(terms["bce"], bce)
    # by hand: at t = 0 the decoder NLL -log B(x0; x0_hat); at t = 20 the KL of the posteriors
    nll0 = -(x0[0] * prob[0].log() + (1 - x0[0]) * (1 - prob[0]).log())
    q, p = (process.posterior_probs(x_t[1], 20, 19, v) for v in (x0[1], prob[1]))
    kl1 = q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()
    torch.testing.assert_close(terms["kl"], torch.cat([nll0, kl1]).mean(), rtol=1e-5, atol=1e-6)
    perfect = bernoulli_loss_terms(process, x0, x_t, t, (2 * x0 - 1) * 30)
    assert perfect["kl"].item() < 1e-6 and perfect["bce"].item() < 1e-6


def test_oracle_chain_recovers_the_mask(process: BernoulliProcess) -> None:
    x0 = (torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(6)) < 0.4).float()
    x_T = process.prior_sample(x0.shape, generator=torch.Generator().manual_seed(7))
    out = last(
        ddpm(
            lambda x, t: (2 * x0 - 1) * 30,
            process,
            x_T,
            process.timesteps(T),
            generator=torch.Generator().manual_seed(8),
        )
    )
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


def test_from_config() -> None:
    process = build_process(
        ProcessConfig(kind="bernoulli", schedule="linear", T=25, prediction="x0")
    )
    assert isinstance(process, BernoulliProcess) and process.T == 25
    torch.testing.assert_close(process.betas, linear_betas(25))
    with pytest.raises(ConfigError, match="prediction"):
        BernoulliProcess.from_config(ProcessConfig(kind="bernoulli", prediction="eps"))
    with pytest.raises(ConfigError, match="kind"):
        BernoulliProcess.from_config(ProcessConfig(kind="gaussian"))


# ------------------------------------------------------------------------------------------
# a prior map p (HiDiff's BBDM): the chain keeps or redraws from B(p)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def schedule() -> BernoulliProcess:
    return BernoulliProcess(cosine_betas(20))


def test_a_half_prior_map_is_berdiffs_process():
    proc = schedule()
    x0 = torch.rand(3, 1, 4, 4, generator=_gen(0))
    x_t = (torch.rand(3, 1, 4, 4, generator=_gen(1)) < 0.5).float()
    anchored = proc.with_prior(torch.full_like(x0, 0.5))
    for t, t_prev in ((19, 12), (5, 4), (0, -1)):
        torch.testing.assert_close(anchored.q_probs(x0, t), proc.q_probs(x0, t))
        torch.testing.assert_close(anchored.posterior_probs(x_t, t, t_prev, x0),
                                   proc.posterior_probs(x_t, t, t_prev, x0))


def kernel(y_next: float, y: float, keep: float, p: float) -> float:
    """One (respaced) forward step: keep y with probability `keep`, else redraw from B(p)."""
    prior = p if y_next == 1 else 1 - p
    return keep * (y_next == y) + (1 - keep) * prior


@pytest.mark.parametrize("t, t_prev", [(19, 11), (7, 6), (3, 0)])
def test_posterior_is_bayes_rule_of_the_anchored_chain(t, t_prev):
    """q(y_tp | y_t, y_0) = q(y_tp | y_0) q(y_t | y_tp) / sum over y_tp, each factor the
    keep-or-redraw-from-B(p) kernel; and the kernels compose: q(y_t | y_0) is the marginal."""
    proc = schedule()
    ab_t, ab_p = float(proc.alpha_bar_at(t)), float(proc.alpha_bar_at(t_prev))
    p = torch.tensor([0.13, 0.5, 0.91])
    anchored = proc.with_prior(p)
    for y0, yt in itertools.product((0.0, 1.0), repeat=2):
        expected = []
        for pi in p.tolist():
            joint = [kernel(y, y0, ab_p, pi) * kernel(yt, y, ab_t / ab_p, pi) for y in (0.0, 1.0)]
            expected.append(joint[1] / sum(joint))
            marginal = sum(kernel(1.0, y, ab_t / ab_p, pi) * kernel(y, y0, ab_p, pi)
                           for y in (0.0, 1.0))
            assert marginal == pytest.approx(ab_t * y0 + (1 - ab_t) * pi, rel=1e-6)
        got = anchored.posterior_probs(torch.full((3,), yt), t, t_prev, torch.full((3,), y0))
        torch.testing.assert_close(got, torch.tensor(expected))
    torch.testing.assert_close(anchored.q_probs(torch.ones(3), t), ab_t + (1 - ab_t) * p)


def test_prior_sample_is_bernoulli_of_the_prior():
    p = torch.tensor([0.1, 0.6, 0.95]).repeat(20000, 1)
    y = schedule().with_prior(p).prior_sample(p.shape, generator=_gen(0))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    se = (p[0] * (1 - p[0]) / 20000).sqrt()
    assert ((y.mean(0) - p[0]).abs() < 4 * se).all()

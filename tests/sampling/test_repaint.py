"""Guided resampling (RePaint conditioning): every sample of every mask-space method honours the
pixels marked inside/outside, in 2D and 3D and with each sampler; methods that diffuse another
space refuse with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SIZE, gen, random_method, tiny_config

import diffuseg.methods.berdiff  # noqa: F401  (registers)
import diffuseg.methods.cimd  # noqa: F401
import diffuseg.methods.hidiff  # noqa: F401
import diffuseg.methods.ldseg  # noqa: F401
import diffuseg.methods.medsegdiff_v2  # noqa: F401
from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError, DataError
from diffuseg.inference.marks import Constraints
from diffuseg.methods import build_method
from diffuseg.processes import BernoulliProcess, GaussianProcess
from diffuseg.sampling.repaint import repaint
from diffuseg.sampling.samplers import ddpm

GAUSSIAN = ProcessConfig(T=20)
BERNOULLI = ProcessConfig(kind="bernoulli", T=20)
CASES = [("ddpm", GAUSSIAN, "ddpm"), ("ddpm", GAUSSIAN, "ddim"),
         ("ddpm", GAUSSIAN, "dpm_solver_pp"), ("cimd", GAUSSIAN, "ddim"),
         ("medsegdiff_v2", GAUSSIAN, "ddim"), ("berdiff", BERNOULLI, "ddpm"),
         ("hidiff", BERNOULLI, "ddpm")]


def marks(spatial: tuple[int, ...], seed: int = 0) -> Constraints:
    rng = np.random.default_rng(seed)
    draw = rng.random(spatial)
    return Constraints(inside=draw < 0.1, outside=draw > 0.9)


def build(name: str, process: ProcessConfig, sampler: str, spatial_dims: int):
    return random_method(name, spatial_dims, process, sampler)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(("name", "process", "sampler"), CASES)
def test_every_sample_honours_the_marks(name, process, sampler, spatial_dims):
    method = build(name, process, sampler, spatial_dims)
    # odd sizes: the marks go through the methods' padding too
    spatial = tuple(s - 1 for s in SIZE[spatial_dims])
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    c = marks(spatial)
    samples = method.segment(image, 5, generator=gen(2), known=c.known())
    fg = samples[:, 0, 0].numpy() > 0.5  # [S, *spatial]
    assert fg.shape == (5, *spatial)
    assert fg[:, c.inside].all() and not fg[:, c.outside].any()
    free = ~(c.inside | c.outside)
    unguided = method.segment(image, 5, generator=gen(2))[:, 0, 0].numpy() > 0.5
    # the random network alone breaks the marks somewhere (so the check above can fail)
    assert not (unguided[:, c.inside].all() and not unguided[:, c.outside].any())
    assert free.any()


def test_repaint_replaces_known_pixels_by_forward_noised_values():
    """At t_prev >= 0 the known region is q(x_t_prev | x0_known): its mean over many draws is
    sqrt(ab) x0 (Gaussian) and ab x0 + (1 - ab)/2 (Bernoulli); at -1 it is x0 itself."""
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True
    values = torch.ones(1, 1, 4, 4)
    from diffuseg.sampling.repaint import KnownPixels

    known = KnownPixels(values, mask)
    for process, encode in ((GaussianProcess.from_config(GAUSSIAN), lambda m: 2 * m - 1),
                            (BernoulliProcess.from_config(ProcessConfig(kind="bernoulli", T=20,
                                                                        prediction="x0")),
                             lambda m: m)):
        constrain = repaint(process, known, 4000, encode=encode, generator=gen(0))
        x = torch.full((4000, 1, 4, 4), 7.0)
        out = constrain(x, 10)
        ab = float(process.alpha_bar_at(10))
        expected = ab ** 0.5 if isinstance(process, GaussianProcess) else ab + (1 - ab) / 2
        assert out[:, :, :2].mean().item() == pytest.approx(expected, abs=0.03)
        assert (out[:, :, 2:] == 7.0).all()
        final = constrain(x, -1)
        assert (final[:, :, :2] == 1.0).all() and (final[:, :, 2:] == 7.0).all()


def test_sampler_calls_constrain_once_per_step_with_the_next_timestep():
    process = GaussianProcess.from_config(GAUSSIAN)
    seen = []

    def constrain(x, t_prev):
        seen.append(t_prev)
        return x

    steps = list(ddpm(lambda x, t: torch.zeros_like(x), process, torch.randn(2, 1, 4, 4),
                      [15, 10, 5, 0], generator=gen(0), constrain=constrain))
    assert len(steps) == 4 and seen == [10, 5, 0, -1]


def test_other_spaces_are_refused():
    """(The sdf target and ldseg are guided through x0: tests/sampling/test_x0_guidance.py.)"""
    spatial = SIZE[2]
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    known = marks(spatial).known()
    multi = tiny_config("ddpm", 2, num_classes=3, process=GAUSSIAN, steps=2)
    # multi-class runs are guided (tests/test_guidance_classes.py), with per-class known pixels
    with pytest.raises(ConfigError, match="Constraints.known\\(num_classes=3\\)"):
        build_method(multi).eval().segment(image, 2, generator=gen(0), known=known)


def test_constraints_are_validated():
    c = Constraints(np.ones((4, 4), bool), np.zeros((4, 4), bool))
    with pytest.raises(DataError, match="shape"):
        c.check((5, 4))
    with pytest.raises(DataError, match="both inside and outside"):
        Constraints(np.ones((4, 4), bool), np.ones((4, 4), bool)).check((4, 4))

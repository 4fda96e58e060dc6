"""Guided resampling beyond binary pixel-space methods: wdm (RePaint on the pixels of the Haar
coefficients), multi-class runs (per-channel marks), runs that resample to data.spacing, and
RePaint's resampling jumps (the forward transition's marginal, marks held with r > 1)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import SIZE, gen, random_method, tiny_config

import diffuseg.methods.berdiff  # noqa: F401  (registers)
import diffuseg.methods.cimd  # noqa: F401
import diffuseg.methods.hidiff  # noqa: F401
import diffuseg.methods.medsegdiff_v2  # noqa: F401
import diffuseg.methods.wdm  # noqa: F401
from diffuseg.config import DataConfig, ProcessConfig, SampleConfig
from diffuseg.core.ensemble import to_labels
from diffuseg.data.resample import spacing_geometry
from diffuseg.errors import ConfigError
from diffuseg.inference.marks import Constraints, check_jumps, read_constraints
from diffuseg.inference.predictor import Predictor
from diffuseg.io import Geometry
from diffuseg.methods import build_method
from diffuseg.processes import BernoulliProcess, GaussianProcess
from diffuseg.sampling.samplers import ddim, dpm_solver_pp, last

GAUSSIAN = ProcessConfig(T=20)
BERNOULLI = ProcessConfig(kind="bernoulli", T=20)


def marks(spatial: tuple[int, ...], seed: int = 0, label: int = 1,
          jumps: int | None = None) -> Constraints:
    draw = np.random.default_rng(seed).random(spatial)
    return Constraints(inside=draw < 0.1, outside=draw > 0.9, label=label, jumps=jumps)


def build(name: str, spatial_dims: int, *, process: ProcessConfig = GAUSSIAN,
          sampler: str | None = None, num_classes: int = 1, steps: int = 4, **options):
    return random_method(name, spatial_dims, process, sampler, steps, num_classes=num_classes,
                         **options)


def breaks(samples: torch.Tensor, c: Constraints) -> bool:
    """Whether some sample ``[S, 1, K, *sp]`` breaks a mark (label map semantics)."""
    labels = to_labels(samples[:, 0], class_dim=1).numpy()  # [S, *sp]
    k = c.label if samples.shape[2] > 1 else 1
    return not ((labels[:, c.inside] == k).all() and (labels[:, c.outside] != k).all())


# -- wdm ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spatial_dims", "levels"), [(2, 1), (2, 2), (3, 1)])
def test_wdm_every_sample_holds_the_marks(spatial_dims, levels):
    method = build("wdm", spatial_dims, levels=levels)
    spatial = SIZE[spatial_dims]
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    c = marks(spatial)
    known = c.known()
    # sample() alone (no final projection): the pixel-space replacement is exact up to round-off
    raw = method.sample(image, 5, generator=gen(2), known=known)[:, 0, 0]
    assert (raw[:, torch.from_numpy(c.inside)] - 1).abs().max() < 1e-5
    assert raw[:, torch.from_numpy(c.outside)].abs().max() < 1e-5
    # segment(): odd sizes go through the padding; the projection makes the marks exact
    odd = tuple(s - 1 for s in spatial)
    c = marks(odd, seed=3)
    image = image[(..., *[slice(0, s) for s in odd])]
    samples = method.segment(image, 5, generator=gen(2), known=c.known())
    assert samples.shape == (5, 1, 1, *odd)
    assert (samples[:, 0, 0].numpy()[:, c.inside] == 1).all()
    assert (samples[:, 0, 0].numpy()[:, c.outside] == 0).all()
    assert breaks(method.segment(image, 5, generator=gen(2)), c)  # the check can fail


# -- multi-class --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "spatial_dims", "sampler"),
                         [("ddpm", 2, "ddim"), ("ddpm", 3, "ddpm"), ("cimd", 2, "ddim"),
                          ("medsegdiff_v2", 2, "ddim"), ("wdm", 2, "ddim"),
                          ("wdm", 3, "dpm_solver_pp")])
def test_three_classes_hold_the_marks_of_one_class(name, spatial_dims, sampler):
    """Inside: class 2 in every sample; outside: never class 2 (the other classes stay free)."""
    method = build(name, spatial_dims, sampler=sampler, num_classes=3)
    spatial = SIZE[spatial_dims]
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    c = marks(spatial, label=2)
    known = c.known(num_classes=3)
    raw = method.sample(image, 6, generator=gen(2), known=known)[:, 0]  # before the projection
    inside, outside = torch.from_numpy(c.inside), torch.from_numpy(c.outside)
    assert (raw[:, 2][:, inside] - 1).abs().max() < 1e-5
    assert raw[:, 2][:, outside].abs().max() < 1e-5
    samples = method.segment(image, 6, generator=gen(2), known=known)
    assert not breaks(samples, c)
    assert (samples[:, 0, 2].numpy()[:, c.outside] == 0).all()
    assert torch.allclose(samples.sum(2), torch.ones(()))
    # outside fixes channel 2 only; inside fixes every channel
    assert known.mask[0, 2][outside].all() and not known.mask[0, :2][:, outside].any()
    assert known.mask[0][:, inside].all()
    assert breaks(method.segment(image, 6, generator=gen(2)), c)


def test_labels_and_jumps_are_checked():
    c = marks((4, 4), label=3)
    with pytest.raises(ConfigError, match="0..2"):
        c.check((4, 4), num_classes=3)
    with pytest.raises(ConfigError, match="label 1"):
        marks((4, 4), label=2).check((4, 4), num_classes=1)
    for bad in (0, 101, 1.5, True):
        with pytest.raises(ConfigError, match="jumps"):
            check_jumps(bad)
    config = tiny_config("ddpm", 2, process=GAUSSIAN, steps=2)
    with pytest.raises(ConfigError, match="resample_jumps"):
        dataclasses.replace(config, sample=SampleConfig(resample_jumps=0)).validate()
    with pytest.raises(ConfigError, match="binary"):  # Bernoulli methods stay binary-only
        build_method(tiny_config("berdiff", 2, 3, process=BERNOULLI, steps=2))


def test_hold_projects_only_marked_pixels():
    c = Constraints(np.array([[True, False, False]]), np.array([[False, True, False]]), label=1)
    by_class = torch.tensor([[0.2, 0.25, 0.3], [0.0, 0.5, 0.3], [0.8, 0.25, 0.4]])  # [K, pixel]
    p = by_class.reshape(1, 1, 3, 1, 3)  # [S, B, K, 1, 3]
    out = c.known(num_classes=3).hold(p)[0, 0, :, 0]  # [K, pixel]
    assert torch.equal(out[:, 0], torch.tensor([0.0, 1.0, 0.0]))  # inside: one-hot of label 1
    assert torch.allclose(out[:, 1], torch.tensor([0.5, 0.0, 0.5]))  # outside: p_1 = 0
    assert torch.equal(out[:, 2], by_class[:, 2])  # unmarked: unchanged
    only_excluded = torch.zeros(1, 1, 3, 1, 3)
    only_excluded[:, :, 1] = 1.0  # all mass on the excluded class: spread over the others
    assert torch.allclose(c.known(num_classes=3).hold(only_excluded)[0, 0, :, 0, 1],
                          torch.tensor([0.5, 0.0, 0.5]))


# -- data.spacing -------------------------------------------------------------------------------


def test_a_spacing_run_honours_the_marks_on_the_input_grid():
    method = build("ddpm", 3)
    config = dataclasses.replace(method.config, data=DataConfig(patch_size=SIZE[3],
                                                                spacing=(2.0, 2.0, 2.0)))
    method.config = config
    predictor = Predictor(method, config, run_dir=None, device=torch.device("cpu"))
    shape = (13, 11, 5)  # 1 x 1 x 3 mm voxels
    geometry = Geometry.from_affine(np.diag([1.0, 1.0, 3.0, 1.0]), shape)
    model_grid = spacing_geometry(geometry, (2.0, 2.0, 2.0)).shape
    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    c = marks(shape, seed=1)
    seen = []
    segment = method.segment

    def spy(x, n, **kwargs):
        seen.append(kwargs.get("known"))
        return segment(x, n, **kwargs)

    method.segment = spy
    result = predictor.segment(image, geometry=geometry, n_samples=4, steps=3, constraints=c)
    labels = result.sample_labels()[:, 0].numpy()
    assert labels.shape == (4, *shape)
    assert labels[:, c.inside].all() and not labels[:, c.outside].any()
    known = seen[-1]
    assert model_grid != shape and known.mask.any()
    assert known.mask.shape[2:] == model_grid  # guided on the model grid
    free = predictor.segment(image, geometry=geometry, n_samples=4, steps=3)
    assert breaks(free.samples, c)


# -- resampling jumps ---------------------------------------------------------------------------


def test_gaussian_forward_step_composes_to_the_marginal():
    """x_s ~ q(x_s | x0), then x_t ~ q(x_t | x_s): mean sqrt(ab_t) x0 and variance 1 - ab_t,
    within 5 standard errors of N draws."""
    process = GaussianProcess.from_config(GAUSSIAN)
    n = 200_000
    x0 = torch.tensor([-1.0, 0.3, 1.0]).repeat(n, 1)
    for s, t in ((-1, 12), (4, 12), (11, 12), (2, 19)):
        x_s = x0 if s < 0 else process.q_sample(x0, s, generator=gen(s + 1))
        x_t = process.forward_step(x_s, s, t, generator=gen(100 + s))
        ab = float(process.alpha_bar_at(t))
        var = 1 - ab
        mean_se, var_se = (var / n) ** 0.5, var * (2 / n) ** 0.5
        assert ((x_t.mean(0) - ab**0.5 * x0[0]).abs() < 5 * mean_se).all(), (s, t)
        assert ((x_t.var(0) - var).abs() < 5 * var_se).all(), (s, t)
    with pytest.raises(ConfigError, match="s < t"):
        process.forward_step(x0, 5, 5)


@pytest.mark.parametrize("prior", [None, "map"])
def test_bernoulli_forward_step_composes_to_the_marginal(prior):
    """P(x_t = 1) = ab_t x0 + (1 - ab_t) p after q(x_s | x0) then q(x_t | x_s), for p = 1/2
    (BerDiff) and a prior map (HiDiff's anchored process), within 5 standard errors."""
    process = BernoulliProcess.from_config(ProcessConfig(kind="bernoulli", T=20,
                                                         prediction="x0"))
    n = 100_000
    x0 = torch.tensor([0.0, 1.0, 0.0, 1.0]).repeat(n, 1)
    p = 0.5
    if prior == "map":
        p = torch.tensor([0.1, 0.1, 0.8, 0.8]).repeat(n, 1)
        process = process.with_prior(p)
    for s, t in ((-1, 10), (3, 10), (9, 10), (0, 19)):
        x_s = x0 if s < 0 else process.q_sample(x0, s, generator=gen(s + 1))
        x_t = process.forward_step(x_s, s, t, generator=gen(100 + s))
        assert set(x_t.unique().tolist()) <= {0.0, 1.0}
        expected = process.q_probs(x0, t)[0]
        se = (expected * (1 - expected) / n).sqrt()
        assert ((x_t.mean(0) - expected).abs() < 5 * se + 1e-9).all(), (s, t)


def test_jumps_redo_every_step_but_the_last():
    """r network calls per step (one at the last), one Step yielded per step; DPM-Solver++'s
    multistep history stays finite when a step is redone."""
    process = GaussianProcess.from_config(GAUSSIAN)
    calls = []

    def denoise(x, t):
        calls.append(int(t[0]))
        return 0.1 * x

    for sampler in (ddim, dpm_solver_pp):
        calls.clear()
        steps = list(sampler(denoise, process, torch.randn(2, 1, 4, 4, generator=gen(0)),
                             [15, 10, 5, 0], generator=gen(1), jumps=3))
        assert len(steps) == 4
        assert calls == [15, 15, 15, 10, 10, 10, 5, 5, 5, 0]
        assert all(torch.isfinite(s.x).all() for s in steps)
    x_T = torch.randn(2, 1, 4, 4, generator=gen(0))
    once = last(ddim(denoise, process, x_T, [15, 10], generator=gen(1)))
    again = last(ddim(denoise, process, x_T, [15, 10], generator=gen(1), jumps=1))
    assert torch.equal(once, again)  # jumps=1 draws nothing extra: unchanged samples
    with pytest.raises(ConfigError, match="jumps"):
        ddim(denoise, process, x_T, [15, 10], jumps=0)


@pytest.mark.parametrize(("name", "process", "sampler", "spatial_dims"),
                         [("ddpm", GAUSSIAN, "ddim", 2), ("ddpm", GAUSSIAN, "dpm_solver_pp", 3),
                          ("wdm", GAUSSIAN, "ddim", 3), ("berdiff", BERNOULLI, "ddpm", 2),
                          ("hidiff", BERNOULLI, "ddpm", 3)])
def test_jumps_still_hold_the_marks(name, process, sampler, spatial_dims):
    method = build(name, spatial_dims, process=process, sampler=sampler, steps=3)
    spatial = SIZE[spatial_dims]
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    c = marks(spatial, jumps=3)
    with_jumps = method.segment(image, 4, generator=gen(2), known=c.known())
    assert not breaks(with_jumps, c)
    plain = method.segment(image, 4, generator=gen(2),
                           known=dataclasses.replace(c, jumps=1).known())
    assert not torch.equal(with_jumps, plain)  # the jumps changed the chains


def test_read_constraints_takes_label_and_jumps(tmp_path):
    from PIL import Image

    inside = np.zeros((6, 6), np.uint8)
    inside[1:3, 1:3] = 255
    Image.fromarray(inside).save(tmp_path / "in.png")
    c = read_constraints(tmp_path / "in.png", None, label=2, jumps=4)
    assert c.label == 2 and c.jumps == 4 and c.inside.sum() == 4 and not c.outside.any()
    assert c.known(jumps=1).jumps == 4  # the marks' own jumps win over the run's default
    with pytest.raises(ConfigError, match="jumps"):
        read_constraints(tmp_path / "in.png", None, jumps=0)

"""Flow matching as a method (methods/flow_matching.py): guided resampling with clinician marks
under both ODE samplers, the ONNX export of its denoiser, and the samplers it accepts. The
process is tested in tests/processes/test_flow.py, the method contract (shapes, seeding, save and
load) in tests/contracts/test_methods.py, and learning the phantom through the CLI in
tests/methods/test_methods_learn.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SIZE, gen, random_method

from diffuseg.config import ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.inference.marks import Constraints
from diffuseg.inference.onnx import export_onnx


def flow(sampler: str | None = None, prediction: str = "x0", spatial_dims: int = 2):
    return random_method("flow_matching", spatial_dims,
                         ProcessConfig(T=20, prediction=prediction), sampler)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_every_sample_honours_the_marks(sampler, spatial_dims):
    method = flow(sampler, "v", spatial_dims)
    spatial = tuple(s - 1 for s in SIZE[spatial_dims])  # odd: the marks go through the padding
    draw = np.random.default_rng(0).random(spatial)
    c = Constraints(inside=draw < 0.1, outside=draw > 0.9)
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    fg = method.segment(image, 5, generator=gen(2), known=c.known())[:, 0, 0].numpy() > 0.5
    assert fg[:, c.inside].all() and not fg[:, c.outside].any()
    unguided = method.segment(image, 5, generator=gen(2))[:, 0, 0].numpy() > 0.5
    # the random network alone breaks the marks somewhere (so the check above can fail)
    assert not (unguided[:, c.inside].all() and not unguided[:, c.outside].any())


def test_samples_differ_by_their_noise_and_repeat_by_their_seed():
    method = flow("heun")
    image = torch.randn(1, 1, *SIZE[2], generator=gen(3))
    a = method.segment(image, 3, generator=gen(4))
    b = method.segment(image, 3, generator=gen(4))
    assert torch.equal(a, b) and (a[0] - a[1]).abs().max() > 1e-3


def test_the_denoiser_exports_to_onnx(tmp_path):
    info = export_onnx(flow(), tmp_path / "denoiser.onnx", exporter="torchscript")
    # both fp32: ONNX Runtime and torch sum in another order (2^-24 relative per operation), so
    # O(1) outputs after a few dozen layers agree to ~1e-6; 1e-4 leaves a margin of 100
    assert info["max_abs_error"] < 1e-4 and info["inputs"]["x"][1] == 1


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver_pp", "ddpm"])
def test_samplers_of_other_processes_are_refused(sampler):
    with pytest.raises(ConfigError, match="cannot run a flow process"):
        flow(sampler)

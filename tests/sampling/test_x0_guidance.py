"""Guided resampling of the methods that diffuse another space (diffuseg.sampling.x0_guidance): the
sdf
target (x0 sign projection) and LDSeg (decoder-guided latent). Every sample holds the marks in 2D
and 3D with every sampler; the x0 correction reaches the sampler exactly; LDSeg's guidance moves
the decoded marks before the final projection; the API and the CLI accept both."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from helpers import SIZE, gen, randomise, tiny, tiny_config

import diffuseg.methods.cimd  # noqa: F401  (registers)
import diffuseg.methods.ldseg
import diffuseg.methods.medsegdiff_v2  # noqa: F401
from diffuseg.config import ProcessConfig, SampleConfig
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import ConfigError
from diffuseg.inference.marks import Constraints
from diffuseg.inference.predictor import Predictor, case_name
from diffuseg.io import read_mask
from diffuseg.methods import build_method
from diffuseg.processes import GaussianProcess
from diffuseg.sampling.repaint import KnownPixels
from diffuseg.sampling.x0_guidance import decoder_guidance, sign_projection, x0_guided
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

GAUSSIAN = ProcessConfig(T=20)
CASES = [("ddpm", "ddim"), ("ddpm", "ddpm"), ("ddpm", "dpm_solver_pp"), ("cimd", "ddim"),
         ("medsegdiff_v2", "ddim"), ("ldseg", "ddim"), ("ldseg", "ddpm"),
         ("ldseg", "dpm_solver_pp")]


def marks(spatial: tuple[int, ...], seed: int = 0) -> Constraints:
    draw = np.random.default_rng(seed).random(spatial)
    return Constraints(inside=draw < 0.1, outside=draw > 0.9)


def build(name: str, sampler: str, spatial_dims: int, **options):
    if name == "ldseg":
        options = {"width": 8, **options}
    config = tiny_config(name, spatial_dims, process=GAUSSIAN, steps=4, **options)
    config = dataclasses.replace(config, sample=SampleConfig(steps=4, sampler=sampler))
    if name != "ldseg":
        config = dataclasses.replace(config, method=dataclasses.replace(config.method,
                                                                        target="sdf"))
    torch.manual_seed(0)
    method = build_method(config).eval()
    for net in method.networks().values():
        randomise(net)
    return method


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(("name", "sampler"), CASES)
def test_every_sample_honours_the_marks(name, sampler, spatial_dims):
    method = build(name, sampler, spatial_dims)
    spatial = tuple(s - 1 for s in SIZE[spatial_dims])  # odd sizes: through the padding too
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    c = marks(spatial)
    fg = method.segment(image, 5, generator=gen(2), known=c.known())[:, 0, 0].numpy() > 0.5
    assert fg.shape == (5, *spatial)
    assert fg[:, c.inside].all() and not fg[:, c.outside].any()
    unguided = method.segment(image, 5, generator=gen(2))[:, 0, 0].numpy() > 0.5
    # the random network alone breaks the marks somewhere (so the check above can fail)
    assert not (unguided[:, c.inside].all() and not unguided[:, c.outside].any())


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_sampler_reads_the_corrected_x0(prediction):
    """predict_x0 of the wrapped output is correct(x0_hat) of the network's own output."""
    process = GaussianProcess.from_config(ProcessConfig(T=20, prediction=prediction))
    x_t = torch.randn(3, 1, 5, 5, generator=gen(0))
    t = torch.tensor([19, 10, 0])
    net_out = torch.randn(3, 1, 5, 5, generator=gen(1))

    def correct(x0):
        return 0.5 * x0 + 0.1

    guided = x0_guided(lambda x, tt: net_out, process, correct)
    expected = correct(process.predict_x0(x_t, t, net_out))
    torch.testing.assert_close(process.predict_x0(x_t, t, guided(x_t, t)), expected,
                               atol=1e-4, rtol=1e-4)


def test_sign_projection_is_the_lipschitz_envelope_of_the_marks():
    """Against a brute-force reference: high(x) = min_p (|x - p| - 1/2) / band over inside marks
    p, low(x) = max_q (1/2 - |x - q|) / band over outside marks q; x0 clamped to [low, high]."""
    c = marks((7, 9), seed=4)
    project = sign_projection(5.0, c.known(), chains=2)
    x0 = torch.rand(2, 1, 7, 9, generator=gen(0)) * 2 - 1
    grid = np.stack(np.meshgrid(np.arange(7), np.arange(9), indexing="ij"), -1)
    dist = np.linalg.norm(grid[:, :, None, None] - grid[None, None], axis=-1)  # [7,9,7,9]
    high = np.where(c.inside[None, None], dist - 0.5, np.inf).min((2, 3)) / 5
    low = np.where(c.outside[None, None], 0.5 - dist, -np.inf).max((2, 3)) / 5
    expected = np.clip(x0.numpy(), low, high)
    np.testing.assert_allclose(project(x0).numpy(), expected, atol=1e-6)
    out = project(x0)[:, 0].numpy()
    assert (out[:, c.inside] <= -0.1 + 1e-6).all() and (out[:, c.outside] >= 0.1 - 1e-6).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_true_sdf_that_honours_the_marks_is_left_unchanged(spatial_dims):
    """The projection only removes what no signed distance consistent with the marks can be:
    the sdf target's encoding of a mask, with marks drawn from that mask, is a fixed point."""
    from diffuseg.methods.sdf import SDFTarget

    rng = np.random.default_rng(5)
    spatial = (12,) * spatial_dims
    mask = np.zeros(spatial, bool)
    mask[tuple(slice(3, 9) for _ in spatial)] = True
    draw = rng.random(spatial)
    c = Constraints(inside=mask & (draw < 0.2), outside=~mask & (draw < 0.2))
    x0 = SDFTarget().encode(torch.from_numpy(mask)[None, None].float())
    torch.testing.assert_close(sign_projection(5.0, c.known(), chains=1)(x0), x0)


def test_decoder_guidance_step_lowers_the_mark_loss_and_zero_scale_is_off():
    """A DPS step on z0 through a (random) decoder lowers the BCE of its logits on the marks;
    guidance_scale 0 leaves z0 as it is (clipped)."""
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2),
                                  torch.nn.Conv2d(2, 1, 3, padding=1))
    c = marks((8, 8), seed=3)
    known = c.known()
    z0 = torch.randn(4, 2, 4, 4, generator=gen(0)).clamp(-1, 1)

    def loss(z):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            decoder(z), known.values.repeat(4, 1, 1, 1), reduction="none")
        return (bce * known.mask).flatten(1).sum(1)

    with torch.no_grad():
        moved = decoder_guidance(decoder, known, 4, scale=0.1, clip=1.0)(z0)
        assert (loss(moved) < loss(z0)).all()
        torch.testing.assert_close(decoder_guidance(decoder, known, 4, scale=0.0, clip=1.0)(z0),
                                   z0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_ldseg_guidance_not_only_the_projection_moves_the_decoded_marks(spatial_dims,
                                                                         monkeypatch):
    """Without the final projection, the decoded samples give the marked label a higher mean
    probability at the marks with guidance (the default guidance_scale) than without
    (guidance_scale 0), from the same noise."""
    monkeypatch.setattr(diffuseg.methods.ldseg, "hold_marks", lambda p, known, chains: p)
    monkeypatch.setattr(KnownPixels, "hold", lambda self, p: p)  # Method.segment's projection
    spatial = SIZE[spatial_dims]
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    c = marks(spatial, seed=1)
    agreement = {}
    for scale in (0.0, 1.0):
        method = build("ldseg", "ddim", spatial_dims, guidance_scale=scale)
        p = method.segment(image, 8, generator=gen(2), known=c.known())[:, 0, 0].numpy()
        agreement[scale] = np.concatenate([p[:, c.inside], 1 - p[:, c.outside]], 1).mean()
    print(f"mean probability of the marked label at the marks: {agreement}")
    assert agreement[1.0] > agreement[0.0]


def test_guidance_scale_is_validated():
    with pytest.raises(ConfigError, match="guidance_scale"):
        build_method(tiny_config("ldseg", 2, process=GAUSSIAN, steps=2, guidance_scale=-1.0))
    c = marks(SIZE[2])
    for bad in (-0.5, float("nan"), 1e3, True):
        with pytest.raises(ConfigError, match="guidance scale"):
            dataclasses.replace(c, scale=bad).check(SIZE[2])


def test_a_given_scale_replaces_the_runs_and_only_ldseg_takes_one():
    """``Constraints.scale`` = z gives the samples of a run whose option guidance_scale is z
    (same weights, same noise); a method that holds marks by replacement refuses a scale."""
    spatial = SIZE[2]
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    c = marks(spatial)
    off = build("ldseg", "ddim", 2, guidance_scale=0.0)
    on = build("ldseg", "ddim", 2, guidance_scale=2.0)
    given = off.segment(image, 4, generator=gen(2), known=dataclasses.replace(c, scale=2.0).known())
    torch.testing.assert_close(given, on.segment(image, 4, generator=gen(2), known=c.known()))
    assert not torch.equal(given, off.segment(image, 4, generator=gen(2), known=c.known()))
    with pytest.raises(ConfigError, match="no step size; drop --guidance-scale"):
        build("ddpm", "ddim", 2).segment(image, 2, generator=gen(2),
                                         known=dataclasses.replace(c, scale=1.0).known())


# -- the API and the CLI on briefly trained runs ---------------------------------------------

TINY = tiny()
RUNS = {"sdf": ["method.target=sdf"], "ldseg": ["method.name=ldseg", "method.options.width=8"]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``tiny_run(method, spatial_dims)``: (run folder, dataset) trained one step, made once."""
    made = {}

    def make(method: str, spatial_dims: int):
        if (method, spatial_dims) not in made:
            root = tmp_path_factory.mktemp(f"{method}{spatial_dims}d")
            size = 24 if spatial_dims == 2 else 16
            data = write_phantom_dataset(root / "p", n_cases=4, spatial_dims=spatial_dims,
                                         size=size, n_raters=2)
            extra = [] if spatial_dims == 2 else ["data.patch_size=[16,16,16]"]
            config = build_config(None, TINY + RUNS[method] + extra, dataset=data)
            made[method, spatial_dims] = train(config, data, root / "run", progress=False), data
        return made[method, spatial_dims]

    return make


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("method", sorted(RUNS))
def test_predictor_segment_accepts_constraints(method, spatial_dims, tiny_run):
    run, data = tiny_run(method, spatial_dims)
    predictor = Predictor.from_run(run)
    image = np.random.default_rng(0).random((1, *([20] * spatial_dims))).astype(np.float32)
    c = marks(image.shape[1:], seed=2)
    result = predictor.segment(image, n_samples=3, steps=2, constraints=c)
    fg = result.sample_labels()[:, 0].numpy() > 0
    assert fg.shape == (3, *image.shape[1:])
    assert fg[:, c.inside].all() and not fg[:, c.outside].any()


@pytest.mark.parametrize("method", sorted(RUNS))
def test_cli_predict_inside_outside(method, tiny_run, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from diffuseg.cli import main

    run, data = tiny_run(method, 2)
    image = sorted((data / "imagesTr").iterdir())[0]
    inside, outside = np.zeros((24, 24), np.uint8), np.zeros((24, 24), np.uint8)
    inside[3:6, 3:6] = 255  # a corner the phantom's lesion does not reach
    outside[12:15, 10:16] = 255
    Image.fromarray(inside).save(tmp_path / "in.png")
    Image.fromarray(outside).save(tmp_path / "out.png")
    monkeypatch.setattr(sys, "argv", [
        "diffuseg", "predict", str(run), "-i", str(image), "-o", str(tmp_path / "guided"),
        "-n", "3", "--steps", "2", "--inside", str(tmp_path / "in.png"),
        "--outside", str(tmp_path / "out.png")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    folder = tmp_path / "guided" / case_name(image)
    for s in range(3):
        sample = read_mask(folder / f"sample_{s:02d}.png")[0] > 0
        assert sample[3:6, 3:6].all() and not sample[12:15, 10:16].any()
    summary = json.loads((folder / "result.json").read_text())
    assert summary["constraints"] == {"inside": 9, "outside": 18, "label": 1, "jumps": 1}
    capsys.readouterr()  # the first call's output (its last line: this tiny run did not learn)

    # --guidance-scale: ldseg's step size, recorded; refused by the RePaint method (one line,
    # before any output) and without marks
    out = tmp_path / "scaled"
    monkeypatch.setattr(sys, "argv", [
        "diffuseg", "predict", str(run), "-i", str(image), "-o", str(out), "-n", "2",
        "--steps", "2", "--inside", str(tmp_path / "in.png"), "--guidance-scale", "0.5"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    if method == "ldseg":
        assert exit_info.value.code in (0, None), err
        recorded = json.loads((out / case_name(image) / "result.json").read_text())
        assert recorded["constraints"]["guidance_scale"] == 0.5
    else:
        assert exit_info.value.code == 2 and "no step size; drop --guidance-scale" in err
        assert len(err.splitlines()) == 1 and not list(out.glob("*/sample_*.png"))
    monkeypatch.setattr(sys, "argv", [
        "diffuseg", "predict", str(run), "-i", str(image), "-o", str(tmp_path / "nomarks"),
        "--jumps", "2"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--jumps applies to guided resampling" in err


@pytest.mark.parametrize("name", ["ldseg", "ddpm"])
def test_resampling_jumps_reach_the_x0_guided_methods(name):
    """``Constraints.jumps`` is run by ldseg and the sdf target too (not silently dropped): the
    chains change, and every sample still holds the marks."""
    method = build(name, "ddim", 2)
    spatial = SIZE[2]
    image = torch.randn((1, 1, *spatial), generator=gen(1))
    c = marks(spatial)
    once = method.segment(image, 4, generator=gen(2), known=c.known())
    jumped = method.segment(image, 4, generator=gen(2),
                            known=dataclasses.replace(c, jumps=3).known())
    assert not torch.equal(once, jumped)
    fg = jumped[:, 0, 0].numpy() > 0.5
    assert fg[:, c.inside].all() and not fg[:, c.outside].any()

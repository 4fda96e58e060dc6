"""ONNX export of the denoiser and the ONNX Runtime predictor: the same masks as eager torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from helpers import tiny
from typer.testing import CliRunner

import diffuseg.methods.ldseg  # noqa: F401  (registers "ldseg")
from diffuseg.cli.export import export_command
from diffuseg.config import NetworkConfig, RunConfig, save_config
from diffuseg.data.phantom import make_case
from diffuseg.errors import ConfigError
from diffuseg.inference.onnx import (
    OrtDenoiser,
    export_onnx,
    export_run,
    make_session,
    onnx_predictor,
)
from diffuseg.inference.predictor import Predictor
from diffuseg.methods import build_method
from diffuseg.run.weights import save_networks
from diffuseg.training.start import build_config

pytest.importorskip("onnxruntime")

TINY = tiny("network.num_heads=2", "sample.n_samples=3", "data.patch_size=[16,16]",
            attention=True, max_steps=None, val=None, device=False)
LDSEG = ["method.name=ldseg", "method.options={\"width\": 8}"]


def write_run(folder: Path, overrides: list[str], seed: int = 0) -> Path:
    """A run folder as training leaves it (config.json, model and EMA weights), with every
    weight drawn from N(0, 0.2^2): the denoiser's output conv is zero-initialised, so an
    untrained run would predict 0 whatever ONNX computed."""
    config = build_config(None, overrides, dataset=None)
    method = build_method(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    folder.mkdir(parents=True)
    save_config(config, folder / "config.json")
    for name in ("model.safetensors", "ema.safetensors"):
        save_networks(method.networks(), folder / name)
    return folder


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_case(2, 16, 2, np.random.default_rng(0)).image


def check_matches_eager(run: Path, image: np.ndarray) -> None:
    """The ONNX Runtime predictor draws the eager predictor's samples, one ORT call per step."""
    eager = Predictor.from_run(run, device="cpu", precision="fp32")
    ort = onnx_predictor(run)
    assert isinstance(ort.method.denoiser, OrtDenoiser)
    calls = []
    ort.method.denoiser.register_forward_hook(lambda *_: calls.append(1))
    a = eager.segment(image, n_samples=3, steps=2, seed=5)
    b = ort.segment(image, n_samples=3, steps=2, seed=5)
    assert len(calls) == 2  # one ONNX Runtime call per step, all samples in one batch
    # the samples differ, so the denoiser (not a constant) decides them
    assert (a.samples[0] - a.samples[1]).abs().max() > 1e-3
    # both fp32, but ONNX Runtime's kernels (MLAS) and torch's (oneDNN) sum in another order and
    # SIMD width: each operation rounds at 2^-24 ~ 6e-8 relative, so O(1) values after a few
    # dozen layers and 2 steps agree to ~1e-6; 1e-4 leaves a margin of 100
    np.testing.assert_allclose(b.samples.numpy(), a.samples.numpy(), atol=1e-4)
    # the consensus is the majority of the binarized samples (p > 0.5): samples within 1e-4 may
    # binarize differently only where a sample lies that close to 0.5, and must agree elsewhere
    clear = ((a.samples[:, :, 0] - 0.5).abs() > 1e-4).all(0)
    assert clear.float().mean() > 0.9  # the comparison covers nearly every pixel
    assert torch.equal(a.consensus[clear], b.consensus[clear])


def check_dynamic_batch_and_size(run: Path) -> None:
    """The exported denoiser accepts other batch sizes and spatial multiples than the example."""
    net = Predictor.from_run(run, device="cpu", precision="fp32").method.denoiser
    session = make_session(run / "denoiser.onnx", threads=1)
    g = torch.Generator().manual_seed(0)
    names = [i.name for i in session.get_inputs()]
    assert names == ["x", "t", "cond"]
    for batch, size in ((1, 8), (5, 16)):
        feeds = {"x": torch.randn(batch, net.in_channels, size, size, generator=g),
                 "t": torch.full((batch,), 17, dtype=torch.long),
                 "cond": torch.randn(batch, net.cond_channels, size, size, generator=g)}
        got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        with torch.no_grad():
            expected = net(**feeds).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_cli_export_ddpm(tmp_path, image):
    run = write_run(tmp_path / "run", TINY)
    app = typer.Typer()
    app.command()(export_command)
    runner = CliRunner()
    refused = runner.invoke(app, [str(run)])
    assert refused.exit_code != 0 and "--format onnx" in str(refused.exception)
    result = runner.invoke(app, [str(run), "--format", "onnx", "--exporter", "torchscript",
                                 "--threads", "1"])
    assert result.exit_code == 0, result.output
    info = json.loads((run / "inference.json").read_text())
    assert info["onnx"] == "denoiser.onnx" and (run / "denoiser.onnx").is_file()
    assert info["threads"] == 1 and info["batch_size"] == 3  # sample.n_samples x 1 image
    assert info["exporter"] == "torchscript" and info["opset"] >= 13
    assert info["max_abs_error"] < 1e-4
    check_matches_eager(run, image)
    check_dynamic_batch_and_size(run)


def test_ldseg_export(tmp_path, image):
    """LDSeg's latent denoiser: ORT replaces it; the image encoder and decoder stay in torch."""
    run = write_run(tmp_path / "run", TINY + LDSEG)
    out = export_run(run, tmp_path / "elsewhere" / "latent.onnx", exporter="torchscript",
                     threads=1)
    info = json.loads((run / "inference.json").read_text())
    assert (run / info["onnx"]).resolve() == out.resolve()
    assert info["inputs"]["x"] == [2, 4, 4, 4]  # 2 samples, 4 latent channels, 1/4 of 16
    (run / "denoiser.onnx").write_bytes(out.read_bytes())
    check_matches_eager(run, image)
    check_dynamic_batch_and_size(run)


@pytest.mark.slow
def test_dynamo_exporter(tmp_path, image):
    """torch's default exporter (torch.export + onnxscript): about 15 s, hence slow."""
    run = write_run(tmp_path / "run", TINY)
    export_run(run, exporter="dynamo", threads=1)
    check_matches_eager(run, image)
    check_dynamic_batch_and_size(run)


def test_non_diffusion_method_is_refused(tmp_path):
    config = RunConfig(network=NetworkConfig(channels=(8, 16), attention_levels=(False, False),
                                             norm_groups=4))
    config.method.name = "unet"
    with pytest.raises(ConfigError, match="no per-step denoiser"):
        export_onnx(build_method(config), tmp_path / "x.onnx")

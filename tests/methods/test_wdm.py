"""Wavelet diffusion (wdm): shapes in 2D and 3D, an oracle denoiser recovers the mask exactly
through the inverse transform, options are validated, and a run folder works unchanged."""

from __future__ import annotations

import pytest
import torch
from helpers import gen, randomise, tiny_config

from diffuseg.config import ProcessConfig
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import ConfigError
from diffuseg.inference.predictor import Predictor
from diffuseg.methods import build_method, one_hot
from diffuseg.training.loop import train
from diffuseg.training.start import build_config


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_loss_and_sample_shapes(spatial_dims, num_classes):
    config = tiny_config("wdm", spatial_dims, num_classes, process=ProcessConfig(T=50), steps=2)
    method = build_method(config)
    randomise(method.denoiser, 0, 0.05)
    size = (16,) * spatial_dims
    assert method.size_multiple() == 4
    bands = 2 ** spatial_dims
    assert method.denoiser.in_channels == num_classes * bands
    batch = {"image": torch.randn(2, 1, *size, generator=gen(0)),
             "mask": torch.randint(0, max(2, num_classes), (2, 1, *size), generator=gen(1))}
    terms = method.loss(batch, generator=gen(2))
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and all(p.grad is not None for p in method.parameters())
    samples = method.sample(batch["image"], 3, generator=gen(3))
    assert samples.shape == (3, 2, num_classes, *size)
    assert samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("spatial_dims, levels", [(2, 1), (2, 2), (3, 1)])
def test_an_oracle_denoiser_recovers_the_mask_exactly(spatial_dims, levels):
    """With prediction=x0 and a network that returns the true coefficients, DDIM ends at x0_hat,
    and the inverse wavelet transform gives back the mask."""
    config = tiny_config("wdm", spatial_dims, process=ProcessConfig(T=50, prediction="x0"),
                         steps=4, levels=levels)
    method = build_method(config)
    size = (16,) * spatial_dims
    mask = (torch.rand((1, 1, *size), generator=gen(4)) > 0.6).long()
    truth = method.encode(one_hot(mask, 1))
    method.denoiser.forward = lambda x_t, t, cond: truth.expand(x_t.shape[0], *truth.shape[1:])
    samples = method.sample(torch.randn(1, 1, *size), 2, generator=gen(5))
    torch.testing.assert_close(samples, mask.float()[None].expand(2, -1, -1, *size),
                               rtol=0, atol=1e-5)


def test_chunked_sampling_equals_one_call():
    config = tiny_config("wdm", 3, process=ProcessConfig(T=50), steps=2)
    method = build_method(config)
    randomise(method.denoiser, 1, 0.05)
    image = torch.randn(1, 1, 8, 8, 8, generator=gen(6))
    whole = method.sample(image, 4, generator=gen(7))
    method.chunk = 3
    torch.testing.assert_close(method.sample(image, 4, generator=gen(7)), whole,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options, match", [({"level": 2}, "did you mean 'method.options.levels'"),
                                            ({"levels": 0}, "at least 1"),
                                            ({"chunk": "x"}, "must be an integer")])
def test_bad_options_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        build_method(tiny_config("wdm", 2, process=ProcessConfig(T=50), steps=2, **options))


def test_a_3d_run_folder_predicts(tmp_path):
    data = write_phantom_dataset(tmp_path / "ph3", 4, spatial_dims=3, size=16, n_raters=2)
    config = build_config(None, [
        "method.name=wdm", "network.channels=[8,16]", "network.attention_levels=[false,false]",
        "network.norm_groups=4", "train.batch_size=2", "train.max_steps=2", "train.device=cpu",
        "process.T=20", "train.val_cases=1", "train.val_samples=1", "train.val_steps=1",
        "data.patch_size=[16,16,16]"], dataset=data)
    run = train(config, data, tmp_path / "run", progress=False)
    predictor = Predictor.from_run(run)
    image = torch.randn(1, 1, 20, 16, 12)  # padded to multiples of 4, cropped back
    samples = predictor.method.segment(image, 2, steps=2, generator=gen(0))
    assert samples.shape == (2, 1, 1, 20, 16, 12)

"""The image-conditioned DDPM method: the loss target, one batch per step, every sampler (shapes,
seeding, gradients and round trips: tests/contracts/test_methods.py)."""

import pytest
import torch

from diffuseg.config import load_config
from diffuseg.methods import build_method, one_hot


def make(spatial_dims: int, num_classes: int, prediction: str = "x0"):
    size = [16] * spatial_dims
    config = load_config(overrides=[
        f"spatial_dims={spatial_dims}", f"num_classes={num_classes}", "in_channels=2",
        "network.channels=[8,16]", "network.attention_levels=[false,true]",
        "network.norm_groups=4", f"data.patch_size={size}", "process.T=100",
        f"process.prediction={prediction}"])
    torch.manual_seed(0)
    method = build_method(config)
    for p in method.denoiser.parameters():  # the output conv starts at zero
        torch.nn.init.normal_(p, std=0.05)
    return method, config


def test_one_hot_encodes_labels():
    labels = torch.tensor([[[0, 2], [1, 0]]])  # [B=1, 2, 2]
    encoded = one_hot(labels[:, None], 3)
    assert encoded.shape == (1, 3, 2, 2)
    assert encoded[0, 2, 0, 1] == 1 and encoded[0, 1, 1, 0] == 1 and encoded[0, 0].sum() == 2
    assert one_hot(labels[:, None], 1).sum() == 2  # binary: any label > 0 is foreground


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_training_target_is_what_the_loss_regresses(prediction):
    """With a denoiser that outputs the exact target, the loss is zero."""
    method, _ = make(2, 1, prediction)
    captured = {}

    def oracle(x_t, t, cond):
        x0 = captured["x0"]
        noise = (x_t - method.process.alpha_bar_at(t).sqrt().view(-1, 1, 1, 1).to(x_t) * x0) / (
            1 - method.process.alpha_bar_at(t)).sqrt().view(-1, 1, 1, 1).to(x_t)
        return method.process.training_target(x0, noise, t)

    mask = torch.randint(0, 2, (2, 1, 16, 16))
    captured["x0"] = mask.float() * 2 - 1
    method.denoiser = oracle
    terms = method.loss({"image": torch.randn(2, 2, 16, 16), "mask": mask},
                        generator=torch.Generator().manual_seed(0))
    assert terms["loss"].item() < 1e-8


def test_samples_are_one_batch_per_step():
    method, _ = make(2, 1)
    calls = []
    original = method.denoiser.forward

    def counting(x, t, cond=None, emb=None):
        calls.append(x.shape[0])
        return original(x, t, cond, emb)

    method.denoiser.forward = counting
    method.sample(torch.randn(2, 2, 16, 16), 5, steps=3)
    assert calls == [10, 10, 10]  # 5 samples x 2 images, once per step


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver_pp"])
def test_every_sampler_is_selectable(sampler):
    method, config = make(2, 1)
    config.sample.sampler = sampler
    image = torch.randn(1, 2, 16, 16)
    a = method.sample(image, 2, steps=3, generator=torch.Generator().manual_seed(0))
    b = method.sample(image, 2, steps=3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 1, 16, 16)
    torch.testing.assert_close(a, b)

"""LDSeg (latent diffusion segmentation): shapes, loss terms and gradients, the reference
sampling pipeline, one image encoding per sample() call, and the mask autoencoder learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SIZE, gen, randomise
from torch import nn

import diffuseg.methods.ldseg  # noqa: F401  (registers "ldseg")
from diffuseg.config import (
    DataConfig,
    MethodConfig,
    NetworkConfig,
    ProcessConfig,
    RunConfig,
    SampleConfig,
)
from diffuseg.data.phantom import make_case
from diffuseg.errors import ConfigError
from diffuseg.methods import build_method
from diffuseg.metrics.overlap import dice
from diffuseg.networks.autoencoder import MaskAutoencoder
from diffuseg.sampling.samplers import ddim, ddpm, dpm_solver_pp, last


def config(spatial_dims: int = 2, num_classes: int = 1, sampler: str = "ddim",
           prediction: str = "x0", patch: tuple[int, ...] | None = None, **options) -> RunConfig:
    return RunConfig(
        spatial_dims=spatial_dims, num_classes=num_classes,
        network=NetworkConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4,
                              num_heads=2),
        process=ProcessConfig(T=100, prediction=prediction),
        data=DataConfig(patch_size=patch or SIZE[spatial_dims]),
        sample=SampleConfig(steps=3, sampler=sampler),
        method=MethodConfig(name="ldseg", options={"width": 8, **options}),
    ).validate()  # fmt: skip


def build(*args, **kw):
    torch.manual_seed(0)
    method = build_method(config(*args, **kw))
    randomise(method.denoiser)
    return method


def batch(spatial_dims: int, num_classes: int, b: int = 2, seed: int = 0) -> dict:
    g = gen(seed)
    spatial = SIZE[spatial_dims]
    labels = torch.randint(0, max(num_classes, 2), (b, 1, *spatial), generator=g)
    return {"image": torch.randn(b, 1, *spatial, generator=g), "mask": labels}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_the_latent_is_small_and_bounded(spatial_dims, num_classes):
    method = build(spatial_dims, num_classes).eval()
    latent = method.autoencoder.encode(torch.ones(1, num_classes, *SIZE[spatial_dims]))
    assert latent.shape == (1, 4, *(s // 4 for s in SIZE[spatial_dims]))
    assert latent.abs().max() < 1  # tanh-bounded, so x0_hat may be clamped to [-1, 1]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_loss_terms(spatial_dims):
    method = build(spatial_dims, 1).train()
    terms = method.loss(batch(spatial_dims, 1), generator=gen(2))
    assert set(terms) == {"loss", "rec", "diff", "seg"}
    assert all(torch.isfinite(v) for v in terms.values())
    torch.testing.assert_close(terms["loss"], terms["rec"] + terms["diff"] + terms["seg"])


def test_diffusion_target_is_detached():
    """With only the diffusion term, no gradient reaches the label encoder (sg(z_0))."""
    method = build(2, 1, rec_weight=0.0, seg_weight=0.0).train()
    terms = method.loss(batch(2, 1), generator=gen(3))
    terms["loss"].backward()
    encoder = method.autoencoder.encoder
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in encoder.parameters())
    assert method.image_encoder.out.weight.grad.abs().sum() > 0


def manual_sample(method, image, n, steps, sampler, generator):
    """The pipeline written out: encode once, repeat S times, sample the latent, decode."""
    cond = method.image_encoder(image).repeat(n, 1, 1, 1)
    shape = (n * image.shape[0], 4, *cond.shape[2:])
    z_T = method.process.prior_sample(shape, generator=generator)
    ts = method.process.timesteps(steps)

    def denoise(z, t):
        return method.denoiser(z, t, cond)

    if sampler == "ddim":
        z0 = last(ddim(denoise, method.process, z_T, ts, clip=1.0))
    elif sampler == "ddpm":
        z0 = last(ddpm(denoise, method.process, z_T, ts, generator=generator, clip=1.0))
    else:
        z0 = last(dpm_solver_pp(denoise, method.process, z_T, ts, clip=1.0))
    p = torch.sigmoid(method.autoencoder.decode(z0))
    return p.reshape(n, image.shape[0], *p.shape[1:])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm_solver_pp"])
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_sample_equals_the_written_out_pipeline(sampler, prediction):
    method = build(2, 1, prediction=prediction).eval()
    method.config.sample.sampler = sampler  # dpm_solver_pp: SampleConfig's Literal may lag
    image = batch(2, 1)["image"]
    with torch.no_grad():
        expected = manual_sample(method, image, 3, 3, sampler, gen(4))
    got = method.sample(image, 3, steps=3, generator=gen(4))
    torch.testing.assert_close(got, expected)
    assert (got[0] - got[1]).abs().max() > 1e-3  # the samples differ


def test_one_image_encoding_per_call_and_one_batch_per_step():
    method = build(2, 1).eval()
    encoder_batches, denoiser_batches = [], []
    method.image_encoder.register_forward_hook(
        lambda m, args, out: encoder_batches.append(args[0].shape[0]))
    method.denoiser.register_forward_hook(
        lambda m, args, out: denoiser_batches.append(args[0].shape[0]))
    method.sample(batch(2, 1, b=2)["image"], 4, steps=5, generator=gen(5))
    assert encoder_batches == [2]  # once per image, not once per step or sample
    assert denoiser_batches == [8] * 5  # S x B latents per step
    denoiser_batches.clear()
    method.sample(batch(2, 1, b=1)["image"], 2, generator=gen(5))
    assert denoiser_batches == [2, 2]  # default: the option steps = 2, not sample.steps = 3
    assert method.sampling(None) == ("ddim", 2)  # what result.json records


def test_segment_pads_any_size_and_crops_back():
    method = build(2, 1).eval()
    out = method.segment(torch.randn(1, 1, 13, 21, generator=gen(6)), 2, steps=1,
                         generator=gen(7))
    assert out.shape == (2, 1, 1, 13, 21)


def test_user_errors():
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_method(config(patch=(12, 12)))
    with pytest.raises(ConfigError, match="did you mean 'method.options.latent_channels'"):
        build_method(config(latent_channel=2))
    with pytest.raises(ConfigError, match="must be at least 1"):
        build_method(config(steps=0))
    method = build(2, 1)
    method.config.sample.sampler = "euler"
    with pytest.raises(ConfigError, match="dpm_solver_pp"):
        method.sample(batch(2, 1)["image"], 1)


def test_mask_autoencoder_learns_phantom_masks():
    """A short Adam run reconstructs phantom lesion masks (Dice > 0.9) from a 4 x 4 x 4 latent
    of a 16 x 16 mask; the untrained autoencoder does not."""
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(np.stack([make_case(2, 16, 3, rng).raters for _ in range(4)]))
    masks = masks.reshape(-1, 1, 16, 16).float()  # 12 masks: 4 cases x 3 raters
    torch.manual_seed(0)
    ae = MaskAutoencoder(2, 1, latent_channels=4, width=8, downsamples=2, norm_groups=4)

    def mean_dice() -> float:
        with torch.no_grad():
            p = torch.sigmoid(ae(masks)).numpy()
        return float(np.mean([dice(p[i, 0], masks[i, 0].numpy()) for i in range(len(p))]))

    before = mean_dice()
    optimiser = torch.optim.Adam(ae.parameters(), lr=3e-3)
    for _ in range(80):
        logits = ae(masks)
        p = torch.sigmoid(logits)
        soft_dice = 1 - (2 * (p * masks).sum() + 1) / (p.sum() + masks.sum() + 1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, masks) + soft_dice
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert before < 0.5
    assert mean_dice() > 0.9


def test_result_json_records_the_steps_and_sampler_actually_used(tmp_path):
    """Not sample.steps (3): LDSeg samples with its option steps (2) unless --steps is given."""
    import json

    from diffuseg.data.phantom import write_phantom_dataset
    from diffuseg.inference.predictor import Predictor

    data = write_phantom_dataset(tmp_path / "data", n_cases=1, size=16, n_raters=1)
    image = sorted((data / "imagesTr").iterdir())[0]
    method = build(2, 1).eval()
    predictor = Predictor(method, method.config, tmp_path / "run", torch.device("cpu"), "fp32")
    for steps, expected in ((None, 2), (1, 1)):
        folder = predictor.predict_file(image, tmp_path / f"out{steps}", n_samples=2, steps=steps)
        result = json.loads((folder / "result.json").read_text())
        assert (result["sampler"], result["steps"]) == ("ddim", expected)


# -- self-conditioning (Chen et al. 2023, "Analog Bits", Alg. 1-2) -----------------------------


def test_self_conditioned_sampling_feeds_each_step_the_previous_estimate():
    """Alg. 2 written out: the first DDIM step sees zeros, every later one the clamped z0
    estimate of the step before, as latent_channels extra conditioning channels."""
    method = build(2, 1, self_condition=True).eval()
    assert method.denoiser.cond_channels == 8 + 4  # cond_channels + latent_channels
    image = batch(2, 1)["image"]
    n, steps = 3, 3
    with torch.no_grad():
        cond = method.image_encoder(image).repeat(n, 1, 1, 1)
        g = gen(4)
        z_T = method.process.prior_sample((n * 2, 4, *cond.shape[2:]), generator=g)
        seen, previous = [], torch.zeros_like(z_T)

        def denoise(z, t):
            nonlocal previous
            seen.append(previous)
            out = method.denoiser(z, t, torch.cat([cond, previous], dim=1))
            previous = method.process.predict_x0(z, t, out).clamp(-1, 1)
            return out

        z0 = last(ddim(denoise, method.process, z_T, method.process.timesteps(steps), clip=1.0))
        expected = torch.sigmoid(method.autoencoder.decode(z0)).reshape(n, 2, 1, *SIZE[2])
    got = method.sample(image, n, steps=steps, generator=gen(4))
    torch.testing.assert_close(got, expected)
    assert seen[0].abs().max() == 0 and seen[1].abs().max() > 0


def test_self_conditioned_training_draws_one_coin_per_batch():
    """Alg. 1: on some batches one pass on zeros; on others a first no-grad pass on zeros whose
    clamped x0 estimate is the second pass's extra input (and carries no gradient)."""
    method = build(2, 1, self_condition=True).train()
    calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
    method.denoiser.register_forward_hook(lambda m, args, out: calls.append(
        (args[2][:, 8:].detach().clone(), out.detach().clone(), torch.is_grad_enabled())))
    passes = []
    for seed in range(8):
        calls.clear()
        method.loss(batch(2, 1, seed=seed), generator=gen(seed))
        passes.append(len(calls))
        assert calls[0][0].abs().max() == 0  # the first pass always sees zeros
        if len(calls) == 2:
            assert not calls[0][2] and calls[1][2]  # the estimate pass is without gradient
            torch.testing.assert_close(calls[1][0], calls[0][1].float().clamp(-1, 1))
    assert set(passes) == {1, 2}  # both kinds of batch occur (p = 1 - 2^-7 each)


def test_self_conditioning_off_keeps_the_denoiser_as_before():
    assert build(2, 1).denoiser.cond_channels == 8

"""The signed-distance target (Bogensperger et al. 2023): closed forms, exact round trips in 2D and
3D, empty and full masks, and use by the Gaussian methods as ``method.target = "sdf"``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffuseg.methods.cimd  # noqa: F401  (registers "cimd")
from diffuseg.config import DataConfig, MethodConfig, NetworkConfig, ProcessConfig, RunConfig
from diffuseg.methods import build_method, one_hot
from diffuseg.methods.sdf import BAND, TEMPERATURE, SDFTarget, signed_distance
from diffuseg.methods.targets import build_target


def random_blobs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A few random boxes: several components, touching the border sometimes."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=np.int64)
    for _ in range(3):
        lo = [rng.integers(0, s - 2) for s in shape]
        hi = [lo_ + rng.integers(1, max(2, s // 2)) for lo_, s in zip(lo, shape, strict=True)]
        mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = 1
    return torch.from_numpy(mask)


def test_signed_distance_closed_form_on_a_row():
    """Outside: distance to the nearest object pixel - 1/2; inside: -(distance to the nearest
    background pixel - 1/2); negative inside, as in the paper's code (x_gt > 0 is background)."""
    row = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 0]])
    expected = np.array([[2.5, 1.5, 0.5, -0.5, -1.5, -2.5, -1.5, -0.5, 0.5]])
    np.testing.assert_allclose(signed_distance(row), expected)


def test_signed_distance_of_a_disc_is_the_distance_to_its_circle():
    """A digital disc of radius r: phi(x) ~ |x - c| - r up to the half-pixel staircase."""
    yy, xx = np.mgrid[:41, :41]
    dist = np.hypot(yy - 20, xx - 20)
    phi = signed_distance(dist <= 10.3)
    assert np.abs(phi - (dist - 10.3)).max() < 1.0
    assert np.array_equal(phi < 0, dist <= 10.3)


@pytest.mark.parametrize("shape", [(2, 1, 12, 10), (2, 1, 6, 7, 5)])
def test_binary_round_trip_is_exact(shape):
    target = SDFTarget()
    mask = torch.stack([random_blobs(shape[2:], seed)[None] for seed in range(shape[0])]).float()
    x0 = target.encode(mask)
    assert x0.shape == mask.shape and x0.dtype == torch.float32
    assert x0.min() >= -1 and x0.max() <= 1
    assert torch.equal((x0 < 0).float(), mask)
    assert torch.equal((target.decode(x0) > 0.5).float(), mask)


@pytest.mark.parametrize("spatial", [(10, 9), (5, 6, 4)])
def test_multi_class_round_trip_recovers_the_labels(spatial):
    labels = random_blobs(spatial, 0) + random_blobs(spatial, 1)  # values 0, 1, 2
    labels = labels.clamp(max=2)[None, None]
    onehot = one_hot(labels, 3)
    target = SDFTarget()
    p = target.decode(target.encode(onehot))
    torch.testing.assert_close(p.sum(1), torch.ones_like(p.sum(1)))
    assert torch.equal(p.argmax(1), labels[:, 0])
    assert torch.equal((target.encode(onehot) < 0).float(), onehot)


@pytest.mark.parametrize("spatial", [(8, 8), (4, 4, 4)])
def test_empty_and_full_masks(spatial):
    target = SDFTarget()
    empty, full = torch.zeros(1, 1, *spatial), torch.ones(1, 1, *spatial)
    assert torch.equal(target.encode(empty), torch.ones_like(empty))
    assert torch.equal(target.encode(full), -torch.ones_like(full))
    assert target.decode(target.encode(empty)).max() < 1e-6
    assert target.decode(target.encode(full)).min() > 1 - 1e-6


def test_truncation_and_decode_closed_form():
    """x0 = clip(phi / band, -1, 1); p = sigmoid(-band x0 / temperature)."""
    row = torch.zeros(1, 1, 1, 20)
    row[..., 12:] = 1
    x0 = SDFTarget().encode(row)[0, 0, 0]
    phi = torch.tensor([11.5 - i for i in range(12)] + [-(i - 11.5) for i in range(12, 20)])
    torch.testing.assert_close(x0, (phi / BAND).clamp(-1, 1))
    p = SDFTarget().decode(torch.tensor([[[0.0, 0.1, -1.0]]]))[0, 0]
    expected = [0.5, 1 / (1 + math.exp(0.1 * BAND / TEMPERATURE)), 1 / (1 + math.exp(-BAND / 0.25))]
    torch.testing.assert_close(p, torch.tensor(expected))


def test_the_decode_slope_at_the_boundary_is_one_per_pixel():
    """d p / d phi at phi = 0 is -1 / (4 temperature) = -1 per pixel, the slope of the
    partial-volume fraction 1/2 - phi."""
    x0 = torch.zeros(1, 1, 1, requires_grad=True)
    SDFTarget().decode(x0).sum().backward()
    assert x0.grad.item() / BAND == pytest.approx(-1.0)


def test_registered_as_a_target():
    assert isinstance(build_target("sdf"), SDFTarget)


def gaussian_config(name: str, spatial_dims: int) -> RunConfig:
    size = (16, 16) if spatial_dims == 2 else (8, 8, 8)
    return RunConfig(
        spatial_dims=spatial_dims,
        network=NetworkConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4,
                              num_heads=2),
        process=ProcessConfig(T=50), data=DataConfig(patch_size=size),
        method=MethodConfig(name=name, target="sdf"),
    ).validate()  # fmt: skip


@pytest.mark.parametrize("name", ["ddpm", "cimd"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gaussian_methods_diffuse_the_sdf(name, spatial_dims):
    """The methods are unchanged: the target turns the mask into the SDF and back."""
    method = build_method(gaussian_config(name, spatial_dims))
    assert isinstance(method.target, SDFTarget)
    size = (16, 16) if spatial_dims == 2 else (8, 8, 8)
    mask = random_blobs(size, 3)[None, None]
    batch = {"image": torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(0)),
             "mask": mask}
    terms = method.loss(batch, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(terms["loss"])
    samples = method.eval().sample(batch["image"], 2, steps=2,
                                   generator=torch.Generator().manual_seed(2))
    assert samples.shape == (2, 1, 1, *size)
    assert samples.min() >= 0 and samples.max() <= 1


def test_ddpm_regresses_the_encoded_sdf():
    """With x0-prediction the ddpm target is the SDF itself: an output equal to encode(mask)
    gives a zero loss."""
    method = build_method(gaussian_config("ddpm", 2))
    mask = random_blobs((16, 16), 4)[None, None]
    x0 = SDFTarget().encode(one_hot(mask, 1))
    method.denoiser.forward = lambda x_t, t, cond, emb=None: x0  # type: ignore[method-assign]
    terms = method.loss({"image": torch.zeros(1, 1, 16, 16), "mask": mask},
                        generator=torch.Generator().manual_seed(0))
    assert terms["mse"].item() == 0.0

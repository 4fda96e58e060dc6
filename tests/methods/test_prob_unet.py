"""The latent networks (networks/latent.py) and the Probabilistic U-Net method."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SIZE, gen
from torch import nn

import diffuseg.methods.prob_unet  # noqa: F401  (registers "prob_unet")
from diffuseg.config import DataConfig, MethodConfig, NetworkConfig, ProcessConfig, RunConfig
from diffuseg.errors import ConfigError, DataError
from diffuseg.methods import build_method
from diffuseg.methods.prob_unet import reconstruction_loss
from diffuseg.networks.latent import (
    GaussianEncoder,
    LatentSegmentationUNet,
    kl_diag_gaussians,
    sample_latent,
)


def config(spatial_dims: int = 2, num_classes: int = 1, **options) -> RunConfig:
    return RunConfig(
        spatial_dims=spatial_dims, num_classes=num_classes,
        network=NetworkConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4,
                              num_heads=2),
        process=ProcessConfig(T=100), data=DataConfig(patch_size=SIZE[spatial_dims]),
        method=MethodConfig(name="prob_unet", options=options),
    ).validate()  # fmt: skip


def batch(spatial_dims: int, num_classes: int, b: int = 2, seed: int = 0) -> dict:
    g = gen(seed)
    sp = SIZE[spatial_dims]
    labels = torch.randint(0, max(num_classes, 2), (b, 1, *sp), generator=g)
    return {"image": torch.randn(b, 1, *sp, generator=g), "mask": labels}


# ------------------------------------------------------------------------------------------
# KL and the reparameterisation


def test_kl_one_dimension_by_hand():
    """KL(N(1, 1) || N(0, 2^2)) = log 2 - 0 + (1 + 1) / 8 - 1/2 = log 2 - 1/4."""
    one = torch.tensor([[1.0]])
    kl = kl_diag_gaussians(one, torch.zeros(1, 1), torch.zeros(1, 1), one * math.log(2.0))
    torch.testing.assert_close(kl, torch.tensor([math.log(2.0) - 0.25]))
    # reversed: KL(N(0, 4) || N(1, 1)) = 0 - log 2 + (4 + 1) / 2 - 1/2 = 2 - log 2
    back = kl_diag_gaussians(torch.zeros(1, 1), one * math.log(2.0), one, torch.zeros(1, 1))
    torch.testing.assert_close(back, torch.tensor([2.0 - math.log(2.0)]))


def test_kl_sums_over_latent_dims_and_matches_torch_distributions():
    g = gen(3)
    mu_q, ls_q, mu_p, ls_p = (torch.randn(5, 6, generator=g) * 0.7 for _ in range(4))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Independent(torch.distributions.Normal(mu_q, ls_q.exp()), 1),
        torch.distributions.Independent(torch.distributions.Normal(mu_p, ls_p.exp()), 1),
    )
    torch.testing.assert_close(kl_diag_gaussians(mu_q, ls_q, mu_p, ls_p), ref)


def test_kl_of_equal_gaussians_is_zero_and_positive_otherwise():
    g = gen(4)
    mu, ls = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    torch.testing.assert_close(kl_diag_gaussians(mu, ls, mu, ls), torch.zeros(3))
    assert (kl_diag_gaussians(mu, ls, mu + 0.1, ls) > 0).all()


def test_sample_latent_moments_and_shapes():
    mu, ls = torch.tensor([[2.0, -1.0]]), torch.tensor([[math.log(0.5), 0.0]])
    z = sample_latent(mu, ls, 20000, generator=gen(0))
    assert z.shape == (20000, 1, 2)
    torch.testing.assert_close(z.mean(0), mu, atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), ls.exp(), atol=0.03, rtol=0)
    assert sample_latent(mu, ls, generator=gen(0)).shape == (1, 2)
    assert torch.equal(sample_latent(mu, ls, 3, generator=gen(1)),
                       sample_latent(mu, ls, 3, generator=gen(1)))


# ------------------------------------------------------------------------------------------
# the networks


@pytest.mark.parametrize("spatial_dims, shape", [(2, (16, 16)), (2, (12, 20)), (3, (8, 8, 8)),
                                                 (3, (6, 8, 10))])
def test_gaussian_encoder_shapes(spatial_dims, shape):
    prior = GaussianEncoder(spatial_dims, 1, 6, (8, 16), 4)
    posterior = GaussianEncoder(spatial_dims, 1 + 3, 6, (8, 16), 4)
    x = torch.randn(2, 1, *shape, generator=gen(0))
    y = torch.rand(2, 3, *shape, generator=gen(1))
    for mu, ls in (prior(x), posterior(torch.cat([x, y], 1))):
        assert mu.shape == ls.shape == (2, 6)
        assert torch.isfinite(mu).all() and torch.isfinite(ls).all()


def test_gaussian_encoder_refuses_wrong_channels():
    with pytest.raises(DataError, match="Gaussian encoder input"):
        GaussianEncoder(2, 2, 6, (8, 16), 4)(torch.zeros(1, 3, 8, 8))


def test_latent_unet_z_changes_output_and_is_checked():
    net = LatentSegmentationUNet(2, 1, 3, 4, (8, 16), 1, 4).eval()
    x = torch.randn(2, 1, 16, 16, generator=gen(0))
    with torch.no_grad():
        a, b = net(x, torch.zeros(2, 4)), net(x, torch.ones(2, 4) * 3)
    assert a.shape == (2, 3, 16, 16)
    assert (a - b).abs().amax() > 1e-3
    with pytest.raises(DataError, match="z has shape"):
        net(x, torch.zeros(2, 5))


# ------------------------------------------------------------------------------------------
# the method


def test_reconstruction_loss_closed_forms():
    """Zero logits: -log(1/2) per pixel (binary) and -log(1/K) per pixel (K labels), summed over
    the pixels and averaged over the batch."""
    y1 = torch.zeros(2, 1, 4, 4)
    torch.testing.assert_close(reconstruction_loss(torch.zeros(2, 1, 4, 4), y1),
                               torch.tensor(16 * math.log(2.0)))
    y3 = torch.zeros(2, 3, 4, 4)
    y3[:, 1] = 1.0
    torch.testing.assert_close(reconstruction_loss(torch.zeros(2, 3, 4, 4), y3),
                               torch.tensor(16 * math.log(3.0)))
    confident = torch.where(y3 > 0, 30.0, -30.0)
    assert reconstruction_loss(confident, y3) < 1e-6


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_loss_is_reconstruction_plus_kl(spatial_dims, num_classes):
    method = build_method(config(spatial_dims, num_classes))
    terms = method.loss(batch(spatial_dims, num_classes), generator=gen(0))
    assert {"loss", "reconstruction", "kl"} <= set(terms)
    assert torch.isfinite(terms["loss"])
    torch.testing.assert_close(terms["loss"], terms["reconstruction"] + terms["kl"])


def test_beta_weights_the_kl():
    plain, weighted = config(beta=1.0), config(beta=0.25)
    torch.manual_seed(0)
    a = build_method(plain)
    torch.manual_seed(0)
    b = build_method(weighted)
    ta = a.loss(batch(2, 1), generator=gen(1))
    tb = b.loss(batch(2, 1), generator=gen(1))
    torch.testing.assert_close(tb["loss"], ta["reconstruction"] + 0.25 * ta["kl"])


def test_sample_draws_z_from_the_prior_per_sample():
    """Reference: z_s = mu_prior + sigma_prior * eps_s, then S(X, z_s) per sample."""
    method = build_method(config(2, 3)).eval()
    image = batch(2, 3)["image"]
    with torch.no_grad():
        mu, ls = method.prior(image)
        z = sample_latent(mu, ls, 4, generator=gen(2))
        expected = torch.stack([torch.softmax(method.unet(image, z[s]), 1) for s in range(4)])
    torch.testing.assert_close(method.sample(image, 4, generator=gen(2)), expected)


def test_windowed_sampling_keeps_the_shape():
    method = build_method(config(2, 1)).eval()
    method.window = (16, 16)
    image = torch.randn(2, 1, 32, 16, generator=gen(0))
    assert method.sample(image, 2, generator=gen(1)).shape == (2, 2, 1, 32, 16)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'method.options.latent_dim'"):
        build_method(config(latent_dims=4))
    with pytest.raises(ConfigError, match="latent_dim=0"):
        build_method(config(latent_dim=0))
    assert build_method(config(latent_dim="3")).latent_dim == 3


def test_networks_are_the_three_trained_modules():
    nets = build_method(config()).networks()
    assert set(nets) == {"unet", "prior", "posterior"}
    assert all(isinstance(n, nn.Module) for n in nets.values())

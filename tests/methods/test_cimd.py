"""CIMD (Rahman et al., CVPR 2023): loss terms, z-conditioned sampling, the paper's variant."""

from __future__ import annotations

import pytest
import torch
from helpers import SIZE, gen, randomise

import diffuseg.methods.cimd  # noqa: F401  (registers "cimd")
from diffuseg.config import (
    DataConfig,
    MethodConfig,
    NetworkConfig,
    ProcessConfig,
    RunConfig,
    SampleConfig,
)
from diffuseg.errors import ConfigError, DataError
from diffuseg.methods import build_method, one_hot
from diffuseg.networks.latent import kl_diag_gaussians


def config(spatial_dims: int = 2, num_classes: int = 1, sampler: str = "ddim", eta: float = 0.0,
           prediction: str = "x0", **options) -> RunConfig:
    return RunConfig(
        spatial_dims=spatial_dims, num_classes=num_classes,
        network=NetworkConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4,
                              num_heads=2),
        process=ProcessConfig(T=100, prediction=prediction),
        data=DataConfig(patch_size=SIZE[spatial_dims]),
        sample=SampleConfig(steps=3, sampler=sampler, eta=eta),
        method=MethodConfig(name="cimd", options=options),
    ).validate()  # fmt: skip


def build(*args, **kw):
    torch.manual_seed(0)  # network initialisation, as training.py does
    method = build_method(config(*args, **kw))
    randomise(method.denoiser)
    return method


def batch(spatial_dims: int, num_classes: int, b: int = 2, seed: int = 0) -> dict:
    g = gen(seed)
    sp = SIZE[spatial_dims]
    labels = torch.randint(0, max(num_classes, 2), (b, 1, *sp), generator=g)
    return {"image": torch.randn(b, 1, *sp, generator=g), "mask": labels}


def ambiguous_image() -> torch.Tensor:
    """A disc whose rim fades out: where its boundary lies is a matter of opinion."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    r = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2).sqrt()
    return torch.sigmoid(4.0 - r)[None, None]


# ------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_loss_terms_and_networks(spatial_dims, num_classes):
    method = build(spatial_dims, num_classes)
    assert set(method.networks()) == {"denoiser", "posterior", "acn", "prior"}
    terms = method.loss(batch(spatial_dims, num_classes), generator=gen(0))
    assert {"loss", "mse", "kl_prior", "kl_acn"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    torch.testing.assert_close(
        terms["loss"], terms["mse"] + 1e-3 * terms["kl_prior"] + 1e-3 * terms["kl_acn"])


def test_kl_terms_are_kl_between_the_posterior_and_prior_and_acn():
    """kl_prior = KL(q(z|I,Y) || p(z|I)) with q fed the image and x0 = 2Y - 1."""
    method = build(2, 3, beta=0.5, gamma=2.0)
    data = batch(2, 3)
    terms = method.loss(data, generator=gen(0))
    x0 = one_hot(data["mask"], 3) * 2 - 1
    with torch.no_grad():
        q = method.posterior(torch.cat([data["image"], x0], 1))
        p = method.prior(data["image"])
    torch.testing.assert_close(terms["kl_prior"], kl_diag_gaussians(*q, *p).mean())
    torch.testing.assert_close(
        terms["loss"], terms["mse"] + 0.5 * terms["kl_prior"] + 2.0 * terms["kl_acn"])


def test_acn_term_reaches_the_denoiser():
    """The Ambiguity Controlling Network reads the denoiser's x0_hat, so KL(AMN || ACN)
    regularises the denoiser itself (the paper's purpose for it)."""
    method = build(2, 1)
    terms = method.loss(batch(2, 1), generator=gen(0))
    terms["kl_acn"].backward()
    grads = [p.grad for p in method.denoiser.parameters()]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert method.prior is not None and all(p.grad is None for p in method.prior.parameters())


def test_loss_follows_the_generator():
    method = build(2, 1)
    data = batch(2, 1)
    a = method.loss(data, generator=gen(3))["loss"]
    assert a == method.loss(data, generator=gen(3))["loss"]
    assert a != method.loss(data, generator=gen(4))["loss"]


# ------------------------------------------------------------------------------------------
# sampling


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_fixed_z_ddim_eta0_matches_a_hand_written_loop(prediction):
    """With z given and eta = 0 the only randomness is x_T: the sample equals DDIM (Song et al.
    2021, eq. 12) written out here with the denoiser called with emb = z at every step."""
    method = build(2, 1, prediction=prediction).eval()
    image = ambiguous_image().repeat(2, 1, 1, 1)
    z = torch.randn(3, 2, 6, generator=gen(9))
    s = method.sample(image, 3, generator=gen(1), z=z)
    proc = method.process
    x = torch.randn(6, 1, 16, 16, generator=gen(1))
    ts = proc.timesteps(3)
    with torch.no_grad():
        for t, t_prev in zip(ts, ts[1:] + [-1], strict=True):
            out = method.denoiser(x, torch.full((6,), t), image.repeat(3, 1, 1, 1),
                                  emb=z.reshape(6, 6))
            x0_hat = proc.predict_x0(x, t, out).clamp(-1, 1)
            if t_prev < 0:
                x = x0_hat
                break
            ab_t, ab_p = proc.alpha_bar_at(t).float(), proc.alpha_bar_at(t_prev).float()
            eps = (x - ab_t.sqrt() * x0_hat) / (1 - ab_t).sqrt()
            x = ab_p.sqrt() * x0_hat + (1 - ab_p).sqrt() * eps
    torch.testing.assert_close(s, ((x + 1) / 2).reshape(3, 2, 1, 16, 16), atol=1e-5, rtol=1e-4)


def test_z_is_drawn_from_the_prior_once_per_hypothesis():
    method = build(2, 1).eval()
    image = batch(2, 1)["image"]
    seen = []
    method.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["emb"].clone()), with_kwargs=True)
    g = gen(2)
    s = method.sample(image, 4, generator=g)
    assert len(seen) == 3  # one denoiser call per step, all hypotheses in one batch
    for emb in seen:
        torch.testing.assert_close(emb, seen[0])
    g = gen(2)
    z = method.prior_z(image, 4, generator=g)  # the same draws, in the same order
    torch.testing.assert_close(seen[0], z.reshape(8, 6))
    torch.testing.assert_close(s, method.sample(image, 4, generator=g, z=z))


def test_different_z_give_different_masks_on_an_ambiguous_case():
    """Hypothesis 1 keeps its x_T (same generator) and changes only z: its mask changes, while
    hypothesis 0 (same x_T, same z) is reproduced exactly."""
    method = build(2, 1).eval()
    image = ambiguous_image()
    z = torch.stack([torch.full((1, 6), -2.0), torch.full((1, 6), 2.0)])  # [S=2, B=1, 6]
    s = method.sample(image, 2, generator=gen(0), z=z)
    same_z = method.sample(image, 2, generator=gen(0), z=z[:1].repeat(2, 1, 1))
    assert torch.equal(same_z[0], s[0])
    assert (same_z[1] - s[1]).abs().amax() > 0.05


def test_ddpm_sampler_and_wrong_z_shape():
    method = build(2, 1, sampler="ddpm").eval()
    image = batch(2, 1)["image"]
    s = method.sample(image, 2, generator=gen(0))
    assert s.shape == (2, 2, 1, 16, 16) and torch.equal(s, method.sample(image, 2,
                                                                          generator=gen(0)))
    with pytest.raises(DataError, match="z has shape"):
        method.sample(image, 2, z=torch.zeros(2, 6))


def test_windowed_sampling_keeps_the_shape():
    method = build(2, 1).eval()
    method.window = (16, 16)
    s = method.sample(torch.randn(2, 1, 32, 16, generator=gen(0)), 2, steps=2, generator=gen(1))
    assert s.shape == (2, 2, 1, 32, 16) and s.min() >= 0 and s.max() <= 1


# ------------------------------------------------------------------------------------------
# the paper's released structure and the options


def test_without_z_conditioning_it_is_the_papers_structure():
    method = build(2, 3, condition_on_z=False)
    assert set(method.networks()) == {"denoiser", "posterior", "acn"}
    assert method.denoiser.time.extra is None  # no latent input to the denoiser
    terms = method.loss(batch(2, 3), generator=gen(0))
    assert "kl_prior" not in terms
    torch.testing.assert_close(terms["loss"], terms["mse"] + 1e-3 * terms["kl_acn"])
    method.eval()
    image = batch(2, 3)["image"]
    assert method.sample(image, 2, generator=gen(0)).shape == (2, 2, 3, 16, 16)
    with pytest.raises(ConfigError, match="condition_on_z=false"):
        method.sample(image, 2, z=torch.zeros(2, 2, 6))


def test_options_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'method.options.beta'"):
        build_method(config(betta=1.0))
    with pytest.raises(ConfigError, match="latent_dim=0"):
        build_method(config(latent_dim=0))
    with pytest.raises(ConfigError, match="gamma=-1"):
        build_method(config(gamma=-1.0))
    method = build_method(config(latent_dim=3))
    assert method.latent_dim == 3 and method.denoiser.time.extra.in_features == 3


# ------------------------------------------------------------------------------------------
# learning (slow: about a minute on two busy cores)


@pytest.mark.slow
def test_z_learns_which_rater_drew_the_mask():
    """Two raters draw a small and a large disc on the same image. After a short training the
    posterior mean of each rater's mask, used as z, makes the sampler draw that rater's mask:
    the latent carries the disagreement."""
    torch.manual_seed(0)
    method = build_method(config(2, 1))
    image = ambiguous_image()
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    r = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2).sqrt()
    raters = torch.stack([(r < 3).long(), (r < 6).long()])[:, None]  # [2, 1, 16, 16]
    optimizer = torch.optim.AdamW(method.parameters(), lr=2e-3)
    g = gen(0)
    for _ in range(400):
        pick = torch.randint(0, 2, (8,), generator=g)
        terms = method.loss({"image": image.repeat(8, 1, 1, 1), "mask": raters[pick]},
                            generator=g)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    method.eval()
    with torch.no_grad():
        mu, _ = method.posterior(torch.cat([image.repeat(2, 1, 1, 1), raters * 2.0 - 1], 1))
    masks = method.sample(image, 2, generator=gen(1), z=mu[:, None]) > 0.5
    for k in range(2):
        assert (masks[k, 0].long() == raters[k]).float().mean() > 0.95

"""The uncertainty baselines: deterministic U-Net, MC dropout, deep ensemble."""

from __future__ import annotations

import pytest
import torch
from helpers import SIZE, gen

import diffuseg.methods.baselines  # noqa: F401  (registers "unet", "mc_dropout", "ensemble")
from diffuseg.config import DataConfig, MethodConfig, NetworkConfig, RunConfig
from diffuseg.core.ensemble import entropy, summarise
from diffuseg.errors import ConfigError
from diffuseg.methods import build_method, one_hot
from diffuseg.methods.base import read_options
from diffuseg.methods.baselines import EnsembleOptions
from diffuseg.methods.parts import dice_ce

NAMES = ["unet", "mc_dropout", "ensemble"]


def config(name: str, spatial_dims: int = 2, num_classes: int = 1, network_dropout: float = 0.0,
           **options) -> RunConfig:
    return RunConfig(
        spatial_dims=spatial_dims, num_classes=num_classes,
        network=NetworkConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4,
                              num_heads=2, dropout=network_dropout),
        data=DataConfig(patch_size=SIZE[spatial_dims]),
        method=MethodConfig(name=name, options=options),
    ).validate()  # fmt: skip


def batch(spatial_dims: int, num_classes: int, b: int = 2, seed: int = 0) -> dict:
    g = gen(seed)
    sp = SIZE[spatial_dims]
    labels = torch.randint(0, max(num_classes, 2), (b, 1, *sp), generator=g)
    return {"image": torch.randn(b, 1, *sp, generator=g), "mask": labels}


def build(name: str, *args, seed: int = 0, **kw):
    torch.manual_seed(seed)  # network initialisation, as training.py does
    return build_method(config(name, *args, **kw))


# ------------------------------------------------------------------------------------------
# every baseline


def test_dice_ce_is_small_for_a_confident_correct_prediction():
    y = one_hot(torch.tensor([[[[0, 1], [2, 1]]]]), 3)
    good, bad = torch.where(y > 0, 20.0, -20.0), torch.where(y > 0, -20.0, 20.0)
    loss = dice_ce(3)
    assert loss(good, y) < 1e-3 < 1.0 < loss(bad, y)


# ------------------------------------------------------------------------------------------
# what each baseline's samples mean


def test_unet_samples_are_identical_so_every_map_is_zero():
    """S copies of one prediction agree everywhere: variance, entropy and mutual information are
    0 (the maps describe the samples); the softmax entropy survives only in ``soft_mean``."""
    method = build("unet", 2, 1).eval()
    image = batch(2, 1)["image"]
    s = method.sample(image, 4, generator=gen(0))
    with torch.no_grad():
        expected = torch.sigmoid(method.members[0](image))
    for k in range(4):
        torch.testing.assert_close(s[k], expected)
    result = summarise(s)
    for name in ("variance", "entropy", "mutual_information"):
        assert getattr(result, name).abs().max() == 0, name
    assert set(result.probability.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(result.soft_mean, expected)
    assert entropy(result.soft_mean, class_dim=1).min() > 0


def test_mc_dropout_samples_differ_and_follow_the_generator():
    method = build("mc_dropout", 2, 3).eval()
    image = batch(2, 3)["image"]
    s = method.sample(image, 4, generator=gen(0))
    for k in range(1, 4):
        assert (s[k] - s[0]).abs().amax() > 1e-3
    assert not torch.equal(s, method.sample(image, 4, generator=gen(1)))
    assert summarise(s).variance.max() > 0


def test_mc_dropout_rate():
    """Option ``dropout``; else network.dropout when > 0; else 0.2."""

    def rate(**kw) -> float:
        return build("mc_dropout", **kw).members[0].body.mid_res1.dropout

    assert rate() == 0.2
    assert rate(network_dropout=0.1) == 0.1
    assert rate(network_dropout=0.1, dropout=0.4) == 0.4
    with pytest.raises(ConfigError, match="must be in"):
        build("mc_dropout", dropout=1.0)


def test_mc_dropout_training_draws_masks_from_the_generator():
    method = build("mc_dropout").train()
    data = batch(2, 1)
    a = method.loss(data, generator=gen(3))["loss"]
    b = method.loss(data, generator=gen(3))["loss"]
    c = method.loss(data, generator=gen(4))["loss"]
    assert a == b and a != c


def test_ensemble_members_differ_and_samples_cycle_through_them():
    method = build("ensemble", 2, 1, members=3).eval()
    assert set(method.networks()) == {"member0", "member1", "member2"}
    image = batch(2, 1)["image"]
    s = method.sample(image, 7, generator=gen(0))
    with torch.no_grad():
        own = [torch.sigmoid(net(image)) for net in method.members]
    for k in range(7):
        torch.testing.assert_close(s[k], own[k % 3])
    assert (own[0] - own[1]).abs().amax() > 1e-3 and (own[1] - own[2]).abs().amax() > 1e-3
    assert method.sample(image, 2, generator=gen(0)).shape[0] == 2


def test_ensemble_loss_is_the_sum_of_member_losses():
    method = build("ensemble", 2, 3, members=2)
    data = batch(2, 3)
    terms = method.loss(data, generator=gen(0))
    y = one_hot(data["mask"], 3)
    each = [dice_ce(3)(net(data["image"]), y) for net in method.members]
    torch.testing.assert_close(terms["member0"], each[0])
    torch.testing.assert_close(terms["loss"], each[0] + each[1])


# ------------------------------------------------------------------------------------------
# options


def test_options_refuse_unknown_and_mistyped_values():
    with pytest.raises(ConfigError, match="did you mean 'method.options.members'"):
        build("ensemble", member=3)
    with pytest.raises(ConfigError, match="unknown config key 'method.options.members'"):
        build("unet", members=2)
    with pytest.raises(ConfigError, match="whole number"):
        build("ensemble", members=2.5)
    with pytest.raises(ConfigError, match="at least 1"):
        build("ensemble", members=0)
    assert read_options(config("ensemble", members="3"), EnsembleOptions) == EnsembleOptions(3)
    assert len(build("ensemble", members="3").members) == 3

"""HiDiff (Chen et al., IEEE TMI 2024): the alternate-collaborative steps, the focal loss, sampling
from the prior (its anchored Bernoulli process: tests/processes/test_bernoulli.py; shapes, seeding
and round trips: tests/contracts/test_methods.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import SIZE, gen, randomise, tiny_config
from torch import nn

import diffuseg.methods.hidiff  # noqa: F401  (registers "hidiff")
from diffuseg.config import (
    ProcessConfig,
    RunConfig,
)
from diffuseg.errors import ConfigError
from diffuseg.methods import build_method
from diffuseg.methods.hidiff import focal_loss
from diffuseg.run.weights import load_networks, state_of


def config(spatial_dims: int = 2, num_classes: int = 1, kind: str | None = None,
           **options) -> RunConfig:
    return tiny_config("hidiff", spatial_dims, num_classes, process=ProcessConfig(kind=kind, T=20),
                       steps=3, **options)


def build(*args, **kw):
    torch.manual_seed(0)
    method = build_method(config(*args, **kw))
    randomise(method.refiner)
    randomise(method.segmentor, seed=1)
    return method


def batch(spatial_dims: int, b: int = 2, seed: int = 0) -> dict:
    g = gen(seed)
    sp = SIZE[spatial_dims]
    return {"image": torch.randn(b, 1, *sp, generator=g),
            "mask": torch.randint(0, 2, (b, 1, *sp), generator=g)}


# ------------------------------------------------------------------------------------------
# the focal loss (the anchored process: tests/processes/test_bernoulli.py)


def test_focal_loss_closed_form():
    logits, target = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = torch.sigmoid(logits)  # probability of the true label (1)
    torch.testing.assert_close(focal_loss(logits, target, 2.0), ((1 - pt) ** 2 * bce).mean())
    torch.testing.assert_close(focal_loss(logits, target, 0.0), bce.mean())


# ------------------------------------------------------------------------------------------
# alternate-collaborative training


def grads(net: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in net.parameters()]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_steps_alternate_between_refiner_and_segmentor(spatial_dims):
    method = build(spatial_dims).train()
    data = batch(spatial_dims)
    terms = method.loss(data, generator=gen(0))  # count 0: the refiner's turn
    assert {"loss", "segmentor", "refiner", "kl", "focal"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    torch.testing.assert_close(terms["loss"], terms["kl"] + terms["focal"])
    terms["loss"].backward()
    assert all(g is None for g in grads(method.segmentor))
    for name, p in method.refiner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    method.refiner.zero_grad(set_to_none=True)
    terms = method.loss(data, generator=gen(1))  # count 1: the segmentor's turn
    torch.testing.assert_close(terms["loss"], terms["segmentor"] + terms["refiner"])
    terms["loss"].backward()
    assert all(g is None for g in grads(method.refiner))
    for name, p in method.segmentor.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert int(method.steps.count) == 2


def test_the_refiner_feeds_back_into_the_segmentor():
    """Odd steps: L_seg + feedback * L_BBDM; the BBDM term reaches the segmentor through p."""
    data = batch(2)
    by_feedback = {}
    for feedback in (0.0, 0.5):
        method = build(feedback=feedback).train()
        method.steps.count.fill_(1)
        terms = method.loss(data, generator=gen(2))
        torch.testing.assert_close(terms["loss"], terms["segmentor"] + feedback * terms["refiner"])
        terms["loss"].backward()
        by_feedback[feedback] = torch.cat([g.flatten() for g in grads(method.segmentor)])
    assert not torch.allclose(by_feedback[0.0], by_feedback[0.5])


def test_the_step_count_is_saved_and_only_training_advances_it():
    method = build().train()
    for step in range(3):
        method.loss(batch(2), generator=gen(step))
    method.eval().loss(batch(2), generator=gen(9))
    assert int(method.steps.count) == 3
    fresh = build()
    load_networks(fresh.networks(), state_of(method.networks()))
    assert int(fresh.steps.count) == 3  # a resumed run takes the segmentor's turn next


# ------------------------------------------------------------------------------------------
# sampling and errors


def test_sampling_starts_from_the_prior_and_sees_it():
    """With one step the sample is the refiner's x0_hat for y_T ~ B(p) and cond = [image, p]."""
    method = build().eval()
    image = batch(2, b=1)["image"]
    s = method.sample(image, 2, steps=1, generator=gen(3))
    p = method.prior(image).repeat(2, 1, 1, 1)
    y_T = (torch.rand(p.shape, generator=gen(3)) < p.clamp(1e-4, 1 - 1e-4)).float()
    cond = torch.cat([image.repeat(2, 1, 1, 1), p], 1)
    with torch.no_grad():
        expected = torch.sigmoid(method.refiner(y_T, torch.full((2,), 19), cond))
    torch.testing.assert_close(s, expected.reshape(2, 1, 1, 16, 16))


def test_errors():
    with pytest.raises(ConfigError, match="num_classes=1"):
        build_method(config(num_classes=3))
    with pytest.raises(ConfigError, match="process.kind='gaussian' contradicts"):
        build_method(config(kind="gaussian"))
    with pytest.raises(ConfigError, match="feedback"):
        build_method(config(feedback=-1.0))

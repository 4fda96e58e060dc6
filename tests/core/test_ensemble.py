import math

import torch

from diffuseg.core.ensemble import majority_vote, summarise


def test_binary_uncertainty_by_hand():
    # two samples at one pixel: p = 0 and p = 1 -> mean 0.5
    samples = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1)
    r = summarise(samples)
    assert r.mean.item() == 0.5
    assert math.isclose(r.variance.item(), 0.25, abs_tol=1e-6)
    assert math.isclose(r.entropy.item(), math.log(2), abs_tol=1e-5)
    # each sample is certain, so all the entropy is disagreement
    assert math.isclose(r.mutual_information.item(), math.log(2), abs_tol=1e-4)
    assert r.consensus.item() == 1  # a tie (mean 0.5) is foreground: diffuseg.core.consensus


def test_agreeing_samples_have_no_mutual_information():
    samples = torch.full((4, 1, 1, 3, 3), 0.3)
    r = summarise(samples)
    assert torch.allclose(r.mutual_information, torch.zeros(1, 3, 3), atol=1e-5)
    assert torch.allclose(r.variance, torch.zeros(1, 3, 3))
    expected = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert torch.allclose(r.entropy, torch.full((1, 3, 3), expected), atol=1e-5)


def test_multiclass_consensus_is_majority_vote():
    # 3 samples, 3 classes, 1 pixel: argmaxes 2, 2, 1 -> consensus 2
    onehots = torch.tensor([[0, 0, 1], [0, 0, 1], [0, 1, 0]], dtype=torch.float32)
    samples = onehots.reshape(3, 1, 3, 1, 1)
    r = summarise(samples)
    assert r.consensus.item() == 2
    assert majority_vote(torch.tensor([[1], [0]]), 2).item() == 1  # tie -> higher label


def test_3d_shapes():
    samples = torch.rand(5, 2, 1, 4, 5, 6)
    r = summarise(samples)
    assert r.consensus.shape == (2, 4, 5, 6)
    assert r.entropy.shape == r.variance.shape == r.mutual_information.shape == (2, 4, 5, 6)
    assert (r.mutual_information >= 0).all()

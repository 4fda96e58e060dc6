import math

import torch

from diffuseg.core.consensus import majority
from diffuseg.core.ensemble import majority_vote, summarise


def test_binary_uncertainty_by_hand():
    # two samples at one pixel: p = 0 and p = 1 -> a share of 1/2
    samples = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1)
    r = summarise(samples)
    assert r.probability.item() == 0.5
    assert math.isclose(r.variance.item(), 0.25, abs_tol=1e-6)
    assert math.isclose(r.entropy.item(), math.log(2), abs_tol=1e-6)
    # each sample is certain, so all the entropy is disagreement
    assert math.isclose(r.mutual_information.item(), math.log(2), abs_tol=1e-6)
    assert r.consensus.item() == 1  # a tie (share 1/2) is foreground: diffuseg.core.consensus


def test_probability_is_the_share_of_binarized_samples_exactly():
    """Soft values in the old failure mode (0.3-0.49 where every sample is background) and
    values on both sides of 0.5: the probability is (number of samples with p > 0.5) / S, bit for
    bit, whatever the soft mean is."""
    g = torch.Generator().manual_seed(0)
    for s in (1, 3, 7, 16):
        samples = torch.rand(s, 2, 1, 9, 11, generator=g)
        samples[:, :, :, :3] = 0.3 + 0.19 * samples[:, :, :, :3]  # all background, soft ~0.4
        r = summarise(samples)
        counts = (samples > 0.5).sum(0)  # [B, 1, *sp] integers
        expected = torch.tensor((counts.double() / s).numpy()).float()
        assert torch.equal(r.probability, expected)
        assert torch.equal(r.foreground(), expected[:, 0])
        assert (r.probability[:, :, :3] == 0).all()
        assert (r.soft_mean[:, :, :3] > 0.29).all()  # the soft mean says otherwise


def test_maps_are_exactly_zero_where_all_binarized_samples_agree():
    """Soft values differ from sample to sample (so their soft mean has entropy and their BALD
    is positive) but all lie on one side of 0.5: every map is exactly 0 there."""
    samples = torch.tensor([0.05, 0.45, 0.3, 0.2]).reshape(4, 1, 1, 1, 1).repeat(1, 1, 1, 2, 2)
    samples[:, 0, 0, 1, :] = torch.tensor([0.55, 0.99, 0.7, 0.9])[:, None]  # all foreground
    r = summarise(samples)
    zeros = torch.zeros(1, 2, 2)
    assert torch.equal(r.variance, zeros)
    assert torch.equal(r.entropy, zeros)
    assert torch.equal(r.mutual_information, zeros)
    assert r.probability[0, 0].tolist() == [[0.0, 0.0], [1.0, 1.0]]
    assert r.consensus[0].tolist() == [[0, 0], [1, 1]]


def test_multiclass_maps_are_zero_where_all_samples_agree_and_shares_per_label():
    """K = 3, 4 samples; pixel 0: argmax 2, 2, 2, 2 from different softmax vectors (all agree);
    pixel 1: argmax 0, 1, 1, 2 -> shares (1/4, 1/2, 1/4), consensus 1."""
    pix0 = [[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.0, 0.1, 0.9], [0.25, 0.35, 0.4]]
    pix1 = [[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.1, 0.5, 0.4], [0.1, 0.2, 0.7]]
    samples = torch.tensor([pix0, pix1]).permute(1, 2, 0).reshape(4, 1, 3, 2)
    r = summarise(samples)
    assert r.probability[0, :, 0].tolist() == [0.0, 0.0, 1.0]
    assert r.probability[0, :, 1].tolist() == [0.25, 0.5, 0.25]
    assert r.variance[0, 0] == 0 and r.entropy[0, 0] == 0 and r.mutual_information[0, 0] == 0
    assert math.isclose(r.variance[0, 1].item(), 2 * 0.25 * 0.75 + 0.5 * 0.5, abs_tol=1e-6)
    assert math.isclose(r.entropy[0, 1].item(), 1.5 * math.log(2), abs_tol=1e-6)
    assert r.mutual_information[0, 1] > 0
    assert r.consensus[0].tolist() == [2, 1]
    assert math.isclose(r.foreground()[0, 1].item(), 0.75)


def test_consensus_is_the_majority_of_the_samples():
    """The consensus is diffuseg.core.consensus.majority of the binarized samples, even where the
    soft mean is on the other side of 0.5 (3 of 5 samples at 0.51, two at 0.0: soft mean 0.31)."""
    g = torch.Generator().manual_seed(3)
    samples = torch.rand(5, 2, 1, 6, 7, generator=g)
    samples[:, 0, 0, 0, 0] = torch.tensor([0.51, 0.51, 0.0, 0.51, 0.0])
    r = summarise(samples)
    labels = (samples[:, :, 0] > 0.5).long()
    assert torch.equal(r.consensus, majority(labels, 2))
    assert r.consensus[0, 0, 0] == 1 and r.soft_mean[0, 0, 0, 0] < 0.5
    onehots = torch.nn.functional.one_hot(torch.randint(0, 4, (6, 1, 5, 5), generator=g), 4)
    multi = summarise(onehots.permute(0, 1, 4, 2, 3).float())
    assert torch.equal(multi.consensus, majority(onehots.argmax(-1), 4))


def test_mutual_information_is_bald_of_the_soft_values_where_samples_disagree():
    """Two confident samples that disagree: BALD = H[1/2] - mean(H[0.9], H[0.1]); two unsure
    samples that disagree (0.45, 0.55): BALD ~ 0 although the entropy of the shares is log 2."""
    samples = torch.tensor([[0.9, 0.45], [0.1, 0.55]]).reshape(2, 1, 1, 1, 2)
    r = summarise(samples)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert math.isclose(r.mutual_information[0, 0, 0].item(), h(0.5) - h(0.9), abs_tol=1e-6)
    assert math.isclose(r.mutual_information[0, 0, 1].item(), h(0.5) - h(0.55), abs_tol=1e-6)
    assert torch.allclose(r.entropy[0, 0], torch.full((2,), math.log(2)), atol=1e-6)


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
    assert r.probability.shape == r.soft_mean.shape == (2, 1, 4, 5, 6)
    assert r.entropy.shape == r.variance.shape == r.mutual_information.shape == (2, 4, 5, 6)
    assert (r.mutual_information >= 0).all()

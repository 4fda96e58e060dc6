"""One consensus rule (diffuseg.core.consensus) for raters, phantom, validation and predictions."""

import numpy as np
import torch

from diffuseg.core.consensus import foreground_consensus, majority
from diffuseg.core.ensemble import majority_vote, summarise
from diffuseg.data.phantom import majority_mask


def brute_force(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Reference: count votes pixel by pixel, keep the highest label among the most voted."""
    out = np.zeros(labels.shape[1:], np.int64)
    for index in np.ndindex(*labels.shape[1:]):
        votes = [int((labels[(slice(None), *index)] == k).sum()) for k in range(num_labels)]
        out[index] = max(k for k in range(num_labels) if votes[k] == max(votes))
    return out


def test_majority_matches_brute_force_numpy_and_torch():
    rng = np.random.default_rng(0)
    for n, k in ((2, 2), (4, 2), (4, 3), (5, 4), (6, 3)):
        labels = rng.integers(0, k, size=(n, 7, 5))
        expected = brute_force(labels, k)
        np.testing.assert_array_equal(majority(labels, k), expected)
        assert torch.equal(majority(torch.from_numpy(labels), k), torch.from_numpy(expected))


def test_every_user_applies_the_same_tie_rule():
    raters = np.array([[1, 0, 1, 0], [0, 0, 1, 1]])  # pixel 0 and 3 are 1-1 ties
    expected = [1, 0, 1, 1]
    np.testing.assert_array_equal(majority(raters, 2), expected)
    np.testing.assert_array_equal(majority_mask(raters), expected)
    np.testing.assert_array_equal(majority_vote(torch.from_numpy(raters), 2).numpy(), expected)
    # the prediction consensus: binary mean probability 0.5 is a tie too
    samples = torch.from_numpy(raters).float().reshape(2, 1, 1, 4)
    np.testing.assert_array_equal(summarise(samples).consensus[0].numpy(), expected)
    np.testing.assert_array_equal(foreground_consensus(np.array([0.49, 0.5, 0.51])), [0, 1, 1])

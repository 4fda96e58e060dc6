"""Modes of sampled masks: k-medoids on 1 - IoU recovers hand-made clusters and their shares."""

import numpy as np
import pytest

from diffuseg.review.modes import find_modes, iou_distances, k_medoids, silhouette


def disc(cx: float, cy: float, r: float, size: int = 32) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r ** 2


def jitter(mask: np.ndarray, rng: np.random.Generator, n: int = 3) -> np.ndarray:
    """Flip a few boundary-ish pixels: a sample of the same mode."""
    out = mask.copy()
    for _ in range(n):
        i, j = rng.integers(0, mask.shape[0], 2)
        out[i, j] = not out[i, j]
    return out


def test_distances_follow_the_iou_convention():
    a, b = disc(10, 10, 5), disc(20, 20, 5)
    d = iou_distances(np.stack([a, a, b, np.zeros_like(a), np.zeros_like(a)]))
    assert d[0, 1] == 0 and d[0, 2] == 1 and d[3, 4] == 0 and d[0, 3] == 1
    assert np.allclose(d, d.T)


def test_three_hand_made_clusters_and_their_shares():
    rng = np.random.default_rng(0)
    centres = [disc(8, 8, 5), disc(24, 24, 6), disc(8, 24, 4)]
    counts = [10, 4, 2]
    masks = np.stack([jitter(centres[c], rng) for c, n in enumerate(counts) for _ in range(n)])
    order = rng.permutation(len(masks))
    modes = find_modes(masks[order])
    assert modes.k == 3
    assert modes.shares == pytest.approx([10 / 16, 4 / 16, 2 / 16])
    truth = np.repeat([0, 1, 2], counts)[order]
    assert (modes.labels == truth).all()  # modes ordered by share, like the truth
    for c, medoid in enumerate(modes.medoids):
        assert modes.labels[medoid] == c
    assert modes.describe() == "3 plausible contours: 62% / 25% / 12%"


def test_near_identical_samples_are_one_mode():
    rng = np.random.default_rng(1)
    base = disc(16, 16, 8)
    modes = find_modes(np.stack([jitter(base, rng, 2) for _ in range(12)]))
    assert modes.k == 1 and modes.shares == [1.0]


def test_nested_masks_like_the_phantom_raters():
    """Over-, true and under-segmentation (the phantom's raters) are three modes."""
    rng = np.random.default_rng(2)
    radii = {4: 5, 7: 5, 10: 6}
    masks = np.stack([jitter(disc(16, 16, r), rng) for r, n in radii.items() for _ in range(n)])
    modes = find_modes(masks)
    assert modes.k == 3 and sorted(modes.shares) == pytest.approx([5 / 16, 5 / 16, 6 / 16])


def test_silhouette_and_k_medoids_on_a_distance_matrix():
    d = np.array([[0, 0.1, 0.9, 0.9], [0.1, 0, 0.9, 0.9], [0.9, 0.9, 0, 0.1],
                  [0.9, 0.9, 0.1, 0]])
    labels, medoids = k_medoids(d, 2)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    assert silhouette(d, labels) == pytest.approx((0.9 - 0.1) / 0.9)

"""Distinct modes of a set of sampled masks: k-medoids on the distance d = 1 - IoU.

Samples that differ only by a few boundary pixels are one hypothesis; the review page shows each
mode (its medoid, a real sample) with its share of the samples ("3 plausible contours: 62 % /
25 % / 13 %").

Clustering: k-medoids (PAM's alternate form: assign every sample to its nearest medoid, move each
medoid to the member with the least total distance to its cluster, repeat until nothing changes),
started from the sample with the least total distance and then greedily the sample farthest from
the chosen ones (deterministic). IoU of two empty masks is 1 (d = 0), the repository's metric
convention.

Choice of k (the stated rule): k = 1 when the largest pairwise distance is below ``merge``
(default 0.1: every pair of samples overlaps with IoU > 0.9, one contour); otherwise the k in
2..``max_modes`` with the highest mean silhouette (Rousseeuw 1987), provided that silhouette is at
least ``min_silhouette`` (default 0.25, "no substantial structure" below it), else k = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Modes:
    labels: np.ndarray  # [S] mode index of each sample, modes ordered by share (largest first)
    medoids: list[int]  # the sample index representing each mode
    shares: list[float]  # fraction of samples in each mode, sums to 1
    silhouette: float | None  # mean silhouette of the chosen k (None for k = 1)

    @property
    def k(self) -> int:
        return len(self.medoids)

    def describe(self) -> str:
        word = "contour" if self.k == 1 else "contours"
        return f"{self.k} plausible {word}: " + " / ".join(f"{s:.0%}" for s in self.shares)

    def to_json(self) -> dict:
        return {"k": self.k, "labels": [int(v) for v in self.labels], "medoids": self.medoids,
                "shares": self.shares, "silhouette": self.silhouette,
                "description": self.describe()}


def iou_distances(masks: np.ndarray) -> np.ndarray:
    """``[S, *spatial]`` binary masks -> ``[S, S]`` matrix of 1 - IoU (0 for two empty masks)."""
    flat = np.asarray(masks).reshape(len(masks), -1).astype(bool).astype(np.float64)
    inter = flat @ flat.T
    sizes = flat.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return 1.0 - iou


def k_medoids(d: np.ndarray, k: int, max_iter: int = 100) -> tuple[np.ndarray, list[int]]:
    """Labels ``[S]`` and medoid indices of a k-medoids clustering of distance matrix ``d``."""
    medoids = [int(np.argmin(d.sum(1)))]
    while len(medoids) < k:
        medoids.append(int(np.argmax(d[:, medoids].min(1))))
    for _ in range(max_iter):
        labels = np.argmin(d[:, medoids], axis=1)
        new = []
        for c in range(k):
            members = np.flatnonzero(labels == c)
            if len(members) == 0:
                new.append(medoids[c])
                continue
            within = d[np.ix_(members, members)].sum(1)
            new.append(int(members[np.argmin(within)]))
        if new == medoids:
            break
        medoids = new
    return np.argmin(d[:, medoids], axis=1), medoids


def silhouette(d: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette s_i = (b_i - a_i) / max(a_i, b_i); s_i = 0 for singleton clusters."""
    values = []
    for i in range(len(d)):
        same = labels == labels[i]
        if same.sum() <= 1:
            values.append(0.0)
            continue
        a = d[i, same].sum() / (same.sum() - 1)
        b = min(d[i, labels == c].mean() for c in set(labels.tolist()) if c != labels[i])
        values.append(0.0 if max(a, b) == 0 else (b - a) / max(a, b))
    return float(np.mean(values))


def find_modes(masks: np.ndarray, *, max_modes: int = 5, merge: float = 0.1,
               min_silhouette: float = 0.25) -> Modes:
    """The distinct modes of ``masks`` ``[S, *spatial]`` (module docstring: the rule for k)."""
    masks = np.asarray(masks)
    n = len(masks)
    if n == 0:
        raise ValueError("find_modes needs at least one mask")
    d = iou_distances(masks)
    best: tuple[float, np.ndarray, list[int]] | None = None
    if n >= 3 and d.max() >= merge:
        for k in range(2, min(max_modes, n - 1) + 1):
            labels, medoids = k_medoids(d, k)
            if len(set(labels.tolist())) < k:
                continue
            score = silhouette(d, labels)
            if best is None or score > best[0]:
                best = (score, labels, medoids)
    if best is None or best[0] < min_silhouette:
        medoid = int(np.argmin(d.sum(1)))
        return Modes(np.zeros(n, int), [medoid], [1.0], None)
    score, labels, medoids = best
    order = sorted(range(len(medoids)), key=lambda c: (-(labels == c).sum(), medoids[c]))
    remap = np.empty(len(medoids), int)
    remap[order] = np.arange(len(medoids))
    labels = remap[labels]
    return Modes(labels, [medoids[c] for c in order],
                 [float((labels == c).mean()) for c in range(len(order))], score)

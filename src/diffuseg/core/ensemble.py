"""From samples to a consensus mask and per-pixel uncertainty.

Every map a user sees is a statistic of the **binarized** samples, the masks that are written and
drawn (``to_labels``: p > 0.5 for a binary mask, argmax over the K channels otherwise), so that the
maps agree with the samples: where all S samples give a pixel the same label, the probability is 0
or 1 and every uncertainty map is exactly 0. With ``q_k`` the share of samples that give label k
(``[B, K, *spatial]``; binary: the foreground share q):

- probability    q_k, the share of samples marking the pixel (binary: q);
- consensus      the majority of the samples (``core.consensus.majority``: the label given by
                 the most samples, a tie to the higher label; binary: q >= 0.5);
- variance       sum_k q_k (1 - q_k), the variance of the samples' one-hot labels (binary:
                 q (1 - q), at most 1/4; K labels: at most 1 - 1/K);
- entropy        H[q] = -sum_k q_k log q_k (binary: the Bernoulli entropy of q), in nats: the
                 predictive entropy of the samples' label distribution;
- mutual inf.    the BALD score of the samples' soft values p_s (Houlsby et al. 2011; Gal et al.
                 2017), H[p_bar] - (1/S) sum_s H[p_s] with p_bar = (1/S) sum_s p_s, **kept only
                 where the binarized samples disagree** (0 where they all agree). Binarized samples
                 carry no per-sample distribution (each H[one-hot] = 0), so their own BALD would
                 equal the entropy; the soft values tell disagreement between confident samples
                 (high) from samples that are each unsure (low).

``soft_mean`` = p_bar, the mean of the soft values, is kept for code that needs it (the BALD
score, sensitivity analyses); it is never written as "probability". docs/metrics.md compares
these definitions with CIMD, BerDiff and MC dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffuseg.core.consensus import majority


@dataclass
class Result:
    samples: Tensor  # [S, B, K, *spatial] the samples' soft values (probabilities)
    probability: Tensor  # [B, K, *spatial] share of binarized samples with each label
    consensus: Tensor  # [B, *spatial] int64 label map (binary: 0/1), majority of the samples
    variance: Tensor  # [B, *spatial] variance of the samples' one-hot labels
    entropy: Tensor  # [B, *spatial] entropy of the label shares, nats
    mutual_information: Tensor  # [B, *spatial] BALD of the soft values where samples disagree
    soft_mean: Tensor  # [B, K, *spatial] mean of the soft values (not a share of samples)

    def sample_labels(self) -> Tensor:
        """Each sample as a label map ``[S, B, *spatial]``."""
        return to_labels(self.samples, class_dim=2)

    def foreground(self) -> Tensor:
        """``[B, *spatial]`` share of samples that mark any foreground label (binary: q;
        K labels: 1 - q_0)."""
        p = self.probability
        return p[:, 0] if p.shape[1] == 1 else 1.0 - p[:, 0]


def to_labels(probabilities: Tensor, class_dim: int = 1) -> Tensor:
    """Binary (K = 1): p > 0.5. Multi-class: argmax over the class axis."""
    if probabilities.shape[class_dim] == 1:
        return (probabilities.squeeze(class_dim) > 0.5).long()
    return probabilities.argmax(dim=class_dim)


def entropy(p: Tensor, class_dim: int) -> Tensor:
    """Entropy in nats; a Bernoulli entropy when the class axis has size 1. Values are clamped
    to [0, 1] and 0 log 0 = 0, so a certain pixel (p in {0, 1}) has exactly 0."""
    p = p.clamp(0.0, 1.0)
    if p.shape[class_dim] == 1:
        p = p.squeeze(class_dim)
        return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))
    return -torch.special.xlogy(p, p).sum(dim=class_dim)


def majority_vote(labels: Tensor, num_labels: int) -> Tensor:
    """Per-pixel most frequent label over axis 0 (``diffuseg.core.consensus.majority``: ties go to
    the
    higher label)."""
    return majority(labels, num_labels)


def label_shares(labels: Tensor, num_classes: int) -> Tensor:
    """``[S, B, *spatial]`` label maps -> ``[B, K, *spatial]`` share of samples per label
    (K = 1: the foreground share; K > 1: one channel per label 0..K-1)."""
    if num_classes == 1:
        return (labels > 0).float().mean(0).unsqueeze(1)
    return torch.stack([(labels == k).float().mean(0) for k in range(num_classes)], dim=1)


def summarise(samples: Tensor) -> Result:
    """Consensus and uncertainty maps from ``[S, B, K, *spatial]`` sample probabilities
    (module docstring: every map from the binarized samples; BALD from the soft values)."""
    if samples.ndim < 4:
        raise ValueError(f"samples must be [S, B, K, *spatial], got shape {tuple(samples.shape)}")
    samples = samples.float()
    num_classes = samples.shape[2]
    labels = to_labels(samples, class_dim=2)  # [S, B, *spatial]
    shares = label_shares(labels, num_classes)
    if num_classes == 1:
        variance = (shares * (1 - shares)).squeeze(1)
    else:
        variance = (shares * (1 - shares)).sum(1)
    soft_mean = samples.mean(0)
    agree = (labels == labels[:1]).all(0)
    bald = entropy(soft_mean, class_dim=1) - entropy(samples, class_dim=2).mean(0)
    return Result(
        samples=samples,
        probability=shares,
        consensus=majority(labels, max(2, num_classes)),
        variance=variance,
        entropy=entropy(shares, class_dim=1),
        mutual_information=torch.where(agree, 0.0, bald.clamp_min(0.0)),
        soft_mean=soft_mean,
    )

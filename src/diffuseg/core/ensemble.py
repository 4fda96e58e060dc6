"""From samples to a consensus mask and per-pixel uncertainty.

Given S sampled probability maps p_s (shape ``[S, B, K, *spatial]``), with the mean
p_bar = (1/S) sum_s p_s:

- variance       Var_s[p_s], summed over classes for K > 1 (binary: the variance of the foreground
                 probability);
- entropy        H[p_bar]: the predictive (total) entropy, in nats;
- mutual inf.    H[p_bar] - (1/S) sum_s H[p_s]: the part of the entropy that comes from samples
                 disagreeing (epistemic / inter-sample), Houlsby et al. 2011 (BALD), as used for
                 MC dropout by Gal & Ghahramani 2016 and Kendall & Gal 2017.

Binary masks (K = 1) use the Bernoulli entropy of the foreground probability. The consensus follows
``diffuseg.core.consensus``: mean probability >= 0.5 (binary), or the majority vote over each
sample's
argmax label (multi-class); a tie goes to the higher label in both cases.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from diffuseg.core.consensus import foreground_consensus, majority

EPS = 1e-7


@dataclass
class Result:
    samples: Tensor  # [S, B, K, *spatial] probabilities
    mean: Tensor  # [B, K, *spatial] mean probability
    consensus: Tensor  # [B, *spatial] int64 label map (binary: 0/1)
    variance: Tensor  # [B, *spatial]
    entropy: Tensor  # [B, *spatial]
    mutual_information: Tensor  # [B, *spatial]

    def sample_labels(self) -> Tensor:
        """Each sample as a label map ``[S, B, *spatial]``."""
        return to_labels(self.samples, class_dim=2)


def to_labels(probabilities: Tensor, class_dim: int = 1) -> Tensor:
    """Binary (K = 1): p > 0.5. Multi-class: argmax over the class axis."""
    if probabilities.shape[class_dim] == 1:
        return (probabilities.squeeze(class_dim) > 0.5).long()
    return probabilities.argmax(dim=class_dim)


def entropy(p: Tensor, class_dim: int) -> Tensor:
    """Entropy in nats; a Bernoulli entropy when the class axis has size 1."""
    p = p.clamp(EPS, 1 - EPS)
    if p.shape[class_dim] == 1:
        p = p.squeeze(class_dim)
        return -(p * p.log() + (1 - p) * (1 - p).log())
    return -(p * p.log()).sum(dim=class_dim)


def majority_vote(labels: Tensor, num_labels: int) -> Tensor:
    """Per-pixel most frequent label over axis 0 (``diffuseg.core.consensus.majority``: ties go to
    the
    higher label)."""
    return majority(labels, num_labels)


def summarise(samples: Tensor) -> Result:
    """Consensus and uncertainty maps from ``[S, B, K, *spatial]`` sample probabilities."""
    if samples.ndim < 4:
        raise ValueError(f"samples must be [S, B, K, *spatial], got shape {tuple(samples.shape)}")
    samples = samples.float()
    num_classes = samples.shape[2]
    mean = samples.mean(0)
    if num_classes == 1:
        consensus = foreground_consensus(mean.squeeze(1))
        variance = samples.var(0, unbiased=False).squeeze(1)
    else:
        consensus = majority_vote(to_labels(samples, class_dim=2), num_classes)
        variance = samples.var(0, unbiased=False).sum(1)
    total = entropy(mean, class_dim=1)
    expected = entropy(samples, class_dim=2).mean(0)
    return Result(
        samples=samples,
        mean=mean,
        consensus=consensus,
        variance=variance,
        entropy=total,
        mutual_information=(total - expected).clamp_min(0.0),
    )

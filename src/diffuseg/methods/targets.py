"""What a Gaussian method diffuses: the mask itself, scaled to [-1, 1] (Wolleb et al. 2022), or
another representation of it. A target maps one-hot masks to the diffused space x0 and back to
probabilities; the process and sampler never see the difference."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from diffuseg.methods.base import renormalise
from diffuseg.methods.sdf import SDFTarget


class Target(Protocol):
    clip: float | None  # x0_hat is clamped to [-clip, clip] during sampling

    def encode(self, mask: Tensor) -> Tensor:
        """One-hot mask ``[B, K, *sp]`` in {0, 1} -> x0."""

    def decode(self, x0: Tensor) -> Tensor:
        """x0 -> probabilities ``[B, K, *sp]`` in [0, 1]."""


class MaskTarget:
    """x0 = 2m - 1; probabilities (x0 + 1) / 2, renormalised over classes when K > 1."""

    clip = 1.0
    pointwise = True  # a pixel's x0 depends on that pixel alone (guided resampling needs it)

    def encode(self, mask: Tensor) -> Tensor:
        return mask * 2.0 - 1.0

    def decode(self, x0: Tensor) -> Tensor:
        p = ((x0.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        return renormalise(p)


TARGETS = {"mask": MaskTarget, "sdf": SDFTarget}


def build_target(name: str) -> Target:
    return TARGETS[name]()

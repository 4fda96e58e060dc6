"""Signed distance functions as the diffused representation (Bogensperger et al., "Score-based
generative models for medical image segmentation using signed distance functions", 2023).

Instead of the mask, a Gaussian method diffuses each class's signed distance function (SDF): a
smooth, implicit representation whose zero level set is the boundary. As in the paper and its
released code, the SDF is negative inside the object and positive outside, truncated to a band of
``band`` pixels and divided by it, so that x0 lies in [-1, 1] (the code's MoNuSeg data are
truncated at 5 pixels and divided by 5):

    phi(x) =  EDT(1 - m)(x) - 1/2    outside (m(x) = 0): distance to the nearest object pixel
    phi(x) = -(EDT(m)(x) - 1/2)      inside  (m(x) = 1): distance to the nearest background pixel
    x0     = clip(phi / band, -1, 1)

EDT(a)(x) is the Euclidean distance from pixel x to the nearest zero of a
(``scipy.ndimage.distance_transform_edt``, in pixels). Subtracting 1/2 puts the boundary halfway
between pixel centres, so |phi| >= 1/2 at every pixel and phi < 0 exactly where m = 1. An empty mask
has phi = +inf (x0 = 1 everywhere), a full one phi = -inf (x0 = -1).

Decoding maps x0 back to probabilities with a logistic of the signed distance,

    p = sigmoid(-phi / temperature),   phi = band * x0,

so that x0 < 0 <=> p > 1/2. ``temperature = 1/4`` pixel makes the slope at the boundary, 1 / (4
temperature), equal to 1 per pixel: that of the partial-volume fraction 1/2 - phi of a pixel crossed
by a straight boundary. For K > 1 channels (one-hot incl. background) each channel has its own SDF
and the decoded probabilities are renormalised over channels, as ``MaskTarget`` does.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from diffuseg.methods.base import renormalise

BAND = 5.0  # pixels; the released code truncates the SDF at 5 pixels and divides by 5
TEMPERATURE = 0.25  # pixels; boundary slope of the partial-volume fraction (module docstring)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """phi of one binary mask ``[*spatial]`` (module docstring), float64; +inf everywhere for an
    empty mask, -inf for a full one."""
    inside = np.asarray(mask) > 0
    if not inside.any():
        return np.full(inside.shape, np.inf)
    if inside.all():
        return np.full(inside.shape, -np.inf)
    outside_distance = distance_transform_edt(~inside)  # to the nearest object pixel
    inside_distance = distance_transform_edt(inside)  # to the nearest background pixel
    return np.where(inside, 0.5 - inside_distance, outside_distance - 0.5)


class SDFTarget:
    """x0 = clip(phi / band, -1, 1) per channel; probabilities sigmoid(-band x0 / temperature),
    renormalised over channels when K > 1."""

    clip = 1.0
    # x0 < 0 exactly inside: guided resampling fixes the sign at the marks (guidance_latent)
    signed = True

    def __init__(self, band: float = BAND, temperature: float = TEMPERATURE):
        assert band > 0 and temperature > 0, "band and temperature are positive pixel widths"
        self.band, self.temperature = band, temperature

    def encode(self, mask: Tensor) -> Tensor:
        """One-hot ``[B, K, *sp]`` in {0, 1} -> truncated, normalised SDF in [-1, 1] (float32, on
        the mask's device). Computed on the CPU with scipy, one channel at a time."""
        masks = mask.detach().float().cpu().numpy() > 0.5
        phi = np.stack([[signed_distance(channel) for channel in item] for item in masks])
        x0 = np.clip(phi / self.band, -1.0, 1.0).astype(np.float32)
        return torch.from_numpy(x0).to(mask.device)

    def decode(self, x0: Tensor) -> Tensor:
        """x0 -> probabilities ``[B, K, *sp]`` in [0, 1]; p > 1/2 exactly where x0 < 0."""
        p = torch.sigmoid(-self.band * x0.float() / self.temperature)
        return renormalise(p)

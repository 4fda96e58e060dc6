"""The orthonormal Haar wavelet transform in 2D and 3D, as pure functions with an exact inverse.

One level along one axis maps each pair of neighbours (x_{2i}, x_{2i+1}) to

    a_i = (x_{2i} + x_{2i+1}) / sqrt(2),   d_i = (x_{2i} - x_{2i+1}) / sqrt(2),

an orthogonal map, so the inverse is x_{2i} = (a_i + d_i) / sqrt(2), x_{2i+1} = (a_i - d_i) /
sqrt(2). Applied along every spatial axis in turn, one level turns ``[B, C, *sp]`` into the
2^d sub-bands at half resolution ``[B, C 2^d, *sp / 2]`` (d = 2: LL, LH, HL, HH; d = 3: LLL ...
HHH, the 8 coefficients of WDM, Friedrich et al. 2024, Sec. 2). Channel ``c 2^d + b`` holds band b
of input channel c, where b's binary digits are the high/low choice per axis (first axis most
significant): band 0 is the low-pass (average) band.

``levels`` > 1 transforms every band again (a full wavelet packet), so ``levels`` = L gives
``[B, C 2^(d L), *sp / 2^L]``; each level is orthonormal, hence so is the whole transform: the
sum of squares is kept and white Gaussian noise stays white Gaussian noise of the same variance
(which is why diffusing the coefficients is a valid Gaussian diffusion of the volume).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffuseg.errors import DataError

_R2 = 1.0 / math.sqrt(2.0)


def haar_forward(x: Tensor, levels: int = 1) -> Tensor:
    """``[B, C, *sp]`` -> ``[B, C 2^(d levels), *sp / 2^levels]`` (module docstring)."""
    for _ in range(levels):
        x = _one_level(x)
    return x


def haar_inverse(coefficients: Tensor, levels: int = 1) -> Tensor:
    """The exact inverse of ``haar_forward`` with the same ``levels``."""
    for _ in range(levels):
        coefficients = _one_level_inverse(coefficients)
    return coefficients


def _one_level(x: Tensor) -> Tensor:
    spatial_dims = x.ndim - 2
    odd = [s for s in x.shape[2:] if s % 2]
    if odd:
        raise DataError(f"the Haar transform needs even spatial sizes; got {list(x.shape[2:])}; "
                        "pad the volume to a multiple of 2^levels")
    for axis in range(2, 2 + spatial_dims):
        pairs = x.unflatten(axis, (x.shape[axis] // 2, 2))
        even, odd_ = pairs.select(axis + 1, 0), pairs.select(axis + 1, 1)
        low, high = (even + odd_) * _R2, (even - odd_) * _R2
        x = torch.stack([low, high], dim=2).flatten(1, 2)  # channel c * 2 + band
    return x


def _one_level_inverse(c: Tensor) -> Tensor:
    spatial_dims = c.ndim - 2
    if c.shape[1] % (2 ** spatial_dims):
        raise DataError(f"{c.shape[1]} coefficient channels are not a multiple of "
                        f"2^{spatial_dims}; pass the output of haar_forward")
    for axis in reversed(range(2, 2 + spatial_dims)):
        pairs = c.unflatten(1, (c.shape[1] // 2, 2))
        low, high = pairs[:, :, 0], pairs[:, :, 1]
        even, odd = (low + high) * _R2, (low - high) * _R2
        c = torch.stack([even, odd], dim=axis + 1).flatten(axis, axis + 1)
    return c

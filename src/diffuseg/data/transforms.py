"""Intensity normalisation.

The same `normalize_intensity` runs at training and at inference, so a model always sees images on
the scale it was trained on. Training patches and their augmentation (MONAI dictionary transforms
acting on the image, the chosen mask and all raters' masks together) are in data/patches.py.
"""

from __future__ import annotations

import numpy as np

from diffuseg.errors import ConfigError


def normalize_intensity(image: np.ndarray, mode: str, ct_window: tuple[float, float] = (-1000, 400)
                        ) -> np.ndarray:
    """Per-channel normalisation of ``[C, *spatial]``.

    zscore: (x - mean) / std per channel (std floored at 1e-6); ct: clip to the HU window, then
    scale to [-1, 1]; minmax: scale each channel's range to [0, 1]; none: unchanged.

    zscore and minmax work on x / 2^e, 2^e the power of two nearest above each channel's largest
    |x| (the floors divided alike): the scaling is exact in float32 (only the exponent changes),
    so the result is the one of the formula, bit for bit on ordinary images, and sums, squares and
    ranges of values up to float32's 3.4e38 cannot overflow (values of 1e37 gave NaN maps and an
    empty consensus). No float64 copy of the volume is made.
    """
    image = image.astype(np.float32, copy=True)
    axes = tuple(range(1, image.ndim))
    if mode in ("zscore", "minmax"):
        scale = _power_of_two_above(image, axes)
        image /= scale
        floor = np.float32(1e-6) / scale
        if mode == "zscore":
            mean = image.mean(axis=axes, keepdims=True)
            std = image.std(axis=axes, keepdims=True)
            return (image - mean) / np.maximum(std, floor)
        lo = image.min(axis=axes, keepdims=True)
        hi = image.max(axis=axes, keepdims=True)
        return (image - lo) / np.maximum(hi - lo, floor)
    if mode == "ct":
        lo, hi = ct_window
        return (np.clip(image, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
    if mode == "none":
        return image
    raise ConfigError(f"data.intensity='{mode}' is unknown; use zscore, ct, minmax or none")


def _power_of_two_above(image: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Per channel 2^(e-1) with max |x| = m 2^e, 0.5 <= m < 1 (``frexp``), so that x / 2^(e-1)
    lies in [-2, 2]; 2^(e-1) <= 2^127 is a float32 even for the largest float32 (1 for an empty
    or all-zero channel)."""
    peak = np.abs(image).max(axis=axes, keepdims=True, initial=0.0)
    _, exponent = np.frexp(peak)
    return np.where(peak > 0, np.ldexp(np.float32(1.0), exponent - 1), np.float32(1.0)).astype(
        np.float32)

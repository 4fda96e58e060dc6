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
    """
    image = image.astype(np.float32, copy=True)
    axes = tuple(range(1, image.ndim))
    if mode == "zscore":
        mean = image.mean(axis=axes, keepdims=True)
        std = image.std(axis=axes, keepdims=True)
        return (image - mean) / np.maximum(std, 1e-6)
    if mode == "ct":
        lo, hi = ct_window
        return (np.clip(image, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
    if mode == "minmax":
        lo = image.min(axis=axes, keepdims=True)
        hi = image.max(axis=axes, keepdims=True)
        return (image - lo) / np.maximum(hi - lo, 1e-6)
    if mode == "none":
        return image
    raise ConfigError(f"data.intensity='{mode}' is unknown; use zscore, ct, minmax or none")

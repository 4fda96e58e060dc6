"""Intensity normalisation and training augmentation (MONAI dictionary transforms).

The same `normalize_intensity` runs at training and at inference, so a model always sees images on
the scale it was trained on. Spatial transforms act on the image, the chosen mask and all raters'
masks together, so the raters stay aligned with the image and with each other.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import (
    Compose,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from diffuseg.config import DataConfig
from diffuseg.errors import ConfigError

SPATIAL_KEYS = ("image", "mask", "raters", "foreground")


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


def training_transforms(config: DataConfig, spatial_dims: int, seed: int) -> Compose:
    """Pad to the patch, crop favouring foreground (2:1), then flips, a small affine and
    intensity jitter when ``config.augment``."""
    patch = list(config.patch_size)
    keys = list(SPATIAL_KEYS)
    steps = [
        SpatialPadd(keys=keys, spatial_size=patch),
        RandCropByPosNegLabeld(keys=keys, label_key="foreground", spatial_size=patch, pos=2,
                               neg=1, num_samples=1, allow_smaller=False),
    ]
    if config.augment:
        steps += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis)
                  for axis in range(spatial_dims)]
        steps += [
            RandAffined(keys=keys, prob=0.3, rotate_range=[0.26] * (1 if spatial_dims == 2 else 3),
                        scale_range=[0.1] * spatial_dims,
                        mode=["bilinear", "nearest", "nearest", "nearest"],
                        padding_mode="zeros"),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
            RandGaussianNoised(keys="image", std=0.05, prob=0.2),
        ]
    transform = Compose(steps)
    transform.set_random_state(seed=seed)
    return transform

"""How much memory a sampling pass needs, checked against ``DIFFUSEG_MAX_WORK_BYTES``
(``diffuseg.core.memory``) before sampling starts."""

from __future__ import annotations

from collections.abc import Callable

from diffuseg.core.memory import gib, max_work_bytes
from diffuseg.errors import ConfigError
from diffuseg.sampling.windows import MAX_ITEMS

# full-size float32 tensors per hypothesis and channel while sampling, an upper count from a
# ddpm step: x_t, the condition, their concatenation (2), x0_hat, x_{t-1}, the noise, the blended
# output; the 192^3 patch row of docs/performance.md (4.4 GB) held about 5 beside one call
STATE_COPIES = 8


def sampling_bytes(n_samples: int, voxels: int, width: int, *, window_voxels: int | None = None,
                   channels: int = 1) -> int:
    """A rough upper estimate of sampling's memory: the activations of one denoiser call (all
    hypotheses at once, or at most ``windows.MAX_ITEMS`` crops of ``window_voxels`` when the
    image is sampled in windows) plus the state, ``STATE_COPIES`` full-size copies per
    hypothesis of ``channels`` channels."""
    items = n_samples if window_voxels is None else min(n_samples, MAX_ITEMS)
    call_voxels = voxels if window_voxels is None else window_voxels
    activations = items * max(width, 1) * call_voxels * 4 * 2
    return activations + n_samples * max(channels, 1) * voxels * 4 * STATE_COPIES


def check_sampling_memory(n_samples: int, voxels: int, width: int, *,
                          window_voxels: int | None = None, channels: int = 1) -> None:
    """Refuse a sampling pass that would not fit DIFFUSEG_MAX_WORK_BYTES (``sampling_bytes``)."""
    _check(n_samples, voxels, lambda n: sampling_bytes(n, voxels, width,
                                                       window_voxels=window_voxels,
                                                       channels=channels))


# float32-sized copies per sample, class and voxel of a volume segmented slice by slice, at the
# peak of ``core.ensemble.summarise``: the stacked samples (1), their labels (int64: 2), and the
# per-sample entropy of the BALD score (the clamped copy, xlogy(p, p), 1 - p, xlogy(1 - p, 1 - p)
# and their sum: 5)
SUMMARY_COPIES = 8


def slices_bytes(n_samples: int, slice_voxels: int, slices: int, width: int, *,
                 channels: int = 1, classes: int = 1) -> int:
    """A 2D run on a volume (``diffuseg.inference.slices``): one slice's sampling pass
    (``sampling_bytes``) plus the stacked samples of every slice and the maps formed from them,
    ``SUMMARY_COPIES`` float32 copies per sample and class."""
    volume = slice_voxels * slices
    return (sampling_bytes(n_samples, slice_voxels, width, channels=channels)
            + n_samples * max(classes, 1) * volume * 4 * SUMMARY_COPIES)


def check_slices_memory(n_samples: int, slice_voxels: int, slices: int, width: int, *,
                        channels: int = 1, classes: int = 1) -> None:
    """Refuse a slice-by-slice pass that would not fit DIFFUSEG_MAX_WORK_BYTES
    (``slices_bytes``)."""
    _check(n_samples, slice_voxels * slices,
           lambda n: slices_bytes(n, slice_voxels, slices, width, channels=channels,
                                  classes=classes))


def _check(n_samples: int, voxels: int, need_for: Callable[[int], int]) -> None:
    need, limit = need_for(n_samples), max_work_bytes()
    if need > limit:
        fit = next((n for n in range(n_samples - 1, 0, -1) if need_for(n) <= limit), 0)
        fix = f"use --samples {fit} or fewer" if fit >= 1 else "crop or downsample the image"
        raise ConfigError(f"{n_samples} samples of a {voxels}-voxel image need about {gib(need)}, "
                          f"over the {gib(limit)} budget (DIFFUSEG_MAX_WORK_BYTES); {fix}, or "
                          "raise the budget")

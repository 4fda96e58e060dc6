"""Memory budgets (bytes; environment variables override the defaults), checked before work:

- ``DIFFUSEG_MAX_IMAGE_BYTES`` (2 GiB): the largest image a reader decodes, counted as the float32
  array it returns (all channels). Checked from the file's header before any pixel is read.
- ``DIFFUSEG_MAX_WORK_BYTES`` (16 GiB): the estimated memory of one sampling pass
  (``sampling_bytes``), checked before sampling starts.
"""

from __future__ import annotations

import os

from diffuseg.errors import ConfigError

DEFAULT_MAX_IMAGE_BYTES = 2 * 2**30
DEFAULT_MAX_WORK_BYTES = 16 * 2**30


def budget(name: str, default: int) -> int:
    """A byte budget from environment variable ``name`` (a positive integer), else ``default``."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        raise ConfigError(f"environment variable {name}={raw!r} must be a number of bytes, "
                          f"e.g. {default}") from None
    if value < 1:
        raise ConfigError(f"environment variable {name}={raw!r} must be a positive byte count")
    return value


def max_image_bytes() -> int:
    return budget("DIFFUSEG_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES)


def max_work_bytes() -> int:
    return budget("DIFFUSEG_MAX_WORK_BYTES", DEFAULT_MAX_WORK_BYTES)


def gib(n: float) -> str:
    """Bytes for a message: MiB below one GiB."""
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


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
    from diffuseg.sampling.windows import MAX_ITEMS

    items = n_samples if window_voxels is None else min(n_samples, MAX_ITEMS)
    call_voxels = voxels if window_voxels is None else window_voxels
    activations = items * max(width, 1) * call_voxels * 4 * 2
    return activations + n_samples * max(channels, 1) * voxels * 4 * STATE_COPIES


def check_sampling_memory(n_samples: int, voxels: int, width: int, *,
                          window_voxels: int | None = None, channels: int = 1) -> None:
    """Refuse a sampling pass that would not fit DIFFUSEG_MAX_WORK_BYTES (``sampling_bytes``)."""
    def need_for(n: int) -> int:
        return sampling_bytes(n, voxels, width, window_voxels=window_voxels, channels=channels)

    need, limit = need_for(n_samples), max_work_bytes()
    if need > limit:
        fit = next((n for n in range(n_samples - 1, 0, -1) if need_for(n) <= limit), 0)
        fix = f"use --samples {fit} or fewer" if fit >= 1 else "crop or downsample the image"
        raise ConfigError(f"{n_samples} samples of a {voxels}-voxel image need about {gib(need)}, "
                          f"over the {gib(limit)} budget (DIFFUSEG_MAX_WORK_BYTES); {fix}, or "
                          "raise the budget")

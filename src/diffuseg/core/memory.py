"""Memory budgets (bytes; environment variables override the defaults), checked before work:

- ``DIFFUSEG_MAX_IMAGE_BYTES`` (2 GiB): the largest image a reader decodes, counted as the float32
  array it returns (all channels). Checked from the file's header before any pixel is read.
- ``DIFFUSEG_MAX_WORK_BYTES`` (16 GiB): the estimated memory of one sampling pass
  (``diffuseg.sampling.memory.sampling_bytes``), checked before sampling starts.
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

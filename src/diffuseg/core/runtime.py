"""Where and in which precision the networks run: device choice and autocast.

Shared by training and inference (the predictor does not import the trainer). Measurements behind
the ``precision="auto"`` choice: docs/performance.md.

``DIFFUSEG_PRECISION`` (``fp32``, ``bf16`` or ``auto``), when set, replaces the default ``auto``
wherever it is resolved (``autocast_dtype``): every command, the service and the tests. An explicit
choice (``train.precision=fp32``, ``Predictor(precision="bf16")``) is kept.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from diffuseg.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but CUDA is not available; use cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not valid; use auto, cpu, cuda or cuda:N") from None


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: there bf16 autocast is about 2x faster; without them (AVX2 only) bf16
    convolutions are emulated and were measured 30x slower than fp32 (docs/performance.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISION_VARIABLE = "DIFFUSEG_PRECISION"
PRECISION_CHOICES = ("fp32", "bf16", "auto")


def default_precision() -> str:
    """What ``precision="auto"`` stands for: ``DIFFUSEG_PRECISION`` when set, else ``auto``."""
    value = os.environ.get(PRECISION_VARIABLE, "").strip()
    if not value:
        return "auto"
    if value not in PRECISION_CHOICES:
        raise ConfigError(f"environment variable {PRECISION_VARIABLE}={value!r} is not a "
                          f"precision; use one of {', '.join(PRECISION_CHOICES)} or unset it")
    return value


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: ``DIFFUSEG_PRECISION`` when set (``default_precision``), else bf16 on CUDA where
    supported (else fp16), bf16 on CPUs with native bf16, else fp32 (None: no autocast)."""
    if precision == "auto":
        precision = default_precision()
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``; a no-op context for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


__all__ = ["PRECISION_VARIABLE", "autocast", "autocast_dtype", "cpu_has_native_bf16",
           "default_precision", "resolve_device"]

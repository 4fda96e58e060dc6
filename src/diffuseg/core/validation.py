"""Checks at the boundary: config values and the numbers of the command line.

Every config value is checked for type, finiteness and range when the config is built, before
any training step (docs/validation.md). The ranges are declared beside each field in
``diffuseg.config`` (``ranged(default, low, high, length=..., pattern=...)``, kept in the field's
metadata) and checked by one routine, ``check_config_values``; a tuple field's range applies to
each item. A numeric field without a range is still refused when not finite (and a test asks for
every numeric field to declare one).

The numbers given on the command line (seeds, counts, devices) are checked here too. JSON files
that users write: ``diffuseg.core.json_files``; memory budgets: ``diffuseg.core.memory``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from diffuseg.errors import ConfigError

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed and numpy accept 0..2**63-1 on every platform
MAX_SAMPLES = 10_000  # --samples / sample.n_samples; the memory estimate usually binds first
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d{1,3})?|mps)$")


@dataclass(frozen=True)
class Range:
    """A closed or open interval; None is unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def closed(low: float | None, high: float | None) -> Range:
    return Range(low, high)


MAX_T = 100_000  # process.T, and so the sampler steps
BIG = 10**9  # step counts: far beyond any run, small enough to stay exact in float64


def check_config_values(config: Any, where: str = "") -> None:
    """Check every leaf of a config dataclass against what its field declares (``range``,
    ``length``, ``pattern`` in the field's metadata; ``config.ranged``); module doc."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_config_values(value, path)
        elif isinstance(value, tuple):
            length = f.metadata.get("length")
            if length is not None and len(value) not in length:
                raise ConfigError(f"config '{path}'={list(value)} has {len(value)} entries; "
                                  f"give {_count(length)}")
            for item in value:
                check_value(path, item, f.metadata)
        elif isinstance(value, dict):
            check_finite_tree(value, path)
        else:
            check_value(path, value, f.metadata)


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to about ``limit`` characters (for error messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _count(length: Range) -> str:
    return f"{length.low:g}" if length.low == length.high else f"{length.low:g} to {length.high:g}"


def check_value(path: str, value: Any, declared: Any = None) -> None:
    """One value against its field's declared ``range`` / ``pattern``; any number must be
    finite."""
    declared = declared or {}
    if isinstance(value, str) and "pattern" in declared:
        pattern, valid = declared["pattern"]
        if not pattern.match(value):
            raise ConfigError(f"config '{path}'={show(value)} is not valid; use {valid}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise ConfigError(f"config '{path}'={show(value)} must be a finite number")
    limits = declared.get("range")
    if limits is not None and value not in limits:
        raise ConfigError(f"config '{path}'={show(value)} is out of range; valid: {limits}")


def check_finite_tree(value: Any, path: str) -> None:
    """No NaN/Inf anywhere in a nested dict/list (method.options)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config '{path}'={show(value)} must be a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite_tree(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_finite_tree(item, path)


# ---------------------------------------------------------------------------------------------
# CLI numbers


def check_seed(seed: int, option: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{option} {seed} is out of range; use 0..2**63-1 ({SEED_MAX})")
    return seed


def check_count(value: int | None, option: str, high: int) -> None:
    if value is not None and not 1 <= value <= high:
        raise ConfigError(f"{option} {value} is out of range; use 1..{high}")


def check_device(name: str, option: str = "--device") -> str:
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise ConfigError(f"{option} {show(name)} is not valid; use auto, cpu, cuda, cuda:N or mps")
    return name


def check_predict_options(samples: int | None, steps: int | None, seed: int, device: str) -> None:
    """The numbers of ``diffuseg predict`` (the run's process.T bounds steps later)."""
    check_count(samples, "--samples", MAX_SAMPLES)
    check_count(steps, "--steps", MAX_T)
    check_seed(seed)
    check_device(device)

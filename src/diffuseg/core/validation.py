"""Checks at the boundary: config values, JSON files, CLI numbers and memory budgets.

Every config value is checked for type, finiteness and range when the config is built, before
any training step (docs/validation.md lists the ranges). The ranges live in one table,
``CONFIG_RANGES``, keyed by the dotted path of the field (``train.lr``) and checked by one routine,
``check_config_values``; a tuple field's range applies to each item. A numeric field missing from
the table is still refused when not finite (and a test asks for every field to be listed).

JSON files (configs, dataset.json, splits.json) are read by ``read_json``: UTF-8 (a BOM is
allowed), at most ``MAX_JSON_BYTES``, nesting at most ``MAX_JSON_DEPTH`` deep, no NaN/Infinity.

Memory budgets (bytes; environment variables override the defaults):

- ``DIFFUSEG_MAX_IMAGE_BYTES`` (2 GiB): the largest image a reader decodes, counted as the float32
  array it returns (all channels). Checked from the file's header before any pixel is read.
- ``DIFFUSEG_MAX_WORK_BYTES`` (16 GiB): the estimated activation memory of one sampling pass,
  ``samples x max(width, classes) x voxels x 4 bytes x 2``, checked before sampling starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffuseg.errors import ConfigError, DiffusegError

MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 16 * 2**20
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed and numpy accept 0..2**63-1 on every platform
MAX_SAMPLES = 10_000  # --samples / sample.n_samples; the memory estimate usually binds first
DEFAULT_MAX_IMAGE_BYTES = 2 * 2**30
DEFAULT_MAX_WORK_BYTES = 16 * 2**30
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


BIG = 10**9  # step counts: far beyond any run, small enough to stay exact in float64
CONFIG_RANGES: dict[str, Range] = {
    "spatial_dims": closed(2, 3),
    "in_channels": closed(1, 64),
    "num_classes": closed(1, 1000),
    "process.T": closed(1, 100_000),
    "process.beta_start": Range(0, 1, low_open=True, high_open=True),
    "process.beta_end": Range(0, 1, low_open=True, high_open=True),
    "network.channels": closed(1, 4096),
    "network.num_res_blocks": closed(1, 16),
    "network.norm_groups": closed(1, 4096),
    "network.dropout": Range(0, 1, high_open=True),  # 1 would drop every activation
    "network.num_heads": closed(1, 256),
    "data.patch_size": closed(1, 4096),
    "data.ct_window": closed(-100_000, 100_000),  # HU; low < high checked too
    "data.spacing": Range(0, 1000, low_open=True),  # mm
    "data.synthetic_ratio": closed(0, 1),  # a share of the training examples
    "data.foreground_fraction": closed(0, 1),  # a share of the patches
    "data.num_workers": closed(0, 256),  # DataLoader worker processes
    "train.max_steps": closed(1, BIG),
    "train.max_minutes": Range(0, 10**7, low_open=True),
    "train.batch_size": closed(1, 4096),
    "train.lr": Range(0, 1, low_open=True),  # AdamW; above 1 diverges for any network here
    "train.weight_decay": closed(0, 1),
    "train.warmup_steps": closed(0, BIG),
    "train.ema_decay": Range(0, 1, high_open=True),  # 1 would never move the EMA weights
    "train.grad_clip": Range(0, 10**6, low_open=True),
    "train.val_every": closed(1, BIG),
    "train.val_cases": closed(0, 100_000),
    "train.val_samples": closed(1, 1000),
    "train.val_steps": closed(1, 100_000),
    "train.checkpoint_every": closed(1, BIG),
    "train.seed": closed(0, SEED_MAX),
    "sample.n_samples": closed(1, MAX_SAMPLES),
    "sample.steps": closed(1, 100_000),
    "sample.eta": closed(0, 1),
    "sample.resample_jumps": closed(1, 100),  # guidance.MAX_JUMPS; each costs a network call
}
LENGTHS: dict[str, Range] = {  # number of items of tuple fields
    "network.channels": closed(1, 8),
    "network.attention_levels": closed(1, 8),
    "data.ct_window": closed(2, 2),
    "data.spacing": closed(2, 3),
}
STRING_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "train.device": (DEVICE_PATTERN, "auto, cpu, cuda, cuda:N or mps"),
}


def check_config_values(config: Any, where: str = "") -> None:
    """Check every leaf of a config dataclass against CONFIG_RANGES (module doc)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_config_values(value, path)
        elif isinstance(value, tuple):
            if path in LENGTHS and len(value) not in LENGTHS[path]:
                raise ConfigError(f"config '{path}'={list(value)} has {len(value)} entries; "
                                  f"give {_count(LENGTHS[path])}")
            for item in value:
                check_value(path, item)
        elif isinstance(value, dict):
            check_finite_tree(value, path)
        else:
            check_value(path, value)


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to about ``limit`` characters (for error messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _count(length: Range) -> str:
    return f"{length.low:g}" if length.low == length.high else f"{length.low:g} to {length.high:g}"


def check_value(path: str, value: Any) -> None:
    if isinstance(value, str) and path in STRING_PATTERNS:
        pattern, valid = STRING_PATTERNS[path]
        if not pattern.match(value):
            raise ConfigError(f"config '{path}'={show(value)} is not valid; use {valid}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise ConfigError(f"config '{path}'={show(value)} must be a finite number")
    limits = CONFIG_RANGES.get(path)
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
# JSON


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (JSON has no NaN/Infinity)")


def loads(text: str, where: str, error: type[DiffusegError] = ConfigError) -> Any:
    """Parse JSON text; refuse NaN/Infinity and nesting deeper than MAX_JSON_DEPTH."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise error(f"{where} nests deeper than {MAX_JSON_DEPTH} levels; flatten it") from None
    except ValueError as err:  # JSONDecodeError is a ValueError
        reason = " ".join(str(err).split())
        raise error(f"{where} is not valid JSON ({reason}); fix the syntax") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise error(f"{where} nests deeper than {MAX_JSON_DEPTH} levels; flatten it")
    return data


def json_depth(data: Any) -> int:
    """Nesting depth of lists/dicts (a scalar is 0), without recursion."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((v, depth) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def read_json(path: str | Path, what: str = "config file",
              error: type[DiffusegError] = ConfigError, *, mapping: bool = True) -> Any:
    """Read a JSON file that a user wrote: one-line errors for a missing, huge, non-UTF-8,
    malformed, too deeply nested or (with ``mapping``) non-object file."""
    path = Path(path)
    where = f"{what} '{path}'"
    if not path.is_file():
        raise error(f"{where} does not exist; check the path")
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{where} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit for "
                        "JSON files; is it the right file?")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{where} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise error(f"{where} cannot be read ({err.strerror}); check its permissions") from None
    data = loads(text, where, error)
    if mapping and not isinstance(data, dict):
        raise error(f"{where} must hold a JSON object {{...}}, got {_json_type(data)}")
    return data


def _json_type(data: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(data), type(data).__name__)


# ---------------------------------------------------------------------------------------------
# CLI numbers and memory budgets


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
    check_count(steps, "--steps", CONFIG_RANGES["process.T"].high)
    check_seed(seed)
    check_device(device)


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


def quiet_library_logs() -> None:
    """For the CLI: nibabel's header repairs ("pixdim[1,2,3] should be positive; setting to
    abs") and pydicom's "Invalid value for VR" warnings go to stderr beside diffuseg's one-line
    error; the files they describe are refused by diffuseg's own checks, or read as repaired."""
    logging.getLogger("nibabel.global").setLevel(logging.ERROR + 5)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\..*")

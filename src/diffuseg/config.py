"""Typed configuration: one dataclass per component; the fields are the constructor arguments.

A run's whole configuration is a `RunConfig`, written to `config.json` in the run folder, and
read back from it alone. Unknown keys are refused with the closest valid name, so that a typo never
passes silently. Overrides use dotted paths: ``train.max_steps=200``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from diffuseg.errors import ConfigError


@dataclass
class ProcessConfig:
    kind: Literal["gaussian", "bernoulli"] = "gaussian"
    schedule: Literal["linear", "cosine"] = "cosine"  # cosine: Nichol & Dhariwal 2021, eq. 17
    T: int = 1000  # number of diffusion steps at training time
    prediction: Literal["eps", "x0", "v"] = "x0"  # what the network predicts (x0 suits masks)
    beta_start: float = 1e-4  # linear schedule only (Ho et al. 2020)
    beta_end: float = 0.02  # linear schedule only


@dataclass
class NetworkConfig:
    channels: tuple[int, ...] = (32, 64, 128)  # feature width at each resolution level
    num_res_blocks: int = 1  # residual blocks per level
    attention_levels: tuple[bool, ...] = (False, False, True)  # self-attention per level
    norm_groups: int = 8  # GroupNorm groups
    dropout: float = 0.0  # inside residual blocks (MC dropout uses > 0)
    num_heads: int = 4  # self-attention heads


@dataclass
class MethodConfig:
    name: str = "ddpm"  # which paradigm; see diffuseg.methods.METHODS
    target: Literal["mask", "sdf"] = "mask"  # what the Gaussian methods diffuse
    options: dict[str, Any] = field(default_factory=dict)  # method-specific (documented per method)


@dataclass
class DataConfig:
    patch_size: tuple[int, ...] = (64, 64)  # training crop; also the inference window
    rater_mode: Literal["sample", "all", "majority"] = "sample"  # one random rater per example
    intensity: Literal["zscore", "ct", "minmax", "none"] = "zscore"
    ct_window: tuple[float, float] = (-1000.0, 400.0)  # HU window when intensity == "ct"
    spacing: tuple[float, ...] | None = None  # resample 3D data to this spacing (mm); None keeps
    augment: bool = True  # flips, small rotations and intensity jitter
    foreground_fraction: float = 0.33  # share of patches centred on a rater's foreground (nnU-Net)
    stream: bool | None = None  # read patches from preprocessed .npy files; None: when > 1 GB
    num_workers: int = 2  # DataLoader worker processes when streaming (0: in the main process)


@dataclass
class TrainConfig:
    max_steps: int = 2000  # optimiser steps
    max_minutes: float | None = None  # wall-clock budget; stops early when reached
    batch_size: int = 8
    lr: float = 2e-4  # AdamW learning rate
    weight_decay: float = 1e-4
    warmup_steps: int = 100  # linear warm-up of the learning rate
    ema_decay: float = 0.999  # EMA of weights used for sampling
    grad_clip: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CPU, fp16 on CUDA
    val_every: int = 200  # steps between validations (progress.png refreshed then)
    val_cases: int = 8  # validation images per validation
    val_samples: int = 4  # samples per validation image
    val_steps: int = 10  # DDIM steps at validation
    checkpoint_every: int = 200  # steps between atomic checkpoints
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class SampleConfig:
    n_samples: int = 16
    steps: int = 10
    sampler: Literal["ddim", "ddpm", "dpm_solver_pp"] = "ddim"  # dpm_solver_pp: DPM-Solver++(2M)
    eta: float = 0.0  # DDIM stochasticity; 0 is deterministic given x_T


@dataclass
class RunConfig:
    spatial_dims: int = 2
    in_channels: int = 1  # image channels
    num_classes: int = 1  # 1 = binary foreground; K > 1 = one-hot over K labels incl. background
    process: ProcessConfig = field(default_factory=ProcessConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> RunConfig:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims={self.spatial_dims} is not supported; use 2 or 3")
        if len(self.data.patch_size) != self.spatial_dims:
            raise ConfigError(
                f"data.patch_size={list(self.data.patch_size)} has {len(self.data.patch_size)} "
                f"entries but spatial_dims={self.spatial_dims}; give one size per spatial axis"
            )
        levels = len(self.network.channels)
        if len(self.network.attention_levels) != levels:
            raise ConfigError(
                f"network.attention_levels has {len(self.network.attention_levels)} entries but "
                f"network.channels has {levels}; give one true/false per level"
            )
        factor = 2 ** (levels - 1)
        if any(p % factor for p in self.data.patch_size):
            raise ConfigError(
                f"data.patch_size={list(self.data.patch_size)} must be divisible by {factor} "
                f"(2^(levels-1) for {levels} network levels); pick a multiple of {factor}"
            )
        for name, value in (("sample.steps", self.sample.steps), ("process.T", self.process.T)):
            if value < 1:
                raise ConfigError(f"{name}={value} must be at least 1")
        if self.sample.steps > self.process.T:
            raise ConfigError(
                f"sample.steps={self.sample.steps} exceeds process.T={self.process.T}; "
                f"use at most {self.process.T}"
            )
        if not 0.0 <= self.data.foreground_fraction <= 1.0 or self.data.num_workers < 0:
            raise ConfigError(
                f"data.foreground_fraction={self.data.foreground_fraction} must lie in [0, 1] "
                f"and data.num_workers={self.data.num_workers} must be >= 0"
            )
        if self.sample.n_samples < 1:
            raise ConfigError(f"sample.n_samples={self.sample.n_samples} must be at least 1")
        if self.num_classes < 1 or self.num_classes == 2:
            raise ConfigError(
                f"num_classes={self.num_classes}: use 1 for a binary mask, or K >= 3 labels "
                "(including background) for multi-class"
            )
        return self


# ---------------------------------------------------------------------------------------------
# (de)serialisation


def to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, refusing unknown keys with a suggestion."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where or 'root'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {sorted(names)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config '{path}'={value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config '{path}'={value!r} must be a list")
        return tuple(_coerce(args[0], v, path) for v in value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"config '{path}'={value!r} must be true or false")
        return value
    if hint in (int, float):
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config '{path}'={value!r} must be a {hint.__name__}") from None
        if hint is int and float(value) != number:
            raise ConfigError(f"config '{path}'={value!r} must be a whole number")
        return number
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a config dict; values are parsed as JSON when possible."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        path, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        keys = path.strip().split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{key}' is not a config section")
        node[keys[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist; check the path")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"config file '{path}' is not valid JSON: {err}") from None
    data = apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data).validate()


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")

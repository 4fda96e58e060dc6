"""Typed configuration: one dataclass per component; the fields are the constructor arguments.

A run's whole configuration is a `RunConfig`, written to `config.json` in the run folder, and
read back from it alone. Unknown keys are refused with the closest valid name, so that a typo never
passes silently. Overrides use dotted paths: ``train.max_steps=200``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from diffuseg.core.json_files import MAX_JSON_DEPTH, json_depth, read_json
from diffuseg.core.validation import (
    BIG,
    DEVICE_PATTERN,
    MAX_SAMPLES,
    MAX_T,
    SEED_MAX,
    Range,
    check_config_values,
    show,
)
from diffuseg.errors import ConfigError


def ranged(default: Any, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False,
           length: tuple[int, int] | None = None,
           pattern: tuple[re.Pattern[str], str] | None = None) -> Any:
    """A field whose valid values are declared beside it: the range of a number (of each item of
    a tuple), the number of items of a tuple, or the pattern of a string (with the valid forms for
    the message). ``core.validation.check_config_values`` reads them from the field's metadata."""
    meta: dict[str, Any] = {}
    if low is not None or high is not None:
        meta["range"] = Range(low, high, low_open, high_open)
    if length is not None:
        meta["length"] = Range(*length)
    if pattern is not None:
        meta["pattern"] = pattern
    return field(default=default, metadata=meta)


@dataclass
class ProcessConfig:
    # the method declares its process (Method.process_kind); None follows it, a contradicting
    # value is refused (processes.build_process)
    kind: str | None = None  # a key of processes.PROCESSES (gaussian, bernoulli, flow)
    schedule: Literal["linear", "cosine"] = "cosine"  # cosine: Nichol & Dhariwal 2021, eq. 17
    T: int = ranged(1000, 1, MAX_T)  # number of diffusion steps at training time
    prediction: Literal["eps", "x0", "v"] = "x0"  # what the network predicts (x0 suits masks)
    # linear schedule only (Ho et al. 2020)
    beta_start: float = ranged(1e-4, 0, 1, low_open=True, high_open=True)
    beta_end: float = ranged(0.02, 0, 1, low_open=True, high_open=True)  # linear schedule only


@dataclass
class NetworkConfig:
    # feature width at each resolution level
    channels: tuple[int, ...] = ranged((32, 64, 128), 1, 4096, length=(1, 8))
    num_res_blocks: int = ranged(1, 1, 16)  # residual blocks per level
    # self-attention per level
    attention_levels: tuple[bool, ...] = ranged((False, False, True), length=(1, 8))
    norm_groups: int = ranged(8, 1, 4096)  # GroupNorm groups
    # inside residual blocks (MC dropout uses > 0)
    dropout: float = ranged(0.0, 0, 1, high_open=True)
    num_heads: int = ranged(4, 1, 256)  # self-attention heads


@dataclass
class MethodConfig:
    name: str = "ddpm"  # which paradigm; see diffuseg.methods.METHODS
    target: Literal["mask", "sdf"] = "mask"  # what the Gaussian methods diffuse
    options: dict[str, Any] = field(default_factory=dict)  # method-specific (documented per method)


@dataclass
class DataConfig:
    # training crop; also the inference window
    patch_size: tuple[int, ...] = ranged((64, 64), 1, 4096)
    # sample: one random rater per example; majority: the raters' majority; all: each image
    # once per rater in the step (batch_size x R examples; data.loader.every_rater)
    rater_mode: Literal["sample", "all", "majority"] = "sample"
    intensity: Literal["zscore", "ct", "minmax", "none"] = "zscore"
    # HU window when intensity == "ct"
    ct_window: tuple[float, float] = ranged((-1000.0, 400.0), -100_000, 100_000, length=(2, 2))
    # resample 3D data to this spacing (mm); None keeps
    spacing: tuple[float, ...] | None = ranged(None, 0, 1000, low_open=True, length=(2, 3))
    augment: bool = True  # flips, small rotations and intensity jitter
    synthetic: str | None = None  # a synthetic dataset ('diffuseg synthesize') mixed into training
    synthetic_ratio: float = ranged(0.5, 0, 1)  # share of training examples drawn from `synthetic`
    # share of patches centred on a rater's foreground (nnU-Net)
    foreground_fraction: float = ranged(0.33, 0, 1)
    stream: bool | None = None  # read patches from preprocessed .npy files; None: when > 1 GB
    # DataLoader worker processes when streaming (0: in the main process)
    num_workers: int = ranged(2, 0, 256)


@dataclass
class TrainConfig:
    max_steps: int = ranged(2000, 1, BIG)  # optimiser steps
    # budget of the whole command, validation and the final save included; continues across
    # --resume (docs/training.md)
    max_minutes: float | None = ranged(None, 0, 10**7, low_open=True)
    budget_clock: Literal["wall", "cpu"] = "wall"  # what max_minutes counts: wall clock, or this
    # process's CPU seconds (time.process_time; DataLoader workers not counted) for equal
    # budgets on a machine shared with other work
    batch_size: int = ranged(8, 1, 4096)
    lr: float = ranged(2e-4, 0, 1, low_open=True)  # AdamW learning rate
    weight_decay: float = ranged(1e-4, 0, 1)
    warmup_steps: int = ranged(100, 0, BIG)  # linear warm-up of the learning rate
    ema_decay: float = ranged(0.999, 0, 1, high_open=True)  # EMA of weights used for sampling
    grad_clip: float = ranged(1.0, 0, 10**6, low_open=True)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CPU, fp16 on CUDA
    val_every: int = ranged(200, 1, BIG)  # steps between validations (progress.png refreshed then)
    val_cases: int = ranged(8, 0, 100_000)  # validation images per validation
    val_samples: int = ranged(4, 1, 1000)  # samples per validation image
    val_steps: int = ranged(10, 1, 100_000)  # DDIM steps at validation
    checkpoint_every: int = ranged(200, 1, BIG)  # steps between atomic checkpoints
    seed: int = ranged(0, 0, SEED_MAX)
    # auto | cpu | cuda | cuda:N
    device: str = ranged("auto", pattern=(DEVICE_PATTERN, "auto, cpu, cuda, cuda:N or mps"))
    tensorboard: bool = False  # also log metrics to RUN/tensorboard/ (needs tensorboard)
    skip_nonfinite: bool = False  # skip (and count) steps with a non-finite loss/gradient
    # instead of stopping with an error
    val_minutes: float | None = None  # time cap per validation; None: 10% of max_minutes
    micro_batches: int | None = None  # split of train.batch_size into gradient-accumulated
    # parts, spread over torchrun ranks; None: one per rank
    # a model name or run folder whose weights start a new run where names and shapes match
    # (fine-tuning: 'train --init', docs/pretrained.md); None: a fresh initialisation
    init: str | None = None


@dataclass
class SampleConfig:
    n_samples: int = ranged(16, 1, MAX_SAMPLES)
    steps: int = ranged(10, 1, 100_000)
    # None: the process's default (ddim for Gaussian, ddpm for Bernoulli, euler for flow;
    # samplers.DEFAULT); a sampler the process cannot run is refused. dpm_solver_pp:
    # DPM-Solver++(2M); heun: Heun's second-order ODE step (flow)
    sampler: str | None = None  # a key of sampling.samplers.SUPPORTED
    eta: float = ranged(0.0, 0, 1)  # DDIM stochasticity; 0 is deterministic given x_T
    # guided resampling only: RePaint resamplings per step (Lugmayr et al. 2022); 1 = one pass
    resample_jumps: int = ranged(1, 1, 100)


@dataclass
class RunConfig:
    spatial_dims: int = ranged(2, 2, 3)
    in_channels: int = ranged(1, 1, 64)  # image channels
    # 1 = binary foreground; K > 1 = one-hot over K labels incl. background
    num_classes: int = ranged(1, 1, 1000)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> RunConfig:
        check_config_values(self)  # type, finiteness and range of every value (validation.py)
        _check_relations(self)
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
        if self.sample.n_samples < 1:
            raise ConfigError(f"sample.n_samples={self.sample.n_samples} must be at least 1")
        if self.num_classes < 1 or self.num_classes == 2:
            raise ConfigError(
                f"num_classes={self.num_classes}: use 1 for a binary mask, or K >= 3 labels "
                "(including background) for multi-class"
            )
        return self


def _check_relations(config: RunConfig) -> None:
    """Constraints between values that the per-key ranges cannot state."""
    low, high = config.data.ct_window
    if not low < high:
        raise ConfigError(f"config 'data.ct_window'={[low, high]} must have low < high, "
                          "e.g. [-1000, 400]")
    p = config.process
    if p.schedule == "linear" and not p.beta_start < p.beta_end:
        raise ConfigError(f"config 'process.beta_start'={p.beta_start} must be below "
                          f"process.beta_end={p.beta_end}")
    groups = config.network.norm_groups
    if any(c % groups for c in config.network.channels):
        raise ConfigError(f"config 'network.norm_groups'={groups} does not divide every width "
                          f"in network.channels={list(config.network.channels)}; use widths "
                          f"that are multiples of {groups}")
    if config.train.val_steps > p.T:
        raise ConfigError(f"config 'train.val_steps'={config.train.val_steps} exceeds "
                          f"process.T={p.T}; use at most {p.T}")


# ---------------------------------------------------------------------------------------------
# (de)serialisation


def to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, refusing unknown keys with a suggestion."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where or 'root'}' must be a mapping, got {show(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            near = difflib.get_close_matches(key, sorted(names), n=1)  # in this section first
            close = (f"{where}.{near[0]}" if where else near[0]) if near else (
                None if isinstance(value, dict) else suggest_path(path))  # then anywhere
            hint = f"; did you mean '{close}'?" if close else f"; valid keys: {sorted(names)}"
            raise ConfigError(f"unknown config key {show(path)}{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def declared(path: str) -> dict[str, Any]:
    """What the field at dotted ``path`` declares (``ranged``); empty when nothing or unknown."""
    cls: Any = RunConfig
    *parents, name = path.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(cls):
            return {}
    match = [f for f in dataclasses.fields(cls) if f.name == name]
    return dict(match[0].metadata) if match else {}


def value_ranges(cls: type = None, prefix: str = "") -> dict[str, Range]:
    """Dotted path -> the range declared beside each ranged numeric field (for tests and docs)."""
    cls = cls or RunConfig
    out: dict[str, Range] = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(value_ranges(hint, f"{prefix}{f.name}."))
        elif "range" in f.metadata:
            out[f"{prefix}{f.name}"] = f.metadata["range"]
    return out


def config_paths(cls: type = None, prefix: str = "") -> list[str]:
    """Every dotted key of ``RunConfig`` (``train.batch_size``, ...)."""
    cls = cls or RunConfig
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            paths += config_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            paths.append(f"{prefix}{f.name}")
    return paths


def suggest_path(path: str) -> str | None:
    """The closest full dotted key to ``path``: by the whole path, else by its last part
    (``batch_size`` -> ``train.batch_size``)."""
    paths = config_paths()
    close = difflib.get_close_matches(path, paths, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaf = path.rsplit(".", 1)[-1]
    leaves = {p.rsplit(".", 1)[-1]: p for p in paths}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.7)
    return leaves[close[0]] if close else None


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
            raise ConfigError(f"config '{path}'={show(value)} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config '{path}'={show(value)} must be a list")
        if Ellipsis not in args and len(value) != len(args):
            raise ConfigError(f"config '{path}'={show(value)} must be a list of {len(args)} values")
        return tuple(_coerce(args[0], v, path) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config '{path}'={show(value)} must be an object {{...}}")
        return value
    if hint is str:
        if not isinstance(value, str):
            pattern = declared(path).get("pattern")
            valid = pattern[1] if pattern else "a string"
            raise ConfigError(f"config '{path}'={show(value)} is not valid; use {valid}")
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"config '{path}'={show(value)} must be true or false")
        return value
    if hint in (int, float):
        kind = "an integer" if hint is int else "a number"
        if isinstance(value, bool):
            raise ConfigError(f"config '{path}'={show(value)} must be {kind}, not true/false")
        try:
            number = hint(value)
            whole = hint is float or float(value) == number
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"config '{path}'={show(value)} must be {kind} (finite)") from None
        if not whole:
            raise ConfigError(f"config '{path}'={show(value)} must be a whole number")
        return number
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a config dict; values are parsed as JSON when possible."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {show(item)} must look like section.key=value")
        path, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        except RecursionError:
            raise ConfigError(f"override {show(path)} nests too deeply; flatten it") from None
        if json_depth(value) > MAX_JSON_DEPTH:
            raise ConfigError(f"override {show(path)} nests too deeply; flatten the value")
        node = data
        keys = path.strip().split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {show(item)}: {show(key)} is not a config section")
        node[keys[-1]] = value
    return data


def merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, recursively for nested sections."""
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON config file as a dict: an object, UTF-8, not too deep (``core.json_files.read_json``),
    its numbers finite (``check_file_values``); otherwise a one-line ConfigError."""
    data = read_json(path, "config file")
    check_file_values(data, path)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                defaults: dict[str, Any] | None = None, base: str | Path | None = None
                ) -> RunConfig:
    """The one config loader: ``defaults`` (e.g. ``api.dataset_defaults``), then the ``base``
    file (a run's config.json when resuming), then the user's file ``path``, then the
    ``section.key=value`` overrides; validated. Used by the CLI, the API and
    ``Predictor.from_run``."""
    data: dict[str, Any] = dict(defaults or {})
    for file in (base, path):
        if file is not None:
            data = merge(data, read_config_file(file))
    data = apply_overrides(data, list(overrides or []))
    return from_dict(RunConfig, data).validate()


def check_file_values(data: dict[str, Any], path: str | Path) -> None:
    """The keys, types and ranges of one config file's values, with the file named in the
    error (relations between values are checked once everything is merged)."""
    try:
        check_config_values(from_dict(RunConfig, data))
    except ConfigError as err:
        raise ConfigError(f"config file '{path}': {err}") from None


def save_config(config: RunConfig, path: str | Path) -> None:
    from diffuseg.core.atomic import write_json_atomic

    write_json_atomic(Path(path), to_dict(config))

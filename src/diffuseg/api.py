"""The Python API the CLI and the HTTP service call: configs derived from a dataset, training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffuseg.config import RunConfig, apply_overrides, check_file_values, from_dict
from diffuseg.validation import read_json


def dataset_defaults(dataset_dir: Path) -> dict[str, Any]:
    """What a dataset fixes: spatial_dims, channels, classes, and a patch that fits its images."""
    from diffuseg.data import Dataset

    dataset = Dataset.open(dataset_dir)
    info = dataset.info
    labels = sorted(set(int(v) for v in info.labels.values()))
    num_classes = 1 if len(labels) <= 2 else len(labels)
    first = dataset.cases[0].load()
    spatial = np.array(first.image.shape[1:])
    dims = len(spatial)
    cap = 128 if dims == 2 else 64
    patch = [int(max(16, min(cap, s) // 16 * 16)) for s in spatial]
    return {"spatial_dims": dims, "in_channels": int(first.image.shape[0]),
            "num_classes": num_classes,
            "data": {"patch_size": patch, "intensity": intensity_for(info.channel_names)}}


def intensity_for(channel_names: dict[str, str]) -> str:
    """nnU-Net's convention: CT channels keep their Hounsfield scale (clipped to a window), any
    other modality is z-scored per image."""
    modalities = {name.strip().upper() for name in channel_names.values()}
    return "ct" if modalities == {"CT"} else "zscore"


def merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def build_config(config_path: Path | None, overrides: list[str], *, dataset: Path | None,
                 base: Path | None = None) -> RunConfig:
    """Dataset-derived defaults, then the user's config file, then ``--set`` overrides."""
    data: dict[str, Any] = dataset_defaults(dataset) if dataset is not None else {}
    for path in (base, config_path):
        if path is None:
            continue
        from_file = read_json(path, "config file")  # an object, UTF-8, not too deep
        check_file_values(from_file, path)
        data = merge(data, from_file)
    data = apply_overrides(data, overrides)
    return from_dict(RunConfig, data).validate()


def train_run(config: RunConfig, dataset: Path, output: Path, *, resume: bool = False,
              progress: bool = True) -> Path:
    from diffuseg.training import train

    return train(config, dataset, output, resume=resume, progress=progress)

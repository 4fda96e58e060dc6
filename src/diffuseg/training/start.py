"""The Python API the CLI and the HTTP service call: configs derived from a dataset, training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffuseg.config import RunConfig, load_config, merge
from diffuseg.errors import DiffusegError
from diffuseg.training.planning import Plan, make_plan

if TYPE_CHECKING:
    from diffuseg.data import Dataset


def dataset_defaults(dataset_dir: Path | Dataset) -> dict[str, Any]:
    """What a dataset fixes: spatial_dims, channels, classes, and a patch that fits its images.
    ``dataset_dir`` may be the opened ``Dataset`` (one listing per command)."""
    from diffuseg.data import Dataset

    dataset = Dataset.of(dataset_dir)
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
            "data": {"patch_size": patch,
                     **intensity_for(info.channel_names, info.file_ending, first.image)}}


def intensity_for(channel_names: dict[str, str], file_ending: str = ".nii.gz",
                  image: np.ndarray | None = None) -> dict[str, Any]:
    """nnU-Net's convention: CT channels keep their Hounsfield scale (clipped to a window), any
    other modality is z-scored per image. A PNG cannot hold Hounsfield units (it has no negative
    values): CT in PNG files is display values an exporter already windowed (the LIDC-IDRI
    slices release, 0-255), so 8-bit ones are scaled from [0, 255] to [-1, 1] (the CT mode with
    that window; the HU window put them in [0.43, 0.79], where the augmentation's noise of
    0.05 was 0.75 of a slice's standard deviation); other PNG CT (16-bit exports of unknown
    offset) is z-scored. ``image``: the first case, whose largest value tells 8 from 16 bits."""
    modalities = {name.strip().upper() for name in channel_names.values()}
    if modalities != {"CT"}:
        return {"intensity": "zscore"}
    if file_ending != ".png":
        return {"intensity": "ct"}
    if image is not None and float(np.max(image)) <= 255:
        return {"intensity": "ct", "ct_window": [0.0, 255.0]}
    return {"intensity": "zscore"}


def build_config(config_path: Path | None, overrides: list[str], *, dataset: Path | Dataset | None,
                 base: Path | None = None, plan: Plan | None = None,
                 init: str | Path | None = None) -> RunConfig:
    """Dataset-derived defaults and the plan (``diffuseg.training.planning``), then the sections of
    the model ``init`` starts from (``init_defaults``), then ``base`` and the user's config file,
    then ``--set`` overrides: ``config.load_config`` with those defaults."""
    from diffuseg.data import Dataset

    dataset = Dataset.of(dataset) if dataset is not None else None  # one listing
    defaults = dataset_defaults(dataset) if dataset is not None else None
    if plan is not None:
        defaults = merge(defaults or {}, plan.values)
    if init is not None:
        ending = dataset.info.file_ending if dataset is not None else None
        defaults = merge(defaults or {}, init_defaults(init, ending))
    return load_config(config_path, overrides, defaults=defaults, base=base)


# what ``train --init`` takes from the model: its architecture and sampling; the data's facts
# (dimensions, channels, labels, patch, intensity mode) and the training schedule stay the
# dataset's and the plan's. A CT model's window comes too when the new data is stored as the
# model's was (PNG display values, or Hounsfield units in any other format), so its weights see
# the scale they learned; across the two (a PNG model on HU NIfTI, or the reverse) the window
# would clip one scale with the other's numbers, so the data's own window stays (the window is
# unused by any other intensity mode)
INHERITED = ("method", "process", "network", "sample")


def init_defaults(init: str | Path, file_ending: str | None = None) -> dict[str, Any]:
    """The sections ``INHERITED`` of the model (or run) ``init``, and ``train.init`` itself;
    ``file_ending``: the new dataset's (None: unknown, the window is inherited)."""
    from diffuseg.config import read_config_file
    from diffuseg.errors import DataError
    from diffuseg.pretrained.lookup import resolve

    folder = resolve(init)
    if not (folder / "config.json").is_file():
        raise DataError(f"--init '{init}' is not a run or model folder (no config.json); give a "
                        "model name ('diffuseg models') or the -o folder of 'diffuseg train'")
    model = read_config_file(folder / "config.json")
    given = str(Path(init).resolve()) if Path(init).exists() else str(init)  # a path: absolute
    data = model.get("data", {})
    ours, theirs = _is_png(file_ending), _is_png(_model_file_ending(folder))
    same_scale = ours is None or theirs is None or ours == theirs  # unknown: as before
    window = ({"data": {"ct_window": data["ct_window"]}}
              if data.get("intensity") == "ct" and same_scale else {})
    return {**{k: model[k] for k in INHERITED if k in model}, **window,
            "train": {"init": given}}


def _is_png(file_ending: str | None) -> bool | None:
    return None if file_ending is None else file_ending.lower() == ".png"


def _model_file_ending(folder: Path) -> str | None:
    """The file ending of the data a model was trained on (its dataset.json), None if unknown."""
    import json

    try:
        return json.loads((folder / "dataset.json").read_text()).get("file_ending")
    except (OSError, ValueError, AttributeError):
        return None


def plan_for(dataset: Path | Dataset, preset: str = "auto",
             method: str | None = None) -> Plan | None:
    """The plan for ``dataset`` on this machine (``preset`` auto|cpu|gpu|quick), None for
    ``none``; ``method``: the user's choice (``chosen_method``), None lets the plan pick."""
    return None if preset == "none" else make_plan(dataset, preset, method=method)


def steps_for_minutes(config_path: Path | None, overrides: list[str]) -> list[str]:
    """``--minutes`` with no step count anywhere (``--max-steps``, ``--set train.max_steps``, the
    config file): the budget ends the run, not the default 2,000 steps (a newcomer's
    ``--minutes 60`` on LIDC stopped after 25 minutes): ``["train.max_steps=BIG"]``, else []."""
    from diffuseg.config import read_config_file
    from diffuseg.core.validation import BIG

    keys = {o.split("=", 1)[0].strip() for o in overrides}
    if "train.max_minutes" not in keys or "train.max_steps" in keys:
        return []
    if config_path is not None:
        section = read_config_file(config_path).get("train")
        if isinstance(section, dict) and "max_steps" in section:
            return []
    return [f"train.max_steps={BIG}"]


def chosen_method(config_path: Path | None, overrides: list[str],
                  init: str | Path | None = None) -> str | None:
    """The method the user named: the last ``method.name=`` of ``overrides`` (``--method`` is
    one), else the config file's ``method.name``, else ``init``'s model's; None when none did."""
    from diffuseg.config import read_config_file

    named = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].strip() == "method.name"]
    if named:
        return named[-1].strip()
    if config_path is not None:
        section = read_config_file(config_path).get("method")
        if isinstance(section, dict) and section.get("name"):
            return str(section["name"])
    if init is not None:
        return str(init_defaults(init).get("method", {}).get("name") or "") or None
    return None


def train_run(config: RunConfig, dataset: Path | Dataset, output: Path, *, resume: bool = False,
              progress: bool = True, plan: Plan | None = None,
              started: float | None = None) -> Path:
    """Train into ``output``; a new run that fails on a user mistake before its first checkpoint
    leaves no half-written run folder behind."""
    import shutil

    from diffuseg.training.loop import train

    existed = Path(output).exists()
    notes = {"plan.json": plan.to_dict()} if plan is not None and not resume else None
    try:
        return train(config, dataset, output, resume=resume, progress=progress, notes=notes,
                     started=started)
    except DiffusegError:
        if not resume and not existed and not (Path(output) / "checkpoint").exists():
            shutil.rmtree(output, ignore_errors=True)
        raise

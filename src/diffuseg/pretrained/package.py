"""A run folder -> a model folder (``diffuseg models package RUN -o models/NAME``).

What is kept (``diffuseg.pretrained.manifest`` lists the files): the config, the plan, the labels
(``dataset.json`` without its per-case patient map ``groups``: ``splits.json`` holds the cases),
the fingerprint without the dataset's path, the whole ``splits.json`` (compact JSON: LIDC's
12,492 slices take about 0.3 MB, and ``evaluate --run NAME`` needs the case names to warn about
training cases), the verdict and training curves when present, the weights ``predict`` uses
(EMA) converted to fp16, the model card and ``model.json`` with the sha256 of the weights.
The folder is written beside its destination and swapped in whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffuseg import __version__
from diffuseg.config import load_config
from diffuseg.core.atomic import (
    remove_folder,
    replace_folder,
    save_tensors_atomic,
    write_json_atomic,
    write_text_atomic,
)
from diffuseg.core.json_files import read_json
from diffuseg.core.paths import check_separate
from diffuseg.data.splits import read_splits
from diffuseg.errors import DataError
from diffuseg.pretrained.card import draft_card, unfinished
from diffuseg.pretrained.manifest import CARD, FORMAT, MANIFEST, WEIGHTS, sha256_of
from diffuseg.pretrained.validation import validation_of
from diffuseg.run.verdict import predict_weights
from diffuseg.run.weights import load_state

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEPT_AS_IS = ("config.json", "plan.json", "verdict.json", "metrics.jsonl")
DROPPED = {"dataset.json": ["groups"], "fingerprint.json": ["dataset"]}
SIZE_LIMIT = 40 * 2**20  # all shipped models together (docs/pretrained.md)


@dataclass
class Packaged:
    folder: Path
    manifest: dict[str, Any]
    unfinished: list[str]  # card sections missing or still marked TODO
    size_bytes: int


def predict_weights_of(run: Path) -> Path:
    """The weights ``Predictor.from_run`` loads (``run.verdict.predict_weights``: the EMA of the
    best validation when ``weights.json`` names it, else the last EMA), refused when absent."""
    path = predict_weights(run)
    if not path.is_file():
        raise DataError(f"run folder '{run}' has no weights ({path.name}); was it trained to the "
                        "end? Package a finished run")
    return path


def to_fp16(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Floating tensors as fp16 (others unchanged); a value beyond fp16's range is refused."""
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            half = value.to(torch.float16)
            if not torch.isfinite(half).all() and torch.isfinite(value).all():
                raise DataError(f"weights '{key}' of '{source}' exceed fp16's range (largest "
                                f"|value| {value.abs().max().item():.3g} > 65504); this model "
                                "cannot be stored in fp16")
            value = half
        out[key] = value.contiguous()
    return out


def check_destination(run: Path, out: Path, overwrite: bool) -> None:
    if not NAME.match(out.name):
        raise DataError(f"model name '{out.name}' (the -o folder's name) must be letters, digits, "
                        "'_', '-' or '.', at most 64, starting with a letter or digit")
    check_separate(run, out, "package")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"model folder '{out}' already exists; pass --overwrite to replace it or "
                        "choose another -o")


def package_run(run: str | Path, out: str | Path, *, card: str | Path | None = None,
                task: str | None = None, validation: str | Path | None = None,
                overwrite: bool = False) -> Packaged:
    """Package ``run`` into the model folder ``out`` (its name is the model's name). ``card``: a
    MODEL.md to ship (default: a draft from the run, with TODOs); ``validation``: an evaluation
    ``summary.json`` of held-out cases (default: the run's verdict or last validation)."""
    run, out = Path(run), Path(out)
    if not (run / "config.json").is_file():
        raise DataError(f"'{run}' is not a run folder (no config.json); give the -o folder of "
                        "'diffuseg train'")
    if (run / MANIFEST).is_file():
        raise DataError(f"'{run}' is a model folder already; copy it instead of packaging it")
    check_destination(run, out, overwrite)
    config = load_config(run / "config.json")
    card_text = Path(card).read_text(encoding="utf-8") if card is not None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    remove_folder(tmp)
    tmp.mkdir()
    try:
        manifest, facts = write_files(run, tmp, config, validation)
        manifest.update(name=out.name, task=task)
        text = card_text if card_text is not None else draft_card(manifest, facts)
        write_text_atomic(tmp / CARD, text)
        write_json_atomic(tmp / MANIFEST, manifest)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return Packaged(out, manifest, unfinished(text), size)


def write_files(run: Path, folder: Path, config, validation) -> tuple[dict, dict]:
    """Everything but the card and the manifest into ``folder``; returns (manifest, facts)."""
    source = predict_weights_of(run)
    state = to_fp16(load_state(source), source)
    save_tensors_atomic(state, folder / WEIGHTS)
    readable_by_all(folder / WEIGHTS)
    for name in KEPT_AS_IS:
        if (run / name).is_file():
            shutil.copyfile(run / name, folder / name)
    dataset = read_json(run / "dataset.json", "dataset file", DataError)
    fingerprint = read_json(run / "fingerprint.json", "fingerprint file", DataError)
    for data, name in ((dataset, "dataset.json"), (fingerprint, "fingerprint.json")):
        write_json_atomic(folder / name, {k: v for k, v in data.items()
                                          if k not in DROPPED[name]})
    splits = read_splits(run / "splits.json")
    write_text_atomic(folder / "splits.json", json.dumps(splits, separators=(",", ":")) + "\n")
    record = validation_of(run, validation)
    steps, seconds = last_step(run)
    plan = read_json(run / "plan.json", "plan file", DataError) if (
        run / "plan.json").is_file() else {}
    manifest = {
        "format": FORMAT, "name": None, "task": None,
        "spatial_dims": config.spatial_dims, "in_channels": config.in_channels,
        "num_classes": config.num_classes, "labels": dataset.get("labels", {}),
        "raters": int(dataset.get("raters", 1)), "method": config.method.name,
        "parameters": sum(v.numel() for v in state.values() if v.is_floating_point()),
        "dtype": "float16", "validation": record,
        "sha256": {WEIGHTS: sha256_of(folder / WEIGHTS)},
        "packaged": {"from_run": run.resolve().name, "weights": source.name, "steps": steps,
                     "date": time.strftime("%Y-%m-%d"), "diffuseg": __version__,
                     "dropped": DROPPED},
    }
    facts = {"dataset_name": str(dataset.get("name", "")), "n_train": len(splits["train"]),
             "n_val": len(splits["val"]), "steps": steps, "seconds": seconds,
             "clock": config.train.budget_clock, "hardware": plan.get("hardware")}
    return manifest, facts


def readable_by_all(path: Path) -> None:
    """The permissions of a plain new file (safetensors writes 0600): a model folder is shared."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def last_step(run: Path) -> tuple[int | None, float | None]:
    """(step, seconds) of the last record of the run's ``metrics.jsonl`` that has them."""
    step = seconds = None
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "seconds" in record:
            step, seconds = record.get("step"), record.get("seconds")
    return step, seconds

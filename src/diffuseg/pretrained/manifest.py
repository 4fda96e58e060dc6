"""``model.json``: what a model folder holds, and the sha256 of every weight file, checked at load.

A model folder is a run folder's essentials (docs/pretrained.md)::

    config.json        the run's config (builds the method)
    dataset.json       labels, channels, raters (the per-case patient map ``groups`` dropped)
    fingerprint.json   which data (the dataset's path dropped)
    splits.json        the cases it trained and validated on (``evaluate --run NAME`` reads it)
    plan.json          the plan and the machine (when the run had one)
    verdict.json, metrics.jsonl   the run's verdict and training curves (when present)
    model.safetensors  the EMA weights in fp16
    MODEL.md           the model card
    model.json         this manifest

``Predictor.from_run`` loads it like a run folder (no ``ema.safetensors``: ``model.safetensors``)
and checks the sha256 first, so a damaged or changed weight file is one line naming it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from diffuseg.core.json_files import read_json
from diffuseg.errors import DataError

MANIFEST = "model.json"
WEIGHTS = "model.safetensors"
CARD = "MODEL.md"
FORMAT = 1  # the version of model.json's layout


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_model_folder(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """``folder/model.json``, checked for the keys the loaders use (one-line DataError)."""
    path = Path(folder) / MANIFEST
    data = read_json(path, "model manifest", DataError)
    sha = data.get("sha256")
    if data.get("format") != FORMAT or not isinstance(sha, dict) or not sha or not all(
            isinstance(k, str) and Path(k).name == k and isinstance(v, str) and len(v) == 64
            for k, v in sha.items()):
        raise DataError(f"model manifest '{path}' is not a diffuseg model.json of format {FORMAT} "
                        "(a 'sha256' object of file name -> 64 hex digits); package the run again "
                        "with 'diffuseg models package'")
    return data


def verify_weights(folder: str | Path) -> dict[str, Any]:
    """Check the sha256 of every weight file ``model.json`` lists; return the manifest. A file
    missing or differing is one line naming it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for name, expected in manifest["sha256"].items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"model file '{path}' listed in {MANIFEST} is missing; reinstall the "
                            "model (or diffuseg, for a shipped model)")
        actual = sha256_of(path)
        if actual != expected.lower():
            raise DataError(f"model file '{path}' is damaged or was changed: its sha256 "
                            f"{actual[:16]}... differs from {MANIFEST}'s {expected[:16]}...; "
                            "reinstall the model (or diffuseg, for a shipped model)")
    return manifest

"""Models by name: wherever a run folder is accepted (``predict``, ``serve``, ``evaluate --run``,
``explain``, ``train --init``, ``Predictor.from_pretrained``), a model name is too.

Lookup order (docs/pretrained.md):

1. a path that exists wins (a run folder or a model folder);
2. the models installed with diffuseg: ``diffuseg/pretrained/shipped/`` in an installed package
   (``pyproject.toml`` maps the repository's top-level ``models/`` folder there), or ``models/``
   itself in a source checkout (editable installs, ``PYTHONPATH=src``);
3. the folders listed in ``DIFFUSEG_MODELS`` (separated by ``os.pathsep``), in order.

A model is a sub-folder holding ``model.json``; its name is the sub-folder's name, and the first
folder of a name wins.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from diffuseg.errors import DataError
from diffuseg.pretrained.manifest import is_model_folder

ENV = "DIFFUSEG_MODELS"
SHIPPED = Path(__file__).resolve().parent / "shipped"


def checkout_models() -> Path | None:
    """The repository's ``models/`` when diffuseg runs from a source checkout (``src`` layout
    beside ``pyproject.toml``), else None."""
    src = Path(__file__).resolve().parents[2]
    repo = src.parent
    if src.name == "src" and (repo / "pyproject.toml").is_file() and (repo / "models").is_dir():
        return repo / "models"
    return None


def shipped_roots() -> list[Path]:
    """Where the models installed with diffuseg are: the package's copy, then a checkout's."""
    return [root for root in (SHIPPED, checkout_models()) if root is not None]


def env_roots() -> list[Path]:
    """The folders of ``DIFFUSEG_MODELS``, in order (empty entries skipped)."""
    return [Path(p).expanduser() for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]


def missing_env_roots() -> list[Path]:
    """``DIFFUSEG_MODELS`` entries that are not folders (``diffuseg models`` warns about them)."""
    return [p for p in env_roots() if not p.is_dir()]


def available_models() -> dict[str, Path]:
    """{name: model folder} of every model found, the first of each name (lookup order)."""
    found: dict[str, Path] = {}
    for root in shipped_roots() + env_roots():
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.name not in found and child.is_dir() and is_model_folder(child):
                found[child.name] = child
    return found


def find_model(name: str) -> Path:
    """The folder of the model ``name``; an unknown name is one line listing the known ones."""
    models = available_models()
    if name in models:
        return models[name]
    raise DataError(f"model '{name}' is unknown; {known_models(name, models)}")


def resolve(value: str | Path) -> Path:
    """A run or model folder from a path (one that exists wins) or a model name. A path that
    exists but holds no config.json while a model has its name is refused: either was meant."""
    path = Path(value)
    models = available_models()
    if path.exists():
        if str(value) in models and not (path / "config.json").is_file():
            raise DataError(f"'{value}' is both a folder here (without config.json: not a run) "
                            f"and a model's name; give the model's folder '{models[str(value)]}' "
                            "or the path of a run folder")
        return path
    if str(value) in models:
        return models[str(value)]
    known = known_models(str(value), models)
    raise DataError(f"'{value}' does not exist: give a run folder (the -o folder of 'diffuseg "
                    f"train', with its config.json) or a model name; {known}")


def known_models(name: str, models: dict[str, Path]) -> str:
    """'models: a, b (did you mean 'a'?)', or how to add models when there are none."""
    if not models:
        return (f"no models are installed (add model folders with {ENV}, see "
                "docs/pretrained.md)")
    close = difflib.get_close_matches(Path(name).name, list(models), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"models: {', '.join(models)}{hint}; 'diffuseg models' lists them"

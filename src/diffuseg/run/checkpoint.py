"""Checkpoints a run can always resume from.

A checkpoint is a folder: ``model.safetensors``, ``ema.safetensors``, ``optimizer.safetensors`` +
``optimizer.json``, ``rng.safetensors`` and ``state.json`` (step, elapsed seconds, numpy and
Python RNG states), and last of all ``COMPLETE``, which lists every file's size. It is written as
``checkpoint.tmp/`` and swapped in with two renames (``checkpoint`` -> ``checkpoint.old``,
``checkpoint.tmp`` -> ``checkpoint``). Whatever moment a kill lands on, one of the three folders
holds a COMPLETE marker, and ``recover_checkpoint`` picks the newest such folder.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from diffuseg.core.atomic import (
    fsync_dir,
    remove_folder,
    replace_folder,
    save_tensors_atomic,
    write_json_atomic,
)
from diffuseg.errors import DataError
from diffuseg.run.weights import (
    load_networks,
    load_optimizer,
    load_state,
    save_optimizer,
    state_of,
)

MARKER = "COMPLETE"
NAMES = ("checkpoint", "checkpoint.tmp", "checkpoint.old")


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every global RNG: torch CPU and CUDA (tensors), numpy and Python (JSON)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return tensors, {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
                     "python": [version, list(py_state), py_gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], states: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = states["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def save_checkpoint(run_dir: Path, networks: dict, optimizer, ema_shadow: dict, state: dict
                    ) -> None:
    """Write ``checkpoint.tmp/`` file by file (each fsync'd), the marker last, then swap it in."""
    tmp = run_dir / "checkpoint.tmp"
    remove_folder(tmp)
    tmp.mkdir()
    save_tensors_atomic(state_of(networks), tmp / "model.safetensors")
    save_tensors_atomic({k: v.detach().cpu().contiguous() for k, v in ema_shadow.items()},
                        tmp / "ema.safetensors")
    save_optimizer(optimizer, tmp)
    rng_tensors, rng_json = rng_state()
    save_tensors_atomic(rng_tensors, tmp / "rng.safetensors")
    write_json_atomic(tmp / "state.json", {**state, "rng": rng_json})
    files = {p.name: p.stat().st_size for p in tmp.iterdir()}
    write_json_atomic(tmp / MARKER, {"step": state["step"], "files": files})
    fsync_dir(run_dir)
    replace_folder(tmp, run_dir / "checkpoint", aside=run_dir / "checkpoint.old")


def complete_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder, None if it is absent or unfinished."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        if all((folder / name).stat().st_size == size for name, size in marker["files"].items()):
            return int(marker["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def recover_checkpoint(run_dir: Path) -> int | None:
    """Leave the newest complete checkpoint in ``checkpoint/`` and remove the others; return its
    step, or None when no complete checkpoint exists."""
    found = {name: complete_step(run_dir / name) for name in NAMES}
    complete = {name: step for name, step in found.items() if step is not None}
    if not complete:
        return None
    best = max(complete, key=lambda name: (complete[name], name == "checkpoint"))
    if best != "checkpoint":
        remove_folder(run_dir / "checkpoint")
        os.replace(run_dir / best, run_dir / "checkpoint")
        fsync_dir(run_dir)
    for name in NAMES[1:]:
        remove_folder(run_dir / name)
    return complete[best]


def _corrupt(path: Path, err: Exception) -> DataError:
    return DataError(f"checkpoint file '{path}' is unreadable ({type(err).__name__}: "
                     f"{str(err)[:120]}); start over in a new run folder, or put back an older "
                     "copy of the checkpoint folder and resume")


def load_checkpoint(folder: Path, networks: dict, optimizer, device) -> tuple[dict, dict]:
    """Restore networks, optimizer and every RNG; return (state, EMA shadow)."""
    load_networks(networks, load_state(folder / "model.safetensors"), folder,
                  folder.parent / "config.json")
    ema = {k: v.to(device) for k, v in load_state(folder / "ema.safetensors").items()}
    load_optimizer(optimizer, folder)
    path = folder / "state.json"
    try:
        state = json.loads(path.read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _corrupt(path, err) from None
    if "rng" in state and (folder / "rng.safetensors").is_file():
        set_rng_state(load_state(folder / "rng.safetensors"), state["rng"])
    return state, ema

"""Weights and optimiser state on disk, in safetensors and JSON only: nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from diffuseg.core.atomic import save_tensors_atomic, write_text_atomic
from diffuseg.errors import DataError


def state_of(networks: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.detach().cpu().contiguous()
            for name, net in networks.items() for key, value in net.state_dict().items()}


def save_networks(networks: dict[str, nn.Module], path: Path) -> None:
    save_tensors_atomic(state_of(networks), Path(path))


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"weights file '{path}' is missing; was the run trained to the end? "
                        "Resume it with 'diffuseg train ... --resume'")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for corrupt headers
        raise DataError(f"weights file '{path}' is not a readable safetensors file ({err}); "
                        "retrain or restore the file") from None


def load_networks(networks: dict[str, nn.Module], state: dict[str, torch.Tensor],
                  source: Path | str = "weights", config: Path | str = "config.json") -> None:
    """Copy ``state`` into ``networks`` (built from ``config``); a tensor missing, unexpected or
    of another shape is one DataError naming the config, the weights and the tensor."""
    for name, net in networks.items():
        prefix = f"{name}."
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        own = net.state_dict()
        for key, value in part.items():
            if key in own and tuple(value.shape) != tuple(own[key].shape):
                raise DataError(
                    f"'{config}' does not describe the network of '{source}': tensor "
                    f"'{prefix}{key}' has shape {tuple(value.shape)} in the weights but "
                    f"{tuple(own[key].shape)} in the network the config builds; put back the "
                    "config.json the weights were trained with")
        missing, unexpected = net.load_state_dict(part, strict=False)
        if missing or unexpected:
            raise DataError(f"'{source}' does not match network '{name}' (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}) that '{config}' describes; put back "
                            "the config.json the weights were trained with")


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Tensors to ``optimizer.safetensors``, the rest (param groups, scalars) to JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    save_tensors_atomic(tensors, folder / "optimizer.safetensors")
    meta = {"param_groups": state["param_groups"], "scalars": scalars}
    write_text_atomic(folder / "optimizer.json", json.dumps(meta))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """The inverse of ``save_optimizer``; an unreadable file is a DataError naming it."""
    path = folder / "optimizer.safetensors"
    try:
        tensors = load_file(str(path))
        path = folder / "optimizer.json"
        meta = json.loads(path.read_text())
        state: dict[int, dict] = {}
        for key, value in list(tensors.items()) + list(meta["scalars"].items()):
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except Exception as err:  # safetensors, JSON and torch raise several types for a bad file
        raise DataError(f"checkpoint file '{path}' is unreadable ({type(err).__name__}: "
                        f"{str(err)[:120]}); start over in a new run folder, or put back an "
                        "older copy of the checkpoint folder and resume") from None

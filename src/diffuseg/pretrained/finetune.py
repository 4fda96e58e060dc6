"""``diffuseg train DATA --init NAME_OR_RUN`` (``train.init``): a new run starts from a model's
weights.

Every tensor of the new run's networks whose name and shape match one of the model's is loaded
(fp16 weights are cast into the fp32 networks); the others keep their fresh initialisation and
are listed in one line (typically the output layer when the number of labels differs). Another
method is refused, and so is a model none of whose weights (kernels or matrices: tensors of two
dimensions or more) matches: biases and norms alone are no start. The run records the model,
its weights file and their sha256 in ``init.json`` (docs/pretrained.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffuseg.config import load_config
from diffuseg.errors import ConfigError, DataError
from diffuseg.pretrained.lookup import resolve
from diffuseg.pretrained.manifest import WEIGHTS, is_model_folder, sha256_of, verify_weights
from diffuseg.pretrained.package import predict_weights_of
from diffuseg.run.weights import load_state

SHOWN = 6  # refused tensors named in the one line (all of them are in init.json)


@dataclass
class InitReport:
    source: str  # what the user gave: a model name or a path
    folder: Path
    weights: Path
    sha256: str
    loaded: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (tensor, why)
    unused: int = 0  # tensors of the model the new networks have no place for

    def line(self) -> str:
        head = (f"initialised from '{self.source}' ({self.weights}, sha256 {self.sha256[:12]}): "
                f"loaded {len(self.loaded)} of {len(self.loaded) + len(self.refused)} tensors")
        if not self.refused:
            return head
        shown = ", ".join(f"{key} ({why})" for key, why in self.refused[:SHOWN])
        more = f" and {len(self.refused) - SHOWN} more" if len(self.refused) > SHOWN else ""
        return (f"{head}; not loaded, trained from a fresh start: {shown}{more} (all in "
                "init.json)")

    def to_dict(self) -> dict:
        return {"source": self.source, "folder": str(self.folder.resolve()),
                "weights": self.weights.name, "sha256": self.sha256, "loaded": self.loaded,
                "refused": [{"tensor": k, "why": why} for k, why in self.refused],
                "unused_model_tensors": self.unused}


def weights_of(folder: Path) -> tuple[Path, str]:
    """(weights file, sha256): a model folder's checked ``model.safetensors``, or the weights a
    run folder's ``predict`` uses."""
    if is_model_folder(folder):
        manifest = verify_weights(folder)
        return folder / WEIGHTS, manifest["sha256"][WEIGHTS]
    path = predict_weights_of(folder)
    return path, sha256_of(path)


def init_networks(networks: dict[str, nn.Module], source: str | Path, method: str
                  ) -> InitReport:
    """Load the tensors of the model or run ``source`` that match ``networks`` by name and
    shape; refuse another method, or no match at all (ConfigError)."""
    folder = resolve(source)
    if not (folder / "config.json").is_file():
        raise DataError(f"train.init '{source}' is not a run or model folder (no config.json)")
    theirs = load_config(folder / "config.json").method.name
    if theirs != method:
        raise ConfigError(f"train.init '{source}' is a {theirs} model and this run trains "
                          f"{method}; fine-tune with the same method (drop --method or "
                          f"method.name) or choose another model")
    path, sha = weights_of(folder)
    state = load_state(path)
    report = InitReport(str(source), folder, path, sha)
    ours = {f"{name}.{k}": v for name, net in networks.items() for k, v in net.state_dict().items()}
    for key, value in ours.items():
        if key not in state:
            report.refused.append((key, "not in the model"))
        elif tuple(state[key].shape) != tuple(value.shape):
            report.refused.append((key, f"model {list(state[key].shape)}, here "
                                        f"{list(value.shape)}"))
        else:
            report.loaded.append(key)
    report.unused = len(set(state) - set(ours))
    if not any(state[k].ndim >= 2 for k in report.loaded):  # biases and norms alone carry nothing
        example = next((r for r in report.refused if ours[r[0]].ndim >= 2), report.refused[0])
        raise ConfigError(f"train.init '{source}': no weight (kernel or matrix) of the model "
                          f"matches this run's networks by name and shape (e.g. {example[0]}: "
                          f"{example[1]}); train with the model's network settings (--init takes "
                          "them unless -c or --set change them)")
    with torch.no_grad():
        for name, net in networks.items():
            prefix = f"{name}."
            part = {k[len(prefix):]: state[k] for k in report.loaded if k.startswith(prefix)}
            net.load_state_dict(part, strict=False)  # copy_ casts fp16 into the fp32 tensors
    return report

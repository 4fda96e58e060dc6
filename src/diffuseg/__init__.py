"""diffuseg: medical image segmentation with diffusion models.

Learns the distribution of expert masks for an image, draws many plausible masks, and turns them
into a consensus mask and uncertainty maps, in 2D and 3D.

The three entry points of the Python API, importable from here (loaded on first use, so that
``import diffuseg`` stays light)::

    from diffuseg import Predictor, train, evaluate

Each lives in its own package: ``diffuseg.inference.predictor.Predictor``,
``diffuseg.training.loop.train``, ``diffuseg.evaluation.evaluate.evaluate``.
"""

from __future__ import annotations

import importlib
from typing import Any

from diffuseg.errors import DiffusegError

__version__ = "0.1.0"
_ENTRY_POINTS = {"Predictor": "diffuseg.inference.predictor", "train": "diffuseg.training.loop",
                 "evaluate": "diffuseg.evaluation.evaluate"}
__all__ = ["DiffusegError", "Predictor", "__version__", "evaluate", "train"]


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'diffuseg' has no attribute {name!r}")

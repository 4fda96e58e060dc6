"""What a run folder says about itself after training: whether the model learned, and which
weights ``predict`` uses.

- ``verdict.json``: ``"learned": true|false``, the validation numbers against the trivial
  references, the rule, and the one plain line ``train`` printed (``diffuseg.training.verdict``
  writes it).
- ``weights.json``: ``"predict_uses"``, the weights file ``Predictor.from_run`` loads (the EMA
  weights of the best validation, ``ema_best.safetensors``, when one was measured on every
  validation case; else the last EMA weights, ``ema.safetensors``), why, and the step and
  validation record of each.

A run folder from before these files has neither: ``predict`` then uses ``ema.safetensors``
(``model.safetensors`` without it) and cannot say whether the model learned.
"""

from __future__ import annotations

from pathlib import Path

from diffuseg.core.json_files import read_json
from diffuseg.errors import DataError

VERDICT = "verdict.json"
WEIGHTS = "weights.json"
BEST = "ema_best.safetensors"
LAST = "ema.safetensors"
RAW = "model.safetensors"


def read_verdict(run_dir: str | Path) -> dict | None:
    """``verdict.json`` of a run, None when the run has none (trained before verdicts, or not
    finished)."""
    path = Path(run_dir) / VERDICT
    return read_json(path, "verdict file", DataError) if path.is_file() else None


def not_learned_warning(run_dir: str | Path) -> str | None:
    """One line for ``predict`` and ``serve`` when the run's verdict says it did not learn."""
    verdict = read_verdict(run_dir)
    if verdict is None or verdict.get("learned") is not False:
        return None
    summary = verdict.get("summary") or "see verdict.json"
    advice = verdict.get("advice") or "train it longer with 'diffuseg train ... --resume'"
    return (f"run '{run_dir}' did not learn ({summary}); its masks are not to be trusted: "
            f"{advice}")


def predict_weights(run_dir: str | Path, use_ema: bool = True) -> Path:
    """The weights file ``Predictor.from_run`` loads: ``weights.json``'s ``predict_uses`` when
    present (with ``use_ema``), else ``ema.safetensors``, else ``model.safetensors``."""
    run_dir = Path(run_dir)
    if not use_ema:
        return run_dir / RAW
    path = run_dir / WEIGHTS
    if path.is_file():
        name = read_json(path, "weights file", DataError).get("predict_uses")
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(
                ".safetensors"):
            raise DataError(f"'{path}' names predict_uses={name!r}, not a weights file of the run "
                            f"folder; fix it (e.g. \"{LAST}\") or delete it")
        if not (run_dir / name).is_file():
            raise DataError(f"'{path}' says predict uses '{name}', which is missing from "
                            f"'{run_dir}'; restore it, or delete {WEIGHTS} to use {LAST}")
        return run_dir / name
    return run_dir / LAST if (run_dir / LAST).is_file() else run_dir / RAW

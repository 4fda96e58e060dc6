"""The validation numbers a model folder records in ``model.json`` and shows in ``diffuseg models``.

From the best source available, which is named in the record (``"source"``):

1. an evaluation of held-out cases (``diffuseg evaluate``'s ``summary.json``, given to
   ``diffuseg models package --validation``): every per-case metric's mean with a 95 % percentile
   bootstrap interval over the cases (Efron & Tibshirani 1993, *An Introduction to the
   Bootstrap*, ch. 13), resampling cases with a fixed seed;
2. the run's ``verdict.json`` (the validation of the weights ``predict`` uses, with the trivial
   references: always empty, the raters' majority repeated), no interval;
3. the last training validation in ``metrics.jsonl`` (consensus Dice), no interval.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from diffuseg.core.json_files import read_json
from diffuseg.errors import DataError

RESAMPLES = 2000
PREFERRED = ("ged_", "hm_iou_", "dice", "val_dice")  # shown first in listings
SUMMARY_METADATA = ("case", "n_samples", "n_raters", "distance_unit", "samples_used")


def bootstrap_ci(values: list[float], *, level: float = 0.95, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: the (1-level)/2 and (1+level)/2 quantiles of
    the means of ``resamples`` resamples of the values with replacement."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def from_summary(path: str | Path) -> dict[str, Any]:
    """Mean and 95 % bootstrap interval of every numeric per-case metric of an evaluation's
    ``summary.json``."""
    summary = read_json(path, "evaluation summary", DataError)
    per_case = summary.get("per_case")
    if not isinstance(per_case, list) or not per_case:
        raise DataError(f"evaluation summary '{path}' has no per_case list; give the "
                        "summary.json that 'diffuseg evaluate' wrote")
    names = list(dict.fromkeys(k for case in per_case if isinstance(case, dict) for k in case
                               if k not in SUMMARY_METADATA))
    metrics = {}
    for name in names:
        values = [float(c[name]) for c in per_case if isinstance(c.get(name), (int, float))
                  and not isinstance(c.get(name), bool) and math.isfinite(c[name])]
        if values:
            low, high = bootstrap_ci(values)
            metrics[name] = {"mean": round(float(np.mean(values)), 5),
                             "ci95": [round(low, 5), round(high, 5)], "n": len(values)}
    return {"source": "diffuseg evaluate summary.json (held-out cases), 95% percentile "
                      f"bootstrap over cases ({RESAMPLES} resamples)",
            "cases": len(per_case), "metrics": metrics}


def from_verdict(verdict: dict[str, Any]) -> dict[str, Any] | None:
    """The validation record of ``verdict.json`` (the weights ``predict`` uses), or None."""
    record = verdict.get("validation")
    if not isinstance(record, dict) or "val_ged" not in record:
        return None
    n = record.get("val_samples")
    metrics = {f"ged_{n}": {"mean": record["val_ged"]}}
    if "val_hm_iou" in record:
        metrics[f"hm_iou_{n}"] = {"mean": record["val_hm_iou"]}
    references = {key: record[key] for key in ("ref_ged_empty", "ref_ged_majority",
                                               "ref_hm_iou_empty") if key in record}
    return {"source": "verdict.json (training validation, no interval)",
            "cases": record.get("val_cases"), "step": record.get("step"),
            "learned": verdict.get("learned"), "metrics": metrics, "references": references}


def from_metrics_log(path: Path) -> dict[str, Any] | None:
    """The last ``val_dice`` of a run's ``metrics.jsonl``, or None."""
    last = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("val_dice"), (int, float)):
            last = record
    if last is None:
        return None
    return {"source": "metrics.jsonl (last training validation: consensus Dice, no interval)",
            "step": last.get("step"), "metrics": {"val_dice": {"mean": last["val_dice"]}}}


def validation_of(run_dir: Path, summary: str | Path | None = None) -> dict[str, Any] | None:
    """The best validation record available for a run (module docstring), or None."""
    if summary is not None:
        return from_summary(summary)
    if (run_dir / "verdict.json").is_file():
        record = from_verdict(read_json(run_dir / "verdict.json", "verdict file", DataError))
        if record is not None:
            return record
    if (run_dir / "metrics.jsonl").is_file():
        return from_metrics_log(run_dir / "metrics.jsonl")
    return None


def short(validation: dict[str, Any] | None, limit: int = 3) -> str:
    """'ged_16 0.330 [0.310, 0.350], hm_iou_16 0.502 [...]' for a listing; '-' when none."""
    if not validation or not validation.get("metrics"):
        return "-"
    metrics = validation["metrics"]
    first = [n for prefix in PREFERRED for n in metrics if n.startswith(prefix)]
    names = list(dict.fromkeys(first + list(metrics)))[:limit]
    parts = []
    for name in names:
        value = metrics[name]
        ci = value.get("ci95")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        parts.append(f"{name} {value['mean']:.3f}{interval}")
    return ", ".join(parts)

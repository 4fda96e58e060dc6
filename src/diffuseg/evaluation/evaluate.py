"""``diffuseg evaluate``: score a prediction folder against the raters of a dataset folder.

For every case folder ``PRED_DIR/<case>/`` (written and read by ``inference.prediction_folder``)
whose name is a labelled case of the dataset, the evaluator reads the samples, the consensus, the
probability map and the variance map, and compares them with the case's R rater masks:

- consensus vs the raters' majority mask Y_maj (per pixel most frequent label, ties to the higher
  label so that a 2-of-4 split is foreground): Dice, IoU, HD95 and ASSD per foreground label, the
  surface distances in the units of the dataset's geometry: mm when the images carry a spacing
  (NIfTI, DICOM), pixels when they do not (PNG and other raster images); ``distance_unit`` (per
  case and in the conventions) says which;
- samples vs raters: GED (squared form, d = 1 - IoU) with the first n samples for each n of
  ``n_samples_list`` that the case has samples for (``sample_counts``: GED100 only with 100
  samples or more; a case with fewer samples than every request reports them all under their own
  number, e.g. ``ged_4``), HM-IoU and the CI score with its three components on the first of those
  counts, S_NCC on the first ``max(n_samples_list)``;
- calibration: ECE of the probability map p (the share of samples marking the pixel,
  ``diffuseg.core.ensemble``) against the rater-mean mask m = (1/R) sum_k [y_k > 0] (10 bins, all
  pixels), and the uncertainty-error overlap
  UEO = Dice(v / v_max > 1/2, consensus != Y_maj) of the variance map v, with v_max = 1/4 for a
  binary foreground (p(1 - p) <= 1/4) and 1 - 1/K for K labels.

Formulas and empty-mask rules: ``diffuseg.metrics`` and its ``CONVENTIONS``. The results go to
``OUT/summary.json`` in nnU-Net's shape (conventions, then means, then per case) and a
self-contained ``OUT/report.html``.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from diffuseg.core.atomic import write_text_atomic, writing
from diffuseg.core.consensus import TIE_RULE, majority
from diffuseg.data import Case, CaseData, Dataset
from diffuseg.errors import ConfigError, DataError
from diffuseg.inference.prediction_folder import (
    Prediction,
    case_folders,
    load_prediction,
    run_of,
)
from diffuseg.io import Geometry
from diffuseg.metrics import (
    CONVENTIONS,
    assd,
    ci_score,
    dice,
    ece,
    ged,
    hd95,
    hm_iou,
    iou,
    reliability_curve,
    s_ncc_categorical,
    uncertainty_error_overlap,
)
from diffuseg.run.folder import training_cases

N_BINS = 10  # reliability / ECE bins, as in CONVENTIONS["ece"]
UEO_THRESHOLD = 0.5  # on the variance divided by its largest possible value
MAX_OVERLAYS = 24  # per-case figures in the report (the worst cases by Dice when there are more)
EVALUATION_CONVENTIONS: dict[str, str] = {
    "reference": "consensus metrics against the raters' majority mask (diffuseg.core.consensus); "
    "distribution metrics against all raters",
    "consensus": TIE_RULE,
    "ece_target": "rater-mean foreground mask (fraction of raters marking the pixel), all pixels",
    "uncertainty_error_overlap": "Dice(variance / v_max > 0.5, consensus != majority), v_max = "
    "0.25 (binary) or 1 - 1/K; 1 when neither errors nor uncertain pixels",
    "multi_class_evaluation": "Dice/IoU/HD95/ASSD per foreground label ('dice_1', ...) and "
    "their mean ('dice'); GED and HM-IoU average 1 - IoU over labels; CI on the foreground "
    "(label > 0)",
    "aggregation": "mean and population std (ddof=0) over cases; NaN values (e.g. HD95 with one "
    "mask empty) are left out of the mean and counted in 'n_nan'; null in JSON",
}


# ---------------------------------------------------------------------------------------------
# the API


def evaluate(pred_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, *,
             n_samples_list: Sequence[int] = (16, 100), report: bool = True,
             max_overlays: int = MAX_OVERLAYS, run: str | Path | None = None,
             strict: bool = False) -> dict[str, Any]:
    """Score every prediction case folder that names a labelled dataset case; write
    ``out_dir/summary.json`` (and ``out_dir/report.html`` with ``report``); return the summary.

    The run (``run``, else the one named in the cases' result.json) is checked: a scored case
    from the run's training split (``RUN/splits.json``) gives a warning and is listed in
    ``summary["training_cases_scored"]``; with ``strict`` it is refused (DataError), as is a run
    that cannot be checked."""
    n_samples_list = _check_sample_counts(n_samples_list)
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    dataset = Dataset.open(dataset_dir)
    cases, unmatched = match_cases(pred_dir, dataset)
    run = str(run) if run is not None else run_of(pred_dir, [c.case_id for c in cases])
    trained = check_held_out(run, [c.case_id for c in cases], strict)
    labels = dataset.info.label_values
    per_case, curves = [], []
    from diffuseg.core.progress import track

    for case in track(cases, "evaluate", unit="cases", name=lambda c: c.case_id):
        pred = load_prediction(pred_dir / case.case_id, labels)
        data = case.load()
        _check_grid(pred, data)
        metrics, curve = case_metrics(pred, data, labels, n_samples_list)
        per_case.append({"case": case.case_id, **metrics})
        curves.append(curve)
    summary = build_summary(per_case, n_samples_list, run, unmatched=unmatched,
                            reliability=pool_curves(curves))
    summary["training_cases_scored"] = trained
    with writing(out_dir):  # disk full, read-only: one line naming the folder
        out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False)
                      + "\n")
    if report:
        write_report(out_dir / "report.html", summary, pred_dir, cases, labels, max_overlays,
                     label_names={v: k for k, v in dataset.info.labels.items()})
    return summary


def check_held_out(run: str | None, case_ids: Sequence[str], strict: bool) -> list[str] | None:
    """The scored cases that the run trained on (its own splits.json is the only source of
    truth); None when the run is unknown or has no splits.json. Warns loudly, or refuses with
    ``strict``."""
    if run is None or not (Path(run) / "splits.json").is_file():
        if strict:
            why = "no run is named" if run is None else f"'{run}/splits.json' is missing"
            raise DataError(f"--strict: cannot check that the scored cases were held out ({why});"
                            " pass --run RUN (the folder of 'diffuseg train')")
        return None
    trained = training_cases(run, case_ids)
    if trained and strict:
        raise DataError(f"--strict: {len(trained)} of {len(case_ids)} scored cases were in the "
                        f"training split of run '{run}' ({_few(trained)}); predict the run's "
                        "held-out cases (its splits.json val/test) instead")
    if trained:
        warnings.warn(f"{len(trained)} of {len(case_ids)} scored cases were in the training "
                      f"split of run '{run}' ({_few(trained)}): these scores are NOT held-out "
                      "(summary.json lists them under training_cases_scored)", stacklevel=2)
    return trained


def _check_sample_counts(n_samples_list: Sequence[int]) -> tuple[int, ...]:
    counts = tuple(int(n) for n in n_samples_list)
    if not counts or min(counts) < 1:
        raise ConfigError(f"n_samples_list={list(n_samples_list)} must list sample counts >= 1, "
                          "e.g. 16 100")
    return counts


# ---------------------------------------------------------------------------------------------
# finding and reading the predictions


def match_cases(pred_dir: Path, dataset: Dataset) -> tuple[list[Case], list[str]]:
    """The labelled dataset cases that have a case folder in ``pred_dir`` (sorted by id), and the
    names of the case folders that match no labelled case."""
    folders = case_folders(pred_dir)
    labelled = {c.case_id: c for c in (*dataset.cases, *dataset.test_cases) if c.label_paths}
    if not folders:
        raise DataError(f"prediction folder '{pred_dir}' holds no case folders; run 'diffuseg "
                        f"predict RUN --dataset {dataset.root} --split test -o {pred_dir}' "
                        "first (the run's held-out cases, never its training cases)")
    matched = [labelled[name] for name in folders if name in labelled]
    if not matched:
        raise DataError(f"no case folder of '{pred_dir}' ({_few(folders)}) is a labelled case of "
                        f"'{dataset.root}' ({_few(sorted(labelled))}); predict that dataset's "
                        "images or pick the matching dataset")
    return matched, [name for name in folders if name not in labelled]


def _few(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return f"{shown}, ... {len(names)} in all" if len(names) > n else shown or "none"


def _check_grid(pred: Prediction, data: CaseData) -> None:
    if pred.consensus.shape != data.geometry.shape:
        raise DataError(f"'{pred.case_dir}' holds masks of shape {pred.consensus.shape} but case "
                        f"'{data.case_id}' has shape {data.geometry.shape}; predictions must be "
                        "written in the input's geometry")
    if len(data.raters) == 0:
        raise DataError(f"case '{data.case_id}' has no rater masks; evaluate labelled cases only")


def config_hash(run: str | None) -> str | None:
    """sha256 of the run's config.json bytes; None without a run or without its config.json."""
    path = Path(run) / "config.json" if run else None
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# per-case metrics


def case_metrics(pred: Prediction, data: CaseData, labels: Sequence[int],
                 n_samples_list: Sequence[int]) -> tuple[dict[str, Any], dict[str, list]]:
    """All metrics of one case, and its reliability curve (for the pooled diagram)."""
    raters = np.asarray(data.raters, dtype=np.int64)
    reference = majority(raters, len(labels))
    foreground = [lbl for lbl in labels if lbl != 0]
    metrics: dict[str, Any] = {"n_samples": int(len(pred.samples)), "n_raters": int(len(raters)),
                               "distance_unit": distance_unit(data.geometry)}
    metrics.update(consensus_metrics(pred.consensus, reference, foreground, data.geometry.spacing))
    metrics.update(distribution_metrics(pred.samples, raters, foreground, n_samples_list))
    metrics.update(calibration_metrics(pred, raters, reference, len(labels), n_samples_list))
    target = (raters > 0).mean(axis=0)
    return metrics, reliability_curve(pred.probability, target, N_BINS)


def distance_unit(geometry: Geometry) -> str:
    """"px" for raster images (PNG, TIFF, ...: no spacing, unit spacing is assumed), "mm" for
    NIfTI and DICOM (their spacing, taken as mm by both conventions)."""
    return "px" if geometry.kind == "png" else "mm"


def consensus_metrics(consensus: np.ndarray, reference: np.ndarray, foreground: Sequence[int],
                      spacing: Sequence[float]) -> dict[str, float]:
    """Dice, IoU, HD95, ASSD of each foreground label; with several labels, ``name_<label>`` per
    label and ``name`` their mean (NaNs left out)."""
    functions = {"dice": dice, "iou": iou, "hd95": partial(hd95, spacing=spacing),
                 "assd": partial(assd, spacing=spacing)}
    out: dict[str, float] = {}
    for name, fn in functions.items():
        values = {lbl: fn(consensus == lbl, reference == lbl) for lbl in foreground}
        if len(values) > 1:
            out.update({f"{name}_{lbl}": v for lbl, v in values.items()})
        out[name] = _nanmean(list(values.values()))
    return out


def distribution_metrics(samples: np.ndarray, raters: np.ndarray, foreground: Sequence[int],
                         n_samples_list: Sequence[int]) -> dict[str, Any]:
    """GED with the first n samples for each count of ``sample_counts``, HM-IoU and CI with the
    first of them; ``samples_used`` records the samples behind each metric."""
    by_label = {"labels": list(foreground)} if len(foreground) > 1 else {}
    s = samples if by_label else samples > 0
    y = raters if by_label else raters > 0
    out: dict[str, Any] = {}
    used: dict[str, int] = {}
    counts = sample_counts(n_samples_list, len(samples))
    for n in counts:
        out[f"ged_{n}"] = float(ged(s[:n], y, **by_label)["ged"])
        used[f"ged_{n}"] = n
    n = counts[0]
    out[f"hm_iou_{n}"] = float(hm_iou(s[:n], y, **by_label))
    used[f"hm_iou_{n}"] = used[f"ci_{n}"] = int(len(s[:n]))
    out.update(_ci(samples[:n] > 0, raters > 0, n))
    out["samples_used"] = used
    return out


def sample_counts(requested: Sequence[int], available: int) -> list[int]:
    """The sample counts a case reports metrics for: each requested count it has samples for
    (16 samples and (16, 100) -> [16]: no GED100); when it has fewer than every request, all of
    its samples under their own number ([4] for 4 samples). A metric named by a count is never
    computed from fewer samples."""
    counts = [n for n in requested if n <= available]
    return counts or [available]


def _ci(samples: np.ndarray, raters: np.ndarray, n: int) -> dict[str, float]:
    """The CI score and its components; NaN when fewer than 2 samples or 2 raters."""
    keys = ("ci", "combined_sensitivity", "max_dice", "diversity_agreement")
    names = [f"ci_{n}"] + [f"ci_{n}_{k}" for k in keys[1:]]
    if len(samples) < 2 or len(raters) < 2:
        return dict.fromkeys(names, math.nan)
    score = ci_score(samples, raters)
    return {name: float(score[key]) for name, key in zip(names, keys, strict=True)}


def calibration_metrics(pred: Prediction, raters: np.ndarray, reference: np.ndarray,
                        num_labels: int, n_samples_list: Sequence[int]) -> dict[str, float]:
    """ECE (p_bar vs rater mean), S_NCC (one-hot samples and raters), uncertainty-error overlap."""
    target = (raters > 0).mean(axis=0)
    k = max(num_labels, 2)
    samples = pred.samples[: max(n_samples_list)]
    one_hot_s = (samples[:, None] == np.arange(k).reshape(1, k, *[1] * samples[0].ndim))
    one_hot_y = (raters[:, None] == np.arange(k).reshape(1, k, *[1] * raters[0].ndim))
    v_max = 0.25 if num_labels <= 2 else 1.0 - 1.0 / num_labels
    errors = pred.consensus != reference
    return {
        "ece": ece(pred.probability, target, N_BINS),
        "s_ncc": s_ncc_categorical(one_hot_s.astype(np.float64), one_hot_y.astype(np.float64)),
        # pred = the error map, target = nothing: P xor T is then the error map itself
        "uncertainty_error_overlap": uncertainty_error_overlap(
            pred.variance / v_max, errors, np.zeros_like(errors), UEO_THRESHOLD),
    }


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


# ---------------------------------------------------------------------------------------------
# aggregation


METADATA_KEYS = ("case", "n_samples", "n_raters", "distance_unit", "samples_used")


def aggregate(per_case: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """``{metric: {"mean", "std", "n", "n_nan"}}`` over the cases that report the metric (a
    case with 16 samples has no ``ged_100``); NaN/None values are left out of mean and std
    (population, ddof = 0) and counted in ``n_nan``."""
    names = list(dict.fromkeys(k for c in per_case for k in c if k not in METADATA_KEYS))
    out: dict[str, dict[str, float | int | None]] = {}
    for name in names:
        values = [c[name] for c in per_case if name in c]
        finite = [float(v) for v in values if v is not None and not math.isnan(v)]
        out[name] = {
            "mean": float(np.mean(finite)) if finite else None,
            "std": float(np.std(finite)) if finite else None,
            "n": len(finite),
            "n_nan": len(values) - len(finite),
        }
    return out


def build_summary(per_case: list[dict[str, Any]], n_samples_list: Sequence[int],
                  run: str | None, *, unmatched: Sequence[str] = (),
                  reliability: dict[str, list] | None = None) -> dict[str, Any]:
    """nnU-Net's summary.json shape: conventions and provenance, "mean" first, then "per_case"."""
    available = [c["n_samples"] for c in per_case]
    units = sorted({c["distance_unit"] for c in per_case if "distance_unit" in c})
    reported = sorted({n for c in per_case for k, n in c.get("samples_used", {}).items()
                       if k.startswith("ged_")})
    conventions = {
        **CONVENTIONS,
        **EVALUATION_CONVENTIONS,
        "distance_unit": units[0] if len(units) == 1 else "mixed: " + ", ".join(units),
        "n_samples_requested": list(n_samples_list),
        "n_samples_available": {"min": min(available), "max": max(available)},
        "n_samples_reported": reported,
        "reliability_bins": N_BINS,
    }
    clean = [_json_safe(c) for c in per_case]
    return {"conventions": conventions, "run": run, "config_hash": config_hash(run),
            "n_cases": len(per_case), "unmatched_predictions": list(unmatched),
            "reliability": reliability, "mean": aggregate(clean), "per_case": clean}


def _json_safe(value: Any) -> Any:
    """NaN and infinities -> None (strict JSON), recursively; NumPy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def pool_curves(curves: Sequence[dict[str, list]]) -> dict[str, list]:
    """One reliability curve over the pixels of all cases: counts and per-bin sums add up."""
    counts = np.sum([c["counts"] for c in curves], axis=0)
    sums = {}
    for key in ("mean_predicted", "mean_observed"):
        parts = [np.nan_to_num(np.asarray(c[key], dtype=np.float64)) * np.asarray(c["counts"])
                 for c in curves]
        with np.errstate(invalid="ignore", divide="ignore"):
            sums[key] = np.sum(parts, axis=0) / counts
    total = max(int(counts.sum()), 1)
    gap = np.nan_to_num(np.abs(sums["mean_predicted"] - sums["mean_observed"])) * counts
    return _json_safe({"bin_centres": curves[0]["bin_centres"], **{k: v.tolist() for k, v in
                       sums.items()}, "counts": counts.astype(int).tolist(),
                       "ece": float(gap.sum() / total)})


# ---------------------------------------------------------------------------------------------
# the report


def overlay_cases(per_case: Sequence[dict[str, Any]], max_overlays: int) -> list[str]:
    """All cases when they are few, else the ``max_overlays`` worst by consensus Dice."""
    if len(per_case) <= max_overlays:
        return [c["case"] for c in per_case]
    return [c["case"] for c in worst_cases(per_case, max_overlays)]


def worst_cases(per_case: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The n cases of lowest consensus Dice (cases without a Dice last)."""
    def key(c: dict[str, Any]) -> tuple[bool, float]:
        return (c.get("dice") is None, c.get("dice") or 0.0)

    return sorted(per_case, key=key)[:n]


def write_report(path: Path, summary: dict[str, Any], pred_dir: Path, cases: Sequence[Case],
                 labels: Sequence[int], max_overlays: int = MAX_OVERLAYS,
                 label_names: dict[int, str] | None = None) -> Path:
    """Render the figures (re-reading the cases that get an overlay) and write report.html."""
    from diffuseg.evaluation.html import build_report
    from diffuseg.evaluation.plots import overlay_figure

    by_id = {c.case_id: c for c in cases}
    overlays = {}
    for case_id in overlay_cases(summary["per_case"], max_overlays):
        pred = load_prediction(pred_dir / case_id, labels)
        data = by_id[case_id].load()
        overlays[case_id] = overlay_figure(data.image, data.raters, pred.samples, pred.consensus,
                                           pred.variance)
    write_text_atomic(path, build_report(summary, overlays,
                                         title=f"diffuseg evaluation: {pred_dir}",
                                         label_names=label_names))
    return path

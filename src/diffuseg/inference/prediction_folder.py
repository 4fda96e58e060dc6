"""The prediction folder: written (``write_result``) and read (``load_prediction``) here only.

For one input, ``<out>/<case>/`` receives:

- ``sample_XX.<ext>``   every sampled mask (label map);
- ``consensus.<ext>``   the consensus mask: the majority of the samples (``core.consensus``);
- ``probability.<ext>`` the share of samples that mark the pixel as foreground (any label > 0);
- ``variance``, ``entropy``, ``mutual_information`` uncertainty maps (float) as defined in
  ``core.ensemble`` (0 wherever all samples agree); entropy and mutual information are divided
  by their maximum, log K (log 2 for a binary mask), so that every map lies in [0, 1] and 1 means
  "uniform over the classes";
- ``result.json``       shapes, sample count, per-sample foreground volume, file list, settings.

2D inputs give PNG (masks as labels 0..K-1, preview-friendly 0/255 for binary masks; float maps
scaled as documented in ``diffuseg.io``); 3D inputs give NIfTI with the input's affine.

A case folder is written into a hidden temporary sibling (``.<case>.tmp-<pid>``) and then swapped
in, so replacing a case (``predict --overwrite``) never leaves a file of the previous prediction
(e.g. a ``sample_15`` from a run with more samples). ``lock_output(folder)`` is the project's one
folder lock (``atomic.folder_lock``: a kernel lock on ``folder/.diffuseg.lock``, naming the
writer) so that two ``predict`` commands never write one output folder at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffuseg.core.atomic import folder_lock, lock_held_by_job, replace_folder, writing
from diffuseg.core.distributed import Dist, barrier, gather_objects
from diffuseg.core.ensemble import Result
from diffuseg.errors import DataError
from diffuseg.io import (
    PROBABILITY_PNG_SCALE,
    Geometry,
    file_ending,
    read_image,
    read_mask,
    write_mask,
    write_probability,
)

UNCERTAINTY_MAPS = ("variance", "entropy", "mutual_information")


def extension(geometry: Geometry) -> str:
    return ".png" if geometry.kind == "png" else ".nii.gz"


def write_result(result: Result, geometry: Geometry, case_dir: Path, *, source: Path,
                 extra: dict | None = None, image: np.ndarray | None = None,
                 also: Callable[[Path], None] | None = None) -> dict:
    """Write one case folder; an existing ``case_dir`` is replaced as a whole (atomically).
    ``image`` (the input, ``[C, *spatial]``) adds ``preview.png`` and
    ``uncertainty_preview.png`` (diffuseg.inference.previews); ``also(folder)`` writes more outputs
    (e.g.
    the DICOM objects) into the folder before it is swapped in, so they share its atomicity."""
    case_dir = Path(case_dir)
    tmp = case_dir.with_name(f".{case_dir.name}.tmp-{os.getpid()}")
    with writing(case_dir):  # disk full, file-size limit, read-only: one line, no temporary left
        case_dir.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            tmp.mkdir()
            summary = _write_files(result, geometry, tmp, source=source, extra=extra,
                                   image=image)
            if also is not None:
                also(tmp)
            replace_folder(tmp, case_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _write_files(result: Result, geometry: Geometry, case_dir: Path, *, source: Path,
                 extra: dict | None, image: np.ndarray | None) -> dict:
    ext = extension(geometry)
    labels = result.sample_labels()[:, 0].numpy()  # [S, *spatial]
    files = []
    for s, mask in enumerate(labels):
        files.append(f"sample_{s:02d}{ext}")
        write_mask(case_dir / files[-1], mask.astype(np.uint8), geometry)
    write_mask(case_dir / f"consensus{ext}", result.consensus[0].numpy().astype(np.uint8),
               geometry)
    foreground = result.foreground()[0].numpy()
    write_probability(case_dir / f"probability{ext}", foreground.astype(np.float32), geometry)
    norm = np.log(max(2, result.probability.shape[1]))
    for name in UNCERTAINTY_MAPS:
        values = getattr(result, name)[0].numpy().astype(np.float32)
        if name != "variance":
            values = np.clip(values / norm, 0.0, 1.0)
        write_probability(case_dir / f"{name}{ext}", values, geometry)
    previews = []
    if image is not None:
        from diffuseg.inference.previews import write_previews

        entropy = np.clip(result.entropy[0].numpy() / norm, 0.0, 1.0)
        previews = write_previews(case_dir, image, labels, result.consensus[0].numpy(), entropy)
    voxel = float(np.prod(geometry.spacing))
    summary = {
        "source": str(source),
        "n_samples": int(labels.shape[0]),
        "shape": list(labels.shape[1:]),
        "spacing": [float(s) for s in geometry.spacing],
        "consensus_volume": float((result.consensus[0].numpy() > 0).sum() * voxel),
        "sample_volumes": [float((m > 0).sum() * voxel) for m in labels],
        "mean_uncertainty_nats": {n: float(getattr(result, n)[0].mean())
                                  for n in UNCERTAINTY_MAPS},
        "probability_map": "share of the samples that mark the pixel (any label > 0)",
        "uncertainty_maps": "of the binarized samples, 0 where all agree: variance of their "
        "one-hot labels; entropy of their label shares and mutual information (BALD of the "
        "soft values where the samples disagree) divided by log K (log 2 for binary), in [0, 1]",
        "files": files + [f"consensus{ext}", f"probability{ext}"]
        + [f"{n}{ext}" for n in UNCERTAINTY_MAPS],
        "previews": previews,
        **(extra or {}),
    }
    (case_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------
# the lock: one writer per output folder


def lock_output(folder: str | Path, ctx: Dist | None = None
                ) -> contextlib.AbstractContextManager[Path]:
    """One writer per prediction folder: the project's one folder lock (``atomic.folder_lock``).
    Under torchrun (``ctx``: the job's ranks, ``diffuseg.core.distributed``) the job is the one
    writer: ``job_lock``."""
    if ctx is None or ctx.world == 1:
        return folder_lock(folder, "output folder")
    return job_lock(folder, ctx)


@contextlib.contextmanager
def job_lock(folder: str | Path, ctx: Dist) -> Iterator[Path]:
    """The lock of a prediction folder written by the ranks of one torchrun job (sharded
    ``predict``): rank 0 takes the folder lock and tells every rank whether it got it (a
    collective, so the others start writing only once it is held, and all stop with rank 0's
    one-line error when it is not); the other ranks write under it (``atomic.lock_held_by_job``);
    a barrier on the way out keeps it held until every rank has finished. Another ``predict`` (or
    another job) on the folder meanwhile is refused by rank 0's kernel lock, as it would be by
    one process. Ranks write disjoint case folders (each through its own ``.<case>.tmp-<pid>``
    and the atomic swap), so they need no lock among themselves."""
    with contextlib.ExitStack() as stack:
        refused = None
        if ctx.is_main:
            try:
                stack.enter_context(folder_lock(folder, "output folder"))
            except DataError as err:
                refused = err
        message = gather_objects(None if refused is None else str(refused), ctx)[0]
        if refused is not None:
            raise refused
        if message is not None:
            raise DataError(message)
        if not ctx.is_main:
            stack.enter_context(lock_held_by_job(folder))
        try:
            yield Path(folder)
        finally:
            barrier(ctx)


# ---------------------------------------------------------------------------------------------
# reading a prediction folder

PRED_ENDINGS = (".png", ".nii.gz", ".nii")


@dataclass
class Prediction:
    """One case folder of ``diffuseg predict``."""

    case_dir: Path
    samples: np.ndarray  # [S, *spatial] int64 labels
    consensus: np.ndarray  # [*spatial] int64 labels
    probability: np.ndarray  # [*spatial] float64 share of samples marking foreground, [0, 1]
    variance: np.ndarray  # [*spatial] float64
    geometry: Geometry
    info: dict[str, Any]  # result.json ({} when absent)


def case_folders(pred_dir: Path) -> list[str]:
    """The case folder names of a prediction folder, sorted (hidden temporaries left out)."""
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder '{pred_dir}' does not exist; give the -o folder of "
                        "'diffuseg predict'")
    return sorted(p.name for p in pred_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_prediction(case_dir: Path, labels: Sequence[int]) -> Prediction:
    """Read ``sample_XX``, ``consensus``, ``probability`` and ``variance`` of one case folder.
    When result.json lists the files, exactly those samples are read."""
    ending = prediction_ending(case_dir)
    info = read_info(case_dir)
    listed = [name for name in info.get("files", []) if name.startswith("sample_")]
    if listed:
        samples = [_required(case_dir / name) for name in listed]
    else:
        samples = sorted(case_dir.glob(f"sample_*{ending}"), key=_sample_index)
    if not samples:
        raise DataError(f"'{case_dir}' has no sample_XX{ending} files; re-run 'diffuseg predict' "
                        "for this case")
    consensus, geometry = read_mask(case_dir / f"consensus{ending}", labels=labels)
    shape = consensus.shape
    stack = np.stack([_same_shape(read_mask(p, labels=labels)[0], p, shape) for p in samples])
    probability = _required(case_dir / f"probability{ending}")
    variance = _required(case_dir / f"variance{ending}")
    return Prediction(
        case_dir=case_dir,
        samples=stack,
        consensus=consensus,
        probability=_unit_interval(_same_shape(read_float_map(probability), probability, shape),
                                   probability),
        variance=_same_shape(read_float_map(variance), variance, shape),
        geometry=geometry,
        info=info,
    )


def _same_shape(array: np.ndarray, path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` when it has the consensus's shape; else a DataError naming ``path``."""
    if array.shape != shape:
        raise DataError(f"'{path}' has shape {array.shape} but the case's consensus has {shape}; "
                        "the case folder mixes predictions, re-run 'diffuseg predict' for this "
                        "case (with --overwrite)")
    return array


def read_info(case_dir: Path) -> dict[str, Any]:
    """A case folder's result.json ({} when absent)."""
    path = case_dir / "result.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"'{path}' is not valid JSON; re-run 'diffuseg predict' for this "
                        "case") from None
    return info if isinstance(info, dict) else {}


def run_of(pred_dir: Path, case_ids: Sequence[str]) -> str | None:
    """The run folder named by the cases' result.json (key "run"), or None."""
    runs = {str(r) for r in (read_info(pred_dir / c).get("run") for c in case_ids) if r}
    if len(runs) > 1:
        shown = ", ".join(sorted(runs)[:3])
        raise DataError(f"the cases of '{pred_dir}' come from {len(runs)} runs ({shown}); "
                        "evaluate one run's predictions at a time")
    return runs.pop() if runs else None


def prediction_ending(case_dir: Path) -> str:
    for ending in PRED_ENDINGS:
        if (case_dir / f"consensus{ending}").is_file():
            return ending
    raise DataError(f"'{case_dir}' has no consensus.png or consensus.nii.gz; it is not an output "
                    "folder of 'diffuseg predict' (move it out of the prediction folder)")


def _sample_index(path: Path) -> int:
    match = re.match(r"sample_(\d+)", path.name)
    return int(match[1]) if match else -1


def _required(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"'{path}' is missing; re-run 'diffuseg predict' for this case")
    return path


def read_float_map(path: Path) -> np.ndarray:
    """A float map ``[*spatial]`` written by ``io.write_probability``: NIfTI/TIFF as stored,
    PNG as value / PROBABILITY_PNG_SCALE (the writer stored round(scale * p))."""
    array, _ = read_image(path)
    values = array[0].astype(np.float64)
    return values / PROBABILITY_PNG_SCALE if file_ending(path) == ".png" else values


def _unit_interval(values: np.ndarray, path: Path, tol: float = 1e-4) -> np.ndarray:
    """Probabilities clipped to [0, 1] (float32 rounding); refuses values clearly outside."""
    if values.size and (not np.isfinite(values).all() or values.min() < -tol
                        or values.max() > 1 + tol):
        raise DataError(f"'{path}' holds values in [{values.min():g}, {values.max():g}], not "
                        "probabilities in [0, 1]; re-run 'diffuseg predict' for this case")
    return np.clip(values, 0.0, 1.0)

"""A job folder as the review page sees it (no HTTP here).

Jobs are those of ``diffuseg.service.jobs.JobStore``: ``DATA_DIR/jobs/{id}/`` with ``job.json``,
``input/`` (the upload file, or the DICOM series in ``input/series/``), ``output/`` (the case
folder of ``diffuseg.inference.prediction_folder.write_result``) and ``dicom/``. Review adds
``guided/`` (the latest
guided resampling, same layout as ``output/``), ``approved/`` (the approved mask in the output's
format, ``approved_seg.dcm`` for a DICOM series, ``review.json``) and ``review.json`` (the
decision: approved / rejected).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from diffuseg.errors import DataError
from diffuseg.inference.prediction_folder import UNCERTAINTY_MAPS
from diffuseg.io import Geometry, read_image, read_mask, write_mask

MAPS = ("probability", *UNCERTAINTY_MAPS)
SEG_FILE = "approved_seg.dcm"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def case_folder(job: Path, source: str = "output") -> Path:
    """``output/`` itself when it holds result.json, else its single case subfolder."""
    root = job / source
    if (root / "result.json").is_file():
        return root
    found = sorted(p.parent for p in root.glob("*/result.json"))
    if not found:
        raise DataError(f"job '{job.name}' has no {source} result yet")
    return found[0]


def input_paths(job: Path) -> list[Path]:
    """The channel files of the job's image, or ``[input/series]`` for a DICOM series."""
    from diffuseg.inference.predictor import list_inputs

    series = job / "input" / "series"
    return [series] if series.is_dir() else list_inputs(job / "input")[0]


def is_dicom(job: Path) -> bool:
    """The job's image is a DICOM series (uploaded as a zip or fetched from the PACS)."""
    return (job / "input" / "series").is_dir()


@dataclass
class Case:
    image: np.ndarray  # [*spatial] float32 (first channel)
    geometry: Geometry  # of the outputs (input grid)
    consensus: np.ndarray  # [*spatial] uint8
    samples: np.ndarray  # [S, *spatial] uint8
    maps: dict[str, np.ndarray]  # probability, variance, entropy, mutual_information in [0, 1]
    ext: str
    n_labels: int = 2  # label values 0..n_labels-1: 2 for a binary run, K for a K-class run


def load_case(job: Path, source: str = "output", n_labels: int = 2) -> Case:
    """The job's image, consensus, samples and maps. ``n_labels`` = 2 (binary run): masks as
    0/1 (any non-zero value is foreground); K > 2 (a K-class run): label maps 0..K-1."""
    from diffuseg.inference.predictor import read_channels

    folder = case_folder(job, source)
    summary = read_json(folder / "result.json") or {}
    ext = ".png" if (folder / "consensus.png").is_file() else ".nii.gz"
    image, _ = read_channels(input_paths(job))
    labels = None if n_labels <= 2 else range(n_labels)
    consensus, geometry = read_mask(folder / f"consensus{ext}", labels=labels)
    samples = np.stack([read_mask(folder / f"sample_{s:02d}{ext}", labels=labels)[0]
                        for s in range(int(summary.get("n_samples", 0)))])
    maps = {}
    for name in MAPS:
        values = read_image(folder / f"{name}{ext}")[0][0].astype(np.float32)
        maps[name] = values / 255.0 if ext == ".png" else values
    if n_labels <= 2:
        consensus, samples = consensus > 0, samples > 0
    return Case(image[0].astype(np.float32), geometry, consensus.astype(np.uint8),
                samples.astype(np.uint8), maps, ext, max(2, n_labels))


def write_approved(job: Path, mask: np.ndarray, case: Case, record: dict, *,
                   method: str = "diffuseg", label_names: dict[int, str] | None = None,
                   code_table: dict | None = None) -> list[str]:
    """The approved mask (a label map) in the output's format (on the output grid) and, for a
    DICOM series, a reviewed DICOM-SEG (``reviewed_seg``) with one segment per foreground label
    present (binary runs: always segment 1); returns the files written under ``approved/``."""
    out = job / "approved"
    out.mkdir(exist_ok=True)
    name = f"approved_mask{case.ext}"
    tmp = out / f".tmp_{name}"
    write_mask(tmp, mask.astype(np.uint8), case.geometry)
    os.replace(tmp, out / name)
    files = [name]
    if is_dicom(job):
        reviewed_seg(job, mask, out / SEG_FILE, reviewer=record["user"], method=method,
                     label_names=seg_labels(mask, case.n_labels, label_names),
                     code_table=code_table)
        files.append(SEG_FILE)
    record = {**record, "files": files,
              "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(out / "review.json", record)
    return files


def approved_file(job: Path, dicom: bool = True) -> tuple[Path | None, str]:
    """The approved mask of a job whose latest decision is 'approved': the reviewed DICOM-SEG
    when ``dicom`` and the input is a DICOM series, else the mask in the output's format (PNG or
    NIfTI); (None, why) when there is none."""
    record = read_json(job / "review.json") or {}
    decision = record.get("decision")
    if decision != "approved":
        return None, (f"its review decision is '{decision}'" if decision else
                      "it has not been approved on the review page yet")
    files = record.get("files") or []
    seg = [f for f in files if f == SEG_FILE]
    masks = [f for f in files if f.startswith("approved_mask")]
    chosen = seg if dicom and seg else masks
    path = job / "approved" / chosen[0] if chosen else None
    if path is None or not path.is_file():
        return None, "its approved files are missing from the job folder"
    return path, ""


def seg_labels(mask: np.ndarray, n_labels: int, names: dict[int, str] | None
               ) -> dict[int, str]:
    """{label: name} of the SEG's segments: label 1 for a binary run (present or not), the
    foreground labels present in ``mask`` for a K-class run (label 1 when none is)."""
    names = names or {}
    present = [int(v) for v in np.unique(mask) if v > 0] if n_labels > 2 else []
    default = "foreground" if n_labels <= 2 else "label {}"
    return {k: names.get(k, default.format(k)) for k in (present or [1])}


def reviewed_seg(job: Path, mask: np.ndarray, path: Path, *, reviewer: str, method: str,
                 label_names: dict[int, str], code_table: dict | None = None) -> Path:
    """A BINARY DICOM-SEG of label map ``mask`` (one segment per label of ``label_names``,
    segment number = label value) derived from the job's series, its segments marked
    SEMIAUTOMATIC and its series described as reviewed, with ``reviewer`` as ContentCreatorName
    (``diffuseg.io.dicom_seg.binary_seg``; segments coded from ``code_table``, the run's
    ``diffuseg.io.segment_codes.user_table``; SeriesNumber 9005, apart from the consensus SEG's).

    Grid: ``mask`` lies on the output grid, which is the grid ``diffuseg.io.read_image`` gives the
    series (``write_result`` writes the outputs on the input's geometry, and the page draws on
    that array): ``[columns, rows, slices]`` with the slices sorted along the normal. That is the
    order ``binary_seg`` expects, with the reference headers in the same sorted order:
    ``reference_for`` of the series' geometry gives them so (not the file names' order)."""
    from diffuseg.io.dicom_seg import binary_seg, reference_for, save_atomic

    _, geometry = read_image(input_paths(job)[0])
    if geometry.kind != "dicom":
        raise DataError(f"job '{job.name}': the input is not a DICOM series; no DICOM-SEG")
    seg = binary_seg(mask.astype(np.uint8), reference_for(geometry), label_names=label_names,
                     method=method, content_creator=reviewer, reviewed=True,
                     series_description="diffuseg segmentation", code_table=code_table)
    return save_atomic(seg, path)


def decode_mask(data: bytes, shape: tuple[int, ...], n_labels: int = 2) -> np.ndarray:
    """Raw uint8 bytes (C order) from the page -> a mask of ``shape``: binary (any non-zero value
    is foreground) when ``n_labels`` = 2, else a label map whose values must lie in
    0..n_labels-1."""
    n = int(np.prod(shape))
    if len(data) != n:
        raise DataError(f"the mask holds {len(data)} values; the image has {n} {list(shape)}")
    values = np.frombuffer(data, np.uint8).reshape(shape)
    if n_labels <= 2:
        return (values > 0).astype(np.uint8)
    high = int(values.max(initial=0))
    if high >= n_labels:
        raise DataError(f"the mask holds label value {high}; this run's labels are "
                        f"0..{n_labels - 1}")
    return values.copy()

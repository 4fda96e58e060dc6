"""A job folder as the review page sees it (no HTTP here).

``DATA_DIR/jobs/{job_id}/``: ``job.json``, ``input/`` (the image: NIfTI/PNG or a DICOM series),
``output/`` (the case folder of ``diffuseg.outputs.write_result``, or one case folder inside it),
and what review adds: ``guided/`` (the latest guided resampling, same layout), ``approved/`` (the
approved mask in the input's format, ``approved.dcm`` for DICOM input when DICOM-SEG writing is
available, ``review.json``) and ``review.json`` (the decision: approved / rejected).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from diffuseg.errors import DataError
from diffuseg.io import Geometry, read_image, read_mask, write_mask
from diffuseg.outputs import UNCERTAINTY_MAPS

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAPS = ("probability", *UNCERTAINTY_MAPS)
log = logging.getLogger(__name__)


def job_path(data_dir: Path, job_id: str) -> Path:
    """The job's folder; DataError for an id that is not a plain name or does not exist."""
    if not JOB_ID.match(job_id) or ".." in job_id:
        raise DataError(f"job id {job_id!r} is not valid")
    path = Path(data_dir) / "jobs" / job_id
    if not (path / "job.json").is_file():
        raise DataError(f"job {job_id!r} does not exist")
    return path


def list_jobs(data_dir: Path) -> list[dict]:
    jobs = []
    root = Path(data_dir) / "jobs"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            info = json.loads((folder / "job.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        info["review"] = read_json(folder / "review.json")
        jobs.append(info)
    return jobs


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
    """The channel files of the job's image (or the DICOM series folder)."""
    from diffuseg.inference import list_inputs

    return list_inputs(job / "input")[0]


def is_dicom(job: Path) -> bool:
    info = read_json(job / "job.json") or {}
    return info.get("source") == "pacs" or input_paths(job) == [job / "input"]


@dataclass
class Case:
    image: np.ndarray  # [*spatial] float32 (first channel)
    geometry: Geometry  # of the outputs (input grid)
    consensus: np.ndarray  # [*spatial] uint8
    samples: np.ndarray  # [S, *spatial] uint8
    maps: dict[str, np.ndarray]  # probability, variance, entropy, mutual_information in [0, 1]
    ext: str


def load_case(job: Path, source: str = "output") -> Case:
    from diffuseg.inference import read_channels

    folder = case_folder(job, source)
    summary = read_json(folder / "result.json") or {}
    ext = ".png" if (folder / "consensus.png").is_file() else ".nii.gz"
    image, _ = read_channels(input_paths(job))
    consensus, geometry = read_mask(folder / f"consensus{ext}")
    samples = np.stack([read_mask(folder / f"sample_{s:02d}{ext}")[0]
                        for s in range(int(summary.get("n_samples", 0)))])
    maps = {}
    for name in MAPS:
        values = read_image(folder / f"{name}{ext}")[0][0].astype(np.float32)
        maps[name] = values / 255.0 if ext == ".png" else values
    return Case(image[0].astype(np.float32), geometry, (consensus > 0).astype(np.uint8),
                (samples > 0).astype(np.uint8), maps, ext)


def write_approved(job: Path, mask: np.ndarray, case: Case, record: dict,
                   label: str = "lesion") -> list[str]:
    """The approved mask in the input's format (and DICOM-SEG for a DICOM series); returns the
    files written under ``approved/``."""
    out = job / "approved"
    out.mkdir(exist_ok=True)
    name = f"approved_mask{case.ext}"
    tmp = out / f".tmp_{name}"
    write_mask(tmp, mask.astype(np.uint8), case.geometry)
    os.replace(tmp, out / name)
    files = [name]
    if is_dicom(job):
        files += write_dicom_seg(job, mask, record, label)
    record = {**record, "files": files,
              "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(out / "review.json", record)
    return files


def write_dicom_seg(job: Path, mask: np.ndarray, record: dict, label: str) -> list[str]:
    """A BINARY DICOM-SEG labelled as reviewed, with the reviewer as content creator, through
    ``diffuseg.io.dicom_seg.binary_seg`` (issue 12); skipped with a log note when absent."""
    try:
        from diffuseg.io.dicom_seg import binary_seg
    except ImportError:
        log.warning("diffuseg.io.dicom_seg is not available: approved DICOM-SEG not written "
                    "for job %s", job.name)
        return []
    import pydicom

    refs = [pydicom.dcmread(p) for p in sorted((job / "input").rglob("*")) if p.is_file()]
    seg = binary_seg(mask, refs, label_names=[label], method=record.get("method", "diffuseg"),
                     content_creator=record["user"], reviewed=True,
                     series_description="diffuseg reviewed segmentation")
    seg.save_as(job / "approved" / "approved_seg.dcm")
    return ["approved_seg.dcm"]


def decode_mask(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Raw uint8 bytes (C order) from the page -> a binary mask of ``shape``."""
    n = int(np.prod(shape))
    if len(data) != n:
        raise DataError(f"the mask holds {len(data)} values; the image has {n} {list(shape)}")
    return (np.frombuffer(data, np.uint8).reshape(shape) > 0).astype(np.uint8)

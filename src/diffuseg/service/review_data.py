"""A job folder as the review page sees it (no HTTP here).

Jobs are those of ``diffuseg.service.jobs.JobStore``: ``DATA_DIR/jobs/{id}/`` with ``job.json``,
``input/`` (the upload file, or the DICOM series in ``input/series/``), ``output/`` (the case
folder of ``diffuseg.outputs.write_result``) and ``dicom/``. Review adds ``guided/`` (the latest
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
from diffuseg.io import Geometry, read_image, read_mask, write_mask
from diffuseg.outputs import UNCERTAINTY_MAPS

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
    from diffuseg.inference import list_inputs

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


def write_approved(job: Path, mask: np.ndarray, case: Case, record: dict, *,
                   method: str = "diffuseg", label: str = "foreground") -> list[str]:
    """The approved mask in the output's format (on the output grid) and, for a DICOM series, a
    reviewed DICOM-SEG (``reviewed_seg``); returns the files written under ``approved/``."""
    out = job / "approved"
    out.mkdir(exist_ok=True)
    name = f"approved_mask{case.ext}"
    tmp = out / f".tmp_{name}"
    write_mask(tmp, mask.astype(np.uint8), case.geometry)
    os.replace(tmp, out / name)
    files = [name]
    if is_dicom(job):
        reviewed_seg(job, mask, out / SEG_FILE, reviewer=record["user"], method=method,
                     label=label)
        files.append(SEG_FILE)
    record = {**record, "files": files,
              "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(out / "review.json", record)
    return files


def reviewed_seg(job: Path, mask: np.ndarray, path: Path, *, reviewer: str, method: str,
                 label: str) -> Path:
    """A BINARY DICOM-SEG of ``mask`` derived from the job's series, its segment marked
    SEMIAUTOMATIC and its series described as reviewed, with ``reviewer`` as ContentCreatorName
    (``diffuseg.io.dicom_seg.binary_seg``).

    Grid: ``mask`` lies on the output grid, which is the grid ``diffuseg.io.read_image`` gives the
    series (``write_result`` writes the outputs on the input's geometry, and the page draws on
    that array): ``[columns, rows, slices]`` with the slices sorted along the normal. That is the
    order ``binary_seg`` expects, with the reference headers in the same sorted order:
    ``reference_for`` of the series' geometry gives them so (not the file names' order)."""
    from diffuseg.io.dicom_seg import binary_seg, reference_for, save_atomic

    _, geometry = read_image(input_paths(job)[0])
    if geometry.kind != "dicom":
        raise DataError(f"job '{job.name}': the input is not a DICOM series; no DICOM-SEG")
    seg = binary_seg(mask.astype(np.uint8), reference_for(geometry), label_names={1: label},
                     method=method, content_creator=reviewer, reviewed=True,
                     series_description="diffuseg segmentation")
    return save_atomic(seg, path)


def decode_mask(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Raw uint8 bytes (C order) from the page -> a binary mask of ``shape``."""
    n = int(np.prod(shape))
    if len(data) != n:
        raise DataError(f"the mask holds {len(data)} values; the image has {n} {list(shape)}")
    return (np.frombuffer(data, np.uint8).reshape(shape) > 0).astype(np.uint8)

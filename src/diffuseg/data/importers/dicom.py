"""``diffuseg convert dicom``: DICOM studies (one folder per series) into 3D NIfTI cases.

A *study folder* is any folder under the source (the source itself included) with a sub-folder
whose name contains ``image`` (e.g. ``T1post``). In it, exactly one sub-folder must match the
image, each ``channels`` entry (extra image series on the same grid, e.g. ``FLAIRreg``) and each
``masks`` entry (one per rater, e.g. ``MaskTumor``): a mask is a series of label values on the
image's grid, like TCIA's Brain-Tumor-Progression ``MaskTumor``. Geometry comes from the DICOM
headers (``diffuseg.io.read_dicom_series``); every channel and mask must share the image's grid
within 1e-3 mm. The case id is the study folder's path below the source joined by ``_`` (the
source's own name when it is the study); its group is the PatientID, so studies of one patient
stay in one split. Studies are read and written one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom

from diffuseg.core.paths import check_separate
from diffuseg.data.dataset import DatasetInfo, write_dataset
from diffuseg.data.importers.common import DEFAULT_LABELS, ImportSummary, finish, label_map
from diffuseg.errors import DataError
from diffuseg.io import Geometry, read_image, read_mask


def find_studies(src: Path, image: str) -> list[Path]:
    """Folders under ``src`` (inclusive) with a sub-folder whose name contains ``image``."""
    if not src.is_dir():
        raise DataError(f"'{src}' is not a folder; pass a study folder or one above it")
    folders = [src, *sorted(p for p in src.rglob("*") if p.is_dir())]
    studies = [f for f in folders if any(image in c.name for c in _subfolders(f))]
    if not studies:
        raise DataError(f"no folder under '{src}' has a series folder named like '*{image}*'; "
                        "check --image (a part of the image series' folder name)")
    return studies


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def series_folder(study: Path, part: str, what: str) -> Path:
    """The one sub-folder of ``study`` whose name contains ``part``."""
    matches = [p for p in _subfolders(study) if part in p.name]
    if len(matches) != 1:
        names = [p.name for p in _subfolders(study)]
        raise DataError(f"'{study}' has {len(matches)} series folders matching {what} '{part}' "
                        f"(folders: {names[:8]}); give a part of the name that picks one")
    return matches[0]


def case_id_of(study: Path, src: Path) -> str:
    parts = study.relative_to(src).parts
    return "_".join(parts) if parts else src.resolve().name


def patient_id(geometry: Geometry, fallback: str) -> str:
    files = geometry.extras.get("files") or []
    if not files:
        return fallback
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return str(header.get("PatientID", "") or fallback)


def load_study(study: Path, image: str, channels: Sequence[str], masks: Sequence[str],
               labels: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """``image [1 + len(channels), X, Y, Z]``, ``raters [len(masks), X, Y, Z]`` and the image
    series' geometry (RAS affine from the DICOM headers)."""
    reference = series_folder(study, image, "--image")
    array, geometry = read_image(reference)
    parts = [array]
    for part in channels:
        folder = series_folder(study, part, "--channel")
        extra, extra_geometry = read_image(folder)
        _same_grid(folder, extra_geometry, reference, geometry)
        parts.append(extra)
    raters = []
    for part in masks:
        folder = series_folder(study, part, "--mask")
        mask, mask_geometry = read_mask(folder, labels=labels)
        _same_grid(folder, mask_geometry, reference, geometry)
        raters.append(mask)
    return np.concatenate(parts), np.stack(raters), geometry


def _same_grid(folder: Path, geometry: Geometry, reference: Path, grid: Geometry) -> None:
    if not geometry.same_grid(grid):
        gap = float(np.abs(geometry.affine - grid.affine).max()) if geometry.shape == grid.shape \
            else float("inf")
        raise DataError(f"series '{folder}' {geometry.shape} is not on the grid of '{reference}' "
                        f"{grid.shape} (affines {gap:.3g} mm apart); resample it onto the image "
                        "series first")


def import_dicom(src: str | Path, dst: str | Path, *, image: str, masks: Sequence[str],
                 channels: Sequence[str] = (), labels: Sequence[str] = DEFAULT_LABELS,
                 overwrite: bool = False) -> ImportSummary:
    """Convert every study under ``src`` (module docstring) into a 3D NIfTI dataset."""
    src, dst = Path(src), Path(dst)
    check_separate(src, dst, "convert dicom")  # never write into the input
    if not masks:
        raise DataError("give at least one --mask (a part of the mask series' folder name)")
    studies = find_studies(src, image)
    label_values = label_map(labels)
    info = DatasetInfo.from_dict({
        "channel_names": {str(c): n for c, n in enumerate([image, *channels])},
        "labels": label_values, "numTraining": 0, "file_ending": ".nii.gz",
        "raters": len(masks), "spatial_dims": 3, "name": src.resolve().name,
        "source": "DICOM series converted by diffuseg convert dicom"}, "the import options")
    groups: dict[str, str] = {}

    def cases() -> Iterator[tuple[str, np.ndarray, np.ndarray, Geometry]]:
        for study in studies:
            case_id = case_id_of(study, src)
            volume, raters, geometry = load_study(study, image, channels, masks,
                                                  tuple(label_values.values()))
            groups[case_id] = patient_id(geometry, case_id)
            yield case_id, volume, raters, geometry

    write_dataset(dst, cases(), info, overwrite=overwrite)
    return finish(dst, groups)

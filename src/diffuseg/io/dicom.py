"""Read a DICOM series (one folder of single-frame slices) as a volume with a RAS affine.

Slices are sorted by their position along the slice normal n = r x c, where r and c are the row
and column direction cosines of ImageOrientationPatient (DICOM PS3.3 C.7.6.2.1.1). The voxel
(i, j, k) = (column, row, slice) lies at, in LPS millimetres,

    P(i, j, k) = IPP_0 + r * dc * i + c * dr * j + s * k,

with (dr, dc) = PixelSpacing (row spacing first) and s = (IPP_last - IPP_0) / (N - 1) the mean
slice step (so a gantry tilt appears as a shear). LPS -> RAS negates the first two rows:
A_ras = diag(-1, -1, 1, 1) A_lps, the affine nibabel and dcm2niix use. Pixel values pass through
the modality LUT (RescaleSlope / RescaleIntercept).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from diffuseg.errors import DataError
from diffuseg.io.limits import check_finite, check_image_size

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class DicomSeries:
    array: np.ndarray  # [columns, rows, slices] float32, modality LUT applied
    affine: np.ndarray  # 4x4 float64, voxel (i, j, k) -> RAS mm
    extras: dict[str, Any]  # UIDs, modality, description, sorted source files


def dicom_affine(orientation: np.ndarray, first_position: np.ndarray,
                 pixel_spacing: tuple[float, float], slice_step: np.ndarray) -> np.ndarray:
    """RAS affine of a series from ImageOrientationPatient, the first slice's
    ImagePositionPatient, PixelSpacing (row, column) and the slice step vector (module doc)."""
    row_cosine, column_cosine = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    lps = np.eye(4)
    lps[:3, 0] = row_cosine * pixel_spacing[1]
    lps[:3, 1] = column_cosine * pixel_spacing[0]
    lps[:3, 2] = slice_step
    lps[:3, 3] = first_position
    return LPS_TO_RAS @ lps


def read_dicom_series(path: str | Path, *, series_uid: str | None = None) -> DicomSeries:
    """Read the series in folder ``path`` (or the single file ``path``).

    A folder holding several series is refused with their UIDs listed, unless ``series_uid``
    names one of them.
    """
    path = Path(path)
    datasets = _read_headers(path)
    by_series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in datasets:
        by_series[str(ds.get("SeriesInstanceUID", "unknown"))].append(ds)
    if series_uid is not None:
        if series_uid not in by_series:
            raise DataError(f"series_uid '{series_uid}' is not in '{path}'; it holds "
                            f"{_describe(by_series)}")
        chosen = by_series[series_uid]
    elif len(by_series) > 1:
        raise DataError(f"'{path}' mixes {len(by_series)} DICOM series: {_describe(by_series)}; "
                        "pass series_uid= to pick one, or put each series in its own folder")
    else:
        chosen = next(iter(by_series.values()))
    return _assemble(path, chosen)


def _describe(by_series: dict[str, list[pydicom.Dataset]]) -> str:
    return ", ".join(f"{uid} ({len(items)} files, '{items[0].get('SeriesDescription', '')}')"
                     for uid, items in sorted(by_series.items()))


def _read_headers(path: Path) -> list[pydicom.Dataset]:
    if not path.exists():
        raise DataError(f"'{path}' does not exist; check the path")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) \
        if path.is_dir() else [path]
    datasets = []
    for file in files:
        try:
            ds = pydicom.dcmread(file, defer_size="1 KB")
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as err:
            if not path.is_dir():
                raise DataError(f"'{file}' is not a readable DICOM file ({err}); check the "
                                "file or export it again") from None
            continue  # stray non-DICOM files (notes, thumbnails) are skipped
        if "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        subfolders = sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
        hint = f"; it holds folders {subfolders[:5]}: pass one series folder" if subfolders \
            else "; pass a folder of DICOM slices"
        raise DataError(f"'{path}' holds no DICOM image files{hint}")
    return datasets


def _geometry_tags(ds: pydicom.Dataset, where: Path) -> tuple[np.ndarray, np.ndarray]:
    missing = [t for t in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
                           "Rows", "Columns") if t not in ds]
    if missing:
        raise DataError(f"DICOM '{where}' lacks {missing}, so its geometry is unknown; export "
                        "the series with patient geometry or convert it with dcm2niix")
    try:
        orientation = np.array(ds.ImageOrientationPatient, dtype=np.float64).reshape(6)
        position = np.array(ds.ImagePositionPatient, dtype=np.float64).reshape(3)
        spacing = np.array(ds.PixelSpacing, dtype=np.float64).reshape(2)
    except (ValueError, TypeError):
        orientation = position = spacing = np.array([np.nan])
    if not (np.all(np.isfinite([*orientation, *position, *spacing])) and spacing.min() > 0):
        raise DataError(f"DICOM '{where}' has an invalid ImageOrientationPatient (6 numbers), "
                        "ImagePositionPatient (3) or PixelSpacing (2 positive); fix the export")
    return orientation, position


def _assemble(path: Path, slices: list[pydicom.Dataset]) -> DicomSeries:
    first = slices[0]
    if _number_tag(first, "NumberOfFrames", 1) != 1:
        raise DataError(f"'{path}' is a multi-frame DICOM; only single-frame series are read, "
                        "convert it to NIfTI with dcm2niix")
    orientation, _ = _geometry_tags(first, Path(first.filename))
    normal = np.cross(orientation[:3], orientation[3:])
    positions = []
    for ds in slices:
        o, p = _geometry_tags(ds, Path(ds.filename))
        same = (ds.Rows, ds.Columns) == (first.Rows, first.Columns) and np.allclose(
            o, orientation, atol=1e-4) and np.allclose(ds.PixelSpacing, first.PixelSpacing)
        if not same:
            raise DataError(f"'{ds.filename}' differs from '{first.filename}' in size, orientation "
                            f"or pixel spacing; '{path}' is not one regular series")
        positions.append(p)
    _check_size_tags(path, first, len(slices))
    order = np.argsort([p @ normal for p in positions], kind="stable")
    slices = [slices[i] for i in order]
    positions = np.array([positions[i] for i in order])
    step = _slice_step(path, positions, normal, first)
    spacing = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    affine = dicom_affine(orientation, positions[0], spacing, step)
    array = np.stack([_pixels(ds) for ds in slices])  # [k, rows, columns]
    check_finite(path, array.astype(np.float32, copy=False))  # e.g. a slope of 1e300
    return DicomSeries(np.ascontiguousarray(array.transpose(2, 1, 0)), affine, _extras(slices))


def _slice_step(path: Path, positions: np.ndarray, normal: np.ndarray,
                first: pydicom.Dataset) -> np.ndarray:
    if len(positions) == 1:
        thickness = _number_tag(first, "SpacingBetweenSlices", 0.0) or _number_tag(
            first, "SliceThickness", 0.0) or 1.0
        return normal * thickness
    gaps = np.diff(positions @ normal)
    if gaps.min() < 1e-3:
        raise DataError(f"'{path}' has several images at one slice position (echoes, time points "
                        "or duplicates?); split them into one folder per series")
    if gaps.max() - gaps.min() > 0.01 * np.median(gaps) + 1e-3:
        raise DataError(f"'{path}' has uneven slice gaps {gaps.min():.3f}..{gaps.max():.3f} mm "
                        "(a missing slice?); complete the series or resample it")
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def _number_tag(ds: pydicom.Dataset, name: str, default: float) -> float:
    """A numeric tag as a finite float (``default`` when absent or empty); text, NaN or Inf in
    it is a DataError naming the file."""
    try:
        raw = ds.get(name)
        value = default if raw is None or raw == "" else float(raw)
    except (TypeError, ValueError, OverflowError):
        value = float("nan")
    if not np.isfinite(value):
        shown = " ".join(repr(ds.get(name, "?")).split())[:40]
        raise DataError(f"DICOM '{ds.filename}' has {name} {shown}, not a finite number; fix "
                        "the export")
    return value


def _check_size_tags(path: Path, first: pydicom.Dataset, n_slices: int) -> None:
    """Rows and Columns are positive integers within the memory budget, checked before any pixel
    is decoded."""
    size = []
    for name in ("Rows", "Columns"):
        value = _number_tag(first, name, 0)
        if value < 1 or value != int(value):
            raise DataError(f"DICOM '{first.filename}' has {name} {value:g}; it must be a "
                            "positive integer, fix the export")
        size.append(int(value))
    check_image_size(path, (size[1], size[0], n_slices), "DICOM series")


def _modality_lut(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """RescaleSlope and RescaleIntercept must be finite numbers and the slope non-zero."""
    slope = _number_tag(ds, "RescaleSlope", 1.0)
    intercept = _number_tag(ds, "RescaleIntercept", 0.0)
    if slope == 0:
        raise DataError(f"DICOM '{ds.filename}' has RescaleSlope 0, which makes every pixel equal; "
                        "fix the export")
    if "ModalityLUTSequence" not in ds:  # the linear LUT, with the values checked above
        return np.asarray(pixels.astype(np.float64) * slope + intercept, dtype=np.float32)
    try:
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        reason = " ".join(str(err).split())
        raise DataError(f"cannot apply the modality LUT of '{ds.filename}' ({reason}); fix the "
                        "export") from None


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, OSError, TypeError,
            KeyError) as err:
        reason = " ".join(str(err).split())  # one line
        raise DataError(f"cannot decode the pixels of '{ds.filename}' ({reason}); install "
                        "pylibjpeg or decompress the series (e.g. dcmdjpeg)") from None
    if pixels.ndim != 2:
        raise DataError(f"'{ds.filename}' holds {pixels.shape} pixels; only single-frame "
                        "grey slices are read")
    return _modality_lut(ds, pixels)


def _extras(slices: list[pydicom.Dataset]) -> dict[str, Any]:
    first = slices[0]
    return {
        "series_uid": str(first.get("SeriesInstanceUID", "")),
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "modality": str(first.get("Modality", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "sop_instance_uids": [str(ds.get("SOPInstanceUID", "")) for ds in slices],
        "files": [str(ds.filename) for ds in slices],
    }

"""A synthetic DICOM series written with pydicom: oblique, anisotropic, files in shuffled order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def write_series(folder: Path, *, rows: int = 20, columns: int = 24, slices: int = 7,
                 pixel_spacing: tuple[float, float] = (0.7, 0.9), slice_step: float = 3.0,
                 angles: tuple[float, float] = (20.0, 15.0), seed: int = 0,
                 study_uid: str | None = None, omit: Sequence[str] = (),
                 extra: dict[str, Any] | None = None) -> tuple[Path, np.ndarray]:
    """Write an MR series of ``slices`` files; returns (folder, volume [columns, rows, slices])
    with the stored values, slice k at origin + k * slice_step * normal. ``omit``: attributes
    left out (e.g. PatientName, as anonymised exports do); ``extra``: attributes added or
    replaced (e.g. Laterality)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frame = rotation(*angles)
    row_cosine, column_cosine, normal = frame[:, 0], frame[:, 1], frame[:, 2]
    origin = np.array([-40.0, 12.5, 30.0])
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    volume = rng.integers(0, 1000, size=(columns, rows, slices)).astype(np.uint16)
    order = rng.permutation(slices)  # file names do not follow the slice order
    for k in range(slices):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = "Synthetic^Phantom", "SYN-001"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyID, ds.StudyDate, ds.StudyTime = "1", "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, k + 1
        ds.SeriesDescription = "synthetic oblique"
        ds.Manufacturer = "test"
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*row_cosine, *column_cosine)]
        position = origin + k * slice_step * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.PixelSpacing = [str(s) for s in pixel_spacing]
        ds.SliceThickness = str(slice_step)
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).tobytes()
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        for keyword in omit:
            delattr(ds, keyword)
        ds.save_as(folder / f"im{order[k]:03d}.dcm", enforce_file_format=True)
    return folder, volume


def mr_slice(path: Path, pixels: np.ndarray, position: Sequence[float],
             orientation: Sequence[float], spacing: Sequence[float], series: str = "1.2.3.4",
             **changes: object) -> None:
    """The one writer of a plain MR image slice (uint16, MONOCHROME2); ``changes`` set (or, with
    None, delete) attributes of the dataset before it is saved."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series, "1.2.3", "MR"
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def dicom_slice(path: Path, z: float, series: str = "1.2.3.4", **changes: object) -> None:
    """A 3x4 axial slice at height ``z`` (pixels 0..11, spacing 0.5 mm)."""
    mr_slice(path, np.arange(12).reshape(3, 4), [0.0, 0.0, z], [1, 0, 0, 0, 1, 0], [0.5, 0.5],
             series, **changes)

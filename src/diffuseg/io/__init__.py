"""Readers and writers that keep geometry: PNG/TIFF/JPEG, NIfTI and DICOM series folders."""

from diffuseg.io.dicom import DicomSeries, dicom_affine, read_dicom_series
from diffuseg.io.images import (
    NIFTI_ENDINGS,
    PROBABILITY_PNG_SCALE,
    RASTER_ENDINGS,
    Geometry,
    file_ending,
    read_image,
    read_mask,
    write_image,
    write_mask,
    write_preview_png,
    write_probability,
)

__all__ = [
    "NIFTI_ENDINGS",
    "PROBABILITY_PNG_SCALE",
    "RASTER_ENDINGS",
    "DicomSeries",
    "Geometry",
    "dicom_affine",
    "file_ending",
    "read_dicom_series",
    "read_image",
    "read_mask",
    "write_image",
    "write_mask",
    "write_preview_png",
    "write_probability",
]

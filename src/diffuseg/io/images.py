"""Read and write images, masks and probability maps with their geometry.

Conventions (see docs/dataset_format.md):

- Arrays are channel-first: images ``[C, *spatial]`` float32, masks ``[*spatial]`` int64.
- Raster files (PNG/TIFF/JPEG) are 2D, ``[C, H, W]`` in row-major order (axis 0 = rows); their
  Geometry has an identity affine and unit spacing. Grey -> C = 1, RGB(A) -> C = 3 (alpha dropped).
- NIfTI keeps the voxel axes as stored (i, j, k) and the affine nibabel reports (RAS+, mm); a 4D
  file is ``[X, Y, Z, C]`` on disk and ``[C, X, Y, Z]`` here.
- A folder is a DICOM series (``diffuseg.io.dicom``): axes (column, row, slice) as NIfTI converters
  write them, and the LPS affine converted to RAS.
- Masks are written with their label values 0..K-1 (nnU-Net's convention), never 0/255;
  ``write_preview_png`` makes a 0/255 picture for viewing.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from PIL import Image

from diffuseg.errors import DataError, DiffusegError
from diffuseg.io.dicom import read_dicom_series
from diffuseg.io.limits import (
    check_affine,
    check_finite,
    check_image_size,
    check_png_complete,
    check_raster_size,
)

RASTER_ENDINGS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
NIFTI_ENDINGS = (".nii.gz", ".nii")
PROBABILITY_PNG_SCALE = 255  # a probability p is stored in PNG as round(255 * p)
_NIFTI_ERRORS = (OSError, EOFError, ValueError, OverflowError, zlib.error, ImageFileError,
                 HeaderDataError)
_FIX_IMAGE = "re-export it from its source, or check that the copy finished"


@dataclass(eq=False)
class Geometry:
    """Where the voxels of an array lie in space.

    ``affine`` maps a voxel index (i, j, k, 1) to RAS+ millimetres (the NIfTI/nibabel convention;
    a 2D array uses the first two columns). ``header`` is the nibabel header of a NIfTI source, so
    that writing back keeps qform/sform, their codes and the rest of the header; ``extras`` holds
    DICOM identifiers (series/study/frame-of-reference UIDs, the sorted source files).
    """

    affine: np.ndarray
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    kind: Literal["png", "nifti", "dicom"]
    header: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        return len(self.shape)

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...], kind: str = "nifti",
                    header: Any = None, extras: dict[str, Any] | None = None) -> Geometry:
        """Spacing is the length of each affine column (nibabel's ``voxel_sizes``)."""
        affine = np.array(affine, dtype=np.float64)
        spacing = tuple(float(s) for s in voxel_sizes(affine)[: len(shape)])
        return cls(affine, spacing, tuple(int(s) for s in shape), kind, header, extras or {})

    @classmethod
    def identity(cls, shape: tuple[int, ...], kind: str = "png") -> Geometry:
        """Unit spacing at the origin: the geometry of a raster image."""
        return cls.from_affine(np.eye(4), shape, kind)

    def same_grid(self, other: Geometry, atol: float = 1e-3) -> bool:
        """Same spatial shape and affines equal within ``atol`` (mm, element-wise)."""
        return self.shape == other.shape and bool(
            np.allclose(self.affine, other.affine, rtol=0.0, atol=atol))


def _one_line(err: BaseException) -> str:
    """A library's error message on one line (some span several)."""
    return " ".join(str(err).split())


def file_ending(path: str | Path) -> str:
    """The lower-case ending that decides the format: ``.nii.gz`` or the last suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


# ---------------------------------------------------------------------------------------------
# reading


def read_image(path: str | Path, *, series_uid: str | None = None
               ) -> tuple[np.ndarray, Geometry]:
    """Read an image as ``[C, *spatial]`` float32 and its Geometry (module docstring: axes)."""
    path = Path(path)
    kind, data, geometry = _read_any(path, series_uid)
    if kind == "raster":
        channels = _raster_image_channels(data, path)
        check_finite(path, channels)  # a float TIFF (mode F) may hold NaN/Inf
        return channels, geometry
    data = np.asarray(data, dtype=np.float32)
    check_finite(path, data)  # after the cast: 1e300 * slope is finite in float64, not float32
    channels = data[None] if data.ndim == geometry.spatial_dims else np.moveaxis(data, -1, 0)
    return np.ascontiguousarray(channels), geometry


def read_mask(path: str | Path, *, labels: Collection[int] | None = None,
              series_uid: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a label mask as ``[*spatial]`` int64 and its Geometry.

    Values must lie in ``labels`` (the declared label set; ``{0, 1}`` for raster files when not
    given, any non-negative integer for NIfTI/DICOM). A mask stored as 0/255 is read as 0/1 when
    the label set is binary. RGB masks are accepted when their channels are equal.
    """
    path = Path(path)
    kind, data, geometry = _read_any(path, series_uid)
    if kind == "raster":
        data = _raster_mask_plane(data, path)
    elif data.ndim == geometry.spatial_dims + 1 and data.shape[-1] == 1:
        data = data[..., 0]
    if kind != "raster":
        check_finite(path, np.asarray(data))
    if data.ndim != geometry.spatial_dims:
        raise DataError(f"mask '{path}' has {data.shape[-1]} channels; a mask must be a single "
                        "label volume, save one file per rater")
    return _as_labels(np.asarray(data), path, labels, raster=kind == "raster"), geometry


def _read_any(path: Path, series_uid: str | None) -> tuple[str, Any, Geometry]:
    """Dispatch on the path: ("raster", PIL image, ...), ("nifti"|"dicom", ndarray, ...)."""
    if path.is_dir() or file_ending(path) == ".dcm":
        series = read_dicom_series(path, series_uid=series_uid)
        geometry = Geometry.from_affine(series.affine, series.array.shape, "dicom",
                                        extras=series.extras)
        check_affine(path, geometry.affine, geometry.spatial_dims)
        return "dicom", series.array, geometry
    if not path.exists():
        raise DataError(f"'{path}' does not exist; check the path")
    ending = file_ending(path)
    if ending in RASTER_ENDINGS:
        image = _open_raster(path)
        return "raster", image, Geometry.identity((image.height, image.width))
    if ending in NIFTI_ENDINGS:
        data, geometry = _read_nifti(path)
        check_affine(path, geometry.affine, geometry.spatial_dims)
        return "nifti", data, geometry
    raise DataError(f"'{path}' has an unknown file type '{ending}'; use .png, .tif, .jpg, .nii, "
                    ".nii.gz or a DICOM series folder")


def _open_raster(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise DataError(f"'{path}' holds {image.n_frames} pages; multi-page images are "
                                "not read, save the volume as NIfTI (.nii.gz)")
            check_raster_size(path, image)  # from the header, before decoding
            image.load()
            if image.format == "PNG":  # PIL zero-fills rows missing from the data
                check_png_complete(path, path.read_bytes())
            return image
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"'{path}' is not a readable image ({_one_line(err)}); {_FIX_IMAGE}"
                        ) from None


def _raster_image_channels(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBa", "RGBX"):
        image = image.convert("L" if mode == "1" else "RGB")
    elif mode in ("LA", "La"):
        image = image.getchannel(0)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        return np.ascontiguousarray(array[None])
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(np.moveaxis(array, -1, 0))
    raise DataError(f"'{path}' has image mode {mode} that is not read; save it as grey or RGB")


def _raster_mask_plane(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode in ("LA", "La", "PA"):
        image = image.getchannel(0)
    array = np.asarray(image)
    if array.ndim == 3:
        colour = array[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1])
                and np.array_equal(colour[..., 0], colour[..., 2])):
            raise DataError(f"mask '{path}' is a colour image with differing channels; save it "
                            "as a grey PNG of label values 0..K-1")
        array = colour[..., 0]
    return array.astype(np.int64) if array.dtype == bool else array


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    try:
        image = nib.load(path)  # reads the header only
        check_image_size(path, image.shape)
        data = np.asanyarray(image.dataobj)  # applies scl_slope/scl_inter
    except DiffusegError:  # over the memory budget, or a bad budget setting
        raise
    except FileNotFoundError:
        raise DataError(f"'{path}' does not exist; check the path") from None
    except MemoryError:
        raise DataError(f"'{path}' declares a data array too large for memory; its header is "
                        f"probably damaged: {_FIX_IMAGE}") from None
    except _NIFTI_ERRORS as err:
        raise DataError(f"'{path}' is not a readable NIfTI file ({_one_line(err)}); it may be "
                        f"truncated or not NIfTI: {_FIX_IMAGE}") from None
    if data.dtype.kind not in "biuf":
        raise DataError(f"'{path}' holds {data.dtype} voxels; only real-valued NIfTI files are "
                        "read, convert it to one grey channel per file")
    if data.ndim not in (2, 3, 4):
        raise DataError(f"'{path}' has {data.ndim} dimensions {data.shape}; expected 2D, 3D, or 4D "
                        "with channels last")
    spatial = data.shape if data.ndim < 4 else data.shape[:3]
    geometry = Geometry.from_affine(image.affine, spatial, "nifti", header=image.header.copy())
    return data, geometry


def _as_labels(data: np.ndarray, path: Path, labels: Collection[int] | None,
               raster: bool) -> np.ndarray:
    """Integer labels checked against the declared set; binary 0/255 -> 0/1."""
    integral = np.all(np.isfinite(data)) and np.all(data == np.round(data))
    if data.dtype.kind == "f" and not integral:
        raise DataError(f"mask '{path}' holds non-integer values; a mask stores label values "
                        "0..K-1 (resample masks with nearest-neighbour interpolation)")
    if data.size and (data.min() < -(2**31) or data.max() > 2**31):
        raise DataError(f"mask '{path}' has values up to {data.max():g}; a mask stores label "
                        "values 0..K-1")
    mask = data.astype(np.int64)
    values = set(np.unique(mask).tolist())
    allowed = set(labels) if labels is not None else ({0, 1} if raster else None)
    if allowed is None and min(values, default=0) >= 0:
        return mask
    if allowed is not None and values <= allowed:
        return mask
    if allowed is not None and values <= {0, 255} and 1 in allowed and 255 not in allowed:
        return (mask == 255).astype(np.int64)
    shown = sorted(values)[:10]
    expected = sorted(allowed) if allowed is not None else "non-negative integers"
    raise DataError(f"mask '{path}' has values {shown} but the labels are {expected}; save it with "
                    "label values 0..K-1 (0/255 for a binary mask) or declare the labels")


# ---------------------------------------------------------------------------------------------
# writing


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry) -> Path:
    """Write ``[C, *spatial]``. NIfTI: float32, channels last. PNG/JPEG: C in {1, 3} with integer
    values (0..255; 0..65535 for one-channel PNG). TIFF: one channel as float32 (exact)."""
    path, array = Path(path), np.asarray(array)
    _check_shape(path, array.shape[1:], geometry, "image")
    ending = _writable_ending(path)
    if ending in NIFTI_ENDINGS:
        if array.shape[0] > 1 and geometry.spatial_dims == 2:
            raise DataError(f"cannot write a {array.shape[0]}-channel 2D image to NIfTI '{path}'; "
                            "write one file per channel")
        data = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
        return _write_nifti(path, data.astype(np.float32), geometry)
    if array.shape[0] not in (1, 3):
        raise DataError(f"cannot write a {array.shape[0]}-channel image to '{path}'; raster files "
                        "hold 1 (grey) or 3 (RGB) channels, write one file per channel")
    if ending in (".tif", ".tiff") and array.shape[0] == 1:
        return _save_raster(path, array[0].astype(np.float32))
    high = 65535 if ending == ".png" and array.shape[0] == 1 else 255
    pixels = _integer_pixels(path, array, high, "image")
    return _save_raster(path, pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1))


def write_mask(path: str | Path, array: np.ndarray, geometry: Geometry) -> Path:
    """Write label values 0..K-1 (uint8 when K <= 256) keeping the geometry."""
    path, array = Path(path), np.asarray(array)
    _check_shape(path, array.shape, geometry, "mask")
    ending = _writable_ending(path)
    if ending in (".jpg", ".jpeg"):
        raise DataError(f"cannot write mask '{path}' as JPEG: its compression changes label "
                        "values; use .png or .nii.gz")
    high = 65535 if ending in (".png", ".nii", ".nii.gz") else 255
    labels = _integer_pixels(path, array, high, "mask")
    if file_ending(path) in NIFTI_ENDINGS:
        return _write_nifti(path, labels, geometry)
    return _save_raster(path, labels)


def write_probability(path: str | Path, array: np.ndarray, geometry: Geometry) -> Path:
    """Write a float map ``[*spatial]`` (or ``[C, *spatial]`` for NIfTI). NIfTI and TIFF keep
    float32 exactly; PNG stores p in [0, 1] as uint8 round(255 p), read back as value / 255."""
    path, array = Path(path), np.asarray(array, dtype=np.float32)
    if array.ndim == geometry.spatial_dims + 1 and array.shape[0] == 1:
        array = array[0]
    ending = _writable_ending(path)
    if ending in NIFTI_ENDINGS and array.ndim == geometry.spatial_dims + 1:
        return write_image(path, array, geometry)
    _check_shape(path, array.shape, geometry, "probability map")
    if ending in NIFTI_ENDINGS:
        return _write_nifti(path, array, geometry)
    if ending in (".tif", ".tiff"):
        return _save_raster(path, array)
    if not (np.all(np.isfinite(array)) and array.min() >= 0.0 and array.max() <= 1.0):
        raise DataError(f"'{path}': PNG stores maps with values in [0, 1]; this one spans "
                        f"[{array.min():g}, {array.max():g}], write .tif or .nii.gz instead")
    return _save_raster(path, np.round(array * PROBABILITY_PNG_SCALE).astype(np.uint8))


def write_preview_png(path: str | Path, mask: np.ndarray) -> Path:
    """A 2D mask as a grey picture for viewing: label k -> round(255 k / max label), so a
    binary mask becomes 0/255."""
    path, mask = Path(path), np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"preview '{path}' needs a 2D mask, got shape {mask.shape}; pick a slice")
    top = max(int(mask.max()), 1)
    return _save_raster(path, np.round(mask.astype(np.float64) * 255 / top).astype(np.uint8))


def _writable_ending(path: Path) -> str:
    ending = file_ending(path)
    if ending not in RASTER_ENDINGS + NIFTI_ENDINGS:
        raise DataError(f"cannot write '{path}': unknown file type '{ending or path.name}'; use "
                        ".png, .tif or .nii.gz (DICOM output goes through DICOM-SEG)")
    return ending


def _check_shape(path: Path, spatial: tuple[int, ...], geometry: Geometry, what: str) -> None:
    if tuple(spatial) != geometry.shape:
        raise DataError(f"cannot write {what} '{path}': spatial shape {tuple(spatial)} differs "
                        f"from its geometry's {geometry.shape}; pass the geometry of this array")
    if file_ending(path) in RASTER_ENDINGS and len(spatial) != 2:
        raise DataError(f"cannot write a {len(spatial)}D {what} to '{path}'; raster files are "
                        "2D, use .nii.gz")


def _integer_pixels(path: Path, array: np.ndarray, high: int, what: str) -> np.ndarray:
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise DataError(f"cannot write {what} '{path}': it holds non-integer values; round or "
                        "scale it to integers, or write .tif / .nii.gz to keep floats")
    if array.size and (array.min() < 0 or array.max() > high):
        raise DataError(f"cannot write {what} '{path}': values span [{array.min()}, "
                        f"{array.max()}] but this format holds 0..{high}; rescale or use .nii.gz")
    return array.astype(np.uint8 if array.size == 0 or array.max() <= 255 else np.uint16)


def _save_raster(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)
    return path


def _write_nifti(path: Path, data: np.ndarray, geometry: Geometry) -> Path:
    """Keep a NIfTI source's header (qform/sform and codes); otherwise both forms get code 1."""
    header = geometry.header.copy() if geometry.header is not None else None
    cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = cls(data, geometry.affine, header=header)
    if header is None:
        image.set_qform(geometry.affine, code=1)
        image.set_sform(geometry.affine, code=1)
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path

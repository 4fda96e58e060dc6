"""Receiving inputs safely: uploads written under server-made names, zip archives checked before
anything is extracted, DICOM headers checked before any pixel is allocated.

Nothing here builds a path from a client string: an upload becomes ``input/upload.<ext>`` (the
extension chosen from a fixed list) and the members of a zip become ``input/series/00000.dcm``,
``00001.dcm``, ... A zip is refused (400) as a whole, before extraction, when a member has an
absolute path, a ``..`` component or is a symbolic link, when it holds too many members, when the
declared uncompressed total exceeds ``max_unpacked_bytes``, or when the declared uncompressed
total, or one member over 1 MiB, exceeds ``max_zip_ratio`` times its compressed size (a
decompression bomb, however it is split into members); extraction also stops at the declared
sizes.

The memory an image needs is checked from its header before any pixel is decoded: the float32
array the reader returns against ``DIFFUSEG_MAX_IMAGE_BYTES`` (``diffuseg.io.limits``), and its
number of spatial axes, returned with the path, against the model's (``app.submit``).
"""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

from diffuseg.errors import DiffusegError
from diffuseg.io.limits import check_image_size
from diffuseg.service.settings import ServiceSettings

CHUNK = 1 << 20
KINDS = {".nii.gz": "nifti", ".nii": "nifti", ".png": "png", ".zip": "zip"}
MAGIC = {"png": b"\x89PNG", "zip": b"PK\x03\x04"}


class UploadError(Exception):
    """A refused input: HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, " ".join(reason.split())


def upload_kind(filename: str) -> tuple[str, str]:
    """('nifti' | 'png' | 'zip', the extension) from the client's file name."""
    name = filename.lower()
    for ending, kind in KINDS.items():
        if name.endswith(ending):
            return kind, ending
    raise UploadError(400, f"unsupported upload '{filename[:80]}'; send a .nii.gz, .nii, .png, "
                      "or a .zip of one DICOM series")


def save_stream(source: BinaryIO, dest: Path, limit: int) -> int:
    """Copy ``source`` to ``dest``; 413 once more than ``limit`` bytes arrive."""
    size = 0
    with open(dest, "wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise UploadError(413, f"upload larger than the limit of {limit} bytes")
            out.write(chunk)
    return size


def receive_upload(source: BinaryIO, filename: str, input_dir: Path,
                   settings: ServiceSettings) -> tuple[Path, int]:
    """Store an upload under ``input_dir``; returns the path the job reads (a file or the
    series folder) and its spatial axes (2 or 3) from the header. Headers are checked here; the
    pixels are read by the caller."""
    kind, ending = upload_kind(filename)
    input_dir.mkdir(parents=True, exist_ok=True)
    stored = input_dir / f"upload{ending}"
    save_stream(source, stored, settings.max_upload_bytes)
    head = stored.open("rb").read(4)
    if kind in MAGIC and not head.startswith(MAGIC[kind]):
        raise UploadError(400, f"'{filename[:80]}' is not a {kind.upper()} file")
    if kind == "zip":
        series = input_dir / "series"
        extract_zip(stored, series, settings)
        stored.unlink()
        check_dicom_headers(sorted(series.iterdir()), settings.max_voxels)
        return series, 3
    if kind == "nifti":
        return stored, check_nifti_header(stored, settings.max_voxels, filename)
    check_png_header(stored, settings.max_voxels)
    return stored, 2


def _bad_name(name: str) -> bool:
    posix = name.replace("\\", "/")
    return (posix.startswith("/") or bool(re.match(r"^[A-Za-z]:", posix))
            or ".." in PurePosixPath(posix).parts)


def _members(archive: zipfile.ZipFile, settings: ServiceSettings, packed: int
             ) -> list[zipfile.ZipInfo]:
    """The members to extract, every check of the module docstring passed; ``packed`` is the
    size of the zip file (bytes)."""
    infos = archive.infolist()
    if len(infos) > settings.max_files:
        raise UploadError(400, f"the zip holds {len(infos)} members; at most "
                          f"{settings.max_files} are accepted")
    members, total = [], 0
    for info in infos:
        if _bad_name(info.filename):
            raise UploadError(400, f"zip member '{info.filename[:80]}' has an absolute path or "
                              "'..'; refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadError(400, f"zip member '{info.filename[:80]}' is a link; refused")
        base = PurePosixPath(info.filename.replace("\\", "/")).name
        if info.is_dir() or base.startswith(".") or "__MACOSX" in info.filename:
            continue
        total += info.file_size
        if total > settings.max_unpacked_bytes:
            raise UploadError(400, f"the zip unpacks to more than {settings.max_unpacked_bytes} "
                              "bytes (a decompression bomb?); refused")
        if info.file_size > CHUNK and info.file_size > settings.max_zip_ratio * max(
                1, info.compress_size):
            raise UploadError(400, f"zip member '{info.filename[:80]}' expands "
                              f"{info.file_size / max(1, info.compress_size):.0f}-fold (a "
                              "decompression bomb?); refused")
        members.append(info)
    if not members:
        raise UploadError(400, "the zip holds no files; send a zip of one DICOM series")
    if total > CHUNK and total > settings.max_zip_ratio * max(1, packed):
        raise UploadError(400, f"the zip's {len(members)} members unpack to {total} bytes, "
                          f"{total / max(1, packed):.0f} times its {packed} bytes (over "
                          f"{settings.max_zip_ratio:g}; a decompression bomb?); refused")
    return members


def extract_zip(path: Path, dest: Path, settings: ServiceSettings) -> None:
    """Check every member (module docstring), then extract them as ``dest/00000.dcm``, ..."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, settings, path.stat().st_size)
            dest.mkdir()
            for i, info in enumerate(members):
                with archive.open(info) as src, open(dest / f"{i:05d}.dcm", "wb") as out:
                    written = 0
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > info.file_size:
                            raise UploadError(400, f"zip member '{info.filename[:80]}' is larger "
                                              "than it declares; refused")
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as err:
        raise UploadError(400, f"the upload is not a readable zip ({err})") from None


def check_dicom_headers(files: list[Path], max_voxels: int) -> None:
    """Every file is DICOM, and Rows * Columns * frames summed over files stays within
    ``max_voxels``: checked from the headers, before any pixel data is read."""
    total = 0
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            voxels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(
                ds.get("NumberOfFrames", 1) or 1) * int(ds.get("SamplesPerPixel", 1) or 1)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError, TypeError,
                AttributeError, KeyError) as err:
            raise UploadError(400, f"member {file.name} is not a readable DICOM file ({err})"
                              ) from None
        total += voxels
        if total > max_voxels:
            raise UploadError(400, f"the DICOM series holds more than {max_voxels} voxels "
                              f"(Rows {ds.get('Rows')} x Columns {ds.get('Columns')} ...); "
                              "refused before reading its pixels")


def check_nifti_header(path: Path, max_voxels: int, name: str = "upload") -> int:
    """The NIfTI's spatial axes (2 or 3; a 4th axis holds channels), from its header; refused
    (400) when it holds more than ``max_voxels`` voxels or its float32 array would exceed
    ``DIFFUSEG_MAX_IMAGE_BYTES``: before any voxel is decompressed."""
    try:
        shape = nib.load(path).header.get_data_shape()
    except Exception as err:  # nibabel raises many types on corrupt headers
        raise UploadError(400, f"the upload is not a readable NIfTI file ({err})") from None
    if int(np.prod(shape, dtype=np.int64)) > max_voxels:
        raise UploadError(400, f"the NIfTI image has shape {tuple(shape)}, more than "
                          f"{max_voxels} voxels; refused")
    try:
        check_image_size(name[:80], shape, "NIfTI image")  # the client's name, not our path
    except DiffusegError as err:
        raise UploadError(400, describe_error(err)) from None
    return min(len(shape), 3)


def check_png_header(path: Path, max_voxels: int) -> None:
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UploadError(400, f"the upload is not a readable PNG file ({err})") from None
    if width * height > max_voxels:
        raise UploadError(400, f"the PNG is {width} x {height}, more than {max_voxels} pixels")


def describe_error(err: DiffusegError) -> str:
    return " ".join(str(err).split())


def series_info(folder: Path) -> dict[str, str]:
    """patient_name ('Family, Given'), study_date (YYYY-MM-DD) and series_description of a DICOM
    series, from the header of its first file, for the worklist (empty strings where absent)."""
    files = sorted(folder.iterdir())
    if not files:
        return {}
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    name = str(ds.get("PatientName", "") or "").split("=")[0]  # the alphabetic group
    family, _, rest = name.partition("^")
    given = rest.split("^")[0]
    date = str(ds.get("StudyDate", "") or "")
    if re.fullmatch(r"\d{8}", date):
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return {"patient_name": _line(", ".join(part for part in (family, given) if part)),
            "study_date": _line(date), "series_description": _line(
                str(ds.get("SeriesDescription", "") or ""))}


def _line(text: str, limit: int = 64) -> str:
    return " ".join(text.split())[:limit]

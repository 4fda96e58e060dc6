"""Guards every image read passes (docs/validation.md): a size budget checked from the header
before any pixel is decoded, finite voxel values, and a finite, non-degenerate affine.

The budget is ``DIFFUSEG_MAX_IMAGE_BYTES`` (default 2 GiB), counted as the float32 array the
reader returns (every channel). Raster files are also held to PIL's decompression-bomb limit,
``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 million pixels unless changed).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from diffuseg.core.memory import gib, max_image_bytes
from diffuseg.errors import DataError

FLOAT_BYTES = 4  # readers return float32


def check_image_size(path: Path | str, shape: tuple[int, ...], what: str = "image") -> None:
    """Refuse a ``shape`` (every axis, channels included) whose float32 array exceeds the budget;
    called with the header's shape, before the data are read."""
    dims = [int(s) for s in shape]
    if any(s < 1 for s in dims):
        raise DataError(f"'{path}' declares a {what} of shape {tuple(dims)}; every axis needs at "
                        "least one voxel, the header is damaged: re-export the file")
    need = math.prod(dims) * FLOAT_BYTES
    limit = max_image_bytes()
    if need > limit:
        raise DataError(f"'{path}' declares a {what} of shape {tuple(dims)} ({gib(need)} as "
                        f"float32), over the {gib(limit)} memory budget; crop or downsample it, "
                        "or raise DIFFUSEG_MAX_IMAGE_BYTES")


def check_raster_size(path: Path | str, image: Image.Image) -> None:
    """Size of a raster from its header (PIL reads the header only until ``load``)."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit is not None and pixels > limit:
        raise DataError(f"'{path}' is {image.width}x{image.height} pixels, over PIL's limit of "
                        f"{limit} pixels (PIL.Image.MAX_IMAGE_PIXELS); crop or downsample it")
    check_image_size(path, (len(image.getbands()), image.height, image.width))


def check_finite(path: Path | str, array: np.ndarray, what: str = "voxels") -> None:
    """NaN or Inf values (after any rescaling) would give NaN maps and an empty consensus."""
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise DataError(f"'{path}' has {bad} NaN/Inf {what} (after rescaling to float32); replace "
                        "them (e.g. with 0) or fix the scaling, then export it again")


def check_affine(path: Path | str, affine: np.ndarray, spatial_dims: int) -> None:
    """The voxel-to-world map must be finite and invertible on the image's axes."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise DataError(f"'{path}' has a non-finite affine (NaN/Inf in its voxel-to-world "
                        "matrix); fix the header's qform/sform or pixdim")
    axes = affine[:3, :spatial_dims]
    singular = np.linalg.svd(axes, compute_uv=False)
    if singular.max() <= 0 or singular.min() <= 1e-8 * singular.max():
        raise DataError(f"'{path}' has a degenerate affine (zero voxel size or parallel axes, "
                        f"spacing {np.round(np.linalg.norm(axes, axis=0), 6).tolist()}); fix the "
                        "header's pixdim / orientation")


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel (PNG spec 11.2.2)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # (x0, y0, dx, dy) of the seven interlace passes (PNG spec 8.2)


def check_png_complete(where: Path | str, raw: bytes) -> None:
    """Refuse a PNG whose pixel data (the inflated IDAT stream) is shorter than its header
    declares: PIL fills the missing rows with zeros without a word, and a zero-filled image
    would be segmented as if it were real. Malformed chunk structure is left to the decoder."""
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        return
    header, idat, offset = None, [], 8
    while offset + 8 <= len(raw):
        length = int.from_bytes(raw[offset:offset + 4], "big")
        kind, data = raw[offset + 4:offset + 8], raw[offset + 8:offset + 8 + length]
        if kind == b"IHDR" and len(data) == 13:
            header = data
        elif kind == b"IDAT":
            idat.append(data)
        elif kind == b"IEND":
            break
        offset += 12 + length
    if header is None:
        return
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, interlace = header[8], header[9], header[12]
    if colour not in PNG_CHANNELS:
        return
    bits = depth * PNG_CHANNELS[colour]
    passes = ADAM7 if interlace == 1 else ((0, 0, 1, 1),)
    expected = sum(rows * (1 + (cols * bits + 7) // 8) for rows, cols in (
        (max(0, -(-(height - y0) // dy)), max(0, -(-(width - x0) // dx)))
        for x0, y0, dx, dy in passes) if rows and cols)
    found = _inflated_size(idat, expected)
    if found is not None and found < expected:
        row = 1 + (width * bits + 7) // 8
        rows = f"{found // row} of its {height} rows" if interlace != 1 else \
            f"{found} of the {expected} bytes"
        raise DataError(f"'{where}' holds pixel data for {rows} (the header declares "
                        f"{width}x{height}); the file is truncated or damaged: re-export it "
                        "or copy it again")


def _inflated_size(chunks: list[bytes], enough: int) -> int | None:
    """Bytes the zlib stream of ``chunks`` inflates to, counting no further than ``enough``
    (nothing is kept); None when the stream is not valid zlib (the decoder says why)."""
    inflate, total = zlib.decompressobj(), 0
    try:
        for data in chunks:
            while data and total < enough:
                total += len(inflate.decompress(data, min(enough - total, 1 << 22)))
                data = inflate.unconsumed_tail
            if total >= enough:
                return total
    except zlib.error:
        return None
    return total

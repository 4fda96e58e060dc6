"""Malformed files and dataset.json values give the project's own errors, never another
exception (hypothesis), and each common mistake gets one clear line naming the file."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_synth import dicom_slice
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffuseg.data import Dataset, DatasetInfo, write_dataset
from diffuseg.errors import DataError, DiffusegError
from diffuseg.io import Geometry, read_dicom_series, read_image, read_mask

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
ENDINGS = (".png", ".tif", ".jpg", ".nii", ".nii.gz", ".dcm")


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per hypothesis example (pytest's tmp_path is per test, not per example)."""
    folder = Path(tempfile.mkdtemp(prefix="diffuseg-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def only_our_errors(read: Callable[..., object], *args: object, **kwargs: object) -> None:
    """Call ``read``; a DiffusegError naming the file on one line is the expected refusal, a
    result must hold only finite values and a finite affine; anything else fails the test."""
    try:
        result = read(*args, **kwargs)
    except DiffusegError as err:
        message, path = str(err), Path(args[0])
        assert message and "\n" not in message, repr(err)
        assert path.name in message or ".dcm" in message, message
        return
    array, affine = (result.array, result.affine) if hasattr(result, "array") else (
        result[0], result[1].affine)
    assert np.isfinite(array).all() and np.isfinite(affine).all()
    assert array.size > 0


def read_both(path: Path) -> None:
    only_our_errors(read_image, path)
    only_our_errors(read_mask, path)
    only_our_errors(read_mask, path, labels=(0, 1, 2))


def nifti_bytes(shape: tuple[int, ...] = (4, 3, 2), dtype: type = np.int16) -> bytes:
    image = nib.Nifti1Image(np.arange(np.prod(shape), dtype=dtype).reshape(shape) % 3, np.eye(4))
    return image.to_bytes()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# image and mask readers


@FUZZ
@given(data=st.binary(max_size=600), ending=st.sampled_from(ENDINGS))
def test_random_bytes_with_valid_endings(data, ending):
    with scratch() as folder:
        path = folder / f"x{ending}"
        path.write_bytes(data)
        read_both(path)
        (folder / "gz.nii.gz").write_bytes(gzip.compress(data))
        read_both(folder / "gz.nii.gz")


VALID = {
    ".png": png_bytes(np.array([[0, 255], [255, 0]], dtype=np.uint8)),
    ".nii": nifti_bytes(),
    ".nii.gz": gzip.compress(nifti_bytes()),
}


@FUZZ
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8]),
       bad=st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e39]), max_size=3),
       affine=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=12,
                       max_size=12) | st.none(),
       slope=st.sampled_from([None, 1e38, 1e-38, -2.0]), compress=st.booleans())
def test_nifti_voxels_and_affines(shape, dtype, bad, affine, slope, compress):
    """NaN/Inf voxels (also through scl_slope), arbitrary sforms: refused or finite."""
    data = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    for k, value in enumerate(bad):
        data.reshape(-1)[k % data.size] = value
    with np.errstate(all="ignore"):
        data = data.astype(dtype)
    header = nib.Nifti1Header()
    if affine is not None:
        header.set_sform(np.vstack([np.reshape(affine, (3, 4)), [0, 0, 0, 1]]), code=1)
    image = nib.Nifti1Image(data, None if affine is not None else np.eye(4), header=header)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    with scratch() as folder:
        path = folder / ("v.nii.gz" if compress else "v.nii")
        try:
            nib.save(image, path)
        except Exception:  # noqa: BLE001 (nibabel would not write this one)
            return
        read_both(path)


@FUZZ
@given(width=st.sampled_from([0, 1, 3, 10000, 70000, 2**31 - 1]),
       height=st.sampled_from([0, 1, 3, 10000, 70000, 2**31 - 1]),
       depth=st.sampled_from([1, 8, 16]), colour=st.sampled_from([0, 2, 3, 4, 6]),
       body=st.binary(max_size=30))
def test_png_headers_declaring_any_size(width, height, depth, colour, body):
    """Sizes come from IHDR; huge ones are refused before any pixel is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) \
        + chunk(b"IEND", b"")
    with scratch() as folder:
        (folder / "h.png").write_bytes(raw)
        read_both(folder / "h.png")


@FUZZ
@given(ending=st.sampled_from(sorted(VALID)), fraction=st.floats(0.0, 0.999))
def test_truncated_files(ending, fraction):
    with scratch() as folder:
        path = folder / f"cut{ending}"
        raw = VALID[ending]
        path.write_bytes(raw[: int(len(raw) * fraction)])
        read_both(path)


# (offset, struct format) of NIfTI-1 header fields (nifti1.h)
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "<i"), "dim": (40, "<8h"), "datatype": (70, "<h"), "bitpix": (72, "<h"),
    "pixdim": (76, "<8f"), "vox_offset": (108, "<f"), "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"), "qform_code": (252, "<h"), "sform_code": (254, "<h"),
    "quatern": (256, "<6f"), "srow": (280, "<12f"),
}
NIFTI_DTYPE_CODES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048,
                     2304]  # incl. complex, RGB24, RGBA32 and float128
ANY_SHORT = st.integers(-(2**15), 2**15 - 1)
ODD_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def corrupted_nifti(draw) -> bytes:
    raw = bytearray(nifti_bytes())
    for name in draw(st.lists(st.sampled_from(sorted(NIFTI_FIELDS)), min_size=1, max_size=3)):
        offset, fmt = NIFTI_FIELDS[name]
        count = struct.calcsize(fmt) // (2 if fmt[-1] == "h" else 4)
        if name == "datatype":
            values = [draw(st.sampled_from(NIFTI_DTYPE_CODES) | ANY_SHORT)]
        elif fmt[-1] == "h":
            values = draw(st.lists(ANY_SHORT | st.integers(-2, 8), min_size=count,
                                   max_size=count))
        elif fmt[-1] == "i":
            values = [draw(st.integers(-(2**31), 2**31 - 1))]
        else:
            values = draw(st.lists(ODD_FLOAT, min_size=count, max_size=count))
        struct.pack_into(fmt, raw, offset, *values)
    return bytes(raw)


@FUZZ
@given(raw=corrupted_nifti(), compress=st.booleans())
def test_nifti_with_corrupted_header_fields(raw, compress):
    with scratch() as folder:
        path = folder / ("bad.nii.gz" if compress else "bad.nii")
        path.write_bytes(gzip.compress(raw) if compress else raw)
        read_both(path)


PNG_MODES = {  # mode -> numpy dtype and value range of a random array for Image.fromarray
    "1": (bool, 2), "L": (np.uint8, 256), "LA": (np.uint8, 256), "P": (np.uint8, 256),
    "RGB": (np.uint8, 256), "RGBA": (np.uint8, 256), "I;16": (np.uint16, 65536),
}


@FUZZ
@given(mode=st.sampled_from(sorted(PNG_MODES)), seed=st.integers(0, 2**16),
       small=st.booleans(), labels=st.sets(st.integers(0, 300), max_size=4))
def test_png_with_odd_modes_and_values(mode, seed, small, labels):
    rng = np.random.default_rng(seed)
    dtype, high = PNG_MODES[mode]
    channels = {"LA": 2, "RGB": 3, "RGBA": 4}.get(mode)
    shape = (3, 4) if channels is None else (3, 4, channels)
    array = rng.integers(0, 3 if small else high, size=shape).astype(dtype)
    base = "L" if mode in ("P", "1") else None
    image = Image.fromarray(array.astype(np.uint8) if base else array)
    image = image.convert(mode) if base else image
    with scratch() as folder:
        path = folder / "odd.png"
        image.save(path)
        read_both(path)
        only_our_errors(read_mask, path, labels=sorted(labels) or None)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # (x0, y0, dx, dy) of the interlace passes (PNG spec 8.2)


def png_by_hand(array: np.ndarray, interlace: bool, keep: float = 1.0) -> bytes:
    """An 8-bit grey (2D) or RGB (3D) PNG written without PIL (which cannot interlace), every
    row with filter 0; ``keep`` < 1 cuts the pixel data (the scanlines before deflate) while the
    header still declares the whole image."""
    height, width = array.shape[:2]
    colour = 0 if array.ndim == 2 else 2
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    rows = [b"\0" + np.ascontiguousarray(row).tobytes() for x0, y0, dx, dy in passes
            for row in array[y0::dy, x0::dx] if row.size]
    lines = b"".join(rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(lines[: int(len(lines) * keep)]))
            + chunk(b"IEND", b""))


@FUZZ
@given(height=st.integers(1, 20), width=st.integers(1, 20), rgb=st.booleans(),
       interlace=st.booleans(), keep=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_png_whose_header_declares_more_rows_than_its_data(height, width, rgb, interlace, keep,
                                                           seed):
    """PIL fills the rows missing from the data with zeros (a zero-filled image was segmented,
    exit 0): refused naming the file; the complete file reads back exactly."""
    shape = (height, width, 3) if rgb else (height, width)
    array = np.random.default_rng(seed).integers(1, 256, shape).astype(np.uint8)
    with scratch() as folder:
        (folder / "whole.png").write_bytes(png_by_hand(array, interlace))
        image, _ = read_image(folder / "whole.png")
        np.testing.assert_array_equal(image, array[None] if not rgb else np.moveaxis(array, -1, 0))
        (folder / "cut.png").write_bytes(png_by_hand(array, interlace, keep))
        one_line(lambda: read_image(folder / "cut.png"), "cut.png", "truncated")
        one_line(lambda: read_mask(folder / "cut.png", labels=range(256)), "cut.png")


def test_png_of_one_pixel_reads():
    with scratch() as folder:
        (folder / "one.png").write_bytes(png_bytes(np.array([[7]], np.uint8)))
        image, geometry = read_image(folder / "one.png")
        assert image.shape == (1, 1, 1) and image[0, 0, 0] == 7 and geometry.shape == (1, 1)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_non_finite_values(value):
    """A float TIFF (mode F) holding NaN/Inf is refused by the reader (it gave NaN maps through
    the Python API); finite values up to 3.4e38 are read exactly."""
    array = np.linspace(-3.4e38, 3.4e38, 12, dtype=np.float32).reshape(3, 4)
    with scratch() as folder:
        Image.fromarray(array, mode="F").save(folder / "finite.tif")
        image, _ = read_image(folder / "finite.tif")
        np.testing.assert_array_equal(image[0], array)
        array[1, 2] = value
        Image.fromarray(array, mode="F").save(folder / "bad.tif")
        one_line(lambda: read_image(folder / "bad.tif"), "bad.tif", "1 NaN/Inf")
        one_line(lambda: read_mask(folder / "bad.tif"), "bad.tif")


# ---------------------------------------------------------------------------------------------
# dataset.json and dataset folders

JSON_LEAF = st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=False) | \
    st.text(max_size=8) | st.sampled_from([10**6, 10**9, 2**64])  # "raters": 1000000 hung
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
VALID_INFO = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
              "numTraining": 1, "file_ending": ".png", "raters": 2, "spatial_dims": 2,
              "groups": {"a": "p"}, "name": "x"}


@st.composite
def dataset_dicts(draw) -> object:
    """A valid dataset.json with some keys replaced by arbitrary JSON, dropped or added, or
    arbitrary JSON altogether."""
    if draw(st.booleans()):
        return draw(JSON)
    data = dict(VALID_INFO)
    for key in draw(st.lists(st.sampled_from(sorted(VALID_INFO)), max_size=3)):
        if draw(st.booleans()):
            data[key] = draw(JSON)
        else:
            data.pop(key, None)
    return data


@FUZZ
@given(data=dataset_dicts())
def test_dataset_info_from_wrong_types(data):
    try:
        info = DatasetInfo.from_dict(data)
    except DiffusegError:
        return
    assert info.n_channels >= 1 and info.raters >= 1 and info.spatial_dims in (2, 3)
    assert info.label_values == tuple(range(len(info.labels)))
    DatasetInfo.from_dict(json.loads(json.dumps(info.to_dict())))  # what is written reads back


def small_dataset(root: Path) -> Path:
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    raters = np.stack([image[0] % 2, image[0] > 5]).astype(np.int64)
    cases = [("a", image, raters, Geometry.identity((3, 4)))]
    info = DatasetInfo.from_dict({**VALID_INFO, "numTraining": 0})
    return write_dataset(root / "ds", cases, info)


@FUZZ
@given(text=st.binary(max_size=200) | dataset_dicts().map(lambda d: json.dumps(d).encode()),
       junk=st.binary(max_size=64), victim=st.sampled_from(
           ["imagesTr/a_0000.png", "labelsTr/a_r0.png", "labelsTr/a_r1.png", None]))
def test_dataset_open_and_load_with_broken_files(text, junk, victim):
    with scratch() as folder:
        root = small_dataset(folder)
        if victim is None:
            (root / "dataset.json").write_bytes(text)
        else:
            (root / victim).write_bytes(junk)
        try:
            for case in Dataset.open(root).cases:
                case.load()
        except DiffusegError:
            pass


# ---------------------------------------------------------------------------------------------
# DICOM series


DICOM_CHANGES = st.fixed_dictionaries({}, optional={
    "Rows": st.integers(0, 9), "Columns": st.integers(0, 9),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64]),
    "SamplesPerPixel": st.integers(0, 4),
    "PhotometricInterpretation": st.sampled_from(["RGB", "PALETTE COLOR", "YBR_FULL", "X"]),
    "PixelSpacing": st.lists(st.floats(-2, 2) | st.just(0.0), max_size=3),
    "ImageOrientationPatient": st.lists(st.floats(-1, 1), max_size=7),
    "ImagePositionPatient": st.lists(st.floats(-5, 5), max_size=4),
    "PixelData": st.binary(max_size=40),
    "RescaleSlope": st.sampled_from(["1e400", "nan", "2", "-1"]),
    "NumberOfFrames": st.integers(0, 3),
    "SeriesInstanceUID": st.sampled_from(["1.2.3.4", "1.2.3.5"]),
}).map(lambda d: d) | st.fixed_dictionaries({}, optional={
    key: st.none() for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
                               "Rows", "PixelData", "SeriesInstanceUID")})


TEXT_TAGS = st.dictionaries(st.sampled_from(
    ["RescaleSlope", "RescaleIntercept", "NumberOfFrames", "SliceThickness",
     "SpacingBetweenSlices"]), st.sampled_from(
    ["NaN", "Inf", "-Inf", "1e300", "abc", "0", "", "1\\2", "2", "-1"]), max_size=3)


@FUZZ
@given(changes=DICOM_CHANGES, which=st.integers(0, 2), junk=st.binary(max_size=80),
       text=TEXT_TAGS)
def test_dicom_series_with_corrupted_tags(changes, which, junk, text):
    """Tags out of range, missing, or text where numbers belong (stored verbatim as VR LO, as
    a broken exporter writes them): refused naming a file, or a finite volume."""
    with scratch() as folder:
        for k in range(3):
            dicom_slice(folder / f"s{k}.dcm", 2.0 * k, **(changes if k == which else {}))
        if text:
            ds = pydicom.dcmread(folder / f"s{which}.dcm")
            for keyword, value in text.items():
                ds.add_new(pydicom.datadict.tag_for_keyword(keyword), "LO", value)
            ds.save_as(folder / f"s{which}.dcm")
        (folder / "junk.dcm").write_bytes(junk)
        only_our_errors(read_dicom_series, folder)
        only_our_errors(read_dicom_series, folder / f"s{which}.dcm")
        only_our_errors(read_image, folder)


# ---------------------------------------------------------------------------------------------
# one clear line for each common mistake


def one_line(call: Callable[[], object], *needles: str) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_common_mistakes_get_one_line_naming_the_file(tmp_path):
    raw = gzip.compress(nifti_bytes((8, 8, 8), np.float32))
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    one_line(lambda: read_image(tmp_path / "cut.nii.gz"), "cut.nii.gz", "truncated")
    (tmp_path / "odd.png").write_bytes(png_bytes(np.array([[0, 17], [255, 0]], np.uint8)))
    one_line(lambda: read_mask(tmp_path / "odd.png"), "odd.png", "[0, 17, 255]")

    root = small_dataset(tmp_path)
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(root / "labelsTr" / "a_r1.png")
    one_line(lambda: Dataset.open(root).cases[0].load(), "a_r1.png", "(5, 4)", "(3, 4)")
    (root / "labelsTr" / "a_r1.png").unlink()
    one_line(lambda: Dataset.open(root), "a_r1.png", "no mask")
    (root / "dataset.json").write_text("{'channel_names': ")
    one_line(lambda: Dataset.open(root), "dataset.json", "not valid JSON")

    (tmp_path / "mixed").mkdir()
    for k in range(2):
        dicom_slice(tmp_path / "mixed" / f"a{k}.dcm", 2.0 * k, series="1.2.3.4")
        dicom_slice(tmp_path / "mixed" / f"b{k}.dcm", 2.0 * k, series="1.2.3.5")
    one_line(lambda: read_image(tmp_path / "mixed"), "mixed", "1.2.3.4", "1.2.3.5", "series_uid")

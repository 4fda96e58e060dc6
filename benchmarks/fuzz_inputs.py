"""Hostile inputs for ``benchmarks/fuzz.py``: each generator takes a ``random.Random`` and a
scratch folder and returns what to feed one entry point. Plain ``random`` rather than
hypothesis, so that 10,000 inputs take minutes (the CI suite, tests/io/test_readers_fuzz.py and
tests/test_config_fuzz.py, uses hypothesis on the same kinds of input)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import random
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from diffuseg.config import RunConfig

HOSTILE = [0, -1, 1, 2, 3, 7, 0.5, 1.0, 1e-12, 1e30, -1e30, 1e308, 2**31, 2**63, 2**64, -(2**63),
           10**30, True, False, None, "", "nan", "NaN", "inf", "-inf", "1e400", "abc", "1", "cpu",
           "meta", "cuda:99", "auto", [], [0], [0, 0], [1, 2, 3], [1e30, -1e30], [True, False],
           {}, {"a": 1}, [[1]], "x" * 300, "\n", "é", "[1]", "{}", "null"]
RAW_OVERRIDE_VALUES = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "[" * 50 + "]" * 50,
                       "[" * 3000 + "]" * 3000, "{\"a\": NaN}", "18446744073709551616", "0x10",
                       "1_000", "  5 ", "true", "null", "[1,", "\"s\"", ""]


def config_paths() -> list[tuple[str, Any]]:
    """Every leaf of RunConfig as (dotted path, default)."""
    out: list[tuple[str, Any]] = []

    def walk(obj: Any, where: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{where}{f.name}.")
            else:
                out.append((f"{where}{f.name}", value))
    walk(RunConfig(), "")
    return out


PATHS = config_paths()


def near(rng: random.Random, default: Any) -> Any:
    """A value near a default: scaled, negated, perturbed, or of the wrong shape."""
    if isinstance(default, bool):
        return rng.choice([not default, 0, 1, "yes"])
    if isinstance(default, (int, float)):
        return rng.choice([default * 10 ** rng.randint(-3, 12), -default, default + 1,
                           default - 1, float(default) + 0.5, 0])
    if isinstance(default, tuple):
        items = [near(rng, v) if rng.random() < 0.3 else v for v in default]
        return rng.choice([items, items[:-1], items + items[:1], [], list(default)])
    return rng.choice(HOSTILE)


def override(rng: random.Random) -> str:
    """One ``--set`` string: a real or misspelt key, a hostile or near-default value."""
    path, default = rng.choice(PATHS)
    roll = rng.random()
    if roll < 0.05:
        path = path + rng.choice(["x", ".y", ""])[: rng.randint(0, 2)]
    elif roll < 0.08:
        path = rng.choice(["", ".", "train.", "a.b.c", "train..lr", "method.options.dropout"])
    if rng.random() < 0.15:
        return f"{path}={rng.choice(RAW_OVERRIDE_VALUES)}"
    value = rng.choice(HOSTILE) if rng.random() < 0.5 else near(rng, default)
    return f"{path}={json.dumps(value)}"


def json_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(HOSTILE)
    if roll < 0.75:
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "train", "lr", "0", ""]): json_value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def config_file(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.randint(0, 80))
    if roll < 0.25:
        n = rng.choice([33, 100, 5000])
        opener = rng.choice(["[", "{\"a\":"])
        return (opener * n + "1" + ("]" if opener == "[" else "}") * n).encode()
    if roll < 0.35:
        return rng.choice([b"null", b"[]", b"1", b"\"x\"", b"true", b"\xef\xbb\xbf{}",
                           b"{\"train\": {\"lr\": NaN}}", b"\xff\xfe{\x00}\x00"])
    data: dict[str, Any] = {}
    for item in (override(rng) for _ in range(rng.randint(0, 4))):
        path, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = raw
        node = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
        node[keys[-1]] = value
    if rng.random() < 0.2:
        data[rng.choice(["train", "network", "data"])] = json_value(rng)
    return json.dumps(data, allow_nan=True).encode()


VALID_INFO = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
              "numTraining": 1, "file_ending": ".png", "raters": 2, "spatial_dims": 2,
              "groups": {"a": "p"}, "name": "x"}


def dataset_json(rng: random.Random) -> bytes:
    if rng.random() < 0.1:
        return rng.randbytes(rng.randint(0, 60))
    data: Any = dict(VALID_INFO)
    for key in rng.sample(sorted(VALID_INFO), rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.4:
            data[key] = rng.choice(HOSTILE + [10**6, 10**9, -5, 1.5, {"0": "a", "1": "b"},
                                              {"b": 0, "a": 2}, ".nii.gz", ".jpg"])
        elif roll < 0.6:
            data.pop(key)
        else:
            data[key] = json_value(rng)
    if rng.random() < 0.05:
        data = json_value(rng)
    return json.dumps(data).encode()


# ---------------------------------------------------------------------------------------------
# images

NIFTI_FIELDS = {"dim": (40, "<8h"), "datatype": (70, "<h"), "bitpix": (72, "<h"),
                "pixdim": (76, "<8f"), "vox_offset": (108, "<f"), "scl_slope": (112, "<f"),
                "scl_inter": (116, "<f"), "qform_code": (252, "<h"), "sform_code": (254, "<h"),
                "quatern": (256, "<6f"), "srow": (280, "<12f")}
ODD_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"),
              -float("inf"), 2.0, 1e-7]
ODD_SHORTS = [0, 1, 2, 3, 4, 5, 7, 8, -1, 255, 256, 2**15 - 1, -(2**15)]


def nifti(rng: random.Random) -> tuple[str, bytes]:
    dims = rng.choice([2, 3, 3, 4])
    shape = tuple(rng.randint(1, 6) for _ in range(dims))
    dtype = rng.choice([np.uint8, np.int16, np.float32, np.float64, np.int32])
    data = np.asarray(np.random.default_rng(rng.getrandbits(32)).normal(0, 100, shape))
    if np.issubdtype(dtype, np.floating) and rng.random() < 0.4:
        flat = data.reshape(-1)
        for _ in range(rng.randint(1, 3)):
            flat[rng.randrange(flat.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e300])
    if rng.random() < 0.3:
        data = np.abs(np.round(data)) % 3
    elif dtype == np.float32 and rng.random() < 0.2:  # finite, near float32's largest (#26)
        data = data / max(float(np.abs(data).max()), 1.0) * rng.choice([1e37, 1e38, 3.4e38])
    affine = np.diag([rng.choice([1.0, 0.5, 2.0]) for _ in range(3)] + [1.0])
    image = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    raw = bytearray(image.to_bytes())
    for name in rng.sample(sorted(NIFTI_FIELDS), rng.randint(0, 3)):
        offset, fmt = NIFTI_FIELDS[name]
        count = struct.calcsize(fmt) // (2 if fmt[-1] == "h" else 4)
        values = [rng.choice(ODD_SHORTS) if fmt[-1] == "h" else rng.choice(ODD_FLOATS)
                  for _ in range(count)]
        if name == "dim" and rng.random() < 0.5:  # a believable header declaring a huge volume
            values = [3, 2048, 2048, rng.choice([256, 2048]), 1, 1, 1, 1]
        struct.pack_into(fmt, raw, offset, *values)
    if rng.random() < 0.1:
        raw = raw[: rng.randint(0, len(raw))]
    if rng.random() < 0.5:
        return ".nii.gz", gzip.compress(bytes(raw))
    return ".nii", bytes(raw)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(rng: random.Random) -> tuple[str, bytes]:
    if rng.random() < 0.2:  # a header declaring any size, with (almost) no pixel data
        width, height = (rng.choice([0, 1, 2**31 - 1, 10000, 50000, 100000]) for _ in range(2))
        ihdr = struct.pack(">IIBBBBB", width, height, rng.choice([1, 8, 16]),
                           rng.choice([0, 2, 3, 4, 6, 7]), 0, 0, 0)
        return ".png", (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                        + png_chunk(b"IDAT", zlib.compress(rng.randbytes(rng.randint(0, 20))))
                        + png_chunk(b"IEND", b""))
    if rng.random() < 0.1:  # a header declaring more rows than the data holds (#26)
        return ".png", png_short_of_rows(rng)
    mode = rng.choice(["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F"])
    shape = (rng.randint(1, 9), rng.randint(1, 9)) if rng.random() < 0.9 else (1, 1)
    gen = np.random.default_rng(rng.getrandbits(32))
    base = gen.integers(0, rng.choice([2, 3, 256]), size=shape).astype(np.uint8)
    image = Image.fromarray(base).convert(mode)
    if mode == "F" and rng.random() < 0.5:  # float TIFFs with NaN/Inf or huge values (#26)
        values = np.asarray(image, dtype=np.float32).copy()
        values.reshape(-1)[rng.randrange(values.size)] = rng.choice(
            [np.nan, np.inf, -np.inf, 3.4e38, -1e37])
        image = Image.fromarray(values, mode="F")
    buffer = io.BytesIO()
    ending = ".tif" if mode in ("I", "F") or rng.random() < 0.1 else ".png"
    image.save(buffer, format="TIFF" if ending == ".tif" else "PNG")
    raw = buffer.getvalue()
    if rng.random() < 0.15:
        raw = raw[: rng.randint(0, len(raw))]
    return ending, raw


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # (x0, y0, dx, dy) of the interlace passes (PNG spec 8.2)


def png_short_of_rows(rng: random.Random) -> bytes:
    """An 8-bit grey or RGB PNG (interlaced or not) whose deflated scanlines stop early: PIL
    fills the rest with zeros without a word."""
    height, width, rgb = rng.randint(1, 40), rng.randint(1, 40), rng.random() < 0.3
    array = np.random.default_rng(rng.getrandbits(32)).integers(
        0, 256, (height, width, 3) if rgb else (height, width)).astype(np.uint8)
    interlace = rng.random() < 0.3
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    lines = b"".join(b"\0" + np.ascontiguousarray(row).tobytes() for x0, y0, dx, dy in passes
                     for row in array[y0::dy, x0::dx] if row.size)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(
        b"IDAT", zlib.compress(lines[: rng.randrange(len(lines))])) + png_chunk(b"IEND", b""))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def lidc_tar(rng: random.Random, path: Path) -> Path:
    """A miniature LIDC-IDRI slices tar (2 patients, 4 raters, 6x5 slices) with one hostile
    change: a patient folder name of 250 characters or of odd characters, a member declaring
    8 GiB, numbers of 5,000 digits, a slice PNG short of rows, a mask of another shape or
    values, a missing rater, bytes that are no PNG."""
    members: dict[str, bytes] = {}
    patients = ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    change = rng.choice(["long name", "odd name", "8 GiB", "digits", "short rows", "mask shape",
                         "mask values", "missing rater", "junk", "none"])
    if change == "long name":
        patients[rng.randrange(2)] = rng.choice("Pé中") * rng.choice([120, 250, 300])
    elif change == "odd name":
        patients[rng.randrange(2)] = rng.choice([":*?", "a\\b", "..", " x ", "\x7f", "-1"])
    image, mask = png_bytes(np.arange(30).reshape(6, 5)), png_bytes(np.zeros((6, 5)))
    for patient in patients:
        for k in range(2):
            members[f"{patient}/nodule-0/images/slice-{k}.png"] = image
            for r in range(4):
                members[f"{patient}/nodule-0/mask-{r}/slice-{k}.png"] = mask
    victim = rng.choice(sorted(members))
    if change == "digits":
        members[victim.replace("slice-", "slice-" + "9" * 5000)] = members.pop(victim)
    elif change == "short rows":
        members[victim] = png_short_of_rows(rng)
    elif change == "mask shape":
        members[victim] = png_bytes(np.zeros((rng.randint(1, 9), rng.randint(1, 9))))
    elif change == "mask values":
        members[victim] = png_bytes(np.full((6, 5), rng.choice([1, 17, 128])))
    elif change == "missing rater":
        members.pop(victim)
    elif change == "junk":
        members[victim] = rng.randbytes(rng.randint(0, 64))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"LIDC-IDRI-slices/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    if change == "8 GiB":  # a member header declaring 8 GiB, its data cut short
        raw = path.read_bytes().rstrip(b"\0")
        raw += b"\0" * (-len(raw) % 512)
        info = tarfile.TarInfo(f"LIDC-IDRI-slices/{patients[0]}/nodule-0/images/slice-9.png")
        info.size = 8 * 2**30
        path.write_bytes(raw + info.tobuf(tarfile.PAX_FORMAT) + image.ljust(512, b"\0")
                         + b"\0" * 1024)
    return path


def damage_prediction(rng: random.Random, case_dir: Path) -> str:
    """Change one file of a case folder of ``diffuseg predict``: a sample, the consensus or a
    map of another shape, a missing file, probabilities out of range, broken result.json."""
    change = rng.choice(["sample shape", "map shape", "consensus shape", "missing", "range",
                         "result.json"])
    files = sorted(p.name for p in case_dir.iterdir() if p.suffix == ".png"
                   and "preview" not in p.name)
    if change == "sample shape":
        name = rng.choice([f for f in files if f.startswith("sample_")])
    elif change == "map shape":
        name = rng.choice(["probability.png", "variance.png"])
    else:
        name = "consensus.png"
    shape = (rng.randint(1, 30), rng.randint(1, 30))
    if change.endswith("shape"):
        Image.fromarray(np.zeros(shape, np.uint8)).save(case_dir / name)
    elif change == "missing":
        (case_dir / rng.choice(files)).unlink()
    elif change == "range":
        Image.fromarray(np.full((24, 24), 77, np.uint8)).save(case_dir / "sample_00.png")
    else:
        (case_dir / "result.json").write_bytes(rng.choice([b"{", b"[]", b"\xff", b"null"]))
    return f"{change} {name}"


def damage_run_config(rng: random.Random, config: dict) -> dict:
    """config.json of a run changed so that it may no longer describe the run's weights."""
    network = config.setdefault("network", {})
    change = rng.choice(["channels", "attention", "res blocks", "classes", "heads", "method"])
    if change == "channels":
        network["channels"] = rng.choice([[8, 32], [16, 16], [8, 16, 32], [8]])
    elif change == "attention":
        network["attention_levels"] = [True] * len(network.get("channels", [8, 16]))
    elif change == "res blocks":
        network["num_res_blocks"] = rng.choice([0, 2, 3])
    elif change == "classes":
        config["num_classes"] = rng.choice([2, 3])
    elif change == "heads":
        network["num_heads"] = rng.choice([1, 2, 8])
    else:
        config.setdefault("method", {})["name"] = rng.choice(["berdiff", "ldseg", "prob_unet"])
    return config


DICOM_TEXT = ["NaN", "Inf", "-Inf", "1e300", "abc", "0", "", "1\\2", "2", "-1", "1e-300"]


def dicom_series(rng: random.Random, folder: Path) -> Path:
    """1-4 slices; one gets tag changes (numbers out of range, text in numbers, missing tags)."""
    folder.mkdir()
    n = rng.randint(1, 4)
    victim = rng.randrange(n)
    for k in range(n):
        ds = dicom_dataset(2.0 * k)
        if k == victim:
            for _ in range(rng.randint(0, 3)):
                mutate_dicom(rng, ds)
        try:
            ds.save_as(folder / f"s{k}.dcm", enforce_file_format=True)
        except Exception:  # noqa: BLE001 (pydicom refused the mutation; write it plain)
            dicom_dataset(2.0 * k).save_as(folder / f"s{k}.dcm", enforce_file_format=True)
    if rng.random() < 0.1:
        (folder / "junk.dcm").write_bytes(rng.randbytes(rng.randint(0, 200)))
    return folder


def dicom_dataset(z: float) -> pydicom.Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = "1.2.3.4", "1.2.3", "MR"
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns = 3, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(12, dtype=np.uint16).tobytes()
    return ds


def mutate_dicom(rng: random.Random, ds: pydicom.Dataset) -> None:
    roll = rng.random()
    if roll < 0.35:  # a numeric tag written as text, as a broken exporter writes it
        keyword = rng.choice(["RescaleSlope", "RescaleIntercept", "NumberOfFrames",
                              "SliceThickness", "SpacingBetweenSlices", "Rows", "Columns"])
        tag = pydicom.datadict.tag_for_keyword(keyword)
        if keyword in ("Rows", "Columns"):
            ds.add_new(tag, "US", rng.choice([0, 1, 2, 5, 65535]))
        else:
            ds.add_new(tag, "LO", rng.choice(DICOM_TEXT))
    elif roll < 0.55:
        keyword = rng.choice(["ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
                              "Rows", "PixelData", "SeriesInstanceUID", "BitsAllocated"])
        if keyword in ds:
            delattr(ds, keyword)
    elif roll < 0.75:
        ds.PixelData = rng.randbytes(rng.choice([0, 4, 24, 40]))
    elif roll < 0.9:
        ds.PixelSpacing = [rng.choice([0.0, -1.0, 0.5, 1e-9]) for _ in range(rng.choice([1, 2]))]
    else:
        ds.BitsAllocated = rng.choice([1, 8, 12, 32, 64])


def case_file_name(rng: random.Random) -> str:
    alphabet = "ab._-/ \\\t\n:*?\"<>|é中\x00\x7f" + "x" * 10
    stem = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 2, 3, 8, 120, 300])))
    stem = rng.choice([stem, "." * rng.randint(1, 4), ".." + stem])
    return stem + rng.choice([".png", ".nii.gz", ".nii", ".tif", "_0000.png", ""])

"""One test per defect of the hostile-user audit (issue 15) in input validation and safe paths:
each gave a traceback, a hang, or a wrong answer with exit 0 before the checks existed."""

from __future__ import annotations

import gzip
import json
import struct
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_synth import dicom_slice
from helpers import tiny
from PIL import Image

from diffuseg.cli import main
from diffuseg.config import load_config
from diffuseg.core.paths import safe_name
from diffuseg.data import DatasetInfo
from diffuseg.data.check import check_dataset
from diffuseg.data.importers import import_msd
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.demo import prepare_output
from diffuseg.errors import ConfigError, DataError, DiffusegError
from diffuseg.inference.predictor import Predictor, case_name, list_inputs
from diffuseg.io import read_dicom_series, read_image, read_mask
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

TINY = tiny()


def one_line(error_type: type[Exception], call, *needles: str) -> str:
    with pytest.raises(error_type) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["diffuseg", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    _, err = capsys.readouterr()
    return exit_info.value.code, err


# ---------------------------------------------------------------------------------------------
# config values


@pytest.mark.parametrize("override, needle", [
    ("train.max_steps=1e400", "train.max_steps"),  # was OverflowError
    ("train.max_steps=0", "[1, "),  # was a run with no step and exit 0
    ("train.lr=1e30", "(0, 1]"),  # diverged to NaN weights
    ("train.lr=-1", "(0, 1]"),
    ("train.grad_clip=NaN", "finite"),
    ("network.dropout=1", "[0, 1)"),
    ("data.ct_window=[0,0]", "low < high"),
    ("data.ct_window=[5]", "2 values"),
    ("train.device=1", "cuda:N"),  # was AttributeError
    ("train.device=meta", "cuda:N"),
    ("method.name=[1]", "method.name"),  # was TypeError
    ("train.seed=18446744073709551616", "9223372036854775807"),
    ("train.batch_size=true", "not true/false"),
    ("network.norm_groups=3", "norm_groups"),
    ("method.options={\"dropout\": NaN}", "finite"),
    ("sample.n_samples=100000", "sample.n_samples"),
])
def test_config_values_are_checked_when_built(override, needle):
    one_line(ConfigError, lambda: load_config(None, [override]), override.split("=")[0], needle)


def test_every_numeric_config_field_has_a_range():
    """A new numeric field must declare its range beside it (``config.ranged``)."""
    from diffuseg.config import RunConfig, value_ranges

    ranges = value_ranges()

    def leaves(obj, where=""):
        import dataclasses
        for f in dataclasses.fields(obj):
            value, path = getattr(obj, f.name), f"{where}{f.name}"
            if dataclasses.is_dataclass(value):
                yield from leaves(value, path + ".")
            else:
                yield path, value

    unlisted = [path for path, value in leaves(RunConfig())
                if isinstance(value, (int, float, tuple)) and not isinstance(value, bool)
                and not (isinstance(value, tuple) and all(isinstance(v, bool) for v in value))
                and path not in ranges]
    assert unlisted == []


@pytest.mark.parametrize("content, needle", [
    (b"null", "must hold a JSON object"),  # was TypeError in merge()
    (b"[1, 2]", "must hold a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "nests deeper"),  # was RecursionError
    (b"{\"a\":" * 40 + b"1" + b"}" * 40, "nests deeper"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{\"train\": {\"lr\": NaN}}", "not valid JSON"),
])
def test_config_files_that_are_not_objects(tmp_path, content, needle):
    path = tmp_path / "c.json"
    path.write_bytes(content)
    one_line(ConfigError, lambda: load_config(path), "c.json", needle)
    one_line(ConfigError, lambda: build_config(path, [], dataset=None), "c.json", needle)


@pytest.mark.parametrize("args, needle", [
    (["--seed", str(2**64)], "0..2**63-1"),  # was RuntimeError from manual_seed
    (["--seed", "-1"], "0..2**63-1"),
    (["--device", "meta"], "cuda:N"),
    (["--samples", "100000"], "1..10000"),  # was out of memory
    (["--samples", "0"], "1..10000"),
    (["--steps", "0"], "--steps 0"),
])
def test_predict_options_one_line_exit_2(tmp_path, monkeypatch, capsys, args, needle):
    code, err = run_cli(monkeypatch, capsys, "predict", str(tmp_path), "-i", str(tmp_path),
                        "-o", str(tmp_path / "out"), *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err


# ---------------------------------------------------------------------------------------------
# image readers


def nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, **header) -> Path:
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    for key, value in header.items():
        image.header[key] = value
    nib.save(image, path)
    return path


def test_nan_voxels_are_refused_at_read(tmp_path):
    """Was: an empty 'no lesion' consensus, NaN maps, exit 0."""
    data = np.ones((8, 8, 4), np.float32)
    data[2, 3, 1] = np.nan
    data[0, 0, 0] = np.inf
    path = nifti(tmp_path / "nan.nii.gz", data)
    one_line(DataError, lambda: read_image(path), "nan.nii.gz", "2 NaN/Inf")
    one_line(DataError, lambda: read_mask(path), "nan.nii.gz", "NaN/Inf")


def test_nifti_slope_overflowing_float32_is_refused(tmp_path):
    path = tmp_path / "slope.nii"
    image = nib.Nifti1Image(np.full((4, 4, 2), 7, np.int16), np.eye(4))
    image.header.set_slope_inter(1e38, 0.0)  # 7e38 is finite in float64, Inf in float32
    nib.save(image, path)
    one_line(DataError, lambda: read_image(path), "slope.nii", "NaN/Inf")



@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_affine_fails_at_read_time(tmp_path, bad):
    """Was: inference ran, then writing the outputs failed with a traceback."""
    affine = np.eye(4)
    affine[0, 3] = bad
    path = tmp_path / "affine.nii.gz"
    header = nib.Nifti1Header()
    header.set_sform(affine, code=1)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None, header=header), path)
    one_line(DataError, lambda: read_image(path), "affine.nii.gz", "non-finite affine")


def test_degenerate_affine_is_refused(tmp_path):
    path = tmp_path / "flat.nii.gz"
    header = nib.Nifti1Header()
    header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # a zero voxel size on axis j
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None, header=header), path)
    one_line(DataError, lambda: read_image(path), "flat.nii.gz", "degenerate affine")


def test_small_gz_declaring_a_huge_volume_is_refused_from_the_header(tmp_path):
    """A few-KB .nii.gz whose header declares 2048^3 bytes (8 GiB as float32): refused before
    decompression (was an out-of-memory traceback)."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 256))
    header.set_data_dtype(np.uint8)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 4096  # vox_offset 352, then a little data
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(raw))
    assert path.stat().st_size < 10_000
    one_line(DataError, lambda: read_image(path), "bomb.nii.gz", "memory budget",
             "DIFFUSEG_MAX_IMAGE_BYTES")


def test_memory_budget_is_configurable(tmp_path, monkeypatch):
    path = nifti(tmp_path / "ok.nii.gz", np.ones((16, 16, 16), np.float32))
    assert read_image(path)[0].shape == (1, 16, 16, 16)
    monkeypatch.setenv("DIFFUSEG_MAX_IMAGE_BYTES", str(16 * 16 * 16 * 4 - 1))
    one_line(DataError, lambda: read_image(path), "ok.nii.gz", "memory budget")
    monkeypatch.setenv("DIFFUSEG_MAX_IMAGE_BYTES", "lots")
    one_line(ConfigError, lambda: read_image(path), "DIFFUSEG_MAX_IMAGE_BYTES")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height grey pixels, with one empty IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + \
        chunk(b"IEND", b"")


def test_huge_png_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(10000, 10000))
    one_line(DataError, lambda: read_image(path), "huge.png", "10000x10000")


def dicom_series(folder: Path, n: int = 3, text: dict[str, str] | None = None,
                 **changes) -> Path:
    """``n`` slices; the middle one gets ``changes`` and the ``text`` tags stored verbatim (as
    VR LO, so that values pydicom would refuse to write, like 'abc' for a number, reach the
    file as a broken exporter writes them)."""
    folder.mkdir()
    for k in range(n):
        dicom_slice(folder / f"s{k}.dcm", 2.0 * k, **(changes if k == 1 else {}))
    if text:
        raw_tags(folder / "s1.dcm", text)
    return folder


def raw_tags(path: Path, text: dict[str, str]) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in text.items():
        ds.add_new(pydicom.datadict.tag_for_keyword(keyword), "LO", value)
    ds.save_as(path)


@pytest.mark.parametrize("text, needle", [
    ({"RescaleSlope": "NaN", "RescaleIntercept": "0"}, "RescaleSlope"),  # was: empty consensus
    ({"RescaleSlope": "Inf", "RescaleIntercept": "0"}, "RescaleSlope"),
    ({"RescaleSlope": "1e300", "RescaleIntercept": "0"}, "NaN/Inf"),  # Inf in float32
    ({"RescaleSlope": "abc", "RescaleIntercept": "0"}, "RescaleSlope"),  # was TypeError
    ({"RescaleSlope": "0", "RescaleIntercept": "0"}, "RescaleSlope 0"),
    ({"RescaleSlope": "1", "RescaleIntercept": "x"}, "RescaleIntercept"),
])
def test_dicom_rescale_attributes(tmp_path, text, needle):
    folder = dicom_series(tmp_path / "series", text=text)
    one_line(DataError, lambda: read_image(folder), needle)


def test_dicom_number_of_frames_text_and_sizes(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    dicom_slice(folder / "a.dcm", 0.0)
    raw_tags(folder / "a.dcm", {"NumberOfFrames": "abc"})
    one_line(DataError, lambda: read_dicom_series(folder), "a.dcm", "NumberOfFrames")
    mixed = dicom_series(tmp_path / "mixed", Rows=4, PixelData=np.zeros(16, np.uint16).tobytes())
    one_line(DataError, lambda: read_dicom_series(mixed), "differs")
    zero = tmp_path / "zero"
    zero.mkdir()
    dicom_slice(zero / "z.dcm", 0.0, Rows=0)
    one_line(DataError, lambda: read_dicom_series(zero), "Rows 0")


def test_dicom_series_over_budget_refused_before_decoding(tmp_path, monkeypatch):
    folder = dicom_series(tmp_path / "big")
    monkeypatch.setenv("DIFFUSEG_MAX_IMAGE_BYTES", "100")
    one_line(DataError, lambda: read_image(folder), "big", "memory budget")


# ---------------------------------------------------------------------------------------------
# dataset.json


def test_raters_a_million_is_refused_not_hung(tmp_path):
    """Was: check/train/evaluate looked for a million mask files per case (hang)."""
    root = write_phantom_dataset(tmp_path / "p", n_cases=2, size=16, n_raters=2)
    data = json.loads((root / "dataset.json").read_text())
    data["raters"] = 1_000_000
    (root / "dataset.json").write_text(json.dumps(data))
    report = check_dataset(root)
    assert len(report.errors) == 1 and "raters=1000000" in report.errors[0]
    assert "1..100" in report.errors[0]
    one_line(DataError, lambda: DatasetInfo.load(root / "dataset.json"), "raters")


def test_dataset_json_that_is_not_utf8_or_too_deep(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_bytes(b"\xc3\x28")
    one_line(DataError, lambda: DatasetInfo.load(path), "dataset.json", "UTF-8")
    path.write_text("[" * 5000 + "]" * 5000)
    one_line(DataError, lambda: DatasetInfo.load(path), "dataset.json", "nests deeper")


# ---------------------------------------------------------------------------------------------
# safe paths


@pytest.mark.parametrize("name", ["...png", ".png", "..png", "a" * 250 + ".png",
                                  "tab\there.png", "x\\y.png", "é" * 200 + ".nii.gz"])
def test_case_names_stay_inside_the_output(tmp_path, name):
    out = tmp_path / "out"
    folder = out / case_name(Path(name))
    assert folder.resolve().parent == out.resolve()
    assert len(folder.name.encode()) <= 120 and folder.name not in (".", "..", "")
    assert "/" not in folder.name and "\\" not in folder.name


def test_ordinary_names_are_unchanged_and_changed_ones_do_not_collide():
    assert case_name(Path("case_0000.nii.gz")) == "case"
    assert case_name(Path("ISIC 0001.png")) == "ISIC 0001"
    assert safe_name("a/b") != safe_name("a_b") and safe_name("a/b").startswith("a_b-")


def test_dots_png_writes_inside_the_output_folder(tmp_path, monkeypatch):
    """Was: an input named '...png' wrote its outputs into the parent of -o."""
    data = write_phantom_dataset(tmp_path / "p", n_cases=4, size=24, n_raters=2)
    run = train(build_config(None, TINY, dataset=data), data, tmp_path / "run", progress=False)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray((np.arange(24 * 24) % 255).reshape(24, 24).astype(np.uint8)).save(
        inputs / "...png", format="PNG")
    out = tmp_path / "sub" / "out"
    assert list_inputs(inputs / "...png") == [[inputs / "...png"]]  # hidden in a folder listing
    paths = [inputs / "...png"]
    folder = Predictor.from_run(run).predict_file(paths, out, n_samples=1, steps=1)
    assert folder.parent == out and (folder / "consensus.png").is_file()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out"]
    nan_image = tmp_path / "nan.nii.gz"
    nifti(nan_image, np.full((24, 24), np.nan, np.float32))
    one_line(DataError, lambda: Predictor.from_run(run).predict_file(nan_image, out),
             "nan.nii.gz", "NaN/Inf")
    # 1 MiB: 24x24, width 8, 1 channel: n (8 x 576 x 8 + 576 x 4 x 8) = 55296 n bytes: 18 samples
    monkeypatch.setenv("DIFFUSEG_MAX_WORK_BYTES", str(2**20))
    one_line(ConfigError, lambda: Predictor.from_run(run).predict_file(
        paths, out, n_samples=64, overwrite=True), "DIFFUSEG_MAX_WORK_BYTES", "--samples 18 ")


def test_convert_refuses_to_write_into_its_input(tmp_path):
    """Was: `convert msd SRC SRC --overwrite` deleted the source before reading it."""
    src = tmp_path / "Task"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    nifti(src / "imagesTr" / "a.nii.gz", np.ones((4, 4, 4), np.float32))
    nifti(src / "labelsTr" / "a.nii.gz", np.zeros((4, 4, 4), np.uint8))
    (src / "dataset.json").write_text(json.dumps(
        {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"}}))
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for dst in (src, src / "inside", tmp_path):
        one_line(DataError, lambda d=dst: import_msd(src, d, overwrite=True), "input")
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_convert_src_src_overwrite_on_the_command_line(tmp_path, monkeypatch, capsys):
    src = tmp_path / "Task"
    (src / "imagesTr").mkdir(parents=True)
    (src / "dataset.json").write_text("{}")
    code, err = run_cli(monkeypatch, capsys, "convert", "msd", str(src), str(src), "--overwrite")
    assert code == 2 and err.count("\n") == 1 and "is the input" in err, err
    assert (src / "dataset.json").is_file() and (src / "imagesTr").is_dir()


def test_demo_overwrite_refuses_a_folder_it_did_not_create(tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    one_line(DataError, lambda: prepare_output(precious, overwrite=True), "not created")
    assert (precious / "chapter1.tex").is_file()
    demo = tmp_path / "demo"
    prepare_output(demo, overwrite=False)
    (demo / "old.txt").write_text("x")
    prepare_output(demo, overwrite=True)
    assert not (demo / "old.txt").exists()


def test_all_errors_are_diffuseg_errors():
    assert issubclass(ConfigError, DiffusegError) and issubclass(DataError, DiffusegError)

"""Inputs that ended in a traceback or in a wrong answer with exit 0 (issue 26's audit of fuzzed
inputs): each now ends in one line naming the file and the fix (exit 2 from the CLI), or in a
correct result. Every input is generated here, in tmp."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_synth import write_series
from helpers import tiny
from PIL import Image
from safetensors.torch import load_file

from diffuseg.cli import main
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import DataError, DiffusegError, OutputError
from diffuseg.inference.batch import predict_cases
from diffuseg.inference.predictor import Predictor
from diffuseg.io import read_image, read_mask
from diffuseg.run.verdict import predict_weights
from diffuseg.training.loop import train
from diffuseg.training.start import build_config


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> tuple[Path, Path]:
    data = write_phantom_dataset(tmp_path_factory.mktemp("d2") / "p", n_cases=3, size=24,
                                 n_raters=2)
    config = build_config(None, tiny("sample.n_samples=2", "sample.steps=1"), dataset=data)
    return train(config, data, tmp_path_factory.mktemp("r2") / "run", progress=False), data


@pytest.fixture(scope="module")
def predictor(run2d) -> Predictor:
    return Predictor.from_run(run2d[0])


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["diffuseg", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def one_error_line(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of the atomic writers (``.x.tmp-<pid>``, ``.x.old-<pid>``,
    ``.x.tmp<pid>``) and the lock, anywhere under ``folder``."""
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".")]


def first_image(data: Path) -> Path:
    return sorted((data / "imagesTr").iterdir())[0]


# ---------------------------------------------------------------------------------------------
# images the model and the previews had not met


def test_one_pixel_png_gives_a_whole_case_folder(tmp_path, predictor):
    """A 1 x 1 PNG ended in matplotlib's 'Input z must be at least a (2, 2) shaped array' while
    the previews were drawn."""
    Image.fromarray(np.array([[90]], np.uint8)).save(tmp_path / "one.png")
    case = predictor.predict_file(tmp_path / "one.png", tmp_path / "out")
    info = json.loads((case / "result.json").read_text())
    assert info["shape"] == [1, 1] and info["previews"] == ["preview.png",
                                                           "uncertainty_preview.png"]
    assert read_mask(case / "consensus.png")[0].shape == (1, 1)
    for name in info["previews"]:
        assert np.asarray(Image.open(case / name)).std() > 0  # a picture, not a blank


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 1)])
def test_previews_of_thin_images_draw_the_contours(tmp_path, shape):
    """Masks one pixel high or wide are contoured (padded with background); the background
    itself (label 0) never gets a contour of its own colour."""
    from diffuseg.inference.previews import LABEL_COLOURS, write_previews

    mask = np.ones(shape, np.uint8)
    mask.reshape(-1)[0] = 0 if mask.size > 1 else 1
    image = np.arange(mask.size, dtype=np.float32).reshape(1, *shape)
    write_previews(tmp_path, image, np.stack([mask, mask]), mask, np.zeros(shape))
    png = np.asarray(Image.open(tmp_path / "preview.png").convert("RGB")).astype(int)

    def pixels_near(colour: str) -> int:
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(png - rgb).sum(-1) < 40).sum())

    assert pixels_near(LABEL_COLOURS[0]) > 20  # label 1's contour
    assert pixels_near(LABEL_COLOURS[-1]) == 0  # (label - 1) % 6 = -1: label 0's colour


def test_float32_nifti_with_values_above_1e37_gives_the_result_of_the_same_image(
        tmp_path, run2d, predictor):
    """Values of 1e37 overflowed float32 sums in the z-score (NaN maps, empty consensus, exit
    0). The image times 2^118 (up to 8e37) must give exactly the outputs of the image itself:
    the z-score does not depend on the scale, and scaling by a power of two is exact."""
    _, data = run2d
    array = read_image(first_image(data))[0][0]
    assert array.max() * 2.0**118 > 1e37
    for name, values in (("plain", array), ("huge", array * np.float32(2.0**118))):
        nib.save(nib.Nifti1Image(values.astype(np.float32), np.eye(4)), tmp_path / f"{name}.nii")
    plain = predictor.predict_file(tmp_path / "plain.nii", tmp_path / "out", seed=3)
    huge = predictor.predict_file(tmp_path / "huge.nii", tmp_path / "out", seed=3)
    for name in ("consensus.nii.gz", "sample_00.nii.gz", "sample_01.nii.gz"):
        np.testing.assert_array_equal(read_mask(huge / name)[0], read_mask(plain / name)[0])
    for name in ("probability.nii.gz", "entropy.nii.gz"):
        probability = read_image(huge / name)[0]
        assert np.isfinite(probability).all()
        np.testing.assert_array_equal(probability, read_image(plain / name)[0])


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e300])
def test_non_finite_arrays_through_the_python_api(predictor, value):
    """``segment`` takes arrays from anywhere: NaN/Inf (or float64 beyond float32) is one line."""
    image = np.ones((1, 24, 24))
    image[0, 3, 4] = value
    with pytest.raises(DataError, match=r"^scan\.tif holds NaN/Inf values .* replace them"):
        predictor.segment(image, source="scan.tif")


def test_run_whose_config_disagrees_with_its_weights(tmp_path, run2d, monkeypatch, capsys):
    """An edited config.json ended in torch's 130-line 'size mismatch' RuntimeError: one line
    naming config.json, the weights and the first tensor that differs."""
    run = shutil.copytree(run2d[0], tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["network"]["channels"] = [8, 32]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError) as err:
        Predictor.from_run(run)
    message = str(err.value)
    weights = predict_weights(run)  # the weights predict loads (the best validation's EMA)
    assert str(run / "config.json") in message and str(weights) in message, message
    found = re.search(r"tensor '([\w.]+)' has shape (\([\d, ]+\)) in the weights but "
                      r"(\([\d, ]+\)) in the network", message)
    assert found and found[2] != found[3], message
    stored = load_file(str(weights))[found[1]]
    assert str(tuple(stored.shape)) == found[2]  # the shape on disk, as reported
    image = first_image(run2d[1])
    code, out = run_cli(monkeypatch, capsys, "predict", run, "-i", image, "-o", tmp_path / "o")
    one_error_line(code, out, "config.json", found[1], "put back the config.json")


# ---------------------------------------------------------------------------------------------
# -o that is the input


def test_output_folder_that_is_the_input(tmp_path, run2d, predictor, monkeypatch, capsys):
    """-o equal to the input file ended in FileExistsError; -o equal to the input folder wrote
    the case folders among the images (exit 0); -o the parent of a DICOM series folder made the
    case folder the series itself (an unfinished case folder is deleted before it is written
    again). All refused before anything is written; the inputs stay as they were."""
    run, data = run2d
    inputs = shutil.copytree(data / "imagesTr", tmp_path / "images")
    file = sorted(inputs.iterdir())[0]
    series, _ = write_series(tmp_path / "study" / "series", rows=6, columns=5, slices=2)
    before, dataset = snapshot(tmp_path), snapshot(data)
    refused = [([[file]], file, "is the input"),
               ([[p] for p in sorted(inputs.iterdir())], inputs, "is the folder of the input"),
               ([[file]], inputs / ".", "is the folder of the input"),
               ([[series]], series / "sub", "is inside the input"),
               ([[series]], series.parent, "lies inside its output folder")]
    for cases, out, words in refused:
        with pytest.raises(DataError, match=words):
            predict_cases(predictor, cases, out)
    assert snapshot(tmp_path) == before
    for args in (["-i", file, "-o", file], ["-i", inputs, "-o", inputs],
                 ["-d", data, "--split", "train", "-o", data / "imagesTr"]):
        code, err = run_cli(monkeypatch, capsys, "predict", run, *args)
        one_error_line(code, err, "choose a separate -o")
    assert snapshot(tmp_path) == before and snapshot(data) == dataset
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "other.png")
    with pytest.raises(DataError, match="other.png' is a file; give a folder"):
        predictor.predict_file(file, tmp_path / "other.png")


# ---------------------------------------------------------------------------------------------
# writes the file system refuses


def refuse(monkeypatch, where: str, code: int, under: Path) -> None:
    """Make the file system refuse writes below ``under`` with ``code``: on ``open`` for
    writing (PIL, nibabel and json writers) or on ``os.replace`` (the atomic renames)."""
    if where == "open":
        import builtins

        real_open = builtins.open

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and Path(str(file)).is_relative_to(under):
                raise OSError(code, os.strerror(code), str(file))
            return real_open(file, mode, *args, **kwargs)
        monkeypatch.setattr(builtins, "open", open_)
    else:
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(dst).is_relative_to(under):
                raise OSError(code, os.strerror(code))
            return real_replace(src, dst, *args, **kwargs)
        monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("where", ["open", "replace"])
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"),
                                         (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied")])
def test_refused_writes_are_one_line_and_leave_nothing(tmp_path, run2d, predictor, monkeypatch,
                                                       where, code, words):
    """Disk full, a read-only or forbidden folder, while the case folder is written or swapped
    in: one OutputError naming the case folder and the fix, no temporary file left, and the
    previous prediction of the case kept whole."""
    image = first_image(run2d[1])
    case = predictor.predict_file(image, tmp_path / "out", seed=1)
    before = snapshot(tmp_path / "out")
    with monkeypatch.context() as patch:
        refuse(patch, where, code, tmp_path / "out")
        with pytest.raises(OutputError) as err:
            predictor.predict_file(image, tmp_path / "out", seed=2, overwrite=True)
    message = str(err.value)
    assert "\n" not in message and f"cannot write '{case}" in message, message
    assert words in message and os.strerror(code) in message, message
    assert snapshot(tmp_path / "out") == before and leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("limit", [0, 4096])
def test_file_size_limit_through_the_cli(tmp_path, run2d, limit):
    """RLIMIT_FSIZE (ulimit -f) makes a write fail with EFBIG (Python ignores SIGXFSZ): at 0
    bytes the lock file's first line, at 4 kB the previews. One line, exit 2, no temporary
    file (nor lock file) left."""
    run, data = run2d
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))"
            "; from diffuseg.cli import main; sys.argv[0] = 'diffuseg'; main()")
    done = subprocess.run([sys.executable, "-c", code, "predict", str(run), "-i",
                           str(first_image(data)), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: cannot write '{tmp_path / 'out'}") and \
        "file-size limit (ulimit -f)" in lines[0], lines[0]
    assert leftovers(tmp_path / "out") == [] and list((tmp_path / "out").iterdir()) == []


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` (root with CAP_SYS_ADMIN only; otherwise a skip)."""
    folder.mkdir()
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None or subprocess.run(
            [mount, "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """A folder no write may enter: permission bits for a user, a read-only tmpfs for root
    (who ignores permission bits)."""
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    with tmpfs(folder, "ro,size=1m") as mounted:
        yield mounted


def test_real_read_only_folder_and_real_full_disk(tmp_path, run2d, monkeypatch, capsys):
    """The same without any patching: a read-only folder (EROFS for root, EACCES otherwise) and
    a 16 kB tmpfs that fills up during the second case (ENOSPC)."""
    run, data = run2d
    with read_only(tmp_path / "ro") as folder:
        code, err = run_cli(monkeypatch, capsys, "predict", run, "-i", data / "imagesTr", "-o",
                            folder / "out")
        one_error_line(code, err, f"cannot write '{folder / 'out'}'", "-o")
        assert list(folder.iterdir()) == []
    with tmpfs(tmp_path / "small", "size=16k") as folder:
        code, err = run_cli(monkeypatch, capsys, "predict", run, "-i", data / "imagesTr", "-o",
                            folder / "out", "-n", "8")
        one_error_line(code, err, f"cannot write '{folder / 'out'}", "the disk is full")
        assert leftovers(folder) == []


def test_write_errors_keep_their_type_for_other_os_errors(tmp_path):
    """Only the refusals a user can act on become OutputError; any other OSError is a bug to see
    whole."""
    from diffuseg.core.atomic import write_error, writing

    assert write_error(OSError(errno.EIO, "I/O error"), tmp_path) is None
    with pytest.raises(OSError) as err, writing(tmp_path):
        raise OSError(errno.EIO, "I/O error")
    assert not isinstance(err.value, DiffusegError)
    with pytest.raises(OutputError, match=r"cannot write '.*x\.png' \(File too large\)"), \
            writing(tmp_path):
        raise OSError(errno.EFBIG, "File too large", str(tmp_path / "x.png"))

"""predict RUN --dataset D --split test: exactly the split, resumable, recorded; previews."""

import json
import os

import numpy as np
import pytest
from helpers import tiny
from PIL import Image
from typer.testing import CliRunner

from diffuseg.cli import app
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import DataError
from diffuseg.inference.batch import is_complete, select_cases, study_series
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

TINY = tiny("sample.steps=2", "sample.n_samples=3", T=20)


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    data = write_phantom_dataset(tmp_path_factory.mktemp("d2") / "p", n_cases=10, size=24,
                                 n_raters=2)
    config = build_config(None, TINY, dataset=data)
    return train(config, data, tmp_path_factory.mktemp("r2") / "run", progress=False), data


def test_split_test_predicts_exactly_the_runs_split(tmp_path, run2d):
    run, data = run2d
    test_ids = json.loads((run / "splits.json").read_text())["test"]
    assert test_ids  # the phantom's split has test cases
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(run), "--dataset", str(data), "--split",
                                      "test", "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(test_ids)
    record = json.loads((out / test_ids[0] / "result.json").read_text())
    assert record["split"] == "test" and record["run"] == str(run)
    assert record["dataset"] == str(data)


def test_a_second_call_resumes_and_redoes_incomplete_cases(tmp_path, run2d):
    run, data = run2d
    out = tmp_path / "pred"
    args = ["predict", str(run), "--dataset", str(data), "--split", "test", "-o", str(out),
            "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    cases = sorted(out.iterdir())
    (cases[0] / "consensus.png").unlink()  # interrupted while writing
    assert not is_complete(cases[0])
    stamp = {c.name: (c / "result.json").stat().st_mtime_ns for c in cases[1:]}
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0
    assert f"{len(cases) - 1} already complete" in result.output
    assert is_complete(cases[0])
    assert stamp == {c.name: (c / "result.json").stat().st_mtime_ns for c in cases[1:]}


def test_previews_are_viewable_contours(tmp_path, run2d):
    run, data = run2d
    out = tmp_path / "pred"
    image = sorted((data / "imagesTr").iterdir())[0]
    CliRunner().invoke(app, ["predict", str(run), "-i", str(image), "-o", str(out), "-q"])
    case = next(out.iterdir())
    record = json.loads((case / "result.json").read_text())
    assert record["previews"] == ["preview.png", "uncertainty_preview.png"]
    for name in record["previews"]:
        png = np.asarray(Image.open(case / name).convert("RGB"))
        assert png.max() > 2  # not a 0/1 label map that looks black in a viewer
        assert len(np.unique(png.reshape(-1, 3), axis=0)) > 20  # a picture, not a mask


def test_preview_draws_contours_not_fills(tmp_path):
    from diffuseg.inference.previews import LABEL_COLOURS, write_previews

    image = np.zeros((1, 64, 64), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1
    write_previews(tmp_path, image, np.stack([mask, mask]), mask, np.zeros((64, 64)))
    png = np.asarray(Image.open(tmp_path / "preview.png").convert("RGB")).astype(int)
    yellow = np.array([int(LABEL_COLOURS[0][i:i + 2], 16) for i in (1, 3, 5)])
    near = np.abs(png - yellow).sum(-1) < 60
    assert near.sum() > 50  # contour pixels present
    rows, cols = np.nonzero(near)
    centre = png[(rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2]
    assert np.abs(centre - yellow).sum() > 200  # inside the contour: the image, not a fill


def test_3d_previews_pick_slices():
    from diffuseg.inference.previews import representative_slices

    cons = np.zeros((8, 8, 10), np.uint8)
    cons[2:6, 2:6, 7] = 1
    unc = np.zeros((8, 8, 10))
    unc[:, :, 2] = 1
    assert representative_slices(cons, unc) == [2, 5, 7]


def test_split_errors(tmp_path, run2d):
    run, data = run2d
    with pytest.raises(DataError, match="did you mean 'test'"):
        select_cases(run, input=None, dataset=data, split="tset")
    with pytest.raises(DataError, match="needs --dataset"):
        select_cases(run, input=None, dataset=None, split="test")
    with pytest.raises(DataError, match="is a file but --dataset expects a folder"):
        select_cases(run, input=None, dataset=data / "dataset.json", split="test")


def test_dicom_study_takes_its_image_series_and_refuses_ambiguity(tmp_path):
    study = tmp_path / "study"
    for name in ("1-T1post", "3-MaskTumor"):
        (study / name).mkdir(parents=True)
        (study / name / "000.dcm").write_bytes(b"not dicom")
    assert study_series(study) == study / "1-T1post"
    (study / "2-FLAIR").mkdir()
    with pytest.raises(DataError, match="2 image series: 1-T1post, 2-FLAIR"):
        study_series(study)
    assert study_series(study, "flair") == study / "2-FLAIR"
    assert study_series(study / "1-T1post") is None  # a series folder, not a study


def test_stale_onnx_warns(tmp_path, capsys):
    from diffuseg.cli.predict import warn_if_stale

    onnx, weights = tmp_path / "denoiser.onnx", tmp_path / "ema.safetensors"
    onnx.write_bytes(b"x")
    weights.write_bytes(b"x")
    os.utime(onnx, (1, 1))
    assert warn_if_stale(onnx, tmp_path)
    assert "older than the weights" in capsys.readouterr().err
    os.utime(onnx, None)
    os.utime(weights, (1, 1))
    assert not warn_if_stale(onnx, tmp_path)

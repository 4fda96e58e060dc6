"""A model name wherever a run folder is: ``diffuseg models``, ``models show``, ``predict NAME``,
``evaluate --run NAME``, ``serve NAME``, ``Predictor.from_pretrained``; the sha256 checked at load;
a name and a run folder give the same files for the same weights."""

from __future__ import annotations

import json
import shutil

import pytest
from models_helpers import one_line_error, randomise_weights, round_to_fp16, synthetic_image

from diffuseg.errors import DataError
from diffuseg.inference.predictor import Predictor
from diffuseg.io import read_mask
from diffuseg.pretrained.package import package_run
from diffuseg.run.verdict import predict_weights


def test_models_lists_name_task_dims_labels_raters_validation(cli, with_models):
    code, out, _ = cli("models")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split()[:6] == ["name", "task", "dims", "labels", "raters", "validation"]
    row = next(r for r in rows if r.startswith("tiny "))
    for cell in ("phantom lesions", "2D", "lesion", "  2  ", "ged_", str(with_models)):
        assert cell in row, row


def test_models_show_prints_the_card(cli, with_models):
    code, out, _ = cli("models", "show", "tiny")
    assert code == 0
    assert out.startswith("# tiny") and "## Not a medical device" in out
    assert out.rstrip().endswith(str(with_models / "tiny"))


def test_an_unknown_name_is_one_line(cli, with_models, tmp_path):
    one_line_error(*cli("models", "show", "tiyn")[::2], "tiyn", "did you mean 'tiny'")
    one_line_error(*cli("predict", "tny", "-i", tmp_path / "x.png", "-o", tmp_path / "out")[::2],
                   "'tny' does not exist", "did you mean 'tiny'")


def test_models_package_writes_and_warns_about_the_draft(cli, trained_run, tmp_path):
    code, out, err = cli("models", "package", trained_run, "-o", tmp_path / "m" / "t")
    assert code == 0 and "model 't'" in out and "sha256" in out
    assert "warning: " in err and "Licence and attribution" in err  # the draft's TODOs
    one_line_error(*cli("models", "package", trained_run, "-o", tmp_path / "m" / "t")[::2],
                   "--overwrite")
    one_line_error(*cli("models", "package", trained_run, "-o", tmp_path / "u",
                        "--card", tmp_path / "missing.md")[::2], "--card")


def test_from_pretrained_predicts_on_a_synthetic_image(with_models):
    predictor = Predictor.from_pretrained("tiny", device="cpu")
    assert predictor.run_dir == with_models / "tiny"
    result = predictor.segment(synthetic_image(1, (24, 24)), n_samples=2, steps=1)
    assert tuple(result.samples.shape) == (2, 1, 1, 24, 24)
    with pytest.raises(DataError, match="did you mean 'tiny'"):
        Predictor.from_pretrained("tinny")


def test_a_changed_byte_of_the_weights_is_one_line_naming_the_file(cli, models_dir, tmp_path,
                                                                     monkeypatch, phantom):
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    weights = models / "tiny" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight: the file still loads, the sha256 differs
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("DIFFUSEG_MODELS", str(models))
    image = sorted((phantom / "imagesTr").iterdir())[0]
    line = one_line_error(*cli("predict", "tiny", "-i", image, "-o", tmp_path / "out")[::2],
                          str(weights), "sha256")
    assert "damaged or was changed" in line
    with pytest.raises(DataError, match="sha256"):
        Predictor.from_run(models / "tiny")
    weights.unlink()
    with pytest.raises(DataError, match="missing"):
        Predictor.from_pretrained("tiny")


def test_a_name_and_a_run_folder_give_the_same_files_for_the_same_weights(
        cli, trained_run, phantom, tmp_path, monkeypatch):
    """The run's EMA weights rounded to fp16 (kept in fp32) and the model's fp16 weights cast
    into the fp32 network are the same numbers: every output file is identical, byte for
    byte. Random weights make the masks busy, so that the files are not all empty."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    uses = predict_weights(run)  # the weights predict loads (the best validation's EMA)
    randomise_weights(uses)
    package_run(run, tmp_path / "models" / "busy")
    round_to_fp16(uses)
    monkeypatch.setenv("DIFFUSEG_MODELS", str(tmp_path / "models"))
    image = sorted((phantom / "imagesTr").iterdir())[0]
    outputs = {}
    for source in (run, "busy"):
        out = tmp_path / f"out_{source == run}"
        assert cli("predict", source, "-i", image, "-o", out, "-n", "3", "--steps", "2",
                   "--seed", "7")[0] == 0
        outputs[source == run] = next(p for p in out.iterdir() if p.is_dir())
    by_run, by_name = outputs[True], outputs[False]
    names = sorted(p.name for p in by_run.iterdir())
    assert names == sorted(p.name for p in by_name.iterdir())
    for name in names:
        if name != "result.json":
            assert (by_run / name).read_bytes() == (by_name / name).read_bytes(), name
    a, b = (json.loads((d / "result.json").read_text()) for d in (by_run, by_name))
    assert a.pop("run") == str(run.absolute()) and b.pop("run") == str(
        tmp_path / "models" / "busy")
    assert a == b
    samples = [read_mask(by_run / f"sample_{s:02d}.png")[0] for s in range(3)]
    assert all(0 < (m > 0).mean() < 1 for m in samples)  # busy masks, not empty or full


def test_evaluate_run_name_reads_the_models_splits(cli, with_models, phantom, tmp_path):
    splits = json.loads((with_models / "tiny" / "splits.json").read_text())
    trained = splits["train"][0]
    out = tmp_path / "pred"
    image = phantom / "imagesTr" / f"{trained}_0000.png"
    assert cli("predict", "tiny", "-i", image, "-o", out, "-n", "2", "--steps", "1")[0] == 0
    assert json.loads((out / trained / "result.json").read_text())["run"] == str(
        with_models / "tiny")
    one_line_error(*cli("evaluate", out, "-d", phantom, "-n", "2", "--no-report", "--strict",
                        "--run", "tiny")[::2], "--strict", trained)


def test_serve_takes_a_model_name(cli, with_models, tmp_path, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    code, out, err = cli("serve", "tiny", "--no-auth", "--data", tmp_path / "data")
    assert code == 0, err
    assert started["app"].state.predictor.run_dir == with_models / "tiny"


def test_explain_takes_a_model_name(cli, with_models, phantom, tmp_path):
    image = sorted((phantom / "imagesTr").iterdir())[0]
    code, out, err = cli("explain", "tiny", "-i", image, "-o", tmp_path / "why", "--kinds",
                         "trajectory", "-n", "2", "--steps", "2")
    assert code == 0, err
    assert f"trajectory: {tmp_path / 'why' / 'trajectory.png'}" in out
    assert (tmp_path / "why" / "trajectory.png").stat().st_size > 0

"""predict writes samples, consensus and uncertainty maps in the input's geometry."""

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import tiny

from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.inference.predictor import Predictor, case_name, list_inputs
from diffuseg.io import read_mask
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

TINY = tiny()


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    data = write_phantom_dataset(tmp_path_factory.mktemp("d2") / "p", n_cases=4, size=24,
                                 n_raters=2)
    config = build_config(None, TINY, dataset=data)
    return train(config, data, tmp_path_factory.mktemp("r2") / "run", progress=False), data


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    data = write_phantom_dataset(tmp_path_factory.mktemp("d3") / "p", n_cases=4, spatial_dims=3,
                                 size=16, n_raters=2)
    config = build_config(None, TINY + ["data.patch_size=[16,16,16]"], dataset=data)
    return train(config, data, tmp_path_factory.mktemp("r3") / "run", progress=False), data


def test_2d_outputs(tmp_path, run2d):
    run, data = run2d
    image = sorted((data / "imagesTr").iterdir())[0]
    folder = Predictor.from_run(run).predict_file(image, tmp_path, n_samples=3, steps=2)
    assert folder.name == case_name(image)
    names = {p.name for p in folder.iterdir()}
    assert {"sample_00.png", "sample_02.png", "consensus.png", "probability.png", "variance.png",
            "entropy.png", "mutual_information.png", "result.json"} <= names
    mask, geometry = read_mask(folder / "consensus.png")
    assert mask.shape == (24, 24)
    summary = json.loads((folder / "result.json").read_text())
    assert summary["n_samples"] == 3 and summary["steps"] == 2


def test_existing_outputs_are_kept(tmp_path, run2d):
    run, data = run2d
    image = sorted((data / "imagesTr").iterdir())[0]
    predictor = Predictor.from_run(run)
    predictor.predict_file(image, tmp_path, n_samples=1, steps=1)
    with pytest.raises(ValueError, match="--overwrite"):
        predictor.predict_file(image, tmp_path, n_samples=1, steps=1)


def test_oblique_anisotropic_nifti_keeps_its_geometry(tmp_path, run3d):
    """An input of another size, oblique affine and anisotropic spacing: outputs have the
    identical affine and shape."""
    run, _ = run3d
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-10.0, 5.0, 30.0]
    volume = np.random.default_rng(0).normal(100, 20, size=(20, 18, 11)).astype(np.float32)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    folder = Predictor.from_run(run).predict_file(path, tmp_path / "out", n_samples=2, steps=1)
    for name in ("consensus.nii.gz", "sample_01.nii.gz", "entropy.nii.gz"):
        out = nib.load(folder / name)
        assert out.shape == volume.shape
        np.testing.assert_allclose(out.affine, affine, atol=1e-6)


def test_list_inputs_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        list_inputs(tmp_path / "empty")


def test_resampled_run_predicts_on_the_input_grid(tmp_path):
    """A run trained at 2 mm spacing segments a 1 x 1 x 3 mm volume and answers on its grid."""
    data = write_phantom_dataset(tmp_path / "p", n_cases=3, spatial_dims=3, size=16, n_raters=1)
    config = build_config(None, TINY + ["data.patch_size=[16,16,16]", "data.spacing=[2,2,2]"],
                          dataset=data)
    run = train(config, data, tmp_path / "run", progress=False)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    volume = np.random.default_rng(0).normal(size=(24, 20, 9)).astype(np.float32)
    path = tmp_path / "aniso.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    folder = Predictor.from_run(run).predict_file(path, tmp_path / "out", n_samples=2, steps=1)
    out = nib.load(folder / "probability.nii.gz")
    assert out.shape == volume.shape
    np.testing.assert_allclose(out.affine, affine, atol=1e-6)


def test_channel_files_of_a_case_are_one_input(tmp_path):
    from PIL import Image

    for c in range(3):
        Image.fromarray(np.full((8, 8), 10 * c, np.uint8)).save(tmp_path / f"lesion_{c:04d}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "other.png")
    inputs = list_inputs(tmp_path)
    assert [[p.name for p in case] for case in inputs] == [
        ["lesion_0000.png", "lesion_0001.png", "lesion_0002.png"], ["other.png"]]
    from diffuseg.inference.predictor import read_channels

    image, _ = read_channels(inputs[0])
    assert image.shape == (3, 8, 8) and image[2].max() == 20


def test_cli_predict_inside_outside_holds_the_marks(tmp_path, run2d, monkeypatch, capsys):
    """``predict --inside/--outside``: every sample holds the marked pixels, the case's JSON
    counts them; marks on another grid, or one mark file for several images, are refused."""
    import sys

    from PIL import Image

    from diffuseg.cli import main

    run, data = run2d
    image = sorted((data / "imagesTr").iterdir())[0]
    inside, outside = np.zeros((24, 24), np.uint8), np.zeros((24, 24), np.uint8)
    inside[3:6, 3:6] = 255  # a corner the phantom's lesion does not reach
    outside[12:15, 10:16] = 255
    Image.fromarray(inside).save(tmp_path / "in.png")
    Image.fromarray(outside).save(tmp_path / "out.png")

    def cli(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["diffuseg", "predict", str(run), *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code

    code = cli("-i", str(image), "-o", str(tmp_path / "guided"), "-n", "4", "--steps", "3",
               "--inside", str(tmp_path / "in.png"), "--outside", str(tmp_path / "out.png"),
               "--jumps", "2")
    assert code in (0, None), capsys.readouterr().err
    folder = tmp_path / "guided" / case_name(image)
    for s in range(4):
        sample = read_mask(folder / f"sample_{s:02d}.png")[0] > 0
        assert sample[3:6, 3:6].all() and not sample[12:15, 10:16].any()
    summary = json.loads((folder / "result.json").read_text())
    assert summary["constraints"] == {"inside": 9, "outside": 18, "label": 1, "jumps": 2}
    capsys.readouterr()
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "small.png")
    assert cli("-i", str(image), "-o", str(tmp_path / "bad"), "--inside",
               str(tmp_path / "small.png")) == 2
    assert "shape" in capsys.readouterr().err
    assert cli("-i", str(data / "imagesTr"), "-o", str(tmp_path / "bad"), "--inside",
               str(tmp_path / "in.png")) == 2
    assert "single image" in capsys.readouterr().err
    assert cli("-i", str(image), "-o", str(tmp_path / "bad"), "--inside",
               str(tmp_path / "in.png"), "--label", "2") == 2  # a binary run has label 1 only
    assert "label" in capsys.readouterr().err


def test_diffuseg_precision_reaches_predict_and_a_bad_value_is_one_line(tmp_path, run2d,
                                                                         monkeypatch, capsys):
    """``DIFFUSEG_PRECISION`` replaces the default precision of ``predict`` (recorded in
    result.json); a value that is not a precision ends the command in one line, exit 2."""
    import sys

    from diffuseg.cli import main

    run, data = run2d
    image = sorted((data / "imagesTr").iterdir())[0]

    def cli(out: str) -> int:
        monkeypatch.setattr(sys, "argv", ["diffuseg", "predict", str(run), "-i", str(image),
                                          "-o", str(tmp_path / out), "-n", "2", "--steps", "1",
                                          "--quiet"])
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code

    for value in ("fp32", "bf16"):
        monkeypatch.setenv("DIFFUSEG_PRECISION", value)
        assert cli(value) in (0, None), capsys.readouterr().err
        result = json.loads((tmp_path / value / case_name(image) / "result.json").read_text())
        assert result["precision"] == value
    capsys.readouterr()
    monkeypatch.setenv("DIFFUSEG_PRECISION", "fp64")
    assert cli("bad") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DIFFUSEG_PRECISION='fp64'" in err, err
    assert not (tmp_path / "bad").exists()  # refused before any output


def test_predict_warns_on_a_run_that_did_not_learn(tmp_path, run2d, monkeypatch, capsys):
    """One line on stderr naming the run, the numbers and what to do; none for a run that
    learned, or one from before verdicts."""
    import shutil
    import sys

    from diffuseg.cli import main
    from diffuseg.run.verdict import not_learned_warning

    run, data = run2d
    verdict = json.loads((run / "verdict.json").read_text())
    assert verdict["learned"] is False  # one training step
    image = sorted((data / "imagesTr").iterdir())[0]

    def predict(run_dir, out):
        monkeypatch.setattr(sys, "argv", ["diffuseg", "predict", str(run_dir), "-i", str(image),
                                          "-o", str(out), "-n", "2", "--steps", "2", "--quiet"])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code in (0, None)
        return [line for line in capsys.readouterr().err.splitlines() if "did not learn" in line]

    (line,) = predict(run, tmp_path / "a")
    assert line.startswith(f"warning: run '{run}' did not learn (GED")
    assert "--resume" in line and "\n" not in line
    assert not_learned_warning(run) in line  # serve prints the same line
    learned = tmp_path / "learned"
    shutil.copytree(run, learned)
    (learned / "verdict.json").write_text(json.dumps({**verdict, "learned": True}))
    assert predict(learned, tmp_path / "b") == [] and not_learned_warning(learned) is None
    (learned / "verdict.json").unlink()
    assert predict(learned, tmp_path / "c") == []

"""A user's mistakes end in one line naming the file or option and the fix, exit status 2."""

import sys

import numpy as np
import pytest
from PIL import Image

from diffuseg.cli import main
from diffuseg.data.phantom import write_phantom_dataset


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["diffuseg", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(
        tmp_path_factory.mktemp("ds") / "phantom",
        n_cases=6,
        spatial_dims=2,
        size=32,
        n_raters=2,
        seed=0,
    )


def test_help_on_every_command(monkeypatch, capsys):
    for command in ("train", "predict", "check", "demo"):
        code, out, _ = run_cli(monkeypatch, capsys, command, "-h")
        assert code == 0 and "Usage" in out


def test_missing_dataset_folder(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch, capsys, "train", str(tmp_path / "nope"), "-o", str(tmp_path / "run")
    )
    assert_one_line_error(code, err, "nope")


def test_unknown_config_key(monkeypatch, capsys, tmp_path, phantom):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        str(phantom),
        "-o",
        str(tmp_path / "r"),
        "--set",
        "train.max_step=3",
    )
    assert_one_line_error(code, err, "train.max_step", "max_steps")
    assert not (tmp_path / "r").exists()  # nothing written for a refused config


def test_steps_zero(monkeypatch, capsys, tmp_path, phantom):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        str(tmp_path),
        "-i",
        str(phantom),
        "-o",
        str(tmp_path / "out"),
        "--steps",
        "0",
    )
    assert_one_line_error(code, err, "--steps 0")


def test_image_without_mask(monkeypatch, capsys, tmp_path, phantom):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(phantom, broken)
    label = sorted((broken / "labelsTr").iterdir())[0]
    label.unlink()
    code, _, err = run_cli(monkeypatch, capsys, "train", str(broken), "-o", str(tmp_path / "r"))
    assert_one_line_error(code, err, label.name.split("_r")[0].split(".")[0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, phantom):
    from diffuseg.api import build_config
    from diffuseg.training import train

    config = build_config(
        None,
        [
            "network.channels=[8,16]",
            "network.attention_levels=[false,false]",
            "network.norm_groups=4",
            "train.max_steps=1",
            "train.device=cpu",
            "process.T=50",
        ],
        dataset=phantom,
    )
    return train(config, phantom, tmp_path_factory.mktemp("runs") / "run", progress=False)


def test_non_image_input(monkeypatch, capsys, tmp_path, tiny_run):
    run = tiny_run
    bad = tmp_path / "notes_0000.png"
    bad.write_text("this is not an image")
    code, _, err = run_cli(
        monkeypatch, capsys, "predict", str(run), "-i", str(bad), "-o", str(tmp_path / "out")
    )
    assert_one_line_error(code, err, "notes_0000.png")


def test_not_a_run_folder(monkeypatch, capsys, tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        str(tmp_path / "norun"),
        "-i",
        str(image),
        "-o",
        str(tmp_path / "out"),
    )
    assert_one_line_error(code, err, "norun", "config.json")

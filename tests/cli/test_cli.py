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
    from diffuseg.training.loop import train
    from diffuseg.training.start import build_config

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


# ---------------------------------------------------------------------------------------------
# the CLI package: one registry, names, defaults, version


def test_version(monkeypatch, capsys):
    from diffuseg import __version__

    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"diffuseg {__version__}"


def test_python_dash_m_runs_the_cli():
    import subprocess

    from diffuseg import __version__

    out = subprocess.run([sys.executable, "-m", "diffuseg", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"diffuseg {__version__}", out.stderr


def all_commands():
    """(path, click command) of every leaf command of the one app."""
    import typer.main

    import diffuseg.cli

    root = typer.main.get_command(diffuseg.cli.app)
    out = []
    for name, cmd in root.commands.items():
        for sub_name, sub in getattr(cmd, "commands", {name: cmd}).items():
            out.append(((name, sub_name) if sub is not cmd else (name,), sub))
    return out


def test_every_command_registered_once_with_help(monkeypatch, capsys):
    paths = [path for path, _ in all_commands()]
    for expected in (("train",), ("predict",), ("check",), ("demo",), ("evaluate",),
                     ("export",), ("convert", "msd"), ("convert", "lidc-slices")):
        assert expected in paths
    for path in paths:
        code, out, _ = run_cli(monkeypatch, capsys, *path, "-h")
        assert code == 0 and "Usage" in out, path


def test_help_shows_every_default():
    for path, cmd in all_commands():
        for param in cmd.params:
            if param.param_type_name != "option" or param.hidden or param.name == "help":
                continue
            if param.required or (param.is_flag and param.default is False):
                continue
            assert param.default is not None or isinstance(param.show_default, str), (
                f"{' '.join(path)} {param.opts}: default None without a stated default")
            assert param.show_default is not False, (path, param.opts)


def test_train_names_do_not_clash(monkeypatch, capsys, tmp_path):
    import typer.main

    import diffuseg.cli

    train = typer.main.get_command(diffuseg.cli.app).commands["train"]
    opts = {opt: p.name for p in train.params for opt in p.opts}
    assert opts["-c"] == opts["--config"] == "config"
    assert opts["--resume"] == opts["--continue"] == "resume"
    assert opts["--max-steps"] == "max_steps"
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path), "-o", str(tmp_path / "r"),
                           "--c")
    assert_one_line_error(code, err, "--resume")


def test_train_steps_is_a_deprecated_alias(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path / "nope"), "-o",
                           str(tmp_path / "r"), "--steps", "3")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith("warning: ") and "--max-steps 3" in lines[0]
    assert lines[1].startswith("error: ") and "nope" in lines[1]
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path), "-o", str(tmp_path / "r"),
                           "--steps", "3", "--max-steps", "3")
    assert_one_line_error(code, err, "--max-steps only")


def test_a_flag_and_a_set_that_disagree_are_refused(monkeypatch, capsys, tmp_path):
    """--max-steps 100000 with --set train.max_steps=3 trained 100000 steps without a word:
    the flag used to win silently. The same value twice is fine."""
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path), "-o", str(tmp_path / "r"),
                           "--max-steps", "100000", "--set", "train.max_steps=3")
    assert_one_line_error(code, err, "--max-steps 100000", "train.max_steps=3", "disagree")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path), "-o", str(tmp_path / "r"),
                           "--method", "ldseg", "--set", "method.name = ddpm")
    assert_one_line_error(code, err, "--method ldseg", "method.name=ddpm")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path / "nope"), "-o",
                           str(tmp_path / "r"), "--minutes", "30", "--set",
                           "train.max_minutes=30")
    assert_one_line_error(code, err, "nope")  # agreeing (30 = 30.0): on to the dataset check


def test_export_format(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "export", str(tmp_path), "--format", "tflite")
    assert_one_line_error(code, err, "--format tflite", "onnx")
    code, _, err = run_cli(monkeypatch, capsys, "export", str(tmp_path))
    assert_one_line_error(code, err, "--format onnx")


# ---------------------------------------------------------------------------------------------
# predict: atomic --overwrite, one writer per output folder


def sample_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("sample_"))


def test_overwrite_leaves_no_stale_sample(monkeypatch, capsys, tmp_path, tiny_run, phantom):
    image = sorted((phantom / "imagesTr").iterdir())[0]
    out = tmp_path / "out"
    args = ["predict", str(tiny_run), "-i", str(image), "-o", str(out), "--steps", "2"]
    assert run_cli(monkeypatch, capsys, *args, "-n", "3")[0] == 0
    case = next(p for p in out.iterdir() if p.is_dir())
    assert len(sample_files(case)) == 3
    code, _, err = run_cli(monkeypatch, capsys, *args, "-n", "2")
    assert_one_line_error(code, err, "--overwrite")
    assert run_cli(monkeypatch, capsys, *args, "-n", "2", "--overwrite")[0] == 0
    assert sample_files(case) == ["sample_00.png", "sample_01.png"]
    assert sorted(p.name for p in out.iterdir()) == [case.name]  # no temporaries, no lock left


def test_second_writer_is_refused(monkeypatch, capsys, tmp_path, tiny_run, phantom):
    import subprocess

    image = sorted((phantom / "imagesTr").iterdir())[0]
    out = tmp_path / "out"
    code = ("import sys, time; from diffuseg.core.atomic import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(monkeypatch, capsys, "predict", str(tiny_run), "-i", str(image),
                               "-o", str(out), "-n", "1", "--steps", "1")
        assert_one_line_error(code, err, f"in use by pid {holder.pid}", "output folder")
        assert not sample_files(out)
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, the kernel drops the lock
        holder.wait()
        holder.stdout.close()  # else its pipe is closed by the GC later, with a ResourceWarning
        # on the stderr of whichever test runs then
    code, _, err = run_cli(monkeypatch, capsys, "predict", str(tiny_run), "-i", str(image),
                           "-o", str(out), "-n", "1", "--steps", "1")
    assert code == 0, err
    assert not (out / ".diffuseg.lock").exists()


# ---------------------------------------------------------------------------------------------
# evaluate checks the run's own splits; resume checks the dataset


def test_evaluate_warns_and_strict_refuses_training_cases(monkeypatch, capsys, tmp_path,
                                                           tiny_run, phantom):
    import json

    splits = json.loads((tiny_run / "splits.json").read_text())
    trained = splits["train"][0]
    out = tmp_path / "pred"
    image = phantom / "imagesTr" / f"{trained}_0000.png"
    assert run_cli(monkeypatch, capsys, "predict", str(tiny_run), "-i", str(image), "-o",
                   str(out), "-n", "2", "--steps", "1")[0] == 0
    args = ["evaluate", str(out), "-d", str(phantom), "-n", "2", "--no-report"]
    code, _, err = run_cli(monkeypatch, capsys, *args)  # the run is named in result.json
    assert code == 0
    assert "warning: " in err and trained in err and "training split" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training_cases_scored"] == [trained]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--strict", "--run", str(tiny_run))
    assert_one_line_error(code, err, "--strict", trained)
    held = (splits["val"] + splits["test"])[0]
    (out / trained).rename(out / held)  # now only a held-out case is scored
    code, _, err = run_cli(monkeypatch, capsys, *args, "--strict")
    assert code == 0 and "warning" not in err, err


def test_resume_refuses_another_dataset(monkeypatch, capsys, tmp_path, tiny_run, phantom):
    import shutil

    other = write_phantom_dataset(tmp_path / "other", n_cases=6, spatial_dims=2, size=32,
                                  n_raters=2, seed=1)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    code, _, err = run_cli(monkeypatch, capsys, "train", str(other), "-o", str(run), "--resume")
    assert_one_line_error(code, err, "cannot resume", str(other))


@pytest.mark.parametrize(("args", "needle"), [
    (["predict", "RUN", "-i", "x", "-o", "y", "-n", "x"], "'--samples' / '-n'"),
    (["predict", "--bogus"], "No such option: --bogus"),
    (["predict"], "Missing argument 'run'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
])
def test_click_usage_errors_are_one_line(monkeypatch, capsys, args, needle):
    """A bad option value, an unknown option or command, a missing argument: one line naming
    it and where the help is, exit 2 (not click's boxed usage message)."""
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, needle, " -h'")


def test_help_and_no_arguments_exit_zero(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "predict", "-h")
    assert code == 0 and "--samples" in out
    code, out, _ = run_cli(monkeypatch, capsys)
    assert code == 0 and "predict" in out

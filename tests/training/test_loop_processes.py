"""Training as separate processes see it: the run-folder lock, SIGINT, kill -9, the exit status
of a diverging run, the wall-clock budget, and torchrun with two CPU processes."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny
from safetensors.torch import load_file

from diffuseg.cli import main
from diffuseg.core.atomic import run_lock
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.run.checkpoint import complete_step
from diffuseg.run.log import read_metrics
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny("train.batch_size=4", "sample.steps=2", "sample.n_samples=2",
            "train.precision=fp32", "train.checkpoint_every=2", attention=True, T=100,
            max_steps=None, val=2, device=False)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "phantom2d", n_cases=8,
                                 spatial_dims=2, size=32, n_raters=3, seed=1)


def env() -> dict:
    out = dict(os.environ, OMP_NUM_THREADS="1")
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), out.get("PYTHONPATH", "")])
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffuseg", *args]


def settings(*extra: str) -> list[str]:
    return [arg for item in TINY + list(extra) for arg in ("--set", item)]


def wait_for(predicate, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_second_writer_is_refused_naming_the_first(tmp_path, phantom):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):  # this test process holds the folder
        done = subprocess.run(cli("train", str(phantom), "-o", str(run), "--max-steps", "2",
                                  "--device", "cpu", *settings()),
                              env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"in use by pid {os.getpid()}" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert list(run.iterdir()) == []  # nothing written; the lock file went with the lock


def test_sigterm_to_every_process_of_the_job_still_saves_a_checkpoint(tmp_path, phantom):
    """A scheduler signals the whole process group, DataLoader workers included (SLURM's
    preemption, ``pkill -f``): the workers ignore it, the main process finishes its step, saves
    and exits 130, without a traceback (before, a worker killed by SIGTERM made it fail)."""
    run = tmp_path / "run"
    proc = subprocess.Popen(cli("train", str(phantom), "-o", str(run), "--max-steps", "100000",
                                "--device", "cpu", *settings(
                                    "train.checkpoint_every=100000", "data.stream=true",
                                    "data.num_workers=2")),
                            env=env(), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: complete_step(run / "checkpoint") == 0 or proc.poll() is not None)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err
    step = complete_step(run / "checkpoint")
    assert step is not None and f"interrupted at step {step}" in err


def test_sigint_saves_a_resumable_checkpoint(tmp_path, phantom):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli("train", str(phantom), "-o", str(run), "--max-steps", "100000",
                                "--device", "cpu", *settings("train.checkpoint_every=100000")),
                            env=env(), stderr=subprocess.PIPE, text=True)
    wait_for(lambda: complete_step(run / "checkpoint") == 0 or proc.poll() is not None)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    step = complete_step(run / "checkpoint")
    assert step is not None and f"interrupted at step {step}" in err
    done = subprocess.run(cli("train", str(phantom), "-o", str(run), "--resume", "--max-steps",
                              str(step + 2)), env=env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed at step {step}" in (run / "training_log.txt").read_text()
    assert (run / "model.safetensors").is_file()


def test_a_diverging_run_exits_2_with_one_line(tmp_path, phantom, monkeypatch, capsys):
    from diffuseg.training import loop as training

    real = training.batch_at

    def nan_batch(examples, cfg, seed, step, *rest):  # the run diverges at step 2
        batch = real(examples, cfg, seed, step, *rest)
        if step == 1:
            batch["image"][:] = float("nan")
        return batch

    monkeypatch.setattr(training, "batch_at", nan_batch)
    monkeypatch.setattr(sys, "argv", ["diffuseg", "train", str(phantom), "-o",
                                      str(tmp_path / "run"), "--max-steps", "6", "--device", "cpu",
                                      *settings()])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # not progress
    assert len(errors) == 1 and errors[0].startswith("error: training diverged"), err


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """Three kills of the 20-kill benchmark (benchmarks/kill_resume.py)."""
    result = load_benchmark("kill_resume").run_benchmark(kills=3, steps=12, workdir=tmp_path,
                                                          seed=1, pause=0.5, window=2.0)
    assert result["kills"] == 3, result
    assert result["resumes_ok"] == result["resumes"], result
    assert result["identical"] and result["metrics_without_duplicates"], result


@pytest.mark.slow
def test_the_minutes_budget_holds_for_the_whole_command(tmp_path, phantom):
    """--minutes 1 is the whole command's wall clock (validation and final save included),
    within 10%; the interpreter's start-up before the command runs is measured and not counted."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import diffuseg.training.loop"], env=env(), check=True)
    startup = time.monotonic() - t0
    t0 = time.monotonic()
    done = subprocess.run(cli("train", str(phantom), "-o", str(tmp_path / "run"), "--max-steps",
                              "1000000", "--minutes", "1", "--device", "cpu",
                              *settings("train.val_every=50", "train.val_cases=4",
                                        "train.val_samples=4", "train.val_steps=5")),
                          env=env(), capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t0 - startup
    assert done.returncode == 0, done.stderr
    assert wall <= 66, (wall, startup)
    assert any("val_ged" in r for r in read_metrics(tmp_path / "run"))


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", "-m", "diffuseg", *args],
                          env=env(), capture_output=True, text=True, timeout=600)


def test_torchrun_two_processes_match_one_and_resume_with_another_world_size(tmp_path,
                                                                             phantom):
    """Two gloo ranks, each with half of a batch of 4 (train.micro_batches=2), against one
    process accumulating the same two halves: the same weights (to 1e-6; the sums differ only
    in order), one writer (one start line, no duplicated metrics), and a 2-process run resumed
    by 1 process equals the 1-process run."""
    common = ["--device", "cpu", *settings("train.micro_batches=2", "train.val_every=1000")]
    one = train(build_config(None, TINY + ["train.micro_batches=2", "train.val_every=1000",
                                           "train.max_steps=4", "train.device=cpu"],
                             dataset=phantom), phantom, tmp_path / "one", progress=False)
    done = torchrun(2, "train", str(phantom), "-o", str(tmp_path / "two"), "--max-steps", "4",
                    *common)
    assert done.returncode == 0, done.stderr[-2000:]
    two = tmp_path / "two"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(one / name)), load_file(str(two / name))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6)
    assert (two / "training_log.txt").read_text().count("started at step 0") == 1
    assert done.stdout.count("run folder:") == 1 and done.stdout.count("verdict:") <= 1
    assert "world_size=2" in (two / "training_log.txt").read_text()
    steps = [r["step"] for r in read_metrics(two) if "loss" in r]
    assert steps == [4]  # one writer: rank 1 logs nothing
    # 2 processes for 2 steps, then 1 process resumes to 4
    half = tmp_path / "half"
    done = torchrun(2, "train", str(phantom), "-o", str(half), "--max-steps", "2", *common)
    assert done.returncode == 0, done.stderr[-2000:]
    train(build_config(None, ["train.max_steps=4"], dataset=None, base=half / "config.json"),
          phantom, half, resume=True, progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(one / name)), load_file(str(half / name))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6)
    assert json.loads((half / "checkpoint/state.json").read_text())["step"] == 4


def test_torchrun_streaming_two_processes_match_one_in_memory(tmp_path, phantom):
    """Streamed (data.stream=true, a DataLoader worker per rank), each of two ranks reads only its
    own half of every batch from the preprocessed folder: the same weights as one in-memory
    process accumulating both halves."""
    extra = ["train.micro_batches=2", "train.val_every=1000", "data.num_workers=1"]
    one = train(build_config(None, TINY + extra + ["train.max_steps=3", "train.device=cpu"],
                             dataset=phantom), phantom, tmp_path / "one", progress=False)
    two = tmp_path / "two"
    done = torchrun(2, "train", str(phantom), "-o", str(two), "--max-steps", "3", "--device",
                    "cpu", *settings(*extra, "data.stream=true"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "training data: streaming" in (two / "training_log.txt").read_text()
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(one / name)), load_file(str(two / name))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6)


def test_a_streamed_run_that_its_minutes_end_exits(tmp_path, phantom):
    """The streaming workers ignore SIGTERM (the test above); at the end of a ``--minutes`` run
    they must be stopped by the run, not left to the interpreter's exit, which SIGTERMs and then
    joins them: a finished LIDC run printed its verdict and never exited."""
    done = subprocess.run(cli("train", str(phantom), "-o", str(tmp_path / "run"), "--minutes",
                              "0.15", "--device", "cpu", *settings(
                                  "data.stream=true", "data.num_workers=2",
                                  "train.budget_clock=cpu", "train.max_steps=1000000")),
                          env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "streaming" in (tmp_path / "run" / "training_log.txt").read_text()
    assert (tmp_path / "run" / "verdict.json").is_file()


def test_a_stream_whose_files_vanish_ends_in_one_line_and_exits(tmp_path):
    """A run streaming from DATASET/preprocessed whose files another process removes: one line
    that names the file and the fix, exit 2, and the process ends (a worker's FileNotFoundError
    printed a traceback, and the workers, kept alive by it, hung the exit)."""
    data = write_phantom_dataset(tmp_path / "ph", n_cases=4, spatial_dims=2, size=32,
                                 n_raters=2, seed=3)
    run = tmp_path / "run"
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cli("train", str(data), "-o", str(run), "--max-steps", "1000000",
                                    "--device", "cpu", *settings("data.stream=true",
                                                                 "data.num_workers=2")),
                                env=env(), stderr=err, stdout=subprocess.DEVNULL)
        try:
            wait_for(lambda: complete_step(run / "checkpoint") is not None)
            for npy in (data / "preprocessed").glob("*/*.npy"):
                npy.unlink()
            code = proc.wait(timeout=120)
        finally:
            proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, stderr[-3000:]
    assert "cannot be read" in errors[0] and "--resume" in errors[0], errors
    assert "Traceback" not in stderr

"""Training that survives crashes and refuses to lie: bit-identical resume, checkpoint recovery,
guards against non-finite values, a torn metrics line, corrupt checkpoint files, other data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny
from safetensors.torch import load_file

import diffuseg.training.loop as training
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import DataError, TrainingDiverged
from diffuseg.run.checkpoint import MARKER, complete_step, recover_checkpoint
from diffuseg.run.log import read_metrics
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

TINY = tiny("network.dropout=0.1", "train.batch_size=4", "sample.steps=2",
            "sample.n_samples=2", "train.precision=fp32", "train.warmup_steps=2",
            "train.checkpoint_every=2", "train.val_every=3", attention=True, T=100, max_steps=None,
            val=2)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "phantom2d", n_cases=8,
                                 spatial_dims=2, size=32, n_raters=3, seed=1)


def config(dataset, *extra):
    return build_config(None, TINY + list(extra), dataset=dataset)


def resumed_config(run: Path, *extra):
    return build_config(None, list(extra), dataset=None, base=run / "config.json")


class Crash(Exception):
    pass


def crash_at(monkeypatch, at_step: int) -> None:
    """Make the process 'die' while building the batch of step ``at_step`` (0-based)."""
    real = training.batch_at

    def batch_at(examples, cfg, seed, step, *rest):
        if step == at_step:
            raise Crash(f"crash at step {step}")
        return real(examples, cfg, seed, step, *rest)

    monkeypatch.setattr(training, "batch_at", batch_at)


def same_files(a: Path, b: Path, names=("model.safetensors", "ema.safetensors")) -> None:
    for name in names:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), (name, key)


@pytest.fixture(scope="module")
def straight(phantom, tmp_path_factory):
    return train(config(phantom, "train.max_steps=6"), phantom,
                 tmp_path_factory.mktemp("s") / "run", progress=False)


def test_crash_and_resume_equals_an_uninterrupted_run(tmp_path, phantom, straight, monkeypatch):
    """Augmentation, rater choice, diffusion noise and dropout all continue bit for bit; the
    replayed step 3 is validated and logged once; a torn last metrics line is skipped."""
    run = tmp_path / "run"
    crash_at(monkeypatch, 3)
    with pytest.raises(Crash):
        train(config(phantom, "train.max_steps=6"), phantom, run, progress=False)
    assert complete_step(run / "checkpoint") == 2
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "val_di')  # a line torn by kill -9
    monkeypatch.undo()
    train(resumed_config(run), phantom, run, resume=True, progress=False)
    same_files(straight, run)
    same_files(straight / "checkpoint", run / "checkpoint", names=("optimizer.safetensors",))
    val_steps = [r["step"] for r in read_metrics(run) if "val_ged" in r]
    assert val_steps == [r["step"] for r in read_metrics(straight) if "val_ged" in r] == [3, 6]
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    assert "resumed at step 2" in (run / "training_log.txt").read_text()


def test_a_run_killed_before_its_first_interval_resumes(tmp_path, phantom, straight,
                                                        monkeypatch):
    run = tmp_path / "run"
    crash_at(monkeypatch, 0)
    with pytest.raises(Crash):
        train(config(phantom, "train.max_steps=6"), phantom, run, progress=False)
    assert complete_step(run / "checkpoint") == 0
    monkeypatch.undo()
    train(resumed_config(run), phantom, run, resume=True, progress=False)
    same_files(straight, run)


def test_resume_records_overrides_and_refuses_other_data(tmp_path, phantom, monkeypatch):
    run = tmp_path / "run"
    crash_at(monkeypatch, 1)
    with pytest.raises(Crash):
        train(config(phantom, "train.max_steps=4"), phantom, run, progress=False)
    monkeypatch.undo()
    other = write_phantom_dataset(tmp_path / "other", n_cases=9, spatial_dims=2, size=32,
                                  n_raters=3, seed=2)
    with pytest.raises(DataError, match="is not the dataset run"):
        train(resumed_config(run), other, run, resume=True, progress=False)
    train(resumed_config(run, "train.max_steps=2"), phantom, run, resume=True, progress=False)
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 2
    assert "train.max_steps: 4 -> 2" in (run / "training_log.txt").read_text()


def write_checkpoint_folder(folder: Path, step: int, complete: bool = True) -> None:
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"step": step}))
    if complete:
        (folder / MARKER).write_text(json.dumps({"step": step, "files": {"state.json": len(
            json.dumps({"step": step}))}}))


@pytest.mark.parametrize("folders, expected", [
    ({"checkpoint.old": 4, "checkpoint.tmp": 6}, 6),  # killed between the two renames
    ({"checkpoint.old": 4, "checkpoint.tmp": None}, 4),  # killed while writing, after rename 1
    ({"checkpoint": 4, "checkpoint.tmp": None}, 4),  # killed while writing the new one
    ({"checkpoint": 4, "checkpoint.old": 2}, 4),  # killed while deleting the old one
    ({"checkpoint": None}, None),  # nothing complete
])
def test_recovery_picks_the_newest_complete_checkpoint(tmp_path, folders, expected):
    for name, step in folders.items():
        write_checkpoint_folder(tmp_path / name, step or 0, complete=step is not None)
    assert recover_checkpoint(tmp_path) == expected
    if expected is not None:
        assert json.loads((tmp_path / "checkpoint/state.json").read_text())["step"] == expected
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


@pytest.mark.parametrize("name", ["optimizer.safetensors", "optimizer.json", "state.json"])
def test_a_corrupt_checkpoint_file_is_a_one_line_error(tmp_path, phantom, name):
    run = train(config(phantom, "train.max_steps=2"), phantom, tmp_path / "run", progress=False)
    path = run / "checkpoint" / name
    path.write_bytes(b"\x00" * path.stat().st_size)  # same size: the marker still matches
    with pytest.raises(DataError, match="start over") as err:
        train(resumed_config(run, "train.max_steps=3"), phantom, run, resume=True,
              progress=False)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, phantom,
                                                                  monkeypatch):
    # train.lr=1e30 is refused when the config is built (the range declared beside train.lr); a
    # run that diverges anyway is simulated by a batch that turns NaN at step 4
    nan_at(monkeypatch, 3)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite") as err:
        train(config(phantom, "train.max_steps=6", "train.checkpoint_every=2"), phantom, run,
              progress=False)
    assert "train.skip_nonfinite" in str(err.value)
    assert not (run / "model.safetensors").exists()
    state = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def nan_at(monkeypatch, at_step: int) -> None:
    real = training.batch_at

    def batch_at(examples, cfg, seed, step, *rest):
        batch = real(examples, cfg, seed, step, *rest)
        if step == at_step:
            batch["image"][:] = float("nan")
        return batch

    monkeypatch.setattr(training, "batch_at", batch_at)


def test_a_nan_loss_stops_the_run(tmp_path, phantom, monkeypatch):
    nan_at(monkeypatch, 2)
    with pytest.raises(TrainingDiverged, match="step 3: non-finite loss nan"):
        train(config(phantom, "train.max_steps=6"), phantom, tmp_path / "run", progress=False)
    assert complete_step(tmp_path / "run" / "checkpoint") == 2


def test_skip_nonfinite_skips_and_counts(tmp_path, phantom, monkeypatch):
    nan_at(monkeypatch, 2)
    run = train(config(phantom, "train.max_steps=4", "train.skip_nonfinite=true"), phantom,
                tmp_path / "run", progress=False)
    records = [r for r in read_metrics(run) if "loss" in r]
    assert [r["skipped"] for r in records] == [1, 1]  # logged at the skipped step and the last
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert "step 3: non-finite loss" in (run / "training_log.txt").read_text()


def test_the_budget_survives_a_resume(tmp_path, phantom, monkeypatch):
    """elapsed_seconds is carried in the checkpoint: a run that had spent 58 of its 60 s stops
    after one more step when resumed, instead of starting a fresh minute."""
    run = tmp_path / "run"
    crash_at(monkeypatch, 2)
    with pytest.raises(Crash):
        train(config(phantom, "train.max_steps=50", "train.max_minutes=1"), phantom, run,
              progress=False)
    monkeypatch.undo()
    folder = run / "checkpoint"
    state = json.loads((folder / "state.json").read_text())
    assert 0 < state["elapsed_seconds"] < 58
    state["elapsed_seconds"] = 58.0
    (folder / "state.json").write_text(json.dumps(state))
    marker = json.loads((folder / MARKER).read_text())
    marker["files"]["state.json"] = (folder / "state.json").stat().st_size
    (folder / MARKER).write_text(json.dumps(marker))
    train(resumed_config(run), phantom, run, resume=True, progress=False)
    assert "stopped at step 3: train.max_minutes=1" in (run / "training_log.txt").read_text()


def test_a_failed_start_leaves_no_empty_run_folder(tmp_path, phantom):
    with pytest.raises(DataError):
        train(config(phantom, "train.max_steps=1"), tmp_path / "no_dataset", tmp_path / "run",
              progress=False)
    assert not (tmp_path / "run").exists()

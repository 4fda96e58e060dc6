"""Sharded inference: ``torchrun --nproc-per-node 2 -m diffuseg predict RUN --dataset D --split
test`` (two CPU processes, gloo) writes the same files, byte for byte, as one process; and the
lock a torchrun job holds on its output folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import tiny

from diffuseg.core.atomic import LOCK_NAME, folder_lock, lock_held_by_job
from diffuseg.core.distributed import init_distributed
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import ConfigError, DataError
from diffuseg.inference.batch import is_complete
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict:
    out = dict(os.environ, OMP_NUM_THREADS="1")  # the same threads for both (result.json)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), out.get("PYTHONPATH", "")])
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    data = write_phantom_dataset(tmp_path_factory.mktemp("d") / "p", n_cases=40, size=24,
                                 n_raters=2)
    config = build_config(None, tiny("sample.n_samples=3", "sample.steps=2", T=20),
                          dataset=data)
    return train(config, data, tmp_path_factory.mktemp("r") / "run", progress=False), data


def test_two_cpu_ranks_write_the_files_of_one_process(tmp_path, run_and_data):
    """Same seed per case whatever its rank, same code, same thread count: the math is the same,
    so every file (masks, float maps, previews, result.json) is compared byte for byte."""
    run, data = run_and_data
    test_ids = json.loads((run / "splits.json").read_text())["test"]
    assert len(test_ids) >= 3  # both ranks get cases, one rank more than the other
    args = ["predict", str(run), "--dataset", str(data), "--split", "test", "--device", "cpu",
            "--seed", "4"]
    one = subprocess.run([sys.executable, "-m", "diffuseg", *args, "-o", str(tmp_path / "one")],
                         env=env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node=2", "-m", "diffuseg", *args, "-o",
                          str(tmp_path / "two")],
                         env=env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = files_of(tmp_path / "one"), files_of(tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(test_ids)
    assert a.keys() == b.keys() and len(a) > 10 * len(test_ids)
    assert [name for name in a if a[name] != b[name]] == []
    assert not (tmp_path / "two" / LOCK_NAME).exists()  # released at the end
    summary = f"{len(test_ids)} case(s) in {tmp_path / 'two'}"
    assert two.stdout.count(summary) == 1  # printed once, by rank 0
    assert one.stdout.splitlines() == [line.replace(str(tmp_path / "two"),
                                                    str(tmp_path / "one"))
                                       for line in two.stdout.splitlines()]
    again = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc-per-node=2", "-m", "diffuseg", *args, "-o",
                            str(tmp_path / "two"), "--quiet"],
                           env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(test_ids)} already complete" in again.stdout  # resumed, on both ranks
    assert files_of(tmp_path / "two") == b
    # rank 1's first case was drawn with other settings: rank 0 still predicts its own, then the
    # job fails in one line naming the rank (never exit 0 with a case missing)
    shutil.rmtree(tmp_path / "two" / test_ids[0])  # rank 0's
    record = tmp_path / "two" / test_ids[1] / "result.json"  # rank 1's
    record.write_text(json.dumps(dict(json.loads(record.read_text()), seed=99)))
    failed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node=2", "-m", "diffuseg", *args, "-o",
                             str(tmp_path / "two"), "--quiet"],
                            env=env(), capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0
    assert (f"error: rank 1 of 2 failed: output folder '{tmp_path / 'two' / test_ids[1]}' "
            "already holds a prediction drawn with other settings") in failed.stderr
    assert is_complete(tmp_path / "two" / test_ids[0])
    assert files_of(tmp_path / "two" / test_ids[0]) == files_of(tmp_path / "one" / test_ids[0])


def test_more_ranks_than_gpus_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="process for GPU 1 but this machine has 1 GPU"):
        init_distributed("auto")


def test_the_ranks_of_a_job_write_under_rank_0s_lock_and_others_are_refused(tmp_path):
    """Inside ``lock_held_by_job`` (the other ranks) the folder lock passes through as a
    re-entrant one; a writer outside the job (another thread here: flock locks belong to the open
    file) is still refused while rank 0 holds the lock."""
    folder = tmp_path / "out"
    outcome: list[str] = []

    def rank_1() -> None:
        with lock_held_by_job(folder), folder_lock(folder, "output folder"):
            outcome.append("rank 1 wrote")

    def outsider() -> None:
        try:
            with folder_lock(folder, "output folder"):
                outcome.append("outsider wrote")
        except DataError as err:
            outcome.append(str(err))

    with folder_lock(folder, "output folder"):  # rank 0
        for target in (rank_1, outsider):
            thread = threading.Thread(target=target)
            thread.start()
            thread.join(timeout=30)
    assert outcome[0] == "rank 1 wrote"
    assert "is in use by pid" in outcome[1]
    assert not (folder / LOCK_NAME).exists()

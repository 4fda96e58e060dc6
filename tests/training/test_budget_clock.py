"""``train.budget_clock``: the budget counts wall time or this process's CPU time."""

import time

import pytest

from diffuseg.config import load_config
from diffuseg.errors import ConfigError
from diffuseg.training.budget import Budget


def test_cpu_clock_does_not_count_sleep_but_wall_clock_does():
    wall, cpu = Budget(1.0, None, "wall"), Budget(1.0, None, "cpu")
    time.sleep(0.3)
    assert wall.elapsed() >= 0.29
    assert cpu.elapsed() < 0.1  # a sleeping process uses no CPU


def test_cpu_clock_counts_work():
    cpu = Budget(1.0, None, "cpu")
    t0 = time.process_time()
    while time.process_time() - t0 < 0.2:
        sum(range(1000))
    assert cpu.elapsed() >= 0.19
    assert cpu.remaining() <= 60 - 0.19


def test_budget_clock_is_checked():
    assert load_config(None, ["train.budget_clock=cpu"]).train.budget_clock == "cpu"
    with pytest.raises(ConfigError, match=r"train.budget_clock.*'sundial'.*\['wall', 'cpu'\]"):
        load_config(None, ["train.budget_clock=sundial"])


def test_a_command_start_counts_what_ran_before_training():
    """The CLI passes its own start: imports and dataset listing count against --minutes."""
    wall = Budget(1.0, None, "wall", command_started=time.monotonic() - 20.0)
    assert 20.0 <= wall.elapsed() < 21.0 and wall.remaining() <= 40.0
    t0 = time.process_time()
    cpu = Budget(1.0, None, "cpu", command_started=time.monotonic() - 20.0)
    assert cpu.elapsed() >= t0  # the process's CPU since it started, not since now
    assert Budget(1.0, None, "wall").elapsed() < 1.0


def test_train_command_hands_its_start_to_the_budget(tmp_path, monkeypatch):
    import sys

    import diffuseg.cli
    import diffuseg.training.start
    from diffuseg.cli.app import STARTED
    from diffuseg.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "d", n_cases=4, size=16, n_raters=2)
    seen = {}
    monkeypatch.setattr(diffuseg.training.start, "train_run",
                        lambda *a, **k: seen.update(k) or tmp_path)
    monkeypatch.setattr(sys, "argv", ["diffuseg", "train", str(data), "-o", str(tmp_path / "r"),
                                      "--minutes", "1", "--max-steps", "1"])
    with pytest.raises(SystemExit) as exit_info:
        diffuseg.cli.main()
    assert exit_info.value.code in (0, None)
    assert seen["started"] == STARTED <= time.monotonic()

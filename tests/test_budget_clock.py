"""``train.budget_clock``: the budget counts wall time or this process's CPU time."""

import time

import pytest

from diffuseg.config import load_config
from diffuseg.errors import ConfigError
from diffuseg.runstate import Budget


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

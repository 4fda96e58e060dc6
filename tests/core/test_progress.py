"""The progress display: timestamped lines off a terminal, nothing when quiet, budget ETA."""

import io
import re

import pytest

from diffuseg.core import progress
from diffuseg.core.progress import Progress, clock_text, track

LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] predict (\d+)/10 cases \(\d+%\) "
                  r"elapsed \d+:\d\d:\d\d eta (\?|\d+:\d\d:\d\d)( \| .*)?$")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def _loud():
    progress.set_quiet(False)
    yield
    progress.set_quiet(False)


def test_non_tty_lines_every_interval_with_the_documented_format():
    out, clock = io.StringIO(), FakeClock()
    with Progress("predict", 10, unit="cases", stream=out, tty=False, clock=clock,
                  heartbeat=False) as bar:
        for k in range(10):
            clock.now += 3.0  # 3 s per case: a line every 4th case with a 10 s interval
            bar.advance(info=f"case_{k}")
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    counts = [int(LINE.match(line).group(1)) for line in lines]
    assert counts == [4, 8, 10]  # t=12 s, t=24 s, the end
    assert lines[0].endswith("eta 0:00:18 | case_3")  # 6 cases left at 3 s each


def test_a_short_success_or_a_failure_adds_no_lines():
    out, clock = io.StringIO(), FakeClock()
    with Progress("predict", 2, stream=out, tty=False, clock=clock, heartbeat=False) as bar:
        bar.advance()
        bar.advance()
    with pytest.raises(ValueError):
        with Progress("predict", 2, stream=out, tty=False, clock=clock, heartbeat=False) as bar:
            clock.now += 11
            bar.advance()  # one line
            raise ValueError("a user mistake")  # the error line follows alone
    assert len(out.getvalue().splitlines()) == 1


def test_quiet_prints_nothing(capsys):
    progress.set_quiet(True)
    out = io.StringIO()
    with Progress("predict", 10, stream=out, tty=False) as bar:
        bar.advance(5)
    progress.log("a line")
    list(track(range(3), "x", stream=out, tty=False))
    assert out.getvalue() == ""
    assert capsys.readouterr().err == ""


def test_eta_is_capped_by_a_binding_wall_clock_budget():
    clock = FakeClock()
    bar = Progress("training", 1000, stream=io.StringIO(), tty=False, clock=clock,
                   budget_s=120.0, heartbeat=False)
    clock.now = 60.0
    bar.update(10)  # steps alone: 990 * 6 s; the 2-minute budget binds at 60 s left
    assert bar.eta() == pytest.approx(60.0)
    clock.now = 100.0
    bar.update(900)  # now the steps bind: 100 left at 100/900 s each
    assert bar.eta() == pytest.approx(100 * 100 / 900)


def test_heartbeat_prints_while_one_unit_is_slow():
    import time

    out = io.StringIO()
    with Progress("predict", 2, unit="cases", stream=out, tty=False, interval=0.05):
        time.sleep(0.4)  # no update: the heartbeat thread still prints
    assert len(out.getvalue().splitlines()) >= 3


def test_clock_text():
    assert clock_text(3725) == "1:02:05" and clock_text(None) == "?"

"""What a training command keeps around its loop: the budget (``train.max_minutes`` on the wall
or CPU clock) and the stop request of SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Budget:
    """``train.max_minutes`` of wall clock (or CPU time: ``train.budget_clock``) for the whole
    command, across resumes.

    The loop stops while there is still time for one more step, a checkpoint, the final save and
    a final validation (capped by ``val_limit``, or its last measured duration if shorter)."""

    minutes: float | None
    val_minutes: float | None
    clock: str = "wall"  # "wall": time.monotonic; "cpu": this process's CPU time
    prior: float = 0.0  # seconds spent by earlier commands of this run
    # time.monotonic() at the command's start (the CLI's: its imports count too); the CPU clock
    # then counts from the process's start. None: both count from now
    command_started: float | None = field(default=None, repr=False)
    started: float = field(init=False)
    excluded: float = 0.0  # seconds of this command not counted (preprocessing: docs/training.md)
    step_seconds: float = 0.0
    save_seconds: float = 0.0
    val_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.command_started is None:
            self.started = self.now()
        else:
            self.started = 0.0 if self.clock == "cpu" else self.command_started

    def now(self) -> float:
        """Seconds on this budget's clock (only differences are meaningful)."""
        return time.process_time() if self.clock == "cpu" else time.monotonic()

    def elapsed(self) -> float:
        return self.prior + self.now() - self.started - self.excluded

    def exclude(self, seconds: float) -> None:
        """Take ``seconds`` (measured on this clock) out of the budget: preprocessing, a step
        cached for later runs, does not count against ``--minutes``."""
        self.excluded += max(0.0, seconds)

    def fraction(self) -> float | None:
        return None if self.minutes is None else self.elapsed() / (60 * self.minutes)

    def remaining(self) -> float:
        return float("inf") if self.minutes is None else 60 * self.minutes - self.elapsed()

    def val_limit(self) -> float:
        if self.val_minutes is not None:
            return 60 * self.val_minutes
        return float("inf") if self.minutes is None else 6 * self.minutes  # 10% of the budget

    def reserve(self) -> float:
        val = self.val_limit() if self.val_seconds is None else min(
            self.val_limit(), 1.2 * self.val_seconds)
        return self.step_seconds + 2 * self.save_seconds + val

    def out_of_time(self) -> bool:
        return self.remaining() < self.reserve()


class StopSignals:
    """SIGINT/SIGTERM set ``requested``; the loop saves a checkpoint and stops at the end of the
    step. A second signal interrupts at once (the last complete checkpoint stays valid)."""

    def __init__(self):
        self.requested = False
        self.previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

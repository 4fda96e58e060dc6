"""What a training command keeps around its loop: the run folder's setup (new or resumed), the
wall-clock budget, and the stop request of SIGINT/SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffuseg.config import RunConfig, to_dict
from diffuseg.core.atomic import holds_files, write_json_atomic, write_text_atomic
from diffuseg.errors import DataError
from diffuseg.run.checkpoint import recover_checkpoint
from diffuseg.run.folder import check_same_dataset
from diffuseg.run.log import RunLog, dataset_fingerprint, truncate_metrics


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not run_dir.is_dir():
            raise DataError(f"cannot resume: run folder '{run_dir}' does not exist; start a new "
                            "run without --resume")
        return
    if holds_files(run_dir):
        raise DataError(f"run folder '{run_dir}' already holds files; pass --resume to continue "
                        "it, or choose another output folder")
    run_dir.mkdir(parents=True, exist_ok=True)


def describe_run(run_dir: Path, config: RunConfig, dataset, files=None) -> None:
    """config.json, dataset.json and fingerprint.json, each written atomically (splits.json is
    written by ``run_folder.splits_for_run``). ``files``: the dataset's ``data.files.scan``."""
    write_json_atomic(run_dir / "config.json", to_dict(config))
    write_text_atomic(run_dir / "dataset.json", (dataset.root / "dataset.json").read_text())
    write_json_atomic(run_dir / "fingerprint.json", dataset_fingerprint(dataset, files))


def resume_run(run_dir: Path, config: RunConfig, dataset, splits: dict, log: RunLog,
               files=None) -> int | None:
    """Recover the newest complete checkpoint, refuse other data, record changed settings, drop
    metrics of steps to be replayed. Returns the checkpoint's step (None: none was written, the
    run restarts from step 0 in its folder). ``files``: the dataset's ``data.files.scan``."""
    check_same_dataset(run_dir, dataset, files)
    step = recover_checkpoint(run_dir)
    if step is None and (run_dir / "checkpoint").is_dir():
        raise DataError(f"checkpoint folder '{run_dir / 'checkpoint'}' is incomplete (its "
                        "COMPLETE marker is missing or does not match its files); start over in "
                        "a new run folder, or put back an older copy of the checkpoint folder")
    changes = config_changes(run_dir / "config.json", to_dict(config))
    if step is None:
        describe_run(run_dir, config, dataset, files)
        log.text("no complete checkpoint in the run folder: starting again from step 0")
    elif changes:
        write_json_atomic(run_dir / "config.json", to_dict(config))
    if changes:
        log.text("resumed with changed settings: " + ", ".join(changes))
    truncate_metrics(run_dir, step or 0)
    return step


def config_changes(path: Path, new: dict) -> list[str]:
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in _diff(old, new, "")]


def _diff(old, new, prefix: str):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _diff(old.get(key), new.get(key), f"{prefix}{key}.")
    elif old != new:
        yield prefix.rstrip("."), old, new


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
        return self.prior + self.now() - self.started

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

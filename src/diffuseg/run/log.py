"""What a run writes as it goes: a plain-text log, ``metrics.jsonl``, ``progress.png``, a progress
bar (the fingerprint of the dataset it saw: ``diffuseg.run.folder``)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from diffuseg.core.atomic import write_atomic, write_text_atomic


class RunLog:
    """Appends to the run folder's logs; a no-op on torchrun ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool = True, show_progress: bool = True,
                 tensorboard: bool = False):
        self.run_dir, self.enabled, self.show_progress = run_dir, enabled, show_progress
        self.writer = tensorboard_writer(run_dir) if tensorboard and enabled else None

    def text(self, line: str) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.run_dir / "training_log.txt", "a") as f:
            f.write(f"{stamp}  {line}\n")

    def say(self, line: str) -> None:
        """A line in the log file that the user also sees: one timestamped line on stderr (rank 0
        only; ``--quiet`` silences it)."""
        if not self.enabled:
            return
        from diffuseg.core.progress import log

        self.text(line)
        log(line)

    def progress_line(self, line: str) -> None:
        """A transient progress line on stderr (rank 0 only); not kept in the log file."""
        if self.enabled and self.show_progress:
            print(line, file=sys.stderr, flush=True)

    def metrics(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    @contextlib.contextmanager
    def progress(self, total: int, start: int, enabled: bool,
                 budget_s: float | None = None, timer: Callable[[], float] | None = None,
                 clock: str = "wall") -> Iterator[_Bar]:
        """A training progress display (``diffuseg.core.progress``): step count, loss, elapsed time
        and an ETA from the binding budget, steps or ``budget_s`` seconds; with ``timer`` (the
        budget's elapsed seconds) both are read on the budget's ``clock`` ("wall" or "cpu")."""
        bar = _Bar(total, start, enabled and self.enabled, budget_s, timer, clock)
        try:
            yield bar
        finally:
            bar.close()


class _Bar:
    def __init__(self, total: int, start: int, enabled: bool, budget_s: float | None,
                 timer: Callable[[], float] | None = None, clock: str = "wall"):
        from diffuseg.core.progress import Progress
        from diffuseg.core.validation import BIG

        label = "training" if clock == "wall" else f"training ({clock} clock)"
        total = None if total >= BIG else total  # bounded by --minutes only: no step total
        self.progress = Progress(label, total, unit="steps", start=start, budget_s=budget_s,
                                 timer=timer) if enabled else None

    def advance(self, step: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(step, info=f"loss {loss:.4f}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def tensorboard_writer(run_dir: Path):
    """A SummaryWriter into RUN/tensorboard/ (``train.tensorboard=true``); a ConfigError naming
    the fix when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from diffuseg.errors import ConfigError

        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install "
                          "tensorboard, or set train.tensorboard=false") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl``; a line torn by a kill (not valid JSON) is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the records up to ``step`` (a resumed run replays the steps after its checkpoint, and
    must not log them twice); drops a torn last line too."""
    if not (run_dir / "metrics.jsonl").is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))


def plot_progress(run_dir: Path) -> None:
    """progress.png: training loss (raw and smoothed) by step; beside it the validation GED and
    HM-IoU (``diffuseg.training.validation``) with the trivial references' values dashed (always
    empty; the raters' majority repeated) and the Dice on cases with a foreground reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [r for r in records if "val_ged" in r]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if train:
        steps, loss = np.array(train).T
        ax.plot(steps, loss, color="tab:blue", alpha=0.35, label="loss")
        k = max(1, len(loss) // 10)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="tab:blue", label="loss (smoothed)")
        ax.set_yscale("log")
        ax.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{run_dir.name}: training loss")
    _plot_validation(ax2, val)
    fig.tight_layout()
    write_atomic(run_dir / "progress.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _plot_validation(ax, val: list[dict]) -> None:
    ax.set_xlabel("step")
    ax.set_title("validation (lower GED, higher HM-IoU and Dice are better)")
    if not val:
        ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax.transAxes)
        return
    steps = [r["step"] for r in val]
    lines = (("val_ged", "GED", "tab:red", "-o"), ("val_hm_iou", "HM-IoU", "tab:green", "-o"),
             ("val_dice_nonempty", "Dice (foreground references)", "tab:purple", "-s"),
             ("ref_ged_empty", "GED, always empty", "tab:red", ":"),
             ("ref_ged_majority", "GED, raters' majority repeated", "tab:red", "--"),
             ("ref_hm_iou_empty", "HM-IoU, always empty", "tab:green", ":"))
    top = 0.0
    for key, label, color, style in lines:
        pairs = [(s, r[key]) for s, r in zip(steps, val, strict=True) if r.get(key) is not None]
        if pairs:
            xs, ys = zip(*pairs, strict=True)
            ax.plot(xs, ys, style, color=color, label=label)
            top = max(top, *ys)
    ax.set_ylim(0, 1.5 * top or 1.0)  # room for the legend above the lines
    ax.legend(loc="upper center", ncol=2, fontsize=8)

"""What a run writes as it goes: a plain-text log, ``metrics.jsonl``, ``progress.png``, a progress
bar, and the fingerprint of the dataset it was trained on."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class RunLog:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def text(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.run_dir / "training_log.txt", "a") as f:
            f.write(f"{stamp}  {line}\n")

    def metrics(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    @contextlib.contextmanager
    def progress(self, total: int, start: int, enabled: bool) -> Iterator[_Bar]:
        bar = _Bar(total, start, enabled and sys.stderr.isatty())
        try:
            yield bar
        finally:
            bar.close()


class _Bar:
    """A rich progress bar on a terminal; a line every 10% otherwise (CI logs stay short)."""

    def __init__(self, total: int, start: int, rich_bar: bool):
        self.total, self.last_report = total, start
        self.progress = None
        if rich_bar:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("training"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
                TimeRemainingColumn(),
            )
            self.task = self.progress.add_task("train", total=total, completed=start, loss="-")
            self.progress.start()

    def advance(self, step: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=f"{loss:.4f}")
        elif step - self.last_report >= max(1, self.total // 10) or step == self.total:
            print(f"step {step}/{self.total} loss {loss:.4f}", file=sys.stderr, flush=True)
            self.last_report = step

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_progress(run_dir: Path) -> None:
    """progress.png: training loss (raw and smoothed) and validation consensus Dice by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_dice"]) for r in records if "val_dice" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        steps, loss = np.array(train).T
        ax.plot(steps, loss, color="tab:blue", alpha=0.35, label="loss")
        k = max(1, len(loss) // 10)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="tab:blue", label="loss (smoothed)")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if val:
        ax2 = ax.twinx()
        vs, vd = np.array(val).T
        ax2.plot(vs, vd, "o-", color="tab:green", label="val consensus Dice")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation Dice")
        ax2.legend(loc="lower right")
    if train:
        ax.legend(loc="upper right")
    ax.set_title(f"{run_dir.name}: progress")
    fig.tight_layout()
    tmp = run_dir / "progress.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(run_dir / "progress.png")


def dataset_fingerprint(dataset) -> dict:
    """Which data a run saw: dataset.json's hash and a hash over every file's name and size
    (not the derived ``preprocessed/`` folder, docs/volumes.md)."""
    root = Path(dataset.root)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and p.relative_to(root).parts[0] != "preprocessed")
    for p in files:
        h.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
    return {
        "dataset": str(root.resolve()),
        "dataset_json_sha256": hashlib.sha256((root / "dataset.json").read_bytes()).hexdigest(),
        "files_sha256": h.hexdigest(),
        "n_files": len(files),
        "n_cases": len(dataset.cases),
    }

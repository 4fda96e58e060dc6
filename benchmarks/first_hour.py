"""The first hour of a new user, measured: the README's commands on PH2 (2D RGB), hippocampus (3D)
and LIDC (multi-rater) with the automatic plan.

For each data set: ``diffuseg convert``, ``diffuseg train DS -o RUN --minutes M`` (the plan is
``auto``), then ``diffuseg predict RUN -i CASES -o PRED`` on ``--predict-cases`` held-out cases of
the run's test split. Each command runs as a child process whose output lines are timestamped as
they arrive. Recorded per data set:

- seconds per step (metrics.jsonl: training seconds between the first and last logged steps);
- time to the first checkpoint (RUN/checkpoint/ appears);
- whether the budget held: train wall time minus ``60 * M`` (overrun, s; < 10 % is the target);
- predict seconds per case (wall time of the predict command / cases, model loading included);
- peak RSS of each command (VmHWM from /proc, polled);
- the longest silence: the largest gap between output lines of any command (target < 30 s).

    PYTHONPATH=src python benchmarks/first_hour.py --minutes 2 --work /tmp/first_hour

writes ``first_hour.json`` into ``--work`` and prints a markdown table with the date and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def convert_args(name: str, dst: Path) -> list[str]:
    return {
        "ph2": ["convert", "folder", str(DATA / "ph2"), str(dst), "--image-glob", "*/*.png",
                "--mask-suffix", "_lesion"],
        "hippocampus": ["convert", "msd", str(DATA / "msd_hippocampus"), str(dst)],
        "lidc": ["convert", "lidc-slices", str(DATA / "lidc_idri_slices" / "trainval.tar"),
                 str(dst), "--limit-patients", "40"],
    }[name]


def run(args: list[str], log: Path, watch: Path | None = None) -> dict:
    """Run ``diffuseg ARGS``; time it, keep its output, its longest silence, its peak RSS and,
    with ``watch``, when that path first appears."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if TCMALLOC.is_file():
        env["LD_PRELOAD"] = str(TCMALLOC)
    cmd = [sys.executable, "-c", "from diffuseg.cli import main; main()", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, bufsize=1)
    stamps, lines = [t0], []

    def read() -> None:
        for line in proc.stdout:
            stamps.append(time.monotonic())
            lines.append(line.rstrip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak_kb, appeared = 0, None
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        if watch is not None and appeared is None and watch.exists():
            appeared = time.monotonic() - t0
        time.sleep(0.5)
    reader.join(timeout=5)
    end = time.monotonic()
    stamps.append(end)
    log.write_text("\n".join(lines) + "\n")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"cmd": "diffuseg " + " ".join(args), "rc": proc.returncode,
            "seconds": round(end - t0, 1), "longest_silence_s": round(max(gaps), 1),
            "peak_rss_mb": round(peak_kb / 1024), "first_seen_s": appeared,
            "tail": lines[-3:]}


def seconds_per_step(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "seconds" in r and "loss" in r]
    if len(rows) < 2:
        return rows[0]["seconds"] / rows[0]["step"] if rows else None
    return round((rows[-1]["seconds"] - rows[0]["seconds"]) / (rows[-1]["step"]
                                                               - rows[0]["step"]), 2)


def held_out_inputs(run_dir: Path, dataset: Path, folder: Path, n: int) -> int:
    """Symlink the channel files of the first ``n`` test (else val) cases of the run into
    ``folder``; a subset without held-out cases (LIDC's first patients are all 'train' in the
    release's split) times prediction on its last ``n`` training cases."""
    splits = json.loads((run_dir / "splits.json").read_text())
    ids = (splits.get("test") or splits.get("val") or splits["train"][-n:])[:n]
    folder.mkdir(parents=True, exist_ok=True)
    for case in ids:
        for path in sorted((dataset / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].*")):
            (folder / path.name).symlink_to(path.resolve())
    return len(ids)


def bench(name: str, work: Path, minutes: float, n_predict: int) -> dict:
    ds, run_dir, pred = work / f"{name}_data", work / f"{name}_run", work / f"{name}_pred"
    for path in (run_dir, pred, work / f"{name}_inputs"):
        shutil.rmtree(path, ignore_errors=True)
    row: dict = {"dataset": name, "minutes": minutes}
    if not (ds / "dataset.json").is_file():
        row["convert"] = run(convert_args(name, ds), work / f"{name}_convert.log")
    row["train"] = run(["train", str(ds), "-o", str(run_dir), "--minutes", str(minutes)],
                       work / f"{name}_train.log", watch=run_dir / "checkpoint")
    row["plan"] = json.loads((run_dir / "plan.json").read_text())["values"] \
        if (run_dir / "plan.json").is_file() else None
    row["seconds_per_step"] = seconds_per_step(run_dir)
    row["first_checkpoint_s"] = row["train"]["first_seen_s"]
    row["overrun_s"] = round(row["train"]["seconds"] - 60 * minutes, 1)
    n = held_out_inputs(run_dir, ds, work / f"{name}_inputs", n_predict)
    row["predict"] = run(["predict", str(run_dir), "-i", str(work / f"{name}_inputs"), "-o",
                          str(pred)], work / f"{name}_predict.log")
    row["predict_s_per_case"] = round(row["predict"]["seconds"] / max(1, n), 1)
    row["longest_silence_s"] = max(c["longest_silence_s"] for c in
                                   (row.get("convert"), row["train"], row["predict"]) if c)
    row["peak_rss_mb"] = max(c["peak_rss_mb"] for c in
                             (row.get("convert"), row["train"], row["predict"]) if c)
    return row


def table(rows: list[dict], load: str) -> str:
    head = ("| data | budget | s/step | first checkpoint (s) | train wall (s) | overrun (s) | "
            "predict s/case | peak RSS (MB) | longest silence (s) |\n|" + " --- |" * 9)
    body = [f"| {r['dataset']} | {r['minutes']:g} min | {round(r['seconds_per_step'] or 0, 2)} | "
            f"{r['first_checkpoint_s'] and round(r['first_checkpoint_s'])} | "
            f"{r['train']['seconds']} | {r['overrun_s']} "
            f"({100 * r['overrun_s'] / (60 * r['minutes']):+.0f} %) | "
            f"{r['predict_s_per_case']} | {r['peak_rss_mb']} | {r['longest_silence_s']} |"
            for r in rows]
    return "\n".join([f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load}",
                      "", head, *body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="train budget per data set")
    parser.add_argument("--work", type=Path, default=Path("/tmp/first_hour"))
    parser.add_argument("--data", nargs="+", default=["ph2", "hippocampus", "lidc"])
    parser.add_argument("--predict-cases", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    loads = [Path("/proc/loadavg").read_text().split()[0]]
    rows = []
    for name in args.data:
        rows.append(bench(name, args.work, args.minutes, args.predict_cases))
        loads.append(Path("/proc/loadavg").read_text().split()[0])
        (args.work / "first_hour.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows, f"{min(loads)}-{max(loads)} (1-min load average, 2 cores)"))


if __name__ == "__main__":
    main()

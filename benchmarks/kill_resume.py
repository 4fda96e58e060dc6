"""kill -9 a training run at random moments, resume it each time, and check that it ends bit for
bit where an uninterrupted run ends.

    PYTHONPATH=src python benchmarks/kill_resume.py --kills 20

Each cycle starts ``diffuseg train`` (the first time) or ``diffuseg train --resume``, waits a
random time (one kill in four lands during start-up: imports, data loading, the step-0
checkpoint; the others after the "started"/"resumed" log line), and sends SIGKILL. Checkpoints
are written every 2 steps, and ``DIFFUSEG_TEST_CHECKPOINT_PAUSE`` makes each checkpoint swap
sleep between its two renames, so that many kills land inside a checkpoint write. After every
kill we check that no completed checkpoint was lost (the recovered step is at least the newest
complete one seen just before the kill) and that at most one checkpoint interval of reported
progress is lost. Prints the figures: kills, kills inside a checkpoint write, resumes OK,
identical weights.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["network.channels=[8,16]", "network.attention_levels=[false,true]",
        "network.norm_groups=4", "train.batch_size=4", "train.val_cases=2",
        "train.val_samples=2", "train.val_steps=2", "process.T=100", "sample.steps=2",
        "sample.n_samples=2", "train.precision=fp32", "train.warmup_steps=5",
        "train.checkpoint_every=2", "train.val_every=25"]
CHECKPOINTS = ("checkpoint", "checkpoint.tmp", "checkpoint.old")


def environment(pause: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DIFFUSEG_TEST_CHECKPOINT_PAUSE=str(pause))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def command(data: Path, run: Path, steps: int, resume: bool) -> list[str]:
    args = [sys.executable, "-m", "diffuseg", "train", str(data), "-o", str(run), "--device",
            "cpu", "--max-steps", str(steps)]
    if resume:
        return args + ["--resume"]
    return args + [arg for item in TINY for arg in ("--set", item)]


def newest_complete(run: Path) -> int:
    from diffuseg.run.checkpoint import complete_step

    steps = [complete_step(run / name) for name in CHECKPOINTS]
    return max((s for s in steps if s is not None), default=-1)


def starts(run: Path) -> int:
    log = run / "training_log.txt"
    return len(re.findall(r"(started|resumed) at step", log.read_text())) if log.exists() else 0


def reported_step(stderr: str) -> int:
    """The last step the killed process reported (a lower bound of the step it reached)."""
    found = re.findall(r"step (\d+)/", stderr)
    return int(found[-1]) if found else -1


def one_cycle(rng: random.Random, data: Path, run: Path, steps: int, env: dict, first: bool,
              window: float, during_startup: bool, startup: float) -> dict:
    """Start (or resume), kill at a random moment (during start-up: within the measured
    ``startup`` seconds, which cover imports, data loading and the step-0 checkpoint); returns
    what happened."""
    before, t0 = starts(run), time.monotonic()
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(command(data, run, steps, not first), env=env, stderr=err,
                            stdout=subprocess.DEVNULL)
    if during_startup:
        time.sleep(rng.uniform(0.2, 1.2 * startup))
    else:
        deadline = time.monotonic() + 300
        while starts(run) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        startup = time.monotonic() - t0
        time.sleep(rng.uniform(0, window))
    seen = newest_complete(run)
    if proc.poll() is not None:
        err.seek(0)
        return {"finished": proc.returncode == 0, "rc": proc.returncode,
                "stderr": err.read().decode()[-500:]}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    err.seek(0)
    reported = reported_step(err.read().decode())
    swap = not (run / "checkpoint").exists() and (run / "checkpoint.old").exists()
    writing = (run / "checkpoint.tmp").exists()
    from diffuseg.run.checkpoint import recover_checkpoint

    recovered = recover_checkpoint(run) if run.exists() else None
    recovered = -1 if recovered is None else recovered
    return {"killed": True, "startup": during_startup, "startup_seconds": startup,
            "between_renames": swap,
            "while_writing": writing, "seen": seen, "recovered": recovered,
            "reported": reported, "lost_ok": recovered >= seen and reported - recovered <= 2}


def same_weights(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes()
               for n in ("model.safetensors", "ema.safetensors"))


def metrics_steps_unique(run: Path) -> bool:
    from diffuseg.run.log import read_metrics

    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    return steps == sorted(set(steps))


def run_benchmark(kills: int, steps: int, workdir: Path, seed: int = 0, pause: float = 0.3,
                  window: float = 3.0) -> dict:
    from diffuseg.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(workdir / "phantom", n_cases=8, spatial_dims=2, size=32,
                                 n_raters=3, seed=1)
    reference = workdir / "reference"
    subprocess.run(command(data, reference, steps, False), env=environment(0), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run, rng, env = workdir / "run", random.Random(seed), environment(pause)
    cycles: list[dict] = []
    startup = 5.0
    while sum(c.get("killed", False) for c in cycles) < kills:
        first = not run.exists() or not (run / "config.json").exists()
        cycle = one_cycle(rng, data, run, steps, env, first, window,
                          during_startup=len(cycles) % 4 == 1, startup=startup)
        startup = cycle.get("startup_seconds", startup)
        cycles.append(cycle)
        if "killed" not in cycle:
            break  # finished (or failed) before the kill landed
    last = subprocess.run(command(data, run, steps, (run / "config.json").exists()),
                          env=environment(0), capture_output=True, text=True)
    killed = [c for c in cycles if c.get("killed")]
    return {
        "kills": len(killed),
        "kills_during_startup": sum(c["startup"] for c in killed),
        "kills_inside_checkpoint_write": sum(c["while_writing"] for c in killed),
        "of_which_between_renames": sum(c["between_renames"] for c in killed),
        "resumes_ok": sum(c["lost_ok"] for c in killed) + int(last.returncode == 0),
        "resumes": len(killed) + 1,
        "final_exit": last.returncode,
        "final_stderr": last.stderr[-400:] if last.returncode else "",
        "identical": last.returncode == 0 and same_weights(reference, run),
        "metrics_without_duplicates": metrics_steps_unique(run),
        "steps": steps,
        "cycles": cycles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds each checkpoint swap sleeps between its renames")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        result = run_benchmark(args.kills, args.steps, Path(tmp), args.seed, args.pause)
        result["seconds"] = round(time.monotonic() - t0, 1)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        if key != "cycles":
            print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()

"""The equal-budget grid on LIDC (issue 24) in one command: every method trained from scratch
for each budget with one recipe, each scored by ``lidc_budget.py`` on the same validation slices.

A cell (method, minutes) is

    diffuseg train DATASET -o ROOT/runs/m<minutes>_<method> --method M --minutes <minutes>
        --max-steps 100000 --set train.budget_clock=cpu --set network.channels=[16,32,64]
        --set train.val_cases=4 --set train.val_every=100 --set train.checkpoint_every=50
        [the method's own --set, e.g. cimd_paper] [--set of this command]

(the recipe of the 30 CPU-minute column in benchmarks/RESULTS.md: the automatic CPU plan of the
named method with the widths pinned, validation pinned to what that column ran with), then

    python benchmarks/lidc_budget.py --work ROOT/work score --runs RUN --cases 600 --out ROOT/scores

``--jobs`` cells run at once, each process with one torch thread (2 on the project's 2-core
machine: ``train.budget_clock=cpu`` counts each training's own CPU time, so sharing the cores
does not change a cell's budget, only its wall time). A cell whose scores exist is skipped; a
training that stopped before its end is resumed (``--resume``); a scoring resumes by itself.
Logs: ``ROOT/logs/<cell>.train.log`` and ``.score.log``, and one line per event in
``ROOT/grid.log``. ``--dry-run`` prints each cell's state and commands, and runs nothing.

``--gpu``: the GPU plan (``--plan gpu``: its widths, batch and validation), device cuda, the wall
clock, one cell at a time: the grid a lent GPU runs in about an hour per 30-minute column.

    python benchmarks/lidc_grid.py --dataset Dataset010_LIDC --root grid --minutes 30 60 120
    python benchmarks/lidc_budget.py curve grid/scores --out docs/lidc_learning_curves.png
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

# grid name -> the method and its own overrides (one recipe for all otherwise)
METHODS: dict[str, list[str]] = {
    "ldseg": ["--method", "ldseg"],
    "berdiff": ["--method", "berdiff"],
    "ddpm": ["--method", "ddpm"],
    "flow_matching": ["--method", "flow_matching"],
    # the faithful CIMD (no z in the denoiser, no prior net); cimd_z is this project's variant
    "cimd_paper": ["--method", "cimd", "--set", "method.options.condition_on_z=false"],
    "cimd_z": ["--method", "cimd"],
    "hidiff": ["--method", "hidiff"],
    "prob_unet": ["--method", "prob_unet"],
    "mc_dropout": ["--method", "mc_dropout"],
    "ensemble": ["--method", "ensemble"],
    "unet": ["--method", "unet"],
}
CPU_RECIPE = ["--set", "train.budget_clock=cpu", "--set", "network.channels=[16,32,64]",
              "--set", "train.val_cases=4", "--set", "train.val_every=100",
              "--set", "train.checkpoint_every=50"]
GPU_RECIPE = ["--plan", "gpu", "--set", "train.device=cuda", "--set", "train.budget_clock=wall"]


class Cell:
    """One (method, minutes) of the grid, its run folder and its scores under ``root``."""

    def __init__(self, method: str, minutes: float, root: Path) -> None:
        self.method, self.minutes, self.root = method, minutes, root

    @property
    def name(self) -> str:
        return f"m{self.minutes:g}_{self.method}"

    @property
    def run(self) -> Path:
        return self.root / "runs" / self.name

    @property
    def scores(self) -> Path:
        return self.root / "scores" / f"{self.name}.json"

    def state(self) -> str:
        """``scored``, ``trained`` (final weights, not scored), ``resume`` (stopped before its
        end) or ``new``."""
        if self.scores.is_file():
            return "scored"
        if (self.run / "verdict.json").is_file():
            return "trained"
        return "resume" if (self.run / "config.json").is_file() else "new"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--dataset", type=Path, required=True, help="the LIDC dataset folder "
                   "('diffuseg import lidc'; its splits.json holds the release's val patients)")
    p.add_argument("--root", type=Path, required=True, help="folder for runs, scores and logs")
    p.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "cimd_z"],
                   choices=list(METHODS), help="grid methods (default: all but cimd_z)")
    p.add_argument("--minutes", type=float, nargs="+", default=[30.0, 60.0, 120.0],
                   help="training budgets in minutes (default 30 60 120)")
    p.add_argument("--jobs", type=int, help="cells at once (default 2 on CPU, 1 with --gpu)")
    p.add_argument("--max-steps", type=int, default=100000,
                   help="step cap (default 100000: the minutes end every run)")
    p.add_argument("--cases", type=int, default=600, help="val slices scored (default 600)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="one more config override for every cell (repeatable)")
    p.add_argument("--gpu", action="store_true", help="the GPU plan, cuda, wall clock")
    p.add_argument("--dry-run", action="store_true", help="print the cells, run nothing")
    args = p.parse_args(argv)
    args.jobs = args.jobs or (1 if args.gpu else 2)
    if args.jobs < 1 or min(args.minutes) <= 0 or args.cases < 0 or args.max_steps < 1:
        p.error("--jobs, --minutes and --max-steps must be > 0 and --cases >= 0")
    if not (args.dataset / "dataset.json").is_file():
        p.error(f"--dataset '{args.dataset}' has no dataset.json; give the folder that "
                "'diffuseg import lidc' wrote")
    return args


def commands(cell: Cell, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The training command (with ``--resume`` for a run that stopped) and the scoring one."""
    train = [sys.executable, "-m", "diffuseg", "train", str(args.dataset), "-o", str(cell.run),
             *METHODS[cell.method], "--minutes", f"{cell.minutes:g}",
             "--max-steps", str(args.max_steps),
             *(GPU_RECIPE if args.gpu else CPU_RECIPE),
             *(a for o in args.overrides for a in ("--set", o))]
    if cell.state() == "resume":
        train.append("--resume")
    score = [sys.executable, str(HERE / "lidc_budget.py"), "--work", str(args.root / "work"),
             "score", "--runs", str(cell.run), "--dataset", str(args.dataset),
             "--cases", str(args.cases), "--out", str(args.root / "scores")]
    return train, score


def log(args: argparse.Namespace, text: str) -> None:
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}"
    print(line, flush=True)
    with open(args.root / "grid.log", "a") as stream:
        stream.write(line + "\n")


def run_cell(cell: Cell, args: argparse.Namespace) -> bool:
    """Train (unless trained) and score one cell; False when a step failed (see its log)."""
    train, score = commands(cell, args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if not args.gpu else dict(os.environ)
    steps = ([] if cell.state() == "trained" else [("train", train)]) + [("score", score)]
    for what, command in steps:
        log(args, f"{what} {cell.name}: {' '.join(command[1:])}")
        with open(args.root / "logs" / f"{cell.name}.{what}.log", "a") as out:
            rc = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        log(args, f"{what} {cell.name}: exit {rc}")
        if rc != 0:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cells = [Cell(m, minutes, args.root) for minutes in sorted(args.minutes)
             for m in args.methods]
    if args.dry_run:
        for cell in cells:
            train, score = commands(cell, args)
            print(f"{cell.name}: {cell.state()}\n  {' '.join(train[1:])}\n  "
                  f"{' '.join(score[1:])}")
        return 0
    (args.root / "logs").mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if c.state() != "scored"]
    log(args, f"{len(todo)} of {len(cells)} cells to run, {args.jobs} at once")
    with ThreadPoolExecutor(args.jobs) as pool:
        ok = list(pool.map(lambda c: run_cell(c, args), todo))
    failed = [c.name for c, good in zip(todo, ok, strict=True) if not good]
    log(args, f"done; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Guided resampling on the phantom: does RePaint's resampling (jumps r > 1) move more samples
into the mode the marks are consistent with than one pass (r = 1)? (docs/review.md)

    python benchmarks/guided_jumps.py                          # trains the slow test's model
    python benchmarks/guided_jumps.py --run RUN --jumps 1 2 5  # reuse a 2D phantom run

The phantom's raters are its modes (rater 1 over-segments, threshold 0.3; rater 0 traces the
boundary, 0.5). For each held-out case, five pixels that only rater 1 marks are fixed inside, and
each sample is assigned to its nearest rater (1 - IoU); the share of samples nearest to rater 1
is reported without marks and with marks for each r, same seeds, with the paired difference to
r = 1 (mean and its standard error over cases). Every guided sample is checked to hold the marks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

SMALL = ["network.channels=[16,32]", "network.attention_levels=[false,false]",
         "train.batch_size=4", "train.max_steps=150", "train.lr=0.001", "train.warmup_steps=20",
         "train.val_every=1000", "train.ema_decay=0.99", "train.device=cpu", "process.T=100",
         "sample.steps=5"]  # the model of tests/service/test_review_learned.py


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained 2D phantom run (default: train one)")
    p.add_argument("--jumps", type=int, nargs="+", default=[1, 5])
    p.add_argument("--cases", type=int, default=24, help="held-out phantom cases (from 40)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    return p.parse_args(argv)


def nearest_rater(samples: np.ndarray, raters: np.ndarray) -> np.ndarray:
    from diffuseg.review.modes import iou_distances

    d = iou_distances(np.concatenate([samples, raters]))[: len(samples), len(samples):]
    return d.argmin(1)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    from diffuseg.data import Dataset
    from diffuseg.data.phantom import over_segmenting_marks, write_phantom_dataset
    from diffuseg.inference.marks import Constraints
    from diffuseg.inference.predictor import Predictor
    from diffuseg.training.loop import train
    from diffuseg.training.start import build_config

    root = Path(tempfile.mkdtemp(prefix="guided_jumps_"))
    data = write_phantom_dataset(root / "phantom", n_cases=40 + args.cases, size=32, n_raters=3,
                                 seed=3)
    run = args.run or train(build_config(None, SMALL, dataset=data), data, root / "run",
                            progress=False)
    predictor = Predictor.from_run(run)
    shares: dict[str, list[float]] = {"free": [], **{f"r={r}": [] for r in args.jumps}}
    for i, case in enumerate(c.load() for c in Dataset.open(data).cases[40:]):
        raters = case.raters > 0
        inside = over_segmenting_marks(raters, seed=i)
        if inside is None:
            continue
        for key in shares:
            marks = None if key == "free" else Constraints(inside, np.zeros_like(inside),
                                                           jumps=int(key[2:]))
            result = predictor.segment(case.image, n_samples=args.samples, steps=args.steps,
                                       seed=i, constraints=marks)
            labels = result.sample_labels()[:, 0].numpy() > 0
            if marks is not None and not labels[:, inside].all():
                raise SystemExit(f"case {i}, {key}: a guided sample broke a mark")
            shares[key].append(float((nearest_rater(labels, raters) == 1).mean()))
    n = len(shares["free"])
    print(f"run {run}; {n} cases, {args.samples} samples, {args.steps} steps")
    base = np.array(shares[f"r={args.jumps[0]}"])
    for key, values in shares.items():
        v = np.array(values)
        diff = v - base
        print(f"{key:>6}: share nearest rater 1 {v.mean():.3f}   paired diff to "
              f"r={args.jumps[0]}: {diff.mean():+.3f} +- {diff.std(ddof=1) / np.sqrt(n):.3f} (SE)")


if __name__ == "__main__":
    main()

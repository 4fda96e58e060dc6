"""Where the time to the first optimiser step of a training start goes, phase by phase.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/startup_phases.py /tmp/volumes_data/lidc

Trains one step with the settings of ``volumes.py lidc`` (the dataset opened once, as
``diffuseg train`` does) and prints, for each phase, the wall seconds from process start at which
it began and how long it took: imports, ``Dataset.open``, the dataset listing of both fingerprints
(``data.files.scan``), the in-memory estimate, the method and optimiser, the streamed source, the
step-0 checkpoint, the first batch and the first forward/backward pass. Each phase is timed by
wrapping the function that does it (no profiler, so the numbers are the ones of a plain run).
The run folder is written to ``--run`` (replaced). docs/performance.md, LIDC.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import functools  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

PHASES: list[tuple[str, float, float]] = []  # (label, began, seconds)


def now() -> float:
    return time.perf_counter() - START


def timed(label: str, began: float) -> None:
    PHASES.append((label, began, now() - began))


def wrap(owner, name: str, label: str) -> None:
    """Replace ``owner.name`` by a function that records each call's duration."""
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        began = now()
        try:
            return fn(*args, **kwargs)
        finally:
            timed(label, began)

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--run", type=Path, default=Path("/tmp/startup_phases_run"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    began = now()
    import torch

    timed("import torch", began)
    began = now()
    from diffuseg.data import Dataset
    from diffuseg.training.start import build_config

    timed("import diffuseg.training.start, diffuseg.data", began)
    began = now()
    import diffuseg.training.loop as training
    from diffuseg.data import files, streaming

    timed("import diffuseg.training.loop (MONAI)", began)
    torch.set_num_threads(1)
    wrap(files, "scan", "data.files.scan (both fingerprints)")
    wrap(streaming, "training_bytes", "in-memory estimate")
    for name, label in (("preprocess", "preprocessed folder check"),
                        ("splits_for_run", "splits"), ("describe_run", "describe_run"),
                        ("build_run", "method, optimiser, EMA"),
                        ("load_examples", "validation cases"), ("train_step", "first step")):
        wrap(training, name, label)
    wrap(training.StepStream, "__init__", "streamed source (index.json, workers)")
    wrap(training.StepStream, "take", "first batch from the workers")
    wrap(training.Run, "checkpoint", "checkpoint")
    step = torch.optim.AdamW.step

    def first_step(self, *a, **k):
        out = step(self, *a, **k)
        if not any(label == "optimizer.step" for label, _, _ in PHASES):
            PHASES.append(("optimizer.step", now(), 0.0))
            for label, at, seconds in PHASES:
                print(f"{at:7.2f} {seconds:7.2f}  {label}")
            print(f"first optimiser step returned {now():.1f} s after start", flush=True)
        return out

    torch.optim.AdamW.step = first_step
    shutil.rmtree(args.run, ignore_errors=True)
    began = now()
    dataset = Dataset.open(args.dataset)
    timed("Dataset.open", began)
    overrides = ["network.channels=[16,32,64]", "network.attention_levels=[false,false,false]",
                 "train.max_steps=1", "train.val_cases=1", "train.val_samples=1",
                 "train.val_steps=1", "train.batch_size=8", "train.device=cpu",
                 "data.patch_size=[128,128]", f"data.num_workers={args.workers}"]
    began = now()
    config = build_config(None, overrides, dataset=dataset)
    timed("build_config", began)
    training.train(config, dataset, args.run, progress=False)


if __name__ == "__main__":
    main()

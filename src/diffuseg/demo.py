"""``diffuseg demo``: the whole flow on the embedded phantom, where the truth is known.

1. write a 2D phantom dataset with 3 raters (docs/phantom.md describes how they differ);
2. train the image-conditioned DDPM for a budget of CPU time (``train.budget_clock=cpu``: a busy
   machine slows the demo down but does not make it train fewer steps), with a progress line and
   its ETA on that clock;
3. draw 16 masks per test image, write samples, consensus and uncertainty maps;
4. evaluate the consensus against the raters' majority mask, and the samples against the raters,
   beside the trivial references (``diffuseg.metrics.trivial_references``: always empty, and the
   raters' majority repeated 16 times);
5. end with the run's verdict line (``verdict.json``: did the model beat the trivial references
   on validation?).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from diffuseg.errors import DataError
from diffuseg.run.log import read_metrics
from diffuseg.training.start import build_config

N_CASES = 240
SIZE = 64
N_RATERS = 3
N_SAMPLES = 16
STEPS = 10
N_EVAL = 12  # held-out phantom images predicted and scored (keeps the demo near 5 minutes)


def demo_overrides(steps: int, minutes: float, device: str) -> list[str]:
    return [
        f"train.max_steps={steps}",
        f"train.max_minutes={minutes}",
        "train.budget_clock=cpu",  # CPU minutes: the same training on a busy machine, slower
        "network.channels=[16,32,64]",
        "network.attention_levels=[false,false,true]",
        "train.val_every=250",
        "train.val_cases=4",  # a bounded validation: 4 images x 4 samples x 5 steps
        "train.val_steps=5",
        "train.checkpoint_every=250",
        "train.batch_size=8",
        "train.lr=0.0005",
        "train.ema_decay=0.995",
        f"train.device={device}",
        f"sample.steps={STEPS}",
        f"sample.n_samples={N_SAMPLES}",
    ]


MARKER = ".diffuseg-demo"  # written into every demo folder; --overwrite deletes only those


def prepare_output(output: Path, overwrite: bool) -> None:
    """An empty (or new) folder, or with ``overwrite`` a folder an earlier demo wrote (it holds
    MARKER): never delete a folder this command did not create."""
    if output.exists() and not output.is_dir():
        raise DataError(f"demo output '{output}' is a file; choose a folder for -o")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise DataError(f"demo folder '{output}' already exists; pass --overwrite to replace "
                            "it or choose another -o")
        if not (output / MARKER).is_file():
            raise DataError(f"'{output}' was not created by 'diffuseg demo' (no {MARKER} file), "
                            "so --overwrite will not delete it; choose a new -o")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("written by 'diffuseg demo'; --overwrite may delete this folder\n")


def run_demo(output: str | Path, *, steps: int = 600, minutes: float = 3.0,
             device: str = "auto", overwrite: bool = False, n_cases: int = N_CASES) -> str:
    """``steps`` optimiser steps, capped at ``minutes`` of this process's CPU time for training
    (``train.budget_clock=cpu``; README: the demo's time at low and high load), on one torch
    thread (``one_thread``)."""
    with one_thread():
        return _run_demo(Path(output), steps, minutes, device, overwrite, n_cases)


def _run_demo(output: Path, steps: int, minutes: float, device: str, overwrite: bool,
              n_cases: int) -> str:
    from diffuseg.core.progress import log
    from diffuseg.data import Dataset
    from diffuseg.data.phantom import write_phantom_dataset
    from diffuseg.evaluation.evaluate import evaluate
    from diffuseg.inference.predictor import Predictor
    from diffuseg.run.folder import held_out_cases
    from diffuseg.training.loop import train

    prepare_output(output, overwrite)
    log(f"demo: {n_cases} phantom cases; training for at most {steps} steps or {minutes:g} "
        f"CPU minutes (a busy machine takes longer on the wall clock; the ETA is on the CPU "
        f"clock), then {N_SAMPLES} samples for up to {N_EVAL} test images")
    t0 = time.monotonic()
    dataset_dir = write_phantom_dataset(output / "dataset", n_cases=n_cases, spatial_dims=2,
                                        size=SIZE, n_raters=N_RATERS, seed=0)
    config = build_config(None, demo_overrides(steps, minutes, device), dataset=dataset_dir)
    run_dir = train(config, dataset_dir, output / "run")
    train_seconds = time.monotonic() - t0
    predictor = Predictor.from_run(run_dir, device=device)
    dataset = Dataset.open(dataset_dir)
    test_ids = held_out_cases(run_dir, "test")[:N_EVAL]  # the run's own splits.json
    seconds = predict_cases(predictor, dataset, test_ids, output / "predictions")
    evaluation = evaluate(output / "predictions", dataset_dir, output / "evaluation",
                          n_samples_list=(N_SAMPLES,), run=run_dir, strict=True)
    summary = demo_summary(evaluation, seconds, train_seconds, run_dir, output)
    summary.update(reference_geds(dataset, test_ids))
    from diffuseg.run.verdict import read_verdict

    summary["verdict"] = read_verdict(run_dir)
    summary["total_seconds"] = round(time.monotonic() - t0, 1)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return format_summary(summary)


@contextlib.contextmanager
def one_thread():
    """One torch thread for the demo, unless OMP_NUM_THREADS says otherwise: a CPU budget then
    buys the same steps at any load (with two threads on a busy machine, OpenMP threads spin
    waiting for a core, and that waiting is CPU time too; DESIGN.md measured one thread faster
    than two there; at load 9, sampling 16 masks took 20.7 s per image on two threads)."""
    import os

    import torch

    before = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_geds(dataset, case_ids: list[str]) -> dict[str, float]:
    """GED16 of the trivial references on the test cases (``metrics.trivial_references``, the
    one home of them, also beside every validation): always empty, and the raters' majority mask
    repeated 16 times, what the samples' GED16 must beat to show that they reproduce the raters'
    disagreement."""
    from diffuseg.metrics import trivial_references

    refs = [trivial_references(dataset.case(c).load().raters, N_SAMPLES) for c in case_ids]
    return {"ged_16_empty": float(np.mean([r["empty"]["ged"] for r in refs])),
            "ged_16_one_mask": float(np.mean([r["majority"]["ged"] for r in refs]))}


def predict_cases(predictor, dataset, case_ids: list[str], out_dir: Path) -> list[float]:
    """Segment each case, write its outputs, and return the sampling seconds per case."""
    from diffuseg.core.progress import track
    from diffuseg.inference.prediction_folder import write_result

    seconds = []
    for index, case_id in track(list(enumerate(case_ids)), "predict", unit="cases"):
        data = dataset.case(case_id).load()
        start = time.monotonic()
        result = predictor.segment(data.image, n_samples=N_SAMPLES, steps=STEPS, seed=index)
        seconds.append(time.monotonic() - start)
        write_result(result, data.geometry, out_dir / case_id, source=Path(case_id),
                     extra={"run": str(predictor.run_dir), "steps": STEPS, "seed": index},
                     image=data.image)
    return seconds


def demo_summary(evaluation: dict, seconds: list[float], train_seconds: float, run_dir: Path,
                 output: Path) -> dict:
    mean = {k: v["mean"] for k, v in evaluation["mean"].items()}
    records = [r for r in read_metrics(run_dir) if "loss" in r]
    steps = [r["step"] for r in records]
    return {
        "consensus_dice_vs_majority": mean["dice"],
        "ged_16": mean["ged_16"],
        "hm_iou_16": mean["hm_iou_16"],
        "ci_16": mean.get("ci_16"),
        "ece": mean.get("ece"),
        "n_test_cases": evaluation["n_cases"],
        "n_samples": N_SAMPLES,
        "steps": STEPS,
        "sampling_seconds_per_image": float(np.mean(seconds)),
        "train_seconds": round(train_seconds, 1),
        "train_steps": steps[-1] if steps else 0,
        "train_cpu_seconds": records[-1]["seconds"] if records else 0.0,
        "run": str(run_dir),
        "predictions": str(output / "predictions"),
        "evaluation": str(output / "evaluation" / "summary.json"),
        "report": str(output / "evaluation" / "report.html"),
    }


def format_summary(s: dict) -> str:
    return "\n".join([
        f"demo finished: {s['n_test_cases']} test cases, {s['n_samples']} samples, "
        f"{s['steps']} DDIM steps",
        f"  consensus Dice vs majority mask: {s['consensus_dice_vs_majority']:.3f}",
        f"  GED (16 samples vs 3 raters):    {s['ged_16']:.3f} (lower is better; the raters' "
        f"majority repeated 16 times: {s.get('ged_16_one_mask', float('nan')):.3f}, always "
        f"empty: {s.get('ged_16_empty', float('nan')):.3f})",
        f"  HM-IoU (16 samples):             {s['hm_iou_16']:.3f}",
        f"  sampling time per image:         {s['sampling_seconds_per_image']:.2f} s",
        f"  training:                        {s['train_steps']} steps, {s['train_seconds']:.0f} s "
        f"wall, {s.get('train_cpu_seconds', 0):.0f} s CPU",
        f"  whole demo:                      {s.get('total_seconds', 0):.0f} s",
        "outputs:",
        f"  run folder:  {s['run']} (progress.png, training_log.txt)",
        f"  predictions: {s['predictions']} (samples, consensus, uncertainty maps)",
        f"  metrics:     {s['evaluation']}",
        f"  report:      {s['report']}",
        (s.get("verdict") or {}).get("line", "verdict: none (the run wrote no verdict.json)"),
    ])

"""``diffuseg demo``: the whole flow on the embedded phantom, where the truth is known.

1. write a 2D phantom dataset with 3 raters (docs/phantom.md describes how they differ);
2. train the image-conditioned DDPM for a wall-clock budget;
3. draw 16 masks per test image, write samples, consensus and uncertainty maps;
4. evaluate the consensus against the raters' majority mask, and the samples against the raters.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from diffuseg.api import build_config
from diffuseg.data.loader import majority
from diffuseg.errors import DataError

N_CASES = 240
SIZE = 64
N_RATERS = 3
N_SAMPLES = 16
STEPS = 10
N_WRITTEN = 4  # test cases whose outputs are written to disk


def demo_overrides(minutes: float, device: str) -> list[str]:
    return [
        f"train.max_minutes={minutes}",
        "train.max_steps=4000",
        "train.val_every=250",
        "train.checkpoint_every=250",
        "train.batch_size=8",
        "train.lr=0.0005",
        "train.ema_decay=0.995",
        f"train.device={device}",
        f"sample.steps={STEPS}",
        f"sample.n_samples={N_SAMPLES}",
    ]


def prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise DataError(f"demo folder '{output}' already exists; pass --overwrite to replace "
                            "it or choose another -o")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def run_demo(output: str | Path, *, minutes: float = 5.0, device: str = "auto",
             overwrite: bool = False, n_cases: int = N_CASES) -> str:
    from diffuseg.data import Dataset, load_splits
    from diffuseg.data.phantom import write_phantom_dataset
    from diffuseg.inference import Predictor
    from diffuseg.training import train

    output = Path(output)
    prepare_output(output, overwrite)
    t0 = time.monotonic()
    dataset_dir = write_phantom_dataset(output / "dataset", n_cases=n_cases, spatial_dims=2,
                                        size=SIZE, n_raters=N_RATERS, seed=0)
    config = build_config(None, demo_overrides(minutes, device), dataset=dataset_dir)
    run_dir = train(config, dataset_dir, output / "run")
    train_seconds = time.monotonic() - t0
    predictor = Predictor.from_run(run_dir, device=device)
    dataset = Dataset.open(dataset_dir)
    test_ids = load_splits(dataset_dir, dataset, seed=config.train.seed)["test"]
    summary = evaluate_cases(predictor, dataset, test_ids, output / "predictions")
    summary.update({"train_seconds": round(train_seconds, 1), "run": str(run_dir),
                    "dataset": str(dataset_dir), "predictions": str(output / "predictions")})
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return format_summary(summary, output)


def evaluate_cases(predictor, dataset, case_ids: list[str], out_dir: Path) -> dict:
    from diffuseg.metrics import ged, hm_iou
    from diffuseg.outputs import write_result
    from diffuseg.training import foreground_dice

    by_id = {c.case_id: c for c in dataset.cases}
    per_case = []
    for index, case_id in enumerate(case_ids):
        data = by_id[case_id].load()
        start = time.monotonic()
        result = predictor.segment(data.image, n_samples=N_SAMPLES, steps=STEPS, seed=index)
        seconds = time.monotonic() - start
        consensus = result.consensus[0].numpy()
        samples = result.sample_labels()[:, 0].numpy() > 0
        raters = data.raters > 0
        per_case.append({
            "case": case_id,
            "dice_vs_majority": foreground_dice(consensus, majority(data.raters, 2)),
            "ged": float(ged(samples, raters)["ged"]),
            "hm_iou": float(hm_iou(samples, raters)),
            "sampling_seconds": round(seconds, 3),
        })
        if index < N_WRITTEN:
            write_result(result, data.geometry, out_dir / case_id, source=Path(case_id))
    keys = ("dice_vs_majority", "ged", "hm_iou", "sampling_seconds")
    mean = {k: float(np.mean([c[k] for c in per_case])) for k in keys}
    return {"mean": mean, "n_cases": len(per_case), "n_samples": N_SAMPLES, "steps": STEPS,
            "per_case": per_case}


def format_summary(summary: dict, output: Path) -> str:
    m = summary["mean"]
    return "\n".join([
        f"demo finished: {summary['n_cases']} test cases, {summary['n_samples']} samples, "
        f"{summary['steps']} DDIM steps",
        f"  consensus Dice vs majority mask: {m['dice_vs_majority']:.3f}",
        f"  GED (16 samples vs 3 raters):    {m['ged']:.3f}",
        f"  HM-IoU:                          {m['hm_iou']:.3f}",
        f"  sampling time per image:         {m['sampling_seconds']:.2f} s",
        f"  training time:                   {summary['train_seconds']:.0f} s",
        f"outputs: {output.resolve()}",
        f"  summary:     {output / 'summary.json'}",
        f"  run folder:  {summary['run']} (progress.png, training_log.txt)",
        f"  predictions: {summary['predictions']} (samples, consensus, uncertainty maps)",
    ])

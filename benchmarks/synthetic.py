"""Does synthetic data help where real data is scarce? DiffBoost-style pairs, measured.

For each dataset and each share of the real training cases (``--fractions``), the image
generator (``diffuseg.synthesis``) is trained on those cases only, draws ``--n-synthetic`` pairs
(masks: real, merged and elastically deformed training masks), and each segmentation method
(``--methods``: the deterministic ``unet`` and ``ddpm``) trains twice for the SAME number of
optimiser steps (``--steps``): on the real cases alone, and with the synthetic pairs mixed in
(``data.synthetic``, ``data.synthetic_ratio``, default 0.5 of each batch). Both are scored on
the dataset's held-out test fold (never seen by the generator or the segmentors): consensus Dice
per case against the raters' majority, its mean with a 95 % percentile-bootstrap interval over
cases, and the paired difference (with synthetic - without) with its interval. Per fraction:
mask fidelity (Dice of the real-only ``unet`` on the synthetic images against their conditioning
masks) and the two-sample accuracy of a logistic regression between real and synthetic images
(0.5 = indistinguishable to it; ``diffuseg.synthesis.fidelity``).

Datasets, from ``--data-root`` (default ../shared/data), converted once with the importers:
``ph2`` (one rater; downscaled 3x on CPU to 128x96, ``--scale``), ``chase`` (CHASE_DB1, two
raters, both eyes of a child in one fold; downscaled 8x to 120x125 on CPU). Splits: the patient-
grouped split of seed 0 (PH2 80/10/10; CHASE_DB1 50/14/36 of its 14 children: ``SPLITS``),
saved into the prepared folder, so every run uses the same test cases; a fraction keeps a
seeded subset of the training cases (at least 2).

    python benchmarks/synthetic.py --datasets ph2,chase --steps 800 --gen-steps 2000 --out s.json
    python benchmarks/synthetic.py --quick      # phantom, tiny budgets: an end-to-end check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from diffuseg.config import NetworkConfig  # noqa: E402
from diffuseg.data import Dataset, load_splits, make_splits, save_splits  # noqa: E402
from diffuseg.data.dataset import DatasetInfo  # noqa: E402
from diffuseg.evaluation.evaluate import evaluate  # noqa: E402
from diffuseg.synthesis.fidelity import fidelity_report  # noqa: E402
from diffuseg.synthesis.generator import GeneratorTrainConfig  # noqa: E402
from diffuseg.synthesis.synthesize import synthesize  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--datasets", default="ph2,chase", help="comma-separated: ph2, chase")
    p.add_argument("--data-root", type=Path, default=common.SHARED_DATA)
    p.add_argument("--methods", default="unet,ddpm")
    p.add_argument("--fractions", default="0.1,0.25,1.0")
    p.add_argument("--steps", type=int, default=800, help="optimiser steps per segmentor")
    p.add_argument("--gen-steps", type=int, default=2000, help="generator training steps")
    p.add_argument("--gen-minutes", type=float, default=None, help="cap on generator training")
    p.add_argument("--n-synthetic", type=int, default=100, help="synthetic pairs per fraction")
    p.add_argument("--ratio", type=float, default=0.5, help="data.synthetic_ratio")
    p.add_argument("--samples", type=int, default=8, help="masks per test image (ddpm)")
    p.add_argument("--scale", type=int, default=None, help="downscale factor (ph2 3, chase 8)")
    p.add_argument("--max-test", type=int, default=None, help="test cases scored (default all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("bench_synthetic"))
    p.add_argument("--out", type=Path)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    args.datasets = ["phantom"] if args.quick else [d.strip() for d in args.datasets.split(",")]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.fractions = [float(f) for f in args.fractions.split(",")]
    if args.quick:
        args.steps, args.gen_steps, args.n_synthetic, args.samples = 20, 20, 8, 2
        args.fractions = [0.5, 1.0]
    return args


# Patient-grouped (train, val, test) fractions. CHASE_DB1 has 14 children (28 images): a 10 %
# test fold would be one child, two images, too few for an interval; 5 children (10 images) are
# held out instead, 2 for validation, 7 (14 images) left for training.
SPLITS = {"phantom": (0.8, 0.1, 0.1), "ph2": (0.8, 0.1, 0.1), "chase": (0.5, 0.14, 0.36)}


def prepare(name: str, args: argparse.Namespace) -> Path:
    """The dataset folder (converted once, downscaled on CPU) with a saved seed-0 split."""
    from diffuseg.data.importers import import_folder

    root = args.work / "data" / name
    if name == "phantom":
        path = common.phantom_dataset(root, 20, 32)
    else:
        full = root / "full"
        if not (full / "dataset.json").is_file():
            if name == "ph2":
                summary = import_folder(args.data_root / "ph2", full, image_glob="*/*.png",
                                        mask_suffixes=("_lesion",), name="PH2", overwrite=True)
            else:
                summary = import_folder(args.data_root / "chase_db1", full, image_glob="*.jpg",
                                        mask_suffixes=("_1stHO", "_2ndHO"),
                                        group_pattern=r"Image_\d+", name="CHASE_DB1",
                                        overwrite=True)
            print(summary.format(), flush=True)
        scale = args.scale or {"ph2": 3, "chase": 8}[name]
        path = common.downscale_dataset(full, root / f"x{scale}", scale)
    if not (path / "splits.json").is_file():
        save_splits(path, make_splits(Dataset.open(path), seed=0, fractions=SPLITS[name]))
    return path


def subset(src: Path, dst: Path, fraction: float, seed: int = 0) -> Path:
    """A dataset folder of symlinks: a seeded ``fraction`` of the training cases (>= 2) and all
    validation and test cases, with the matching splits.json."""
    dataset = Dataset.open(src)
    splits = load_splits(src, dataset)
    train = sorted(splits["train"])
    keep = max(2, round(fraction * len(train)))
    chosen = sorted(np.random.default_rng(seed).choice(train, keep, replace=False).tolist())
    if (dst / "splits.json").is_file() and json.loads((dst / "splits.json").read_text())[
            "train"] == chosen:
        return dst
    ids = set(chosen + splits["val"] + splits["test"])
    for case in dataset.cases:
        if case.case_id in ids:
            for path in (*case.image_paths, *case.label_paths):
                link = dst / path.parent.name / path.name
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(path.resolve())
    info = DatasetInfo.from_dict({**dataset.info.to_dict(), "numTraining": len(ids)})
    (dst / "labelsTr").mkdir(parents=True, exist_ok=True)
    (dst / "dataset.json").write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    save_splits(dst, {"train": chosen, "val": splits["val"], "test": splits["test"]})
    return dst


def bootstrap_mean(values: list[float], n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    boot = v[np.random.default_rng(seed).integers(len(v), size=(n_boot, len(v)))].mean(axis=1)
    return {"mean": float(v.mean()), "ci95": [float(x) for x in np.percentile(boot, [2.5, 97.5])],
            "n": len(v)}


def train_and_score(dataset: Path, method: str, extra: list[str], work: Path, cases: list[str],
                    args: argparse.Namespace) -> dict[str, float]:
    """Per-case consensus Dice of ``method`` trained ``--steps`` steps (``extra`` overrides)."""
    preset = common.PRESETS["quick" if args.quick else "cpu"]
    overrides = [f"train.max_steps={args.steps}", "train.val_every=100000000", *extra]
    run = common.train_method(dataset, method, preset, 10_000.0, work / "run", overrides)
    samples = 1 if method == "unet" else args.samples
    common.predict_cases(run, dataset, cases, work / "pred", samples, "cpu")
    summary = evaluate(work / "pred", dataset, work / "eval", n_samples_list=(samples,),
                       report=False)
    return {row["case"]: row["dice"] for row in summary["per_case"] if row.get("dice") is not None}


def run_fraction(dataset: Path, fraction: float, cases: list[str], work: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    data = subset(dataset, work / "data", fraction)
    net = NetworkConfig(channels=(16, 32, 64), attention_levels=(False, False, False))
    t0 = time.perf_counter()
    syn = synthesize(data, work / "synthetic", args.n_synthetic, generator_dir=work / "gen",
                     seed=0, overwrite=True, network=net, steps=25,
                     train=GeneratorTrainConfig(max_steps=args.gen_steps, batch_size=8,
                                                lr=5e-4, max_minutes=args.gen_minutes))
    out: dict[str, Any] = {"train_cases": len(load_splits(data)["train"]),
                           "synthetic": args.n_synthetic,
                           "generator_and_synthesis_s": round(time.perf_counter() - t0, 1)}
    for method in args.methods:
        real = train_and_score(data, method, [], work / method / "real", cases, args)
        mixed = train_and_score(data, method, [f"data.synthetic={syn.root}",
                                               f"data.synthetic_ratio={args.ratio}"],
                                work / method / "mixed", cases, args)
        out[method] = {"real": bootstrap_mean(list(real.values())),
                       "mixed": bootstrap_mean(list(mixed.values())),
                       "difference": common.paired_difference(mixed, real)}
        if method == "unet" or "fidelity" not in out:
            report = fidelity_report(syn.root, work / method / "real" / "run", seed=0)
            out["fidelity"] = {"segmentor": method,
                               "mask_dice": report["mask_fidelity"]["mean"],
                               "two_sample_accuracy": report["two_sample"]["accuracy"],
                               "intensity": report["intensity"]}
        print(json.dumps({method: out[method]}), flush=True)
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["dataset  frac  train  method   Dice real [95% CI]     Dice +syn [95% CI]     "
             "diff [95% CI]            fidelity  2-sample"]
    for name, fractions in results.items():
        for frac, row in fractions.items():
            fid = row.get("fidelity", {})
            for method in [m for m in row if isinstance(row[m], dict) and "real" in row[m]]:
                r, m, d = row[method]["real"], row[method]["mixed"], row[method]["difference"]
                lines.append(
                    f"{name:8} {frac:>4}  {row['train_cases']:>5}  {method:7} "
                    f"{r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]  "
                    f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]  "
                    f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]  "
                    f"{fid.get('mask_dice', float('nan')):8.3f}  "
                    f"{fid.get('two_sample_accuracy') or float('nan'):8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta["hardware"] = common.hardware("cpu")
    for name in args.datasets:
        dataset = prepare(name, args)
        cases = sorted(load_splits(dataset)["test"])[: args.max_test]
        results[name] = {}
        for fraction in args.fractions:
            print(f"[{name}] fraction {fraction}: {len(cases)} test cases", flush=True)
            work = args.work / "runs" / name / f"f{fraction}"
            results[name][str(fraction)] = run_fraction(dataset, fraction, cases, work, args)
            if args.out:
                args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(table(results))
    return {"meta": meta, "results": results}


if __name__ == "__main__":
    main()

"""Paradigm benchmark: Gaussian, Bernoulli, hybrid, transformer-conditioned and signed-distance
diffusion under the same wall-clock budget, side by side.

Methods (``--methods``): ``ddpm`` (Gaussian diffusion of the mask), ``berdiff`` (Bernoulli
diffusion), ``hidiff`` (segmentor + Bernoulli refiner, alternate training), ``medsegdiff_v2``
(anchor and SS-Former conditioning) and ``ddpm_sdf`` (``ddpm`` diffusing signed distances,
``method.target=sdf``); docs/methods.md describes each. Every method trains for the same
``--minutes`` (``train.max_minutes``) with the same torch threads, the same network widths and
optimiser settings (the preset of ``common.PRESETS``), then draws 16 masks per held-out image with
``sample.steps`` steps (10 in the CPU preset). Columns (``diffuseg.evaluation.evaluate``, means
over cases):
consensus Dice and HD95 against the raters' majority, GED^2 with 16 samples (d = 1 - IoU), sampling
seconds per image (``Predictor.segment`` alone), training steps reached; the row ``raters (ref.)``
scores the raters against themselves.

Datasets (``--dataset``), built from ``--data-root`` (default ../shared/data) with the project's
importers on first use and reused after:

- ``ph2``: PH2 dermoscopy (RGB, one rater), ``import_folder(<root>/ph2, image_glob="*/*.png",
  mask_suffixes=("_lesion",))``, i.e. ``diffuseg convert folder ../shared/data/ph2 DST
  --image-glob '*/*.png' --mask-suffix _lesion``; scored on its test fold. On CPU the 382x286
  images are downscaled 3x (``--ph2-scale``; area average for images, area average >= 0.5 for
  masks) so that a 16-sample draw of a whole image costs seconds, not minutes; HD95 is then in
  downscaled pixels (x3 for the original's);
- ``lidc``: LIDC-IDRI slices (4 raters), ``common.lidc_dataset``: the release's train patients
  (``--train-patients``) for training, its val patients for scoring, centre crop 64 on CPU
  (``diffuseg convert lidc-slices`` writes the same cases without the subset and crop);
- ``--dataset-dir NAME=PATH`` (repeatable): any diffuseg dataset folder, scored on its test fold,
  else its val fold.

    python benchmarks/methods.py --dataset both --minutes 10 --out methods.json
    python benchmarks/methods.py --dataset-dir mine=/data/my_dataset --minutes 30 --out m.json
    python benchmarks/methods.py --gpu --dataset both --minutes 60 --out methods_gpu.json
    python benchmarks/methods.py --quick       # ~2-3 min end-to-end check on a 2D phantom
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py, beside this script)

from diffuseg.data import Dataset, load_splits  # noqa: E402

# paradigm -> overrides applied after common.METHODS["ddpm"] (the last value of a key wins)
PARADIGMS: dict[str, list[str]] = {
    "ddpm": ["method.name=ddpm"],
    "berdiff": ["method.name=berdiff", "process.kind=bernoulli"],
    "hidiff": ["method.name=hidiff", "process.kind=bernoulli"],
    "medsegdiff_v2": ["method.name=medsegdiff_v2"],
    "ddpm_sdf": ["method.name=ddpm", "method.target=sdf"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--dataset", choices=("ph2", "lidc", "both", "none"), default="both")
    p.add_argument("--dataset-dir", action="append", default=[], metavar="NAME=PATH",
                   help="a diffuseg dataset folder to add (repeatable)")
    p.add_argument("--data-root", type=Path, default=common.SHARED_DATA,
                   help="folder holding ph2/ and lidc_idri_slices/ as downloaded")
    p.add_argument("--methods", default=",".join(PARADIGMS),
                   help="comma-separated subset of " + ", ".join(PARADIGMS))
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget per method (default 10; --quick 0.25)")
    p.add_argument("--n-samples", type=int, default=16, help="masks per image (GED16)")
    p.add_argument("--max-cases", type=int, default=None,
                   help="held-out cases scored per dataset (default 64; --quick 3)")
    p.add_argument("--train-patients", type=int, default=150,
                   help="LIDC train patients used (0 = all 606)")
    p.add_argument("--crop", type=int, default=None,
                   help="LIDC centre crop (default 64 on CPU, none with --gpu; 0 = none)")
    p.add_argument("--ph2-scale", type=int, default=None,
                   help="PH2 downscale factor (default 3 on CPU: 382x286 -> 128x96; 1 with --gpu)")
    p.add_argument("--gpu", action="store_true", help="the GPU preset, device cuda")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--work", type=Path, default=Path("bench_methods"), help="scratch folder")
    p.add_argument("--out", type=Path, help="JSON results (rewritten after every method)")
    p.add_argument("--quick", action="store_true", help="2D phantom only, tiny budgets")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in PARADIGMS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(PARADIGMS)}")
    try:
        args.dataset_dir = dict(item.split("=", 1) for item in args.dataset_dir)
    except ValueError:
        p.error("--dataset-dir takes NAME=PATH, e.g. mine=/data/my_dataset")
    args.preset = "quick" if args.quick else "gpu" if args.gpu else "cpu"
    args.minutes = args.minutes if args.minutes is not None else 0.25 if args.quick else 10.0
    args.max_cases = args.max_cases or (3 if args.quick else 64)
    args.n_samples = 4 if args.quick else args.n_samples
    args.train_patients = args.train_patients or None
    args.crop = (None if args.gpu else 64) if args.crop is None else args.crop or None
    args.device = "cuda" if args.gpu else "cpu"
    args.ph2_scale = args.ph2_scale or (1 if args.gpu else 3)
    return args


def ph2_dataset(root: Path, src: Path, scale: int = 1) -> Path:
    """PH2 converted by the folder importer (written once, reused), then downscaled by ``scale``
    (``common.downscale_dataset``) when it is above 1."""
    from diffuseg.data.importers import import_folder

    full = root / "full"
    if not (full / "dataset.json").is_file():
        print(import_folder(src, full, image_glob="*/*.png", mask_suffixes=("_lesion",),
                            name="PH2", overwrite=True).format(), flush=True)
    return full if scale == 1 else common.downscale_dataset(full, root / f"x{scale}", scale)


def datasets(args: argparse.Namespace) -> dict[str, Path]:
    if args.quick:
        return {"phantom": common.phantom_dataset(args.work / "data" / "phantom32", 24, 32)}
    names = {"both": ("ph2", "lidc"), "none": ()}.get(args.dataset, (args.dataset,))
    out: dict[str, Path] = {}
    for name in names:
        src = args.data_root / ("ph2" if name == "ph2" else "lidc_idri_slices/trainval.tar")
        if not src.exists():
            print(f"skipping {name}: '{src}' is absent (../shared/data/README.md)")
        elif name == "ph2":
            out[name] = ph2_dataset(args.work / "data" / "ph2", src, args.ph2_scale)
        else:
            out[name] = common.lidc_dataset(args.work / "data" / "lidc", src,
                                            train_patients=args.train_patients, crop=args.crop)
    out.update({name: Path(path) for name, path in args.dataset_dir.items()})
    return out


def scored_fold(dataset_dir: Path) -> str:
    """The test fold when the dataset has one, else val (LIDC's release has no test patients)."""
    return "test" if load_splits(dataset_dir, Dataset.open(dataset_dir))["test"] else "val"


def with_hd95(row: dict[str, Any], work: Path) -> dict[str, Any]:
    """Add the mean HD95 of the evaluation ``common`` wrote under ``work``."""
    summary = work / "eval" / "summary.json"
    if "error" not in row and summary.is_file():
        row["hd95"] = json.loads(summary.read_text())["mean"]["hd95"]["mean"]
    return row


def run_paradigm(dataset_dir: Path, method: str, preset: list[str], minutes: float, work: Path,
                 cases: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``common.run_method`` (train, sample, evaluate; failures recorded) + HD95."""
    row = common.run_method(dataset_dir, "ddpm", preset, minutes, work, cases, (args.n_samples,),
                            args.device, extra=PARADIGMS[method])
    return with_hd95(row, work)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    preset = common.PRESETS[args.preset]
    meta = {"minutes_per_method": args.minutes, "preset": args.preset, "overrides": preset,
            "methods": {m: PARADIGMS[m] for m in args.methods}, "n_samples": args.n_samples,
            "max_cases": args.max_cases, "train_patients": args.train_patients,
            "crop": args.crop, "hardware": common.hardware(args.device),
            "conventions": common.__doc__}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, dataset_dir in datasets(args).items():
        fold = scored_fold(dataset_dir)
        cases = common.held_out(dataset_dir, fold, args.max_cases)
        work = args.work / "runs" / stamp / name
        oracle = common.run_oracle(dataset_dir, work / "oracle", cases, (args.n_samples,))
        results[name] = {common.ORACLE: with_hd95(oracle, work / "oracle")}
        for method in args.methods:
            print(f"[{name}] {method}: {args.minutes} min training, {len(cases)} {fold} cases x "
                  f"{args.n_samples} samples", flush=True)
            results[name][method] = run_paradigm(dataset_dir, method, preset, args.minutes,
                                                 work / method, cases, args)
            print(json.dumps(results[name][method]), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2)
                                    + "\n")
    cols = [("dice", "Dice"), ("hd95", "HD95"), (f"ged_{args.n_samples}", f"GED{args.n_samples}"),
            ("seconds_per_image", "s/img"), ("steps", "steps")]
    for name, rows in results.items():
        print(f"\n{name} ({rows[common.ORACLE]['cases']} held-out cases, {args.minutes} min "
              f"per method, {args.preset} preset, {args.threads} threads)")
        print(common.format_table(rows, cols))
    return {"meta": meta, "results": results}


if __name__ == "__main__":
    main()

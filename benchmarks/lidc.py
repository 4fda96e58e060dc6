"""LIDC-IDRI benchmark: train one method on the release's train patients for a wall-clock budget,
score it on its val patients, and print the scores beside published ones.

Data: ``../shared/data/lidc_idri_slices/trainval.tar`` and its ``split.json`` (606 train / 97 val
patients; 128x128 CT crops, 4 radiologists per slice), converted by ``common.lidc_dataset`` with
the importer's ``lidc_cases`` into ``--work``/data (only the patients used). Training sees only
train patients (``--train-patients`` of them, a seeded random subset, all by default on GPU);
scoring uses val patients' slices (``--max-val-cases`` of them, a seeded random subset). On CPU
the slices are cut to their central 64x64 (``--crop``; the release centres each crop on its
nodule, and the share of rater pixels cut off is printed): IoU-based scores are unchanged when
no mask pixel is cut, ECE is not comparable across crops (it counts background pixels).

Reported (``diffuseg.evaluation.evaluate``; means over val slices): GED^2 with 16 and 100 samples
(d = 1 - IoU, d(empty, empty) = 0, all pairs incl. i = j), HM-IoU and CI score with 16 samples,
consensus Dice against the raters' majority, sampling seconds per image (``Predictor.segment``
wall time for 100 samples). Published LIDC results are printed beside them; they come from
other training budgets, networks and test sets (the release's held-out test patients are not in
the tar), so they are a scale, not a like-for-like comparison.

CPU (the default; 2 cores here; ``--threads 1`` when other jobs share the cores: OpenMP threads
that wait for a busy core made training 10-30x slower here)::

    python benchmarks/lidc.py --method ddpm --minutes 20 --max-val-cases 64 --out lidc.json

GPU preset (same code; a 4-level U-Net of width 64-256, batch 32, 25 DDIM steps, all train
patients and all val slices, device cuda)::

    python benchmarks/lidc.py --gpu --method ddpm --minutes 120 --out lidc_gpu.json

``--quick`` runs the same code on a tiny phantom in well under a minute (numbers meaningless).
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

# (row name, {result key: published value}, note); M-IoU of MoSE is its Hungarian-matched IoU
PUBLISHED: list[tuple[str, dict[str, float], str]] = [
    ("MoSE (published)", {"ged_16": 0.213, "hm_iou_16": 0.622},
     "Gao et al., ICLR 2023, LIDC: GED 0.213 with 16 samples, M-IoU 0.622"),
    ("CIMD (published)", {"ged_16": 0.321, "hm_iou_16": 0.542},
     "Rahman et al., CVPR 2023, LIDC: GED 0.321, HM-IoU 0.542 (as reported)"),
]
HIDDEN = ("ece", "s_ncc")  # printed by ambiguity.py; in this script's JSON
DEFAULTS = {  # preset -> (train patients, val cases, centre crop); None = all
    "cpu": (150, 100, 64), "gpu": (None, None, None), "quick": (None, 4, None)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--method", default="ddpm", choices=sorted([*common.METHODS, "ldseg"]),
                   help="method to train (default ddpm)")
    p.add_argument("--minutes", type=float, default=None,
                   help="training wall-clock budget (default 20; --quick 0.25)")
    p.add_argument("--src", type=Path, default=common.LIDC_TAR,
                   help="the LIDC-IDRI slices tar (split.json beside it)")
    p.add_argument("--train-patients", type=int, default=None,
                   help="train patients used (default 150 on CPU, all 606 with --gpu)")
    p.add_argument("--val-patients", type=int, default=None,
                   help="val patients converted (default all 97)")
    p.add_argument("--max-val-cases", type=int, default=None,
                   help="val slices scored (default 100 on CPU, all with --gpu)")
    p.add_argument("--crop", type=int, default=None,
                   help="centre crop of the 128x128 slices (default 64 on CPU, none with --gpu; "
                   "0 = none)")
    p.add_argument("--n-samples", default="16,100", help="GED sample counts, first is also "
                   "used for HM-IoU and CI (default 16,100)")
    p.add_argument("--gpu", action="store_true", help="the GPU preset, device cuda")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--work", type=Path, default=Path("bench_lidc"), help="scratch folder")
    p.add_argument("--out", type=Path, help="write results and settings as JSON here")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="extra config override (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="end-to-end check on a tiny phantom (seconds; numbers meaningless)")
    args = p.parse_args(argv)
    args.preset = "quick" if args.quick else "gpu" if args.gpu else "cpu"
    train_default, val_default, crop_default = DEFAULTS[args.preset]
    args.train_patients = args.train_patients or train_default
    args.max_val_cases = args.max_val_cases or val_default
    args.crop = crop_default if args.crop is None else args.crop or None
    if args.minutes is None:
        args.minutes = 0.25 if args.quick else 20.0
    args.n_samples = (4, 8) if args.quick else common.parse_counts(args.n_samples, p)
    args.device = "cuda" if args.gpu else "cpu"
    return args


def dataset_for(args: argparse.Namespace) -> Path:
    if args.quick:
        return common.phantom_dataset(args.work / "data" / "phantom", n_cases=24, size=32)
    if not args.src.is_file():
        raise SystemExit(f"'{args.src}' is absent; pass --src (see ../shared/data/README.md)")
    return common.lidc_dataset(args.work / "data" / "lidc", args.src,
                               train_patients=args.train_patients,
                               val_patients=args.val_patients, crop=args.crop)


def table(row: dict[str, Any], method: str, n_samples: tuple[int, ...]) -> str:
    cols = [(key, label) for key, label in common.columns(n_samples) if key not in HIDDEN]
    rows = {f"{method} (this run)": row, **{name: vals for name, vals, _ in PUBLISHED}}
    return common.format_table(rows, cols)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    dataset_dir = dataset_for(args)
    cases = common.held_out(dataset_dir, "val", args.max_val_cases)
    work = args.work / "runs" / f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"{args.method}: training {args.minutes} min ({args.preset} preset, {args.threads} "
          f"threads), then {len(cases)} val cases x {max(args.n_samples)} samples", flush=True)
    preset = common.PRESETS[args.preset]
    row = common.run_method(dataset_dir, args.method, preset, args.minutes, work, cases,
                            args.n_samples, args.device, args.overrides)
    print(table(row, args.method, args.n_samples))
    for _, _, note in PUBLISHED:
        print(f"  {note}")
    own = common.METHODS.get(args.method, [f"method.name={args.method}"])
    result = {"meta": {"method": args.method, "minutes": args.minutes, "preset": args.preset,
                       "overrides": [*preset, *own, *args.overrides],
                       "train_patients": args.train_patients, "val_cases": len(cases),
                       "crop": args.crop,
                       "n_samples": list(args.n_samples), "dataset": str(dataset_dir),
                       "hardware": common.hardware(args.device),
                       "conventions": common.__doc__},
              "result": row, "published": {name: {**vals, "source": note}
                                           for name, vals, note in PUBLISHED}}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

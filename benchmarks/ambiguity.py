"""Ambiguity benchmark: every method under the same wall-clock budget, on data whose raters
disagree, scored as distributions of masks.

Methods (``--methods``): ddpm, cimd_z, cimd_paper (diffusion), unet, mc_dropout, ensemble,
prob_unet. ``cimd_z`` is cimd's default, this project's z-conditioned variant (z from a learned
prior conditions the denoiser), not the published or released CIMD; ``cimd_paper`` is the faithful
configuration (``method.options.condition_on_z=false``: plain diffusion sampling, the AMN/ACN KL
only in the loss; unlike the released code, the two encoders are trained too). Each
trains for the same ``--minutes`` (``train.max_minutes``) on the same cases with the same torch
thread count, the same U-Net widths (``network.*`` of the preset, used by every method's
networks) and the same optimiser settings; then samples ``max(--n-samples)`` masks per held-out
image. Datasets (``--dataset``):

- ``phantom``: the 3-rater 2D phantom of ``diffuseg.data.phantom``, whose raters threshold one
  lesion field at 0.5, 0.3 and 0.8: the true distribution of masks is those three, uniformly;
- ``lidc``: LIDC-IDRI slices, trained on (a subset of) the release's train patients and scored on
  val patients' slices (``common.lidc_dataset``).

The row ``raters (ref.)`` scores the raters against themselves (each "sample" a uniformly drawn
rater's mask): the floor a perfect model of the raters would reach with that many samples.
Columns (``diffuseg.evaluation.evaluate``, means over cases): GED^2 at each sample count (d = 1 -
IoU),
HM-IoU and CI score at the first count, consensus Dice vs the raters' majority, ECE of the mean
probability vs the rater mean, S_NCC, sampling seconds per image, training steps reached.
A plot of GED (first count) against sampling seconds per image goes to ``--plot``. Under each
table, every diffusion method is compared with every baseline case by case: the mean per-case
difference of GED (first count), its 95% bootstrap interval and the cases it wins
(``common.paired_difference``; key ``paired`` of the JSON).

    python benchmarks/ambiguity.py --dataset both --minutes 10 --out ambiguity.json
    python benchmarks/ambiguity.py --dataset lidc --minutes 3 --max-val-cases 64 --out a.json
    python benchmarks/ambiguity.py --gpu --dataset both --minutes 60 --out ambiguity_gpu.json
    python benchmarks/ambiguity.py --quick          # ~3 min end-to-end check on the phantom
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

DIFFUSION = ("ddpm", "cimd_z", "cimd_paper")  # compared, case by case, with each baseline
BASELINES = ("unet", "mc_dropout", "ensemble", "prob_unet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--dataset", choices=("phantom", "lidc", "both"), default="both")
    p.add_argument("--methods", default=",".join(common.METHODS),
                   help="comma-separated subset of " + ", ".join(common.METHODS))
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget per method (default 10; --quick 0.2)")
    p.add_argument("--n-samples", default="16,100", help="GED sample counts (default 16,100)")
    p.add_argument("--max-val-cases", type=int, default=None,
                   help="held-out cases scored per dataset (default 64; --quick 4)")
    p.add_argument("--train-patients", type=int, default=150,
                   help="LIDC train patients used (default 150; 0 = all 606)")
    p.add_argument("--crop", type=int, default=None,
                   help="LIDC centre crop (default 64 on CPU, none with --gpu; 0 = none)")
    p.add_argument("--val-patients", type=int, default=None, help="LIDC val patients (all 97)")
    p.add_argument("--src", type=Path, default=common.LIDC_TAR, help="LIDC-IDRI slices tar")
    p.add_argument("--phantom-cases", type=int, default=200, help="phantom cases (64x64)")
    p.add_argument("--gpu", action="store_true", help="the GPU preset, device cuda")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--work", type=Path, default=Path("bench_ambiguity"), help="scratch folder")
    p.add_argument("--out", type=Path, help="JSON results (rewritten after every method)")
    p.add_argument("--plot", type=Path, help="PNG plot (default: --out with .png)")
    p.add_argument("--quick", action="store_true", help="phantom only, tiny budgets (~3 min)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in common.METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(common.METHODS)}")
    args.preset = "quick" if args.quick else "gpu" if args.gpu else "cpu"
    if args.quick:
        args.dataset = "phantom"
    if args.minutes is None:
        args.minutes = 0.2 if args.quick else 10.0
    if args.max_val_cases is None:
        args.max_val_cases = 4 if args.quick else 64
    args.n_samples = (4, 8) if args.quick else common.parse_counts(args.n_samples, p)
    args.train_patients = args.train_patients or None
    args.crop = (None if args.gpu else 64) if args.crop is None else args.crop or None
    args.device = "cuda" if args.gpu else "cpu"
    if args.plot is None and args.out is not None:
        args.plot = args.out.with_suffix(".png")
    return args


def datasets(args: argparse.Namespace) -> dict[str, Path]:
    names = ("phantom", "lidc") if args.dataset == "both" else (args.dataset,)
    out = {}
    for name in names:
        if name == "phantom":
            size, n_cases = (32, 24) if args.quick else (64, args.phantom_cases)
            out[name] = common.phantom_dataset(args.work / "data" / f"phantom{size}", n_cases,
                                               size)
        elif not args.src.is_file():
            print(f"skipping lidc: '{args.src}' is absent (../shared/data/README.md)")
        else:
            out[name] = common.lidc_dataset(args.work / "data" / "lidc", args.src,
                                            train_patients=args.train_patients,
                                            val_patients=args.val_patients, crop=args.crop)
    return out


def plot(results: dict[str, dict[str, dict[str, Any]]], n0: int, path: Path) -> Path:
    """GED^2 (n0 samples) against sampling seconds per image, one panel per dataset; the raters'
    reference GED as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    key = f"ged_{n0}"
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items(), strict=True):
        for method, row in rows.items():
            if method == common.ORACLE:
                if row.get(key) is not None:
                    ax.axhline(row[key], ls="--", c="grey", label="raters vs themselves")
                continue
            if row.get(key) is None or not row.get("seconds_per_image"):
                continue
            ax.scatter(row["seconds_per_image"], row[key], s=40)
            ax.annotate(method, (row["seconds_per_image"], row[key]), fontsize=8,
                        xytext=(4, 3), textcoords="offset points")
        ax.set(xscale="log", xlabel="sampling seconds per image", ylabel=f"GED$^2$ ({n0} samples)",
               title=name)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def paired(results: dict[str, dict[str, dict[str, Any]]], n0: int) -> dict[str, dict]:
    """Per dataset, each diffusion method against each segmentor baseline: the mean per-case
    difference of GED^2 (n0 samples), its 95% bootstrap interval, and the cases it wins."""
    key, out = f"ged_{n0}", {}
    for name, rows in results.items():
        ok = {m: Path(r["run"]).parent for m, r in rows.items() if "run" in r}
        for a in (m for m in DIFFUSION if m in ok):
            for b in (m for m in BASELINES if m in ok):
                d = common.paired_difference(common.per_case(ok[a], key),
                                             common.per_case(ok[b], key))
                d["text"] = (f"{a} - {b}: GED{n0} {d['mean']:+.3f} (95% CI {d['ci95'][0]:+.3f} "
                             f"to {d['ci95'][1]:+.3f}), {a} lower on {d['a_lower']}/{d['cases']}")
                out.setdefault(name, {})[f"{a}-{b}"] = d
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    preset = common.PRESETS[args.preset]
    meta = {"minutes_per_method": args.minutes, "preset": args.preset, "overrides": preset,
            "methods": {m: common.METHODS[m] for m in args.methods},
            "n_samples": list(args.n_samples), "max_val_cases": args.max_val_cases,
            "train_patients": args.train_patients, "crop": args.crop,
            "hardware": common.hardware(args.device),
            "conventions": common.__doc__}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, dataset_dir in datasets(args).items():
        cases = common.held_out(dataset_dir, "val", args.max_val_cases)
        work = args.work / "runs" / stamp / name
        results[name] = {common.ORACLE: common.run_oracle(dataset_dir, work / "oracle", cases,
                                                          args.n_samples)}
        for method in args.methods:
            print(f"[{name}] {method}: {args.minutes} min training, {len(cases)} cases x "
                  f"{max(args.n_samples)} samples", flush=True)
            results[name][method] = common.run_method(
                dataset_dir, method, preset, args.minutes, work / method, cases, args.n_samples,
                args.device)
            print(json.dumps(results[name][method]), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2)
                                    + "\n")
    comparisons = paired(results, args.n_samples[0])
    cols = common.columns(args.n_samples)
    for name, rows in results.items():
        print(f"\n{name} ({rows[common.ORACLE]['cases']} held-out cases, {args.minutes} min "
              f"per method, {args.preset} preset, {args.threads} threads)")
        print(common.format_table(rows, cols))
        for line in comparisons.get(name, {}).values():
            print(f"  {line['text']}")
    if args.out and comparisons:
        args.out.write_text(json.dumps({"meta": meta, "results": results,
                                        "paired": comparisons}, indent=2) + "\n")
    if args.plot and results:
        print(f"plot: {plot(results, args.n_samples[0], args.plot)}")
    return {"meta": meta, "results": results}


if __name__ == "__main__":
    main()

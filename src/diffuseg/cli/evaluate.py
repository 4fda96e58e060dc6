"""``diffuseg evaluate``, a thin layer over ``diffuseg.evaluation.evaluate.evaluate``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command, warn
from diffuseg.core.progress import Quiet, set_quiet


@command("evaluate")
def evaluate_command(
    predictions: Annotated[Path, typer.Argument(
        help="Prediction folder written by 'diffuseg predict' (one folder per case)")],
    dataset: Annotated[Path, typer.Option(
        "-d", "--dataset", help="Dataset folder whose raters are the reference")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Where summary.json and report.html go",
        show_default="PREDICTIONS")] = None,
    samples: Annotated[list[int] | None, typer.Option(
        "--samples", "-n", help="Sample counts for GED (repeatable); the first also sets "
        "HM-IoU and CI. A count is reported only for cases with at least that many samples",
        show_default="16 100")] = None,
    report: Annotated[bool, typer.Option(
        "--report/--no-report", help="Write the self-contained report.html")] = True,
    run: Annotated[Path | None, typer.Option(
        "--run", help="Run folder (or model name) whose splits.json says which cases it "
        "trained on",
        show_default="the run named in the predictions' result.json")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse (exit 2) when a scored case was in the run's training split, "
        "or when that cannot be checked")] = False,
    quiet: Quiet = False,
) -> None:
    """Score predictions against the dataset's raters: per-case and mean metrics in
    summary.json (nnU-Net's shape) and an HTML report with overlays. Warns loudly when a scored
    case was in the run's training split."""
    from diffuseg.evaluation.evaluate import evaluate
    from diffuseg.pretrained.lookup import resolve

    set_quiet(quiet)
    run = resolve(run) if run is not None else None  # a path that exists, else a model name
    out_dir = output if output is not None else predictions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = evaluate(predictions, dataset, out_dir,
                           n_samples_list=tuple(samples or (16, 100)), report=report, run=run,
                           strict=strict)
    for item in caught:
        warn(str(item.message))
    if summary.get("training_cases_scored") is None:
        warn("no run folder with splits.json was found (pass --run RUN): cannot check that the "
             "scored cases were held out")
    mean = summary["mean"]
    unit = summary["conventions"].get("distance_unit", "")
    geds = [name for name in mean if name.startswith("ged_")][:1]  # the first count reported
    for name in ("dice", "hd95", *geds, "ece"):
        if name in mean and mean[name]["mean"] is not None:
            shown = f" {unit}" if name == "hd95" and unit else ""
            typer.echo(f"{name:>8}: {mean[name]['mean']:.4f} +- {mean[name]['std']:.4f}{shown} "
                       f"(n={mean[name]['n']})")
    typer.echo(f"{summary['n_cases']} cases: {out_dir / 'summary.json'}")
    if report:
        typer.echo(f"report: {out_dir / 'report.html'}")

"""``diffuseg evaluate``, a thin layer over ``diffuseg.evaluation.evaluate``; registered in
``diffuseg.cli`` as ``app.command("evaluate")(evaluate_command)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.progress import Quiet, set_quiet


def evaluate_command(
    predictions: Annotated[Path, typer.Argument(
        help="Prediction folder written by 'diffuseg predict' (one folder per case)")],
    dataset: Annotated[Path, typer.Option(
        "-d", "--dataset", help="Dataset folder whose raters are the reference")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Where summary.json and report.html go", show_default="PREDICTIONS")
    ] = None,
    samples: Annotated[list[int] | None, typer.Option(
        "--samples", "-n", help="Sample counts for GED (repeatable); the first also sets "
        "HM-IoU and CI", show_default="16 100")] = None,
    report: Annotated[bool, typer.Option(
        "--report/--no-report", help="Write the self-contained report.html")] = True,
    quiet: Quiet = False,
) -> None:
    """Score predictions against the dataset's raters: per-case and mean metrics in
    summary.json (nnU-Net's shape) and an HTML report with overlays."""
    from diffuseg.evaluation import evaluate

    set_quiet(quiet)
    out_dir = output if output is not None else predictions
    summary = evaluate(predictions, dataset, out_dir, n_samples_list=tuple(samples or (16, 100)),
                       report=report)
    mean = summary["mean"]
    for name in ("dice", "hd95", f"ged_{(samples or [16])[0]}", "ece"):
        if name in mean and mean[name]["mean"] is not None:
            typer.echo(f"{name:>8}: {mean[name]['mean']:.4f} +- {mean[name]['std']:.4f} "
                       f"(n={mean[name]['n']})")
    typer.echo(f"{summary['n_cases']} cases: {out_dir / 'summary.json'}")
    if report:
        typer.echo(f"report: {out_dir / 'report.html'}")

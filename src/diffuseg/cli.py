"""The ``diffuseg`` command: a thin layer over the Python API.

Every user mistake (a diffuseg.errors.DiffusegError) is printed as one line, ``error: ...``,
with exit status 2 and no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from diffuseg.errors import DiffusegError
from diffuseg.progress import Quiet, log, set_quiet

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Medical image segmentation with diffusion models: many plausible masks, a consensus "
    "and uncertainty maps.",
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Config override section.key=value (repeatable), e.g. train.max_steps=500"
    ),
]


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (see docs/dataset_format.md)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder to create")],
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="JSON config file", show_default="none: plan and defaults")] = None,
    overrides: Overrides = None,
    method: Annotated[
        str | None, typer.Option(help="Method name (shortcut for method.name)",
                                 show_default="ddpm")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (train.max_steps)",
                                             show_default="2000, quick plan 50")] = None,
    minutes: Annotated[
        float | None, typer.Option(help="Wall-clock budget (train.max_minutes)",
                                   show_default="none: steps only")
    ] = None,
    device: Annotated[
        str | None, typer.Option("-device", "--device", help="auto, cpu or cuda",
                                 show_default="auto")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", "--c", help="Continue the run in -o")] = False,
    plan: Annotated[str, typer.Option(
        "--plan", help="Plan for the data and this machine: auto, cpu, gpu, quick or none "
        "(plan < --config < --set; written to plan.json)")] = "auto",
    quiet: Quiet = False,
) -> None:
    """Train a method on a dataset folder; writes a self-describing run folder."""
    from diffuseg.api import build_config, plan_for, train_run

    set_quiet(quiet)

    extra = list(overrides or [])
    for key, value in (
        ("method.name", method),
        ("train.max_steps", steps),
        ("train.max_minutes", minutes),
        ("train.device", device),
    ):
        if value is not None:
            extra.append(f"{key}={value}")
    run_plan = None
    if resume:
        run_config = build_config(None, extra, dataset=None, base=output / "config.json")
    else:
        run_plan = plan_for(dataset, plan)
        run_config = build_config(config, extra, dataset=dataset, plan=run_plan)
        if run_plan is not None:
            log(f"plan '{plan}' for {dataset} on this machine: about "
                f"{run_plan.estimate_seconds_per_step} s per step (reasons: {output}/plan.json)")
    run = train_run(run_config, dataset, output, resume=resume, plan=run_plan,
                    progress=not quiet)
    typer.echo(f"run folder: {run}")


@app.command()
def check(dataset: Annotated[Path, typer.Argument(help="Dataset folder to verify")],
          quiet: Quiet = False) -> None:
    """Verify a dataset folder (like nnU-Net's --verify_dataset_integrity)."""
    from diffuseg.data.check import check_dataset

    set_quiet(quiet)
    report = check_dataset(dataset)
    typer.echo(report.format())
    raise typer.Exit(1 if report.errors else 0)


@app.command()
def demo(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where to write everything")
    ] = Path("demo_output"),
    steps: Annotated[int, typer.Option(help="Training steps (capped by --minutes)")] = 600,
    minutes: Annotated[float, typer.Option(
        help="Cap on training minutes (the whole demo stays near 5 minutes)")] = 3.0,
    device: Annotated[str, typer.Option("-device", "--device", help="auto, cpu or cuda")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder")] = False,
) -> None:
    """Generate the phantom, train a small model, predict with 16 samples and evaluate."""
    from diffuseg.demo import run_demo

    summary = run_demo(output, steps=steps, minutes=minutes, device=device,
                       overwrite=overwrite)
    typer.echo(summary)


from diffuseg.cli_data import convert_app  # noqa: E402
from diffuseg.cli_evaluate import evaluate_command  # noqa: E402
from diffuseg.cli_export import export_command  # noqa: E402
from diffuseg.cli_predict import predict_command  # noqa: E402

app.command("evaluate")(evaluate_command)
app.command("predict")(predict_command)
app.command("export")(export_command)
app.add_typer(convert_app, name="convert")


def main() -> None:
    try:
        app()
    except DiffusegError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

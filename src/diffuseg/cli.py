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
    config: Annotated[Path | None, typer.Option("--config", "-c", help="JSON config file")] = None,
    overrides: Overrides = None,
    method: Annotated[
        str | None, typer.Option(help="Method name (shortcut for method.name)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (train.max_steps)")] = None,
    minutes: Annotated[
        float | None, typer.Option(help="Wall-clock budget (train.max_minutes)")
    ] = None,
    device: Annotated[
        str | None, typer.Option("-device", "--device", help="auto, cpu or cuda")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", "--c", help="Continue the run in -o")] = False,
) -> None:
    """Train a method on a dataset folder; writes a self-describing run folder."""
    from diffuseg.api import build_config, train_run

    extra = list(overrides or [])
    for key, value in (
        ("method.name", method),
        ("train.max_steps", steps),
        ("train.max_minutes", minutes),
        ("train.device", device),
    ):
        if value is not None:
            extra.append(f"{key}={value}")
    if resume:
        run_config = build_config(None, extra, dataset=None, base=output / "config.json")
    else:
        run_config = build_config(config, extra, dataset=dataset)
    run = train_run(run_config, dataset, output, resume=resume)
    typer.echo(f"run folder: {run}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder written by 'diffuseg train'")],
    input: Annotated[
        Path, typer.Option("-i", "--input", help="Image file, folder, or DICOM series")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder")],
    samples: Annotated[int | None, typer.Option("--samples", "-n", help="Masks to draw")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampler steps")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    device: Annotated[str, typer.Option("-device", "--device", help="auto, cpu or cuda")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs")] = False,
) -> None:
    """Draw samples; write them, the consensus and uncertainty maps in the input's geometry."""
    from diffuseg.inference import Predictor, list_inputs

    if steps is not None and steps < 1:
        raise DiffusegError(f"--steps {steps} must be at least 1 (e.g. --steps 10)")
    if samples is not None and samples < 1:
        raise DiffusegError(f"--samples {samples} must be at least 1 (e.g. --samples 16)")
    inputs = list_inputs(input)
    predictor = Predictor.from_run(run, device=device)
    for path in inputs:
        folder = predictor.predict_file(
            path, output, n_samples=samples, steps=steps, seed=seed, overwrite=overwrite
        )
        typer.echo(f"{path[0].name}: {folder}")


@app.command()
def check(dataset: Annotated[Path, typer.Argument(help="Dataset folder to verify")]) -> None:
    """Verify a dataset folder (like nnU-Net's --verify_dataset_integrity)."""
    from diffuseg.data.check import check_dataset

    report = check_dataset(dataset)
    typer.echo(report.format())
    raise typer.Exit(1 if report.errors else 0)


@app.command()
def demo(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where to write everything")
    ] = Path("demo_output"),
    steps: Annotated[int, typer.Option(help="Training steps (about 5 min on 2 idle cores)")] = 600,
    minutes: Annotated[float, typer.Option(help="Cap on training minutes")] = 15.0,
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
from diffuseg.cli_preprocess import phantom_command, preprocess_command  # noqa: E402

app.command("evaluate")(evaluate_command)
app.command("export")(export_command)
app.command("preprocess")(preprocess_command)
app.command("phantom")(phantom_command)
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

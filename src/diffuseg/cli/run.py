"""``diffuseg train``, ``predict`` and ``demo``: thin layers over ``diffuseg.api`` and
``diffuseg.inference``.

Names: ``train --max-steps`` counts optimiser steps (``train.max_steps``); ``predict --steps``
counts sampler steps. ``train --steps`` is a hidden, deprecated alias of ``--max-steps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command, warn
from diffuseg.errors import ConfigError, DiffusegError

Overrides = Annotated[list[str] | None, typer.Option(
    "--set", help="Config override section.key=value (repeatable), e.g. train.max_steps=500",
    show_default="none")]
Device = Annotated[str | None, typer.Option(
    "-device", "--device", help="auto, cpu, cuda or cuda:N",
    show_default="the config's train.device: auto")]


@command("train")
def train_command(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (see docs/dataset_format.md)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder to create")],
    config: Annotated[Path | None, typer.Option(
        "-c", "--config", help="JSON config file (over the dataset's defaults)",
        show_default="none")] = None,
    overrides: Overrides = None,
    method: Annotated[str | None, typer.Option(
        help="Method name (shortcut for method.name)",
        show_default="the config's method.name: ddpm")] = None,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", help="Optimiser steps (train.max_steps)",
        show_default="the config's train.max_steps: 2000")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", hidden=True, help="Deprecated: use --max-steps")] = None,
    minutes: Annotated[float | None, typer.Option(
        help="Wall-clock budget (train.max_minutes)",
        show_default="the config's train.max_minutes: none")] = None,
    device: Device = None,
    resume: Annotated[bool, typer.Option(
        "--resume", "--continue", help="Continue the run in -o (same dataset; its config.json "
        "and splits.json are kept, --set overrides apply on top)")] = False,
    c_flag: Annotated[bool, typer.Option("--c", hidden=True)] = False,
) -> None:
    """Train a method on a dataset folder; writes a self-describing run folder."""
    from diffuseg.api import build_config, train_run

    if c_flag:
        raise ConfigError("--c is not an option of 'diffuseg train' (it read too much like -c, "
                          "the config file); use --resume to continue the run in -o")
    if steps is not None:
        if max_steps is not None:
            raise ConfigError("give --max-steps only (--steps is its deprecated old name)")
        warn(f"'train --steps' is deprecated (it counts optimiser steps); use --max-steps {steps}")
        max_steps = steps
    extra = list(overrides or [])
    for key, value in (("method.name", method), ("train.max_steps", max_steps),
                       ("train.max_minutes", minutes), ("train.device", device)):
        if value is not None:
            extra.append(f"{key}={value}")
    if resume:
        if config is not None:
            raise ConfigError(f"--resume continues with '{output / 'config.json'}'; drop -c "
                              f"{config} (use --set for changes)")
        run_config = build_config(None, extra, dataset=None, base=output / "config.json")
    else:
        run_config = build_config(config, extra, dataset=dataset)
    run = train_run(run_config, dataset, output, resume=resume)
    typer.echo(f"run folder: {run}")


@command("predict")
def predict_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by 'diffuseg train'")],
    input: Annotated[Path, typer.Option(
        "-i", "--input", help="Image file, folder, or DICOM series")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder")],
    samples: Annotated[int | None, typer.Option(
        "--samples", "-n", help="Masks to draw",
        show_default="the run's sample.n_samples")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Sampler steps per mask (not training steps)",
        show_default="the run's sample.steps or the method's own")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    device: Annotated[str, typer.Option(
        "-device", "--device", help="auto, cpu, cuda or cuda:N")] = "auto",
    overwrite: Annotated[bool, typer.Option(
        help="Replace existing case folders (each one atomically)")] = False,
    format: Annotated[str, typer.Option("--format", help="auto (DICOM objects for a DICOM "
                                        "input) or dicom (also for NIfTI, needs --reference)")
                      ] = "auto",
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="DICOM series folder a NIfTI input was converted from",
        show_default="none")] = None,
    dicom_samples: Annotated[bool, typer.Option(
        "--dicom-samples", help="Also write every sample as a segment of seg_samples.dcm")
    ] = False,
    inside: Annotated[Path | None, typer.Option(
        "--inside", help="Mask of pixels certainly inside, on the image's grid (guided "
        "resampling: every sample holds them; docs/review.md)", show_default="none")] = None,
    outside: Annotated[Path | None, typer.Option(
        "--outside", help="Mask of pixels certainly outside (guided resampling)",
        show_default="none")] = None,
) -> None:
    """Draw samples; write them, the consensus and uncertainty maps in the input's geometry."""
    from diffuseg.guidance import read_constraints
    from diffuseg.inference import Predictor, list_inputs
    from diffuseg.outputs import lock_output

    if steps is not None and steps < 1:
        raise DiffusegError(f"--steps {steps} must be at least 1 (e.g. --steps 10)")
    if samples is not None and samples < 1:
        raise DiffusegError(f"--samples {samples} must be at least 1 (e.g. --samples 16)")
    if format not in ("auto", "dicom"):
        raise DiffusegError(f"--format {format} is unknown; use auto or dicom")
    inputs = list_inputs(input)
    constraints = read_constraints(inside, outside)
    if constraints is not None and len(inputs) > 1:
        raise DiffusegError("--inside/--outside mark one image; give a single image with -i")
    predictor = Predictor.from_run(run, device=device)
    with lock_output(output):
        for path in inputs:
            folder = predictor.predict_file(
                path, output, n_samples=samples, steps=steps, seed=seed, overwrite=overwrite,
                dicom=True if format == "dicom" else None, reference=reference,
                dicom_samples=dicom_samples, constraints=constraints)
            typer.echo(f"{path[0].name}: {folder}")


@command("demo")
def demo_command(
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Where to write everything")] = Path("demo_output"),
    max_steps: Annotated[int, typer.Option(
        "--max-steps", "--steps", help="Training steps (about 5 min on 2 idle cores)")] = 600,
    minutes: Annotated[float, typer.Option(help="Cap on training minutes")] = 15.0,
    device: Annotated[str, typer.Option(
        "-device", "--device", help="auto, cpu, cuda or cuda:N")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder")] = False,
) -> None:
    """Generate the phantom, train a small model, predict with 16 samples and evaluate."""
    from diffuseg.demo import run_demo

    typer.echo(run_demo(output, steps=max_steps, minutes=minutes, device=device,
                        overwrite=overwrite))

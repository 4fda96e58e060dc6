"""``diffuseg explain`` and ``diffuseg workflow-report``: the review workflow's commands (thin
layers over ``diffuseg.review.explain`` and ``diffuseg.review.workflow_report``; docs/review.md).
Heavy imports
stay inside the functions, so that ``diffuseg -h`` imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command
from diffuseg.errors import ConfigError, DataError

# = diffuseg.review.explain.KINDS
KINDS = ("trajectory", "occlusion", "counterfactual", "attention")


@command("explain")
def explain_command(
    run: Annotated[Path, typer.Argument(
        help="Run folder written by 'diffuseg train', or a model name ('diffuseg models')")],
    input: Annotated[Path, typer.Option("-i", "--input", help="One image (file or DICOM folder)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the pictures")],
    kinds: Annotated[str, typer.Option(help="Comma-separated: " + ",".join(KINDS))
                     ] = "trajectory,occlusion,counterfactual,attention",
    samples: Annotated[int, typer.Option("--samples", "-n", help="Samples per model call")] = 8,
    steps: Annotated[int | None, typer.Option(
        help="Sampler steps", show_default="the run's sample.steps")] = None,
    patch: Annotated[int, typer.Option(help="Occlusion patch side (pixels)")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    device: Annotated[str, typer.Option(
        "-device", "--device", help="auto, cpu, cuda or cuda:N")] = "auto",
) -> None:
    """Explain a segmentation: trajectory, attention, occlusion sensitivity, counterfactuals."""
    import numpy as np

    from diffuseg.inference.predictor import Predictor, list_inputs, read_channels
    from diffuseg.review.explain import explain_to_png, trajectory, trajectory_gif

    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = sorted(set(wanted) - set(KINDS))
    if unknown:
        raise ConfigError(f"--kinds {','.join(unknown)} unknown; choose from {','.join(KINDS)}")
    inputs = list_inputs(input)
    if len(inputs) != 1:
        raise DataError(f"-i '{input}' holds {len(inputs)} images; explain one image at a time")
    image, _ = read_channels(inputs[0])
    predictor = Predictor.from_pretrained(run, device=device)  # a run folder or a model name
    image = image.astype(np.float32)
    output.mkdir(parents=True, exist_ok=True)
    for kind in wanted:
        try:
            path = explain_to_png(predictor, image, kind, output / f"{kind}.png",
                                  n_samples=samples, steps=steps, patch=patch, seed=seed)
        except ConfigError as err:
            typer.echo(f"{kind}: skipped ({err})")
            continue
        typer.echo(f"{kind}: {path}")
        if kind == "trajectory":
            frames = trajectory(predictor, image, steps=steps, seed=seed)
            typer.echo(f"trajectory: {trajectory_gif(frames, output / 'trajectory.gif')}")


@command("workflow-report")
def workflow_report_command(
    data_dir: Annotated[Path, typer.Argument(help="The service's data folder (audit.jsonl)")],
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the report as JSON", show_default="none")] = None,
) -> None:
    """Summarise the review audit trail: time to approve, share approved unchanged, edit size."""
    from diffuseg.review.workflow_report import format_report, workflow_report, write_report_json

    if not (data_dir / "audit.jsonl").is_file():
        raise DataError(f"'{data_dir}' has no audit.jsonl; give the DATA_DIR of 'diffuseg serve'")
    report = workflow_report(data_dir)
    typer.echo(format_report(report))
    if json_out is not None:
        write_report_json(report, json_out)

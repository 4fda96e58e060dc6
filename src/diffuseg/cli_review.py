"""CLI commands of the review workflow: ``diffuseg explain`` (heavy imports inside, so that
``diffuseg -h`` stays fast); ``workflow-report`` lives in ``diffuseg.workflow_report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.errors import ConfigError, DataError

KINDS = ("trajectory", "occlusion", "counterfactual", "attention")  # = diffuseg.explain.KINDS


def explain_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by 'diffuseg train'")],
    input: Annotated[Path, typer.Option("-i", "--input", help="One image (file or DICOM folder)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the pictures")],
    kinds: Annotated[str, typer.Option(help="Comma-separated: " + ",".join(KINDS))
                     ] = "trajectory,occlusion,counterfactual,attention",
    samples: Annotated[int, typer.Option("--samples", "-n", help="Samples per model call")] = 8,
    steps: Annotated[int | None, typer.Option(help="Sampler steps")] = None,
    patch: Annotated[int, typer.Option(help="Occlusion patch side (pixels)")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    device: Annotated[str, typer.Option("-device", "--device", help="auto, cpu or cuda")] = "auto",
) -> None:
    """Explain a segmentation: trajectory, attention, occlusion sensitivity, counterfactuals."""
    import numpy as np

    from diffuseg.explain import explain_to_png, trajectory, trajectory_gif
    from diffuseg.inference import Predictor, list_inputs, read_channels

    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = sorted(set(wanted) - set(KINDS))
    if unknown:
        raise ConfigError(f"--kinds {','.join(unknown)} unknown; choose from {','.join(KINDS)}")
    inputs = list_inputs(input)
    if len(inputs) != 1:
        raise DataError(f"-i '{input}' holds {len(inputs)} images; explain one image at a time")
    image, _ = read_channels(inputs[0])
    predictor = Predictor.from_run(run, device=device)
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

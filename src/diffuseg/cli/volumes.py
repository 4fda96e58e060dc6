"""``diffuseg preprocess DATASET [--out DIR] [--set data.spacing=[1,1,1] ...]``, a thin layer over
``diffuseg.data.preprocess.preprocess``, and ``diffuseg phantom OUTPUT [--dims 3]``, over
``diffuseg.data.phantom.write_phantom_dataset`` (docs/volumes.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command


@command("preprocess")
def preprocess_command(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (see docs/dataset_format.md)")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folder to write", show_default="DATASET/preprocessed/<plan hash>")
    ] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="JSON config file", show_default="none")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Config override, e.g. data.spacing=[1,1,1] or data.intensity=ct",
        show_default="none")] = None,
    workers: Annotated[int, typer.Option(help="Processes writing cases in parallel")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Write again even if current")] = False,
) -> None:
    """Resample and normalise every case once into memory-mappable .npy files (what training
    with data.stream=true reads); skipped when the folder is current for the dataset and plan."""
    from diffuseg.data import Dataset
    from diffuseg.data.preprocess import preprocess
    from diffuseg.training.start import build_config

    opened = Dataset.open(dataset)  # listed once for the config defaults and the preprocessing
    run_config = build_config(config, list(overrides or []), dataset=opened)
    folder = preprocess(dataset, run_config, out, workers=workers, force=force, dataset=opened)
    typer.echo(f"preprocessed: {folder}")


@command("phantom")
def phantom_command(
    output: Annotated[Path, typer.Argument(help="Dataset folder to create")],
    dims: Annotated[int, typer.Option("--dims", help="2 (PNG) or 3 (NIfTI volumes)")] = 2,
    cases: Annotated[int, typer.Option(help="Number of cases")] = 40,
    size: Annotated[int, typer.Option(help="Pixels per axis")] = 64,
    raters: Annotated[int, typer.Option(help="Raters per case")] = 3,
    seed: Annotated[int, typer.Option(help="Case i uses default_rng([seed, i])")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder")] = False,
) -> None:
    """Write a phantom dataset whose distribution of rater masks is known (2D or 3D)."""
    from diffuseg.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(output, cases, spatial_dims=dims, size=size, n_raters=raters,
                                 seed=seed, overwrite=overwrite)
    typer.echo(f"phantom dataset: {root}")

"""``diffuseg export RUN --onnx [-o FILE]``, a thin layer over ``diffuseg.export.export_run``;
registered in ``diffuseg.cli`` as ``app.command("export")(export_command)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.errors import ConfigError


def export_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by 'diffuseg train'")],
    onnx: Annotated[bool, typer.Option(
        "--onnx", help="Export the per-step denoiser to ONNX (dynamic batch and size)")] = False,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="ONNX file to write", show_default="RUN/denoiser.onnx")] = None,
    exporter: Annotated[str, typer.Option(
        help="dynamo (torch.export, torch's default) or torchscript (legacy, faster to export)")
    ] = "dynamo",
    threads: Annotated[int | None, typer.Option(
        help="ONNX Runtime threads recorded in RUN/inference.json",
        show_default="torch's current threads")] = None,
) -> None:
    """Export a trained run for fast inference; writes the model file and RUN/inference.json
    (threads, batch size, exporter, opset, ONNX Runtime vs eager error on an example)."""
    if not onnx:
        raise ConfigError("choose an export format: --onnx (the only one so far)")
    if exporter not in ("dynamo", "torchscript"):
        raise ConfigError(f"--exporter {exporter} is unknown; use dynamo or torchscript")
    from diffuseg.export import INFO_NAME, export_run

    path = export_run(run, output, exporter=exporter, threads=threads)  # type: ignore[arg-type]
    typer.echo(f"onnx: {path}")
    typer.echo(f"settings: {run / INFO_NAME}")

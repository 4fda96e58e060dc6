"""``diffuseg export RUN --format onnx [-o FILE]``, a thin layer over
``diffuseg.inference.onnx.export_run``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command
from diffuseg.errors import ConfigError

FORMATS = ("onnx",)


@command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by 'diffuseg train'")],
    fmt: Annotated[str | None, typer.Option(
        "--format", "-f", help="Model format: onnx (the per-step denoiser, dynamic batch and "
        "size)", show_default="none: required")] = None,
    onnx: Annotated[bool, typer.Option(
        "--onnx", hidden=True, help="Old spelling of --format onnx")] = False,
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
    if onnx:
        fmt = fmt or "onnx"
    if fmt is None:
        raise ConfigError("choose an export format: --format onnx (the only one so far)")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is unknown; use one of {', '.join(FORMATS)}")
    if exporter not in ("dynamo", "torchscript"):
        raise ConfigError(f"--exporter {exporter} is unknown; use dynamo or torchscript")
    from diffuseg.inference.onnx import INFO_NAME, export_run

    path = export_run(run, output, exporter=exporter, threads=threads)  # type: ignore[arg-type]
    typer.echo(f"onnx: {path}")
    typer.echo(f"settings: {run / INFO_NAME}")

"""``diffuseg models`` (list), ``models show NAME`` (the card), ``models package RUN -o DIR``: thin
layers over ``diffuseg.pretrained`` (docs/pretrained.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command, group_default, warn
from diffuseg.errors import DiffusegError


@group_default("models")
def models_command(ctx: typer.Context) -> None:
    """List the models: name, task, dimensions, labels, raters, validation, where."""
    if ctx.invoked_subcommand is not None:
        return
    from diffuseg.pretrained.lookup import ENV, available_models, missing_env_roots

    for root in missing_env_roots():
        warn(f"{ENV} entry '{root}' is not a folder; it is skipped")
    models = available_models()
    if not models:
        typer.echo(f"no models are installed; add model folders with {ENV} "
                   "(docs/pretrained.md)")
        return
    rows = [("name", "task", "dims", "labels", "raters", "validation", "folder")]
    rows += [model_row(name, folder) for name, folder in models.items()]
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        typer.echo("  ".join(cells + [row[-1]]))


def model_row(name: str, folder: Path) -> tuple[str, ...]:
    """One line of the listing; a model whose model.json cannot be read says why."""
    from diffuseg.pretrained.manifest import read_manifest
    from diffuseg.pretrained.validation import short

    try:
        m = read_manifest(folder)
    except DiffusegError as err:
        return (name, f"unreadable: {err}", "-", "-", "-", "-", str(folder))
    labels = ", ".join(k for k, v in m.get("labels", {}).items() if str(v) != "0") or "-"
    return (name, str(m.get("task") or "-"), f"{m.get('spatial_dims', '?')}D", labels,
            str(m.get("raters", "?")), short(m.get("validation")), str(folder))


@command("show", group="models")
def show_command(
    name: Annotated[str, typer.Argument(help="Model name (see 'diffuseg models') or folder")],
) -> None:
    """Print a model's card (MODEL.md)."""
    from diffuseg.pretrained.lookup import find_model
    from diffuseg.pretrained.manifest import CARD, is_model_folder

    folder = Path(name) if Path(name).exists() else find_model(name)
    if not is_model_folder(folder) or not (folder / CARD).is_file():
        raise DiffusegError(f"'{folder}' is not a model folder (no model.json and {CARD}); "
                            "'diffuseg models' lists the models")
    typer.echo((folder / CARD).read_text(encoding="utf-8").rstrip("\n"))
    typer.echo(f"\nmodel folder: {folder}")


@command("package", group="models")
def package_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by 'diffuseg train'")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Model folder to write (its name is the model's name), e.g. "
        "models/lidc_nodules")],
    card: Annotated[Path | None, typer.Option(
        "--card", help="The model card to ship as MODEL.md",
        show_default="a draft from the run, with TODOs to fill in")] = None,
    task: Annotated[str | None, typer.Option(
        "--task", help="The task in a few words (shown by 'diffuseg models')",
        show_default="none")] = None,
    validation: Annotated[Path | None, typer.Option(
        "--validation", help="summary.json of 'diffuseg evaluate' on held-out cases: means and "
        "95% bootstrap intervals go into model.json",
        show_default="the run's verdict.json or last validation")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing model folder")] = False,
) -> None:
    """Package a run folder as a model: fp16 EMA weights, config, plan, labels, splits,
    fingerprint without paths, MODEL.md and model.json (sha256 of the weights)."""
    from diffuseg.pretrained.package import SIZE_LIMIT, package_run

    if card is not None and not card.is_file():
        raise DiffusegError(f"--card '{card}' does not exist; give a MODEL.md file or leave "
                            "--card out for a draft")
    done = package_run(run, output, card=card, task=task, validation=validation,
                       overwrite=overwrite)
    sha = done.manifest["sha256"]["model.safetensors"]
    typer.echo(f"model '{output.name}' in {output}: {done.size_bytes / 2**20:.1f} MiB, "
               f"model.safetensors sha256 {sha}")
    if done.unfinished:
        warn(f"{output / 'MODEL.md'}: finish these sections before shipping the model: "
             f"{', '.join(done.unfinished)}")
    if done.size_bytes > SIZE_LIMIT:
        warn(f"the model takes {done.size_bytes / 2**20:.1f} MiB; all shipped models together "
             f"must stay within {SIZE_LIMIT / 2**20:.0f} MiB")

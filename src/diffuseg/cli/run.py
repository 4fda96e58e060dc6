"""``diffuseg train`` and ``demo``: thin layers over ``diffuseg.training.start`` (``predict`` is in
``diffuseg.cli.predict``).

Names: ``train --max-steps`` counts optimiser steps (``train.max_steps``); ``predict --steps``
counts sampler steps. ``train --steps`` is a hidden, deprecated alias of ``--max-steps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command, warn
from diffuseg.core.progress import Quiet, log, set_quiet
from diffuseg.errors import ConfigError

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
        help="Wall-clock budget of the whole command, imports included (train.max_minutes)",
        show_default="the config's train.max_minutes: none")] = None,
    device: Device = None,
    resume: Annotated[bool, typer.Option(
        "--resume", "--continue", help="Continue the run in -o (same dataset; its config.json "
        "and splits.json are kept, --set overrides apply on top)")] = False,
    c_flag: Annotated[bool, typer.Option("--c", hidden=True)] = False,
    plan: Annotated[str, typer.Option(
        "--plan", help="Plan for the data and this machine: auto, cpu, gpu, quick or none "
        "(plan < --config < --set; written to plan.json)")] = "auto",
    init: Annotated[str | None, typer.Option(
        "--init", help="Fine-tune: start from this model (a name from 'diffuseg models', or a "
        "run or model folder): its method, process, network and sample settings, and its "
        "weights wherever names and shapes match (train.init; docs/pretrained.md)",
        show_default="none: a fresh start")] = None,
    quiet: Quiet = False,
) -> None:
    """Train a method on a dataset folder; writes a self-describing run folder."""
    from diffuseg.training.start import (
        build_config,
        chosen_method,
        plan_for,
        steps_for_minutes,
        train_run,
    )

    set_quiet(quiet)

    if c_flag:
        raise ConfigError("--c is not an option of 'diffuseg train' (it read too much like -c, "
                          "the config file); use --resume to continue the run in -o")
    if steps is not None:
        if max_steps is not None:
            raise ConfigError("give --max-steps only (--steps is its deprecated old name)")
        warn(f"'train --steps' is deprecated (it counts optimiser steps); use --max-steps {steps}")
        max_steps = steps
    extra = list(overrides or [])
    given = {o.split("=", 1)[0].strip(): o.split("=", 1)[1].strip() for o in extra if "=" in o}
    for key, flag, value in (("method.name", "--method", method),
                             ("train.max_steps", "--max-steps", max_steps),
                             ("train.max_minutes", "--minutes", minutes),
                             ("train.device", "--device", device)):
        if value is not None:
            if key in given and not _same(given[key], value):
                raise ConfigError(f"{flag} {value} and --set {key}={given[key]} disagree; "
                                  "give one of them")
            extra.append(f"{key}={value}")
    run_plan = None
    if resume:
        if init is not None:
            raise ConfigError(f"--init starts a new run; --resume continues '{output}' from its "
                              "own checkpoint: drop one of them")
        if config is not None:
            raise ConfigError(f"--resume continues with '{output / 'config.json'}'; drop -c "
                              f"{config} (use --set for changes)")
        run_config = build_config(None, extra, dataset=None, base=output / "config.json")
    else:
        from diffuseg.data import Dataset

        opened = Dataset.open(dataset)  # listed once for the plan, the defaults and training
        run_plan = plan_for(opened, plan, chosen_method(config, extra, init))
        if run_plan is None or "max_steps" not in run_plan.values.get("train", {}):
            extra = steps_for_minutes(config, extra) + extra
        run_config = build_config(config, extra, dataset=opened, plan=run_plan, init=init)
        if run_plan is not None:
            log(f"plan '{plan}' for {dataset} on this machine: about "
                f"{run_plan.estimate_seconds_per_step} s per step (reasons: {output}/plan.json)")
    from diffuseg.cli.app import STARTED

    run = train_run(run_config, dataset if resume else opened, output, resume=resume,
                    plan=run_plan, progress=not quiet, started=STARTED)
    from diffuseg.core.distributed import is_main_process

    if not is_main_process():
        return  # under torchrun, rank 0 alone says where the run is and what it learned
    typer.echo(f"run folder: {run}")
    from diffuseg.run.verdict import read_verdict

    verdict = read_verdict(run)
    if verdict is not None:
        typer.echo(verdict["line"])


def _same(text: str, value: object) -> bool:
    """A ``--set`` value and a flag's value agree (numbers by value: 30 and 30.0)."""
    try:
        return float(text) == float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return text == str(value)


@command("demo")
def demo_command(
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Where to write everything")] = Path("demo_output"),
    max_steps: Annotated[int, typer.Option(
        "--max-steps", "--steps", help="Training steps (capped by --minutes)")] = 600,
    minutes: Annotated[float, typer.Option(
        help="Cap on training CPU minutes (train.budget_clock=cpu: a busy machine takes longer "
        "but trains the same steps)")] = 3.0,
    device: Annotated[str, typer.Option(
        "-device", "--device", help="auto, cpu, cuda or cuda:N")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder")] = False,
) -> None:
    """Generate the phantom, train a small model, predict with 16 samples and evaluate."""
    from diffuseg.demo import run_demo

    typer.echo(run_demo(output, steps=max_steps, minutes=minutes, device=device,
                        overwrite=overwrite))

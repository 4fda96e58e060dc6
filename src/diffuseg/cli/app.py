"""The one Typer app of ``diffuseg`` and the one way to add a command to it: ``@command``.

::

    from diffuseg.cli.app import command

    @command("plan")                      # diffuseg plan ...
    def plan_command(...): ...

    @command("msd", group="convert")      # diffuseg convert msd ...
    def msd_command(...): ...

A function written elsewhere is registered with one line, ``command("name")(function)``.
The module holding the command must be imported by ``diffuseg.cli`` (``COMMAND_MODULES``).

Every user mistake (a ``diffuseg.errors.DiffusegError``) is printed by ``main`` as one line,
``error: ...``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the command's start: ``train --minutes`` counts its imports too

import logging  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Annotated, TypeVar  # noqa: E402

import typer  # noqa: E402

from diffuseg import __version__  # noqa: E402
from diffuseg.errors import DiffusegError, TrainingInterrupted  # noqa: E402

CONTEXT = {"help_option_names": ["-h", "--help"]}
F = TypeVar("F", bound=Callable)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings=CONTEXT,
    help="Medical image segmentation with diffusion models: many plausible masks, a consensus "
    "and uncertainty maps.",
    pretty_exceptions_enable=False,
)

# command groups (``diffuseg GROUP COMMAND``): name -> help
GROUP_HELP = {
    "convert": "Convert a data set in its downloaded layout into a dataset folder "
    "(see docs/importers.md).",
    "models": "Pretrained models: list them (no command), show a card, package a run "
    "(see docs/pretrained.md).",
}
_groups: dict[str, typer.Typer] = {}


def command_group(name: str) -> typer.Typer:
    """The sub-app of a command group, created and attached on first use."""
    if name not in _groups:
        if name not in GROUP_HELP:
            raise KeyError(f"unknown command group '{name}'; add it to GROUP_HELP")
        _groups[name] = typer.Typer(add_completion=False, no_args_is_help=True,
                                    context_settings=CONTEXT, help=GROUP_HELP[name],
                                    pretty_exceptions_enable=False)
        app.add_typer(_groups[name], name=name)
    return _groups[name]


def command(name: str, *, group: str | None = None, hidden: bool = False) -> Callable[[F], F]:
    """Register a Typer command function as ``diffuseg NAME`` (or ``diffuseg GROUP NAME``)."""
    target = app if group is None else command_group(group)

    def register(function: F) -> F:
        target.command(name, hidden=hidden)(function)
        return function

    return register


def group_default(name: str) -> Callable[[F], F]:
    """Register what ``diffuseg GROUP`` does without a command (instead of its help); the
    function takes the ``typer.Context`` first and runs only when no command follows."""

    def register(function: F) -> F:
        group = command_group(name)
        group.info.no_args_is_help = False
        group.callback(invoke_without_command=True)(function)
        return function

    return register


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"diffuseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit")] = False,
) -> None:
    """Medical image segmentation with diffusion models: many plausible masks, a consensus and
    uncertainty maps."""


def warn(message: str) -> None:
    """One line on stderr, ``warning: ...``."""
    typer.echo(f"warning: {message}", err=True)


def click_exceptions():
    """click's exception classes as this typer raises them (recent typer vendors click as
    ``typer._click``; older typer uses the ``click`` package)."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def main() -> None:
    """The ``diffuseg`` entry point: user mistakes end in one line and exit status 2."""
    quiet_library_logs()  # one line on stderr: no library warnings beside the error
    click = click_exceptions()
    no_args = getattr(click, "NoArgsIsHelpError", ())  # click >= 8.2
    try:
        code = app(standalone_mode=False)  # click's own errors come here, not as a usage box
    except no_args as err:  # `diffuseg` alone: its help
        typer.echo(err.ctx.get_help() if err.ctx else str(err))
        sys.exit(0)
    except click.UsageError as err:  # a bad option, value or missing argument
        where = err.ctx.command_path if err.ctx else "diffuseg"
        message = " ".join(err.format_message().split()).rstrip(".")
        typer.echo(f"error: {message}; see '{where} -h'", err=True)
        sys.exit(2)
    except click.ClickException as err:  # any other error click raises
        typer.echo(f"error: {' '.join(err.format_message().split())}", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:  # Ctrl-C at a prompt
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except TrainingInterrupted as err:  # SIGINT/SIGTERM: a checkpoint was saved
        typer.echo(str(err), err=True)
        sys.exit(130)
    except DiffusegError as err:
        typer.echo(f"error: {' '.join(str(err).split())}", err=True)  # always one line
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as err:  # a write refused outside atomic.writing: disk full, read-only, ...
        from diffuseg.core.atomic import write_error

        error = write_error(err, "the output")
        if error is None:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    # as click's standalone mode: always exit, with an Exit's status (--help: 0), else 0
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


def quiet_library_logs() -> None:
    """For the CLI: nibabel's header repairs ("pixdim[1,2,3] should be positive; setting to
    abs") and pydicom's "Invalid value for VR" warnings go to stderr beside diffuseg's one-line
    error; the files they describe are refused by diffuseg's own checks, or read as repaired."""
    logging.getLogger("nibabel.global").setLevel(logging.ERROR + 5)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\..*")

"""The ``diffuseg`` command: a thin layer over the Python API (docs/cli.md).

Layout: ``app.py`` holds the one Typer app, ``main`` and the ``@command`` decorator; each module
of ``COMMAND_MODULES`` defines its commands and registers them with ``@command("name")`` (or
``@command("name", group="convert")``). To add a command: write it in a module, decorate it, and
list the module here.
"""

from __future__ import annotations

import importlib

from diffuseg.cli.app import app, command, main  # first: app.STARTED marks the command's start

COMMAND_MODULES = (
    "diffuseg.cli.run",  # train, demo
    "diffuseg.cli.predict",  # predict
    "diffuseg.cli.data",  # check, convert lidc-slices | msd | folder | dicom
    "diffuseg.cli.evaluate",  # evaluate
    "diffuseg.cli.export",  # export
    "diffuseg.cli.serve",  # serve (HTTP service, docs/deploying.md)
    "diffuseg.cli.synthesize",  # synthesize (docs/synthesis.md)
    "diffuseg.cli.review",  # explain, workflow-report (docs/review.md)
    "diffuseg.cli.volumes",  # preprocess, phantom (docs/volumes.md)
    "diffuseg.cli.models",  # models, models show | package (docs/pretrained.md)
)

for _module in COMMAND_MODULES:
    importlib.import_module(_module)

__all__ = ["COMMAND_MODULES", "app", "command", "main"]

"""A tiny phantom run trained once per session and packaged as the model 'tiny' into a temporary
models folder (never weights in the repository); ``cli`` runs ``diffuseg`` in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from models_helpers import TINY

from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.pretrained.package import package_run
from diffuseg.training.loop import train
from diffuseg.training.start import build_config, plan_for


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("pretrained") / "phantom", n_cases=6,
                                 size=24, n_raters=2)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, phantom) -> Path:
    plan = plan_for(phantom, "quick")  # the run keeps plan.json (the --set values win over it)
    config = build_config(None, TINY, dataset=phantom, plan=plan)
    return train(config, phantom, tmp_path_factory.mktemp("runs") / "run", progress=False,
                 notes={"plan.json": plan.to_dict()})


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, trained_run) -> Path:
    root = tmp_path_factory.mktemp("models")
    package_run(trained_run, root / "tiny", task="phantom lesions")
    return root


@pytest.fixture
def with_models(monkeypatch, models_dir) -> Path:
    """DIFFUSEG_MODELS names the session's models folder (it holds 'tiny')."""
    monkeypatch.setenv("DIFFUSEG_MODELS", str(models_dir))
    return models_dir


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*args) -> (exit status, stdout, stderr)`` of ``diffuseg ARGS`` run in-process."""
    from diffuseg.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["diffuseg", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run

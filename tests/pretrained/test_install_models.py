"""``pip install .`` installs the top-level ``models/`` folder with the package: a wheel built
from a copy of the repository (holding a tiny packaged model) has it under
``diffuseg/pretrained/shipped/``, and the installed package finds and runs it by name, with no
checkout and no DIFFUSEG_MODELS. (The editable install reads ``models/`` in the checkout:
tests/pretrained/test_model_lookup.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIND_AND_RUN = """
import json, numpy as np, diffuseg
from diffuseg.inference.predictor import Predictor
from diffuseg.pretrained.lookup import available_models
predictor = Predictor.from_pretrained("tiny", device="cpu")
result = predictor.segment(np.zeros((1, 24, 24), np.float32), n_samples=2, steps=1)
print(json.dumps({"package": diffuseg.__file__, "model": str(predictor.run_dir),
                  "models": sorted(available_models()), "shape": list(result.samples.shape)}))
"""


def can_build_wheels() -> bool:
    setuptools = pytest.importorskip("setuptools")
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    try:
        import wheel  # noqa: F401
    except ImportError:
        return (major, minor) >= (70, 1)  # bdist_wheel is part of setuptools since 70.1
    return True


def test_a_regular_install_finds_the_shipped_model(tmp_path, models_dir):
    if not can_build_wheels():
        pytest.skip("building a wheel needs setuptools >= 70.1 or the wheel package")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, project / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", project / "src", ignore=skip)
    shutil.copytree(ROOT / "models", project / "models", ignore=skip)
    shutil.copytree(models_dir / "tiny", project / "models" / "tiny")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "--no-index", "-q", "-w",
                            str(tmp_path / "dist"), str(project)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel_file = next((tmp_path / "dist").glob("diffuseg-*.whl"))
    with zipfile.ZipFile(wheel_file) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    shipped = "diffuseg/pretrained/shipped/tiny/"
    assert {shipped + f for f in ("model.json", "model.safetensors", "MODEL.md",
                                  "config.json")} <= names
    assert "diffuseg/pretrained/shipped/README.md" in names  # models/README.md
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSEG_MODELS"}
    env.update(PYTHONPATH=str(tmp_path / "site"), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", FIND_AND_RUN], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    site = tmp_path / "site"
    assert found["package"] == str(site / "diffuseg" / "__init__.py")  # the installed copy
    assert found["model"] == str(site / "diffuseg" / "pretrained" / "shipped" / "tiny")
    assert "tiny" in found["models"] and found["shape"] == [2, 1, 1, 24, 24]

"""Models by name: a path that exists wins, then the shipped models, then DIFFUSEG_MODELS in
order; the first folder of a name wins; an unknown name is one line naming the closest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import diffuseg.pretrained.lookup as lookup
from diffuseg.errors import DataError
from diffuseg.pretrained.lookup import (
    available_models,
    checkout_models,
    find_model,
    missing_env_roots,
    resolve,
)


def fake_model(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"format": 1}))
    return folder


@pytest.fixture
def no_shipped(monkeypatch, tmp_path):
    """No shipped models: an empty package folder and no checkout folder."""
    monkeypatch.setattr(lookup, "SHIPPED", tmp_path / "shipped_empty")
    monkeypatch.setattr(lookup, "checkout_models", lambda: None)
    monkeypatch.delenv(lookup.ENV, raising=False)


def test_diffuseg_models_folders_in_order_first_name_wins(monkeypatch, tmp_path, no_shipped):
    a, b = fake_model(tmp_path / "a", "m"), fake_model(tmp_path / "b", "m")
    only_b = fake_model(tmp_path / "b", "other")
    (tmp_path / "b" / "not_a_model").mkdir()  # no model.json: not a model
    monkeypatch.setenv(lookup.ENV, os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert available_models() == {"m": a, "other": only_b}
    monkeypatch.setenv(lookup.ENV, os.pathsep.join([str(tmp_path / "b"), str(tmp_path / "a")]))
    assert find_model("m") == b


def test_shipped_models_come_before_diffuseg_models(monkeypatch, tmp_path, no_shipped):
    shipped = fake_model(tmp_path / "pkg", "m")
    fake_model(tmp_path / "env", "m")
    monkeypatch.setattr(lookup, "SHIPPED", tmp_path / "pkg")
    monkeypatch.setenv(lookup.ENV, str(tmp_path / "env"))
    assert resolve("m") == shipped


def test_a_path_that_exists_wins_over_a_name(monkeypatch, tmp_path, no_shipped):
    fake_model(tmp_path / "env", "m")
    monkeypatch.setenv(lookup.ENV, str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()  # a folder called like the model, in the working directory
    with pytest.raises(DataError, match="both a folder here .* and a model's name"):
        resolve("m")  # without config.json it is no run: which was meant is unclear
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve("m") == Path("m")  # a run folder
    assert resolve(tmp_path / "env" / "m") == tmp_path / "env" / "m"


def test_an_unknown_name_is_one_line_with_the_closest(monkeypatch, tmp_path, no_shipped):
    fake_model(tmp_path / "env", "lidc_nodules")
    fake_model(tmp_path / "env", "hippocampus")
    monkeypatch.setenv(lookup.ENV, str(tmp_path / "env"))
    with pytest.raises(DataError) as err:
        resolve("lidc_nodule")
    message = str(err.value)
    assert "\n" not in message and "config.json" in message
    assert "hippocampus, lidc_nodules" in message and "did you mean 'lidc_nodules'" in message
    with pytest.raises(DataError, match="model 'hippo' is unknown.*did you mean 'hippocampus'"):
        find_model("hippo")


def test_no_models_says_how_to_add_some(monkeypatch, tmp_path, no_shipped):
    monkeypatch.setenv(lookup.ENV, str(tmp_path / "nowhere"))
    assert missing_env_roots() == [tmp_path / "nowhere"]
    with pytest.raises(DataError, match="no models are installed.*DIFFUSEG_MODELS"):
        resolve("anything")


def test_a_source_checkout_reads_the_top_level_models_folder():
    root = Path(lookup.__file__).resolve().parents[3]
    assert (root / "pyproject.toml").is_file()  # the tests run from a checkout (PYTHONPATH=src)
    assert checkout_models() == root / "models"
    assert lookup.shipped_roots() == [lookup.SHIPPED, root / "models"]

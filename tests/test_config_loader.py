"""One config loader: dataset defaults, then the base file, then the user's file, then overrides."""

import json

import pytest

from diffuseg import config
from diffuseg.config import load_config
from diffuseg.errors import ConfigError
from diffuseg.training import start as api


def test_layers_in_order(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"train": {"max_steps": 5, "lr": 0.01}}))
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"train": {"lr": 0.02, "batch_size": 3}}))
    defaults = {"in_channels": 2, "train": {"max_steps": 1, "lr": 0.5, "batch_size": 1,
                                             "seed": 9}}
    c = load_config(mine, ["train.batch_size=4"], defaults=defaults, base=base)
    assert c.in_channels == 2 and c.train.seed == 9  # defaults kept where nobody overrides
    assert c.train.max_steps == 5  # base over defaults
    assert c.train.lr == 0.02  # the user's file over the base
    assert c.train.batch_size == 4  # overrides last


@pytest.mark.parametrize("text", ["null", "[1, 2]", "{not json", "\udcff"])
def test_bad_files_are_one_config_error(tmp_path, text):
    path = tmp_path / "c.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match="c.json"):
        load_config(path)


def test_api_build_config_is_the_same_loader(tmp_path, monkeypatch):
    calls = []
    real = config.load_config

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "load_config", spy)
    api.build_config(None, ["train.max_steps=3"], dataset=None)
    assert calls and calls[0][0][1] == ["train.max_steps=3"]


def test_predictor_reads_the_run_config_with_the_loader():
    import inspect

    from diffuseg.inference import predictor as inference

    assert inference.load_config is config.load_config
    assert "load_config(" in inspect.getsource(inference.Predictor.from_run)

import json

import pytest

from diffuseg.config import RunConfig, apply_overrides, from_dict, load_config, save_config, to_dict
from diffuseg.errors import ConfigError


def test_round_trip_through_json(tmp_path):
    config = load_config(overrides=["train.max_steps=7", "network.channels=[8,16,32]",
                                    "data.patch_size=[32,32]"])
    save_config(config, tmp_path / "config.json")
    again = load_config(tmp_path / "config.json")
    assert again == config
    assert again.network.channels == (8, 16, 32)
    assert again.train.max_steps == 7


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown config key 'train.max_step'.*"
                       "did you mean 'train.max_steps'"):
        from_dict(RunConfig, {"train": {"max_step": 3}})


def test_suggestions_name_the_full_dotted_path_and_wording():
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        from_dict(RunConfig, {"batch_size": 3})
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        from_dict(RunConfig, {"trian": {"batch_size": 3}})
    with pytest.raises(ConfigError, match="must be an integer"):
        from_dict(RunConfig, {"train": {"max_steps": "x"}})


def test_unknown_method_suggests_the_closest():
    from diffuseg.methods import build_method

    config = RunConfig()
    config.method.name = "dpm"
    with pytest.raises(ConfigError, match="did you mean 'ddpm'"):
        build_method(config)


@pytest.mark.parametrize("override, message", [
    ("sample.steps=0", r"sample.steps.=0 is out of range; valid: \[1, "),
    ("spatial_dims=4", "spatial_dims.=4 is out of range"),
    ("process.schedule=square", "not one of"),
    ("train.batch_size=2.5", "whole number"),
    ("data.patch_size=[30,30]", "divisible by 4"),
    ("num_classes=2", "use 1 for a binary mask"),
])
def test_bad_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_override_parses_json_and_strings():
    data = apply_overrides({}, ["train.device=cpu", "train.max_minutes=null", "train.lr=1e-3"])
    assert data == {"train": {"device": "cpu", "max_minutes": None, "lr": 1e-3}}


def test_config_file_not_json(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="c.json' is not valid JSON"):
        load_config(bad)


def test_defaults_are_valid_and_serialisable():
    data = to_dict(RunConfig().validate())
    assert json.loads(json.dumps(data)) == data

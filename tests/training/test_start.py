from diffuseg.config import merge
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.training.start import build_config, intensity_for


def test_intensity_follows_the_modality():
    assert intensity_for({"0": "CT"}) == "ct"
    assert intensity_for({"0": "T1", "1": "CT"}) == "zscore"
    assert intensity_for({"0": "phantom"}) == "zscore"


def test_dataset_fixes_dims_channels_classes_and_patch(tmp_path):
    data = write_phantom_dataset(tmp_path / "p", n_cases=3, size=40, n_raters=2)
    config = build_config(None, ["network.channels=[8,16]",
                                 "network.attention_levels=[false,false]"], dataset=data)
    assert (config.spatial_dims, config.in_channels, config.num_classes) == (2, 1, 1)
    assert config.data.patch_size == (32, 32)  # 40 rounded down to a multiple of 16


def test_merge_is_deep():
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}

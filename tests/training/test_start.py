import json

import numpy as np

from diffuseg.config import merge
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.data.transforms import normalize_intensity
from diffuseg.training.start import build_config, init_defaults, intensity_for


def test_intensity_follows_the_modality():
    assert intensity_for({"0": "CT"}) == {"intensity": "ct"}
    assert intensity_for({"0": "CT"}, ".nii.gz", np.full((1, 4, 4), -1000.0)) == {"intensity": "ct"}
    assert intensity_for({"0": "T1", "1": "CT"}) == {"intensity": "zscore"}
    assert intensity_for({"0": "phantom"}, ".png") == {"intensity": "zscore"}


def test_ct_in_png_files_is_display_values_not_hounsfield_units():
    """8-bit PNG CT (the LIDC slices release) spans [-1, 1] as HU-windowed CT does; 16-bit PNG
    of unknown offset is z-scored."""
    eight_bit = np.array([[[0.0, 128.0, 255.0]]])
    got = intensity_for({"0": "CT"}, ".png", eight_bit)
    assert got == {"intensity": "ct", "ct_window": [0.0, 255.0]}
    scaled = normalize_intensity(eight_bit, got["intensity"], tuple(got["ct_window"]))
    np.testing.assert_allclose(scaled, [[[-1.0, 1 / 255, 1.0]]], atol=1e-6)
    assert intensity_for({"0": "CT"}, ".png", np.array([[[0.0, 4095.0]]])) == {
        "intensity": "zscore"}


def test_dataset_fixes_dims_channels_classes_and_patch(tmp_path):
    data = write_phantom_dataset(tmp_path / "p", n_cases=3, size=40, n_raters=2)
    config = build_config(None, ["network.channels=[8,16]",
                                 "network.attention_levels=[false,false]"], dataset=data)
    assert (config.spatial_dims, config.in_channels, config.num_classes) == (2, 1, 1)
    assert config.data.patch_size == (32, 32)  # 40 rounded down to a multiple of 16


def test_merge_is_deep():
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_init_from_a_ct_model_keeps_its_hu_window(tmp_path):
    """``--init`` takes the model's architecture and, from a CT model, the window its weights
    learned: 8-bit PNG CT fine-tuned from an HU-windowed model is scaled as that model saw it."""
    model = tmp_path / "model"
    model.mkdir()
    config = {"method": {"name": "ldseg"}, "network": {"channels": [16, 32, 64]},
              "data": {"intensity": "ct", "ct_window": [-1000.0, 400.0]}}
    (model / "config.json").write_text(json.dumps(config))
    got = init_defaults(model)
    assert got["data"] == {"ct_window": [-1000.0, 400.0]} and got["method"]["name"] == "ldseg"
    config["data"] = {"intensity": "zscore", "ct_window": [-1000.0, 400.0]}
    (model / "config.json").write_text(json.dumps(config))
    assert "data" not in init_defaults(model)  # an MR model's window means nothing


def test_init_keeps_the_window_only_for_data_stored_as_the_models_was(tmp_path):
    """A model trained on PNG display values (its dataset.json says .png) gives its window to
    PNG data, not to HU NIfTI, where [0, 255] would clip everything below water; and the
    reverse. A model folder without dataset.json keeps the old behaviour (inherit)."""
    model = tmp_path / "model"
    model.mkdir()
    config = {"method": {"name": "ldseg"},
              "data": {"intensity": "ct", "ct_window": [0.0, 255.0]}}
    (model / "config.json").write_text(json.dumps(config))
    assert init_defaults(model, ".nii.gz")["data"] == {"ct_window": [0.0, 255.0]}  # unknown
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".png"}))
    assert init_defaults(model, ".png")["data"] == {"ct_window": [0.0, 255.0]}
    assert "data" not in init_defaults(model, ".nii.gz")
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    assert init_defaults(model, ".nrrd")["data"] == {"ct_window": [0.0, 255.0]}  # both HU
    assert "data" not in init_defaults(model, ".PNG")


def test_init_from_a_png_model_leaves_nifti_ct_its_hu_window(tmp_path):
    """Through build_config: the new dataset's own file ending decides (NIfTI CT keeps the HU
    default window when the model learned on PNG)."""
    import nibabel as nib

    data = tmp_path / "ct"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        image = rng.uniform(-1000, 400, (32, 32, 1)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), data / "imagesTr" / f"c{i}_0000.nii.gz")
        mask = np.zeros((32, 32, 1), np.uint8)
        mask[8:16, 8:16] = 1
        nib.save(nib.Nifti1Image(mask, np.eye(4)), data / "labelsTr" / f"c{i}.nii.gz")
    (data / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "nodule": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "method": {"name": "unet"}, "data": {"intensity": "ct", "ct_window": [0.0, 255.0]}}))
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".png"}))
    config = build_config(None, [], dataset=data, init=model)
    assert config.data.intensity == "ct" and tuple(config.data.ct_window) == (-1000.0, 400.0)
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    config = build_config(None, [], dataset=data, init=model)
    assert tuple(config.data.ct_window) == (0.0, 255.0)

"""Small habits from the newcomer trial: wording that points the right way, TensorBoard."""

import numpy as np
import pytest
from helpers import tiny

from diffuseg.data import Dataset
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import DataError
from diffuseg.inference.predictor import Predictor
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

TINY = tiny(T=20, max_steps=2)


def test_a_file_where_a_dataset_folder_is_expected_says_so(tmp_path):
    data = write_phantom_dataset(tmp_path / "p", n_cases=2, size=16, n_raters=1)
    with pytest.raises(DataError, match="is a file but a dataset folder"):
        Dataset.open(data / "dataset.json")


def test_tensorboard_logging_and_channel_hint(tmp_path):
    pytest.importorskip("tensorboard")
    data = write_phantom_dataset(tmp_path / "p", n_cases=4, size=16, n_raters=1)
    config = build_config(None, TINY + ["train.tensorboard=true"], dataset=data)
    run = train(config, data, tmp_path / "run", progress=False)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    predictor = Predictor.from_run(run)
    with pytest.raises(DataError, match="convert the image to one channel"):
        predictor.prepare(np.zeros((3, 16, 16), np.float32), "rgb.png")
    predictor.config.in_channels = 3
    with pytest.raises(DataError, match="give the 3 channel files"):
        predictor.prepare(np.zeros((1, 16, 16), np.float32), "gray.png")

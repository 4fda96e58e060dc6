"""Tiny runs trained for one step on the phantom, for tests of predict, DICOM outputs and the
service (accuracy is not the point: the outputs only need to be deterministic)."""

from __future__ import annotations

from pathlib import Path

from helpers import tiny

from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

TINY = tiny("sample.n_samples=2", "sample.steps=1")


def tiny_run(folder: Path, spatial_dims: int) -> Path:
    """A 1-channel run; in 3D it resamples to 4 x 4 x 5 mm so that a 260 x 320 x 25 MR series
    at 0.69 mm is segmented in a few seconds."""
    size = 24 if spatial_dims == 2 else 16
    data = write_phantom_dataset(folder / "data", n_cases=3, spatial_dims=spatial_dims,
                                 size=size, n_raters=1)
    extra = [] if spatial_dims == 2 else ["data.patch_size=[16,16,16]",
                                          "data.spacing=[4,4,5]"]
    config = build_config(None, TINY + extra, dataset=data)
    return train(config, data, folder / "run", progress=False)

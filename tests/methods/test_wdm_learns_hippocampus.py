"""MSD hippocampus (3D, labels anterior/posterior) is learned: after 400 optimiser steps of
``wdm`` the consensus Dice on held-out volumes is well above that of the same model untrained
(slow: a fixed number of steps, not minutes, so the outcome does not depend on the machine's
load)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import shared_data

from diffuseg.data import Dataset, make_splits, save_splits
from diffuseg.data.importers import import_msd
from diffuseg.data.transforms import normalize_intensity
from diffuseg.inference.predictor import Predictor
from diffuseg.methods import build_method
from diffuseg.training.loop import foreground_dice, train
from diffuseg.training.start import build_config

PRESET = ["network.channels=[16,32,64]", "network.attention_levels=[false,false,false]",
          "train.batch_size=4", "train.lr=0.001", "train.warmup_steps=20",
          "train.max_steps=400", "train.val_every=100000",
          "train.checkpoint_every=100000", "train.val_cases=1", "train.val_samples=1",
          "train.val_steps=2", "train.device=cpu", "train.precision=fp32",
          "data.patch_size=[32,32,32]", "method.name=wdm"]


def mean_dice(method, cases) -> float:
    """Foreground (either label) Dice of the 2-sample consensus against the expert label."""
    generator, dices = torch.Generator().manual_seed(0), []
    for data in cases:
        image = torch.from_numpy(normalize_intensity(data.image, "zscore"))[None]
        samples = method.segment(image, 2, steps=5, generator=generator)
        consensus = samples.mean(0)[0].argmax(0).numpy()
        dices.append(foreground_dice(consensus, data.raters[0]))
    return float(np.mean(dices))


@pytest.mark.slow
def test_hippocampus_is_learned(tmp_path):
    root = import_msd(shared_data("msd_hippocampus"), tmp_path / "hippo", limit_cases=60).root
    dataset = Dataset.open(root)
    splits = make_splits(dataset, 0)
    save_splits(root, splits)
    held_out = [dataset.case(c).load() for c in splits["test"][:6]]
    config = build_config(None, PRESET, dataset=root)
    assert config.spatial_dims == 3 and config.num_classes == 3
    torch.manual_seed(config.train.seed)
    d_untrained = mean_dice(build_method(config).eval(), held_out)
    run = train(config, root, tmp_path / "run", progress=False)
    d_trained = mean_dice(Predictor.from_run(run, device="cpu").method.eval(), held_out)
    assert d_trained > d_untrained + 0.3, (d_untrained, d_trained)

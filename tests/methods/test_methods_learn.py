"""BerDiff, HiDiff, MedSegDiff-V2, DDPM on signed distances and flow matching train through the
same ``train()`` API as every method, leave a run folder that ``Predictor.from_run``,
``predict_file`` and ``evaluation.evaluate`` use unchanged, and (slow) learn the 2D phantom when
trained with ``diffuseg train``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny

import diffuseg.methods.berdiff  # noqa: F401  (registers "berdiff")
import diffuseg.methods.hidiff  # noqa: F401  (registers "hidiff")
import diffuseg.methods.medsegdiff_v2  # noqa: F401  (registers "medsegdiff_v2")
from diffuseg.cli import main as cli_main
from diffuseg.core.consensus import majority
from diffuseg.data import Dataset
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.data.transforms import normalize_intensity
from diffuseg.evaluation.evaluate import evaluate
from diffuseg.inference.predictor import Predictor
from diffuseg.methods import build_method
from diffuseg.training.loop import foreground_dice, train
from diffuseg.training.start import build_config

METHODS = {
    "berdiff": ["method.name=berdiff"],  # the method chooses its process and sampler
    "hidiff": ["method.name=hidiff", "process.kind=bernoulli"],
    "medsegdiff_v2": ["method.name=medsegdiff_v2"],
    "ddpm_sdf": ["method.name=ddpm", "method.target=sdf"],
    "flow_matching": ["method.name=flow_matching"],  # x0 prediction, Euler (the defaults)
    "flow_matching_v_heun": ["method.name=flow_matching", "process.prediction=v",
                             "sample.sampler=heun"],
}
TINY = tiny("train.batch_size=2", T=20, max_steps=2)
SMALL = ["network.channels=[16,32]", "network.attention_levels=[false,false]",
         "train.batch_size=4", "train.max_steps=150", "train.lr=0.001", "train.warmup_steps=20",
         "train.val_every=1000", "train.ema_decay=0.99", "train.device=cpu", "process.T=100"]


def predict_and_evaluate(run: Path, data_dir: Path, case_ids: list[str], out: Path,
                         n_samples: int, steps: int) -> dict:
    """The user's path: load the run folder, predict image files, score them against raters."""
    predictor = Predictor.from_run(run)
    cases = {case.case_id: case for case in Dataset.open(data_dir).cases}
    for case_id in case_ids:
        predictor.predict_file(cases[case_id].image_paths[0], out / "pred", n_samples=n_samples,
                               steps=steps)
    return evaluate(out / "pred", data_dir, out / "eval", n_samples_list=(n_samples,),
                    report=False)


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "tiny", n_cases=4, size=16,
                                 n_raters=2, seed=1)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_run_folder_works_unchanged(name, tiny_phantom, tmp_path):
    config = build_config(None, TINY + METHODS[name], dataset=tiny_phantom)
    run = train(config, tiny_phantom, tmp_path / "run", progress=False)
    assert (run / "model.safetensors").is_file() and (run / "ema.safetensors").is_file()
    case_id = Dataset.open(tiny_phantom).cases[0].case_id
    summary = predict_and_evaluate(run, tiny_phantom, [case_id], tmp_path, n_samples=2, steps=2)
    assert summary["n_cases"] == 1 and summary["run"] == str(run)
    (entry,) = summary["per_case"]
    assert entry["n_samples"] == 2 and 0.0 <= entry["dice"] <= 1.0
    assert entry["ged_2"] is not None and np.isfinite(entry["ged_2"])


# ------------------------------------------------------------------------------------------
# learning (slow: about a minute per method on one shared core)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "phantom", n_cases=64,
                                 size=32, n_raters=3, seed=3)


def consensus_dice(method, cases) -> float:
    """Mean Dice of the 4-sample consensus against the raters' majority."""
    generator, dices = torch.Generator().manual_seed(0), []
    for data in cases:
        image = torch.from_numpy(normalize_intensity(data.image, "zscore"))[None]
        samples = method.segment(image, 4, steps=5, generator=generator)
        consensus = (samples.mean(0)[0, 0] > 0.5).numpy()
        dices.append(foreground_dice(consensus, majority(data.raters, 2)))
    return float(np.mean(dices))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_learns_the_phantom(name, phantom, tmp_path, monkeypatch):
    """Threshold from the phantom itself: midway between the Dice of the all-foreground mask and
    the raters' own agreement with their majority. Trained beats it; untrained does not."""
    dataset = Dataset.open(phantom)
    cases = [c.load() for c in dataset.cases[:12]]
    trivial = np.mean([foreground_dice(np.ones_like(c.raters[0]), majority(c.raters, 2))
                       for c in cases])
    agreement = np.mean([np.mean([foreground_dice(r, majority(c.raters, 2)) for r in c.raters])
                         for c in cases])
    threshold = (trivial + agreement) / 2
    config = build_config(None, SMALL + METHODS[name], dataset=phantom)
    torch.manual_seed(config.train.seed)
    untrained = build_method(config).eval()
    d_untrained = consensus_dice(untrained, cases)
    run = tmp_path / "run"  # trained from the CLI, as a user would
    overrides = [arg for item in SMALL + METHODS[name] for arg in ("--set", item)]
    monkeypatch.setattr(sys, "argv", ["diffuseg", "train", str(phantom), "-o", str(run),
                                      *overrides])
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    assert exit_info.value.code == 0
    ids = [c.case_id for c in dataset.cases[:12]]
    summary = predict_and_evaluate(run, phantom, ids, tmp_path, n_samples=4, steps=5)
    d_trained = summary["mean"]["dice"]["mean"]  # the same consensus Dice, scored by evaluate
    assert d_untrained < threshold < d_trained, (d_untrained, threshold, d_trained)

"""Training writes a self-describing run folder, resumes, and actually learns."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny

from diffuseg.core.consensus import majority
from diffuseg.data import Dataset, load_splits
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import DataError
from diffuseg.inference.predictor import Predictor
from diffuseg.methods import build_method
from diffuseg.training.loop import foreground_dice, train
from diffuseg.training.start import build_config

TINY = tiny("train.batch_size=4", "sample.steps=2", "sample.n_samples=2", attention=True,
            T=100, max_steps=None, val=2)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "phantom2d", n_cases=12,
                                 spatial_dims=2, size=32, n_raters=3, seed=1)


def tiny_config(dataset, *extra):
    return build_config(None, TINY + list(extra), dataset=dataset)


def test_run_folder_describes_itself(tmp_path, phantom):
    config = tiny_config(phantom, "train.max_steps=4", "train.val_every=2",
                         "train.checkpoint_every=2")
    run = train(config, phantom, tmp_path / "run", progress=False)
    for name in ("config.json", "dataset.json", "fingerprint.json", "model.safetensors",
                 "ema.safetensors", "training_log.txt", "metrics.jsonl", "progress.png",
                 "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors",
                 "ema_best.safetensors", "weights.json", "verdict.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_ged" in r] == [2, 4]
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.pkl"))


def test_existing_run_folder_is_not_overwritten(tmp_path, phantom):
    run = tmp_path / "run"
    run.mkdir()
    (run / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="already holds files"):
        train(tiny_config(phantom, "train.max_steps=1"), phantom, run, progress=False)
    assert (run / "mine.txt").read_text() == "keep"


def test_resume_continues_the_same_trajectory(tmp_path, phantom):
    straight = train(tiny_config(phantom, "train.max_steps=4", "train.checkpoint_every=2",
                                 "data.augment=false"), phantom, tmp_path / "a", progress=False)
    first = train(tiny_config(phantom, "train.max_steps=2", "train.checkpoint_every=2",
                              "data.augment=false"), phantom, tmp_path / "b", progress=False)
    config = json.loads((first / "config.json").read_text())
    config["train"]["max_steps"] = 4
    (first / "config.json").write_text(json.dumps(config))
    resumed = train(build_config(None, [], dataset=None, base=first / "config.json"), phantom,
                    first, resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text()
             .splitlines() if "loss" in line]
    assert steps[-1] == 4
    assert "resumed at step 2" in (resumed / "training_log.txt").read_text()
    assert (straight / "model.safetensors").is_file()


def test_same_seed_same_samples(tmp_path, phantom):
    run = train(tiny_config(phantom, "train.max_steps=1"), phantom, tmp_path / "r",
                progress=False)
    predictor = Predictor.from_run(run)
    image = Dataset.open(phantom).cases[0].load().image
    a = predictor.segment(image, n_samples=3, steps=2, seed=5).samples
    b = predictor.segment(image, n_samples=3, steps=2, seed=5).samples
    c = predictor.segment(image, n_samples=3, steps=2, seed=6).samples
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def consensus_dice(method, cases, generator_seed=0):
    dices = []
    generator = torch.Generator().manual_seed(generator_seed)
    for data in cases:
        from diffuseg.data.transforms import normalize_intensity

        image = torch.from_numpy(normalize_intensity(data.image, "zscore"))[None]
        samples = method.segment(image, 4, steps=5, generator=generator)
        consensus = (samples.mean(0)[0, 0] > 0.5).numpy()
        dices.append(foreground_dice(consensus, majority(data.raters, 2)))
    return float(np.mean(dices))


def test_a_small_model_learns_the_phantom(tmp_path):
    """Thresholds come from the phantom itself: a trained model must beat the midpoint between
    the trivial all-foreground mask and the raters' own agreement; an untrained one must not."""
    data_dir = write_phantom_dataset(tmp_path / "ph", n_cases=64, spatial_dims=2, size=32,
                                     n_raters=3, seed=3)
    dataset = Dataset.open(data_dir)
    held_out = load_splits(data_dir, dataset)
    cases = [dataset.case(i).load() for i in held_out["val"] + held_out["test"]]
    trivial = np.mean([foreground_dice(np.ones_like(c.raters[0]), majority(c.raters, 2))
                       for c in cases])
    agreement = np.mean([np.mean([foreground_dice(r, majority(c.raters, 2)) for r in c.raters])
                         for c in cases])
    threshold = (trivial + agreement) / 2
    config = build_config(None, [
        "network.channels=[16,32,64]", "network.attention_levels=[false,false,true]",
        "train.batch_size=8", "train.max_steps=150", "train.max_minutes=2", "train.lr=0.001",
        "train.val_every=1000", "train.ema_decay=0.99", "train.device=cpu"], dataset=data_dir)
    untrained = build_method(config).eval()
    run = train(config, data_dir, tmp_path / "run", progress=False)
    trained = Predictor.from_run(run).method
    d_untrained, d_trained = consensus_dice(untrained, cases), consensus_dice(trained, cases)
    assert d_untrained < threshold < d_trained, (d_untrained, threshold, d_trained)


def test_images_without_foreground_make_batches_quietly():
    """MONAI's foreground-weighted crop warns for every image with an empty mask; such images
    are normal (most LIDC slices of a rater), so the loader keeps that warning out of the log."""
    import warnings

    from diffuseg.data.loader import Example, batches

    config = build_config(None, ["data.patch_size=[16,16]", "train.batch_size=2"], dataset=None)
    empty = Example("empty", np.zeros((1, 16, 16), np.float32), np.zeros((2, 16, 16), np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = next(batches([empty], config, seed=0))
    assert batch["mask"].shape == (2, 1, 16, 16) and int(batch["mask"].sum()) == 0

"""Preprocessing writes each case once (and again only when the dataset or the plan changes);
the streaming loader yields exactly the in-memory loader's batches for the same seed, with any
number of worker processes; foreground oversampling does what its share says."""

from __future__ import annotations

import itertools
import json
import os
import threading

import numpy as np
import pytest
import torch

from diffuseg.core.atomic import folder_lock
from diffuseg.data import Dataset
from diffuseg.data.loader import batches, load_examples
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.data.preprocess import default_folder, preprocess, smallest_exact_dtype
from diffuseg.data.streaming import stream_batches, training_batches
from diffuseg.training.loop import train
from diffuseg.training.start import build_config


@pytest.fixture(scope="module")
def phantom3d(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "ph3", 6, spatial_dims=3,
                                 size=20, n_raters=3, seed=2)


def config_for(data, *extra):
    return build_config(None, ["spatial_dims=3", "data.patch_size=[16,16,8]",
                               "train.batch_size=3", *extra], dataset=data)


def test_preprocess_writes_compact_arrays_once(phantom3d):
    config = config_for(phantom3d)
    folder = preprocess(phantom3d, config, progress=False)
    assert folder == default_folder(phantom3d, config)
    index = json.loads((folder / "index.json").read_text())
    assert [e["case_id"] for e in index["cases"]] == [c.case_id for c in
                                                      Dataset.open(phantom3d).cases]
    case = Dataset.open(phantom3d).cases[0]
    image = np.load(folder / f"{case.case_id}_image.npy", mmap_mode="r")
    raters = np.load(folder / f"{case.case_id}_raters.npy", mmap_mode="r")
    assert image.dtype == np.float32 and raters.dtype == np.uint8 and raters.shape[0] == 3
    np.testing.assert_array_equal(raters, case.load().raters)
    stamp = (folder / "index.json").stat().st_mtime_ns
    assert preprocess(phantom3d, config, progress=False) == folder  # current: not rewritten
    assert (folder / "index.json").stat().st_mtime_ns == stamp
    other = preprocess(phantom3d, config_for(phantom3d, "data.intensity=none"), progress=False)
    assert other != folder  # another plan, another folder; integers stored as uint8
    assert np.load(other / f"{case.case_id}_image.npy").dtype == np.uint8


def test_a_changed_dataset_is_processed_again(tmp_path):
    data = write_phantom_dataset(tmp_path / "ph", 2, spatial_dims=3, size=12, n_raters=2)
    config = config_for(data, "data.patch_size=[8,8,8]")
    folder = preprocess(data, config, progress=False)
    stamp = (folder / "index.json").stat().st_mtime_ns
    stale = folder.with_name(f"{folder.name}.tmp-999999999")  # a killed run's leftovers
    stale.mkdir()
    label = sorted((data / "labelsTr").iterdir())[0]
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    assert preprocess(data, config, progress=False) == folder
    assert (folder / "index.json").stat().st_mtime_ns != stamp
    assert not stale.exists() and sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_a_second_preprocess_waits_for_the_first_and_reads_its_folder(tmp_path, capsys):
    """Two trainings of a sweep started together on one dataset: the second used to write its
    own copy and replace the first one's folder under its running stream, which then failed.
    Now it waits for the lock on DATASET/preprocessed, says whom it waits for, and returns the
    folder the first one wrote without writing it again."""
    data = write_phantom_dataset(tmp_path / "ph", 2, spatial_dims=3, size=12, n_raters=2)
    config = config_for(data, "data.patch_size=[8,8,8]")
    folder = default_folder(data, config)
    result: dict[str, object] = {}
    waiting = threading.Event()
    with folder_lock(folder.parent, "preprocessed folder"):  # "the first training"
        second = threading.Thread(target=lambda: result.update(
            folder=preprocess(data, config, progress=False)))
        second.start()
        for _ in range(600):  # it must block and say so, not write
            if "waiting for pid" in capsys.readouterr().err:
                waiting.set()
                break
            second.join(0.05)
        assert waiting.is_set() and second.is_alive()
        first = preprocess(data, config, progress=False)  # re-entrant: the holder writes
        stamp = (first / "index.json").stat().st_mtime_ns
    second.join(60)
    assert not second.is_alive() and result["folder"] == first == folder
    assert (folder / "index.json").stat().st_mtime_ns == stamp  # read, not written again
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_smallest_exact_dtype():
    assert smallest_exact_dtype(np.array([0.0, 255.0])) == np.uint8
    assert smallest_exact_dtype(np.array([-3.0, 1000.0])) == np.int16
    assert smallest_exact_dtype(np.array([0.5])) == np.float32
    assert smallest_exact_dtype(np.array([1e6])) == np.float32


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("mode", ["sample", "all"])
def test_streaming_yields_the_in_memory_batches(phantom3d, workers, mode):
    config = config_for(phantom3d, f"data.num_workers={workers}", f"data.rater_mode={mode}")
    ids = [c.case_id for c in Dataset.open(phantom3d).cases][:5]
    folder = preprocess(phantom3d, config, progress=False)
    memory = batches(load_examples(Dataset.open(phantom3d), ids, config), config, seed=11)
    streamed = stream_batches(folder, ids, config, seed=11)
    for a, b in itertools.islice(zip(memory, streamed, strict=False), 4):
        assert a.keys() == b.keys() and a["image"].shape == (3, 1, 16, 16, 8)
        for key in a:
            assert a[key].dtype == b[key].dtype
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_foreground_fraction_one_centres_every_patch_on_foreground(phantom3d):
    config = config_for(phantom3d, "data.foreground_fraction=1.0", "data.augment=false",
                        "data.patch_size=[8,8,8]", "train.batch_size=8")
    ids = [c.case_id for c in Dataset.open(phantom3d).cases]
    examples = load_examples(Dataset.open(phantom3d), ids, config)
    assert all(ex.raters[2].any() for ex in examples)  # every rater marks something here
    batch = next(batches(examples, config, seed=0))
    assert all(int(m.sum()) > 0 for m in batch["mask"])  # each centred on its rater's voxel
    none = config_for(phantom3d, "data.foreground_fraction=0.0", "data.augment=false",
                      "data.patch_size=[8,8,8]", "train.batch_size=64")
    fg_share = float((next(batches(examples, none, seed=0))["mask"].flatten(1).amax(1) > 0)
                     .float().mean())
    assert fg_share < 1.0  # uniform patches miss the lesion now and then


def test_train_streams_when_asked(phantom3d, tmp_path):
    config = config_for(phantom3d, "data.stream=true", "data.num_workers=1",
                        "network.channels=[8,16]", "network.attention_levels=[false,false]",
                        "network.norm_groups=4", "train.max_steps=2", "train.device=cpu",
                        "process.T=20", "train.val_cases=1", "train.val_samples=1",
                        "train.val_steps=1")
    run = train(config, phantom3d, tmp_path / "run", progress=False)
    log = (run / "training_log.txt").read_text()
    assert "training data: streaming" in log and "finished at step 2" in log
    _, line = training_batches(Dataset.open(phantom3d), ["phantom_0000"],
                               config_for(phantom3d), seed=0, progress=False)
    assert line == "1 cases in memory"  # small: the default (data.stream unset) keeps memory


def test_cli_preprocess(phantom3d, tmp_path, monkeypatch, capsys):
    import sys

    from diffuseg.cli import main

    out = tmp_path / "pre"
    monkeypatch.setattr(sys, "argv", ["diffuseg", "preprocess", str(phantom3d), "--out", str(out),
                                      "--set", "data.intensity=minmax"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    assert f"preprocessed: {out}" in capsys.readouterr().out
    assert json.loads((out / "index.json").read_text())["plan"]["intensity"] == "minmax"


def test_a_streamed_run_resumes_bit_identical_to_an_in_memory_run(phantom3d, tmp_path,
                                                                   monkeypatch):
    """Streamed training reads the in-memory run's items (patches.item_seed), and a streamed run
    that dies at step 3 resumes its stream at the checkpoint's step 2, ending bit for bit where
    the uninterrupted in-memory run ends."""
    from safetensors.torch import load_file

    from diffuseg.data.streaming import StepStream

    common = ["network.channels=[8,16]", "network.attention_levels=[false,false]",
              "network.norm_groups=4", "train.max_steps=4", "train.device=cpu",
              "train.precision=fp32", "process.T=20", "train.val_cases=1",
              "train.val_samples=1", "train.val_steps=1", "train.checkpoint_every=2",
              "train.warmup_steps=1", "data.num_workers=1"]
    memory = train(config_for(phantom3d, "data.stream=false", *common), phantom3d,
                   tmp_path / "memory", progress=False)
    real = StepStream.take

    def take(self, step):
        if step == 3:
            raise RuntimeError("killed at step 3")
        return real(self, step)

    monkeypatch.setattr(StepStream, "take", take)
    streamed = tmp_path / "streamed"
    with pytest.raises(RuntimeError, match="killed at step 3"):
        train(config_for(phantom3d, "data.stream=true", *common), phantom3d, streamed,
              progress=False)
    monkeypatch.undo()
    train(config_for(phantom3d, "data.stream=true", *common), phantom3d, streamed, resume=True,
          progress=False)
    log = (streamed / "training_log.txt").read_text()
    assert "resumed at step 2" in log and "training data: streaming" in log
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(memory / name)), load_file(str(streamed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

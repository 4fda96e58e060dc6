"""docs/architecture.md states the batch shapes that data.loader.collate returns; keep them true."""

import torch

from diffuseg.data import Dataset
from diffuseg.data.loader import batches, load_examples
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.training.start import build_config


def test_batch_shapes_and_dtypes(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph", n_cases=4, size=16, n_raters=3)
    dataset = Dataset.open(root)
    ids = [c.case_id for c in dataset.cases]
    for mode, has_raters in (("sample", False), ("majority", False), ("all", True)):
        config = build_config(None, ["data.patch_size=[16,16]", "train.batch_size=2",
                                     f"data.rater_mode={mode}"], dataset=root)
        batch = next(batches(load_examples(dataset, ids, config), config, seed=0))
        assert batch["image"].shape == (2, 1, 16, 16) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape == (2, 1, 16, 16) and batch["mask"].dtype == torch.int64
        assert ("raters" in batch) == has_raters
        if has_raters:
            assert batch["raters"].shape == (2, 3, 16, 16)
            assert batch["raters"].dtype == torch.int64


def test_every_rater_puts_each_image_once_per_rater():
    """rater_mode=all as the loss sees it: rows b*R + r hold image b and rater r's mask."""
    from diffuseg.data.loader import every_rater

    image = torch.arange(2, dtype=torch.float32).reshape(2, 1, 1, 1).expand(2, 1, 2, 2)
    raters = torch.tensor([[0, 1, 2], [3, 4, 5]]).reshape(2, 3, 1, 1).expand(2, 3, 2, 2)
    got = every_rater({"image": image, "mask": raters[:, :1], "raters": raters})
    assert set(got) == {"image", "mask"}
    assert got["image"].shape == (6, 1, 2, 2) and got["mask"].shape == (6, 1, 2, 2)
    assert got["image"][:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert got["mask"][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_a_training_step_with_all_raters_trains_on_every_rater(tmp_path, monkeypatch):
    """The loss of a rater_mode=all step sees batch_size x R rows, each image's R masks."""
    from helpers import tiny

    from diffuseg.methods.baselines import DeterministicUNet
    from diffuseg.training.loop import train

    root = write_phantom_dataset(tmp_path / "ph", n_cases=6, size=16, n_raters=3)
    seen = []
    original = DeterministicUNet.loss

    def spy(self, batch, **kw):
        seen.append({k: v.clone() for k, v in batch.items()})
        return original(self, batch, **kw)

    monkeypatch.setattr(DeterministicUNet, "loss", spy)
    config = build_config(None, tiny("method.name=unet", "data.patch_size=[16,16]",
                                     "train.batch_size=2", "data.rater_mode=all",
                                     "train.precision=fp32", max_steps=1), dataset=root)
    train(config, root, tmp_path / "run", progress=False)
    (batch,) = seen
    assert "raters" not in batch and batch["image"].shape[0] == batch["mask"].shape[0] == 6
    for b in range(2):
        rows = batch["image"][3 * b : 3 * b + 3]
        assert (rows == rows[:1]).all()  # one image, three times
    assert len({tuple(m.flatten().tolist()) for m in batch["mask"]}) > 2  # raters' masks differ

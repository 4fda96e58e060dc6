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

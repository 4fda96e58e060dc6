"""Training batches from a dataset folder, held in memory.

Each example picks one rater's mask (``rater_mode="sample"``, the convention of the Probabilistic
U-Net and CIMD), the majority mask (``"majority"``), or keeps all raters (``"all"``: ``raters`` is
in every batch, and ``mask`` is a random rater's). All raters go through the same spatial
transforms as the image.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffuseg.config import RunConfig
from diffuseg.consensus import majority  # noqa: F401 (diffuseg.data.loader.majority)
from diffuseg.data.resample import resample_case
from diffuseg.data.transforms import normalize_intensity, training_transforms
from diffuseg.errors import DataError


@dataclass
class Example:
    case_id: str
    image: np.ndarray  # [C, *sp] float32, normalised
    raters: np.ndarray  # [R, *sp] int64 labels


def load_examples(dataset, case_ids: list[str], config: RunConfig) -> list[Example]:
    """Load and normalise the named cases of an opened ``Dataset``."""
    by_id = {case.case_id: case for case in dataset.cases}
    missing = [c for c in case_ids if c not in by_id]
    if missing:
        raise DataError(f"splits.json names cases that are not in the dataset: {missing[:5]}; "
                        "fix splits.json or delete it to regenerate")
    from diffuseg.progress import track

    examples = []
    for case_id in track(case_ids, "loading", unit="cases"):
        data = by_id[case_id].load()
        image, raters = data.image, data.raters
        if config.data.spacing is not None and config.spatial_dims == 3:
            image, raters, _ = resample_case(image, raters, data.geometry, config.data.spacing)
        image = normalize_intensity(image, config.data.intensity, config.data.ct_window)
        examples.append(Example(case_id, image, np.asarray(raters, dtype=np.int64)))
    return examples


def choose_mask(example: Example, mode: str, num_labels: int, rng: np.random.Generator
                ) -> np.ndarray:
    if mode == "majority":
        return majority(example.raters, num_labels)
    return example.raters[rng.integers(len(example.raters))]


def batches(examples: list[Example], config: RunConfig, seed: int,
            synthetic: list[Example] | None = None) -> Iterator[dict]:
    """An endless stream of augmented training batches as torch tensors. With ``synthetic``
    examples, each item comes from them with probability ``data.synthetic_ratio``
    (diffuseg.synthesis.mixing)."""
    if not examples:
        raise DataError("the training split is empty; check splits.json or the dataset folder")
    rng = np.random.default_rng(seed)
    transform = training_transforms(config.data, config.spatial_dims, seed)
    num_labels = max(2, config.num_classes)
    while True:
        items = []
        for index in rng.integers(len(examples), size=config.train.batch_size):
            ex = examples[index]
            if synthetic and rng.random() < config.data.synthetic_ratio:
                ex = synthetic[rng.integers(len(synthetic))]
            mask = choose_mask(ex, config.data.rater_mode, num_labels, rng)
            item = {
                "image": ex.image,
                "mask": mask[None].astype(np.float32),
                "raters": ex.raters.astype(np.float32),
                "foreground": (ex.raters.max(0) > 0)[None].astype(np.float32),
            }
            with warnings.catch_warnings():  # MONAI warns on every image with no foreground
                warnings.filterwarnings("ignore", message="Num foregrounds 0")  # (e.g. LIDC)
                out = transform(item)
            items.append(out[0] if isinstance(out, list) else out)
        yield collate(items, keep_raters=config.data.rater_mode == "all")


def collate(items: list[dict], keep_raters: bool) -> dict[str, torch.Tensor]:
    def stack(key: str) -> torch.Tensor:
        return torch.stack([torch.as_tensor(np.asarray(item[key])) for item in items])

    batch = {"image": stack("image").float(), "mask": stack("mask").round().long()}
    if keep_raters:
        batch["raters"] = stack("raters").round().long()  # [B, R, *sp] labels
    return batch

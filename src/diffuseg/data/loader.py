"""Training batches from a dataset folder, held in memory.

Each example picks one rater's mask (``rater_mode="sample"``, the convention of the Probabilistic
U-Net and CIMD), the majority mask (``"majority"``), or keeps all raters (``"all"``: ``raters`` is
in every batch, and ``mask`` is a random rater's). All raters go through the same spatial
transforms as the image.
"""

from __future__ import annotations

import itertools
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


def item_seed(seed: int, step: int, index: int) -> int:
    """The seed of item ``index`` of the global batch at ``step``: a batch depends on (seed, step)
    alone, so a resumed run, or one split over several processes, draws the same batches."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])


def batch_at(examples: list[Example], config: RunConfig, seed: int, step: int,
             items: range, synthetic: list[Example] | None = None) -> dict[str, torch.Tensor]:
    """Items ``items`` (indices into the global batch of ``train.batch_size``) of step ``step``'s
    batch: each item picks a random example (with replacement), a rater and an augmentation from
    its own seed. With ``synthetic`` examples, an item comes from them with probability
    ``data.synthetic_ratio`` (diffuseg.synthesis.mixing)."""
    if not examples:
        raise DataError("the training split is empty; check splits.json or the dataset folder")
    transform = training_transforms(config.data, config.spatial_dims, 0)
    num_labels = max(2, config.num_classes)
    out = []
    for index in items:
        s = item_seed(seed, step, index)
        rng = np.random.default_rng(s)
        transform.set_random_state(seed=s)
        ex = examples[int(rng.integers(len(examples)))]
        if synthetic and rng.random() < config.data.synthetic_ratio:
            ex = synthetic[int(rng.integers(len(synthetic)))]
        mask = choose_mask(ex, config.data.rater_mode, num_labels, rng)
        item = {
            "image": ex.image,
            "mask": mask[None].astype(np.float32),
            "raters": ex.raters.astype(np.float32),
            "foreground": (ex.raters.max(0) > 0)[None].astype(np.float32),
        }
        with warnings.catch_warnings():  # MONAI warns on every image with no foreground
            warnings.filterwarnings("ignore", message="Num foregrounds 0")  # (e.g. LIDC)
            result = transform(item)
        out.append(result[0] if isinstance(result, list) else result)
    return collate(out, keep_raters=config.data.rater_mode == "all")


def batches(examples: list[Example], config: RunConfig, seed: int, *, start: int = 0,
            items: range | None = None, synthetic: list[Example] | None = None
            ) -> Iterator[dict]:
    """An endless stream of augmented training batches as torch tensors, from step ``start``
    (``items``: this process's share of each global batch; default all of it)."""
    items = range(config.train.batch_size) if items is None else items
    for step in itertools.count(start):
        yield batch_at(examples, config, seed, step, items, synthetic)


def collate(items: list[dict], keep_raters: bool) -> dict[str, torch.Tensor]:
    def stack(key: str) -> torch.Tensor:
        return torch.stack([torch.as_tensor(np.asarray(item[key])) for item in items])

    batch = {"image": stack("image").float(), "mask": stack("mask").round().long()}
    if keep_raters:
        batch["raters"] = stack("raters").round().long()  # [B, R, *sp] labels
    return batch

"""Training batches from a dataset folder, held in memory (data/streaming.py reads the same
examples from memory-mapped preprocessed files instead).

Each example picks one rater's mask (``rater_mode="sample"``, the convention of the Probabilistic
U-Net and CIMD), the majority mask (``"majority"``), or keeps all raters (``"all"``: ``raters`` is
in every batch, and ``mask`` is a random rater's; the training step hands the loss
``every_rater(batch)``, each image once per rater). All raters go through the same spatial
transforms as the image. Patches come from data/patches.py (foreground oversampling); item i of
step t depends on (train.seed, t, i) alone (``patches.item_seed``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffuseg.config import RunConfig
from diffuseg.data.patches import (
    PatchSource,
    augmentation,
    draw_items,
    foreground_locations,
)
from diffuseg.data.resample import resample_case
from diffuseg.data.transforms import normalize_intensity
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
    from diffuseg.core.progress import track

    return [Example(case_id, *prepare_case(by_id[case_id], config))
            for case_id in track(case_ids, "loading", unit="cases")]


def prepare_case(case, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """One case as training sees it: resampled to ``data.spacing`` (3D), intensity normalised;
    ``image [C, *sp]`` float32 and ``raters [R, *sp]`` int64."""
    data = case.load()
    image, raters = data.image, data.raters
    if config.data.spacing is not None and config.spatial_dims == 3:
        image, raters, _ = resample_case(image, raters, data.geometry, config.data.spacing)
    image = normalize_intensity(image, config.data.intensity, config.data.ct_window)
    return image, np.asarray(raters, dtype=np.int64)


class InMemorySource:
    """A ``PatchSource`` over loaded examples (foreground locations computed once per case)."""

    def __init__(self, examples: list[Example]):
        self.examples = examples
        self._locations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(self.examples[index].image.shape[1:])

    def n_raters(self, index: int) -> int:
        return len(self.examples[index].raters)

    def locations(self, index: int) -> np.ndarray:
        if index not in self._locations:
            self._locations[index] = foreground_locations(self.examples[index].raters)
        return self._locations[index]

    def crop(self, index: int, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        ex = self.examples[index]
        return ex.image[(slice(None), *box)], ex.raters[(slice(None), *box)]


def as_source(examples: list[Example] | PatchSource | None) -> PatchSource | None:
    """Loaded examples as a ``PatchSource`` (a source, e.g. a memory-mapped one, as it is)."""
    return InMemorySource(examples) if isinstance(examples, list) else examples


def batch_at(examples: list[Example] | PatchSource, config: RunConfig, seed: int, step: int,
             items: range, synthetic: list[Example] | PatchSource | None = None
             ) -> dict[str, torch.Tensor]:
    """Items ``items`` (indices into the global batch of ``train.batch_size``) of step ``step``'s
    batch: each item picks a random case (with replacement), a rater, a patch (foreground
    oversampled) and an augmentation from its own seed ``item_seed(seed, step, index)``. With
    ``synthetic`` examples, an item comes from them with probability ``data.synthetic_ratio``
    (diffuseg.synthesis.mixing). ``examples`` may be loaded examples or any ``PatchSource``."""
    if not len(examples):
        raise DataError("the training split is empty; check splits.json or the dataset folder")
    out = draw_items(as_source(examples), config, seed, step, items, augmentation(config),
                     as_source(synthetic) if synthetic else None)
    return collate(out, keep_raters=config.data.rater_mode == "all")


def batches(examples: list[Example] | PatchSource, config: RunConfig, seed: int, *,
            start: int = 0, items: range | None = None,
            synthetic: list[Example] | PatchSource | None = None) -> Iterator[dict]:
    """An endless stream of augmented training batches as torch tensors, from step ``start``
    (``items``: this process's share of each global batch; default all of it)."""
    items = range(config.train.batch_size) if items is None else items
    source, extra = as_source(examples), as_source(synthetic) if synthetic else None
    for step in itertools.count(start):
        yield batch_at(source, config, seed, step, items, extra)


def every_rater(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``data.rater_mode=all`` as a method's loss sees it: each image once per rater, so one
    step holds every expert's mask of the same crop (the ambiguity side by side, rather than one
    rater drawn per image). ``raters [B, R, *sp]`` -> rows b*R + r: ``image`` repeated, ``mask``
    rater r's; ``raters`` is consumed. A step then holds train.batch_size x R examples: for the
    compute of one rater per image, divide batch_size by R."""
    raters = batch["raters"]
    b, r = raters.shape[:2]
    out = {k: v.repeat_interleave(r, dim=0) for k, v in batch.items()
           if k not in ("raters", "mask")}
    out["mask"] = raters.reshape(b * r, 1, *raters.shape[2:])
    return out


def collate(items: list[dict], keep_raters: bool) -> dict[str, torch.Tensor]:
    def stack(key: str) -> torch.Tensor:
        return torch.stack([torch.as_tensor(np.asarray(item[key])) for item in items])

    batch = {"image": stack("image").float(), "mask": stack("mask").round().long()}
    if keep_raters:
        batch["raters"] = stack("raters").round().long()  # [B, R, *sp] labels
    return batch

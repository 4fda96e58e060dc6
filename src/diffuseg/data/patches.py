"""Random training patches with foreground oversampling, shared by the in-memory and the streaming
loader so that both yield the same examples for the same seed.

Item i of step t's global batch of a run with seed s draws everything from its own
``np.random.default_rng(item_seed(s, t, i))`` (so it depends on (s, t, i) alone: not on how many
steps ran in this process, how many ranks share the batch, or how many worker processes produce
it; a resumed run draws bit-identical items), in this order:

1. a case, uniformly (with a synthetic source, ``data.synthetic``: a synthetic case instead with
   probability ``data.synthetic_ratio``, diffuseg.synthesis.mixing);
2. a rater r, uniformly (the mask of the example when ``data.rater_mode`` is "sample" or "all");
3. with probability ``data.foreground_fraction`` (nnU-Net's oversampling, 0.33 by default) the
   patch is centred on a random foreground voxel of rater r (from ``foreground_locations``),
   clipped to lie inside the volume; otherwise (or when rater r marked nothing) its start is
   uniform over all positions where it fits;
4. a seed for the augmentation (flips, a small affine, intensity jitter: MONAI transforms).

An axis shorter than the patch is zero-padded symmetrically (the image after normalisation, so 0
is the mean for z-score). A ``PatchSource`` provides cases by index: the volume's shape, its
foreground locations and a crop; only the crop is read, so a memory-mapped source never holds a
whole volume.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import numpy as np
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from diffuseg.config import RunConfig
from diffuseg.core.consensus import majority

LOCATIONS_PER_RATER = 10_000  # foreground voxels kept per rater (nnU-Net keeps 10,000 per class)


class PatchSource(Protocol):
    def __len__(self) -> int: ...

    def shape(self, index: int) -> tuple[int, ...]:
        """Spatial shape of case ``index``."""

    def locations(self, index: int) -> np.ndarray:
        """``foreground_locations`` of case ``index``: int32 ``[N, 1 + d]`` (rater, voxel)."""

    def n_raters(self, index: int) -> int: ...

    def crop(self, index: int, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``image [C, *box]`` float32 and ``raters [R, *box]`` of case ``index``."""


def foreground_locations(raters: np.ndarray, limit: int = LOCATIONS_PER_RATER) -> np.ndarray:
    """Rows (r, *voxel) for the foreground voxels of every rater of ``raters [R, *sp]``; a rater
    with more than ``limit`` keeps a fixed random subset (``default_rng(0)``), so the in-memory and
    the preprocessed loader hold the same list."""
    rows = []
    for r, mask in enumerate(raters):
        idx = np.argwhere(np.asarray(mask) > 0)
        if len(idx) > limit:
            idx = idx[np.sort(np.random.default_rng(0).choice(len(idx), limit, replace=False))]
        rows.append(np.concatenate([np.full((len(idx), 1), r), idx], axis=1))
    d = raters.ndim - 1
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 1 + d), np.int32)


def choose_box(shape: tuple[int, ...], patch: tuple[int, ...], rng: np.random.Generator,
               centre: np.ndarray | None) -> tuple[slice, ...]:
    """The crop, clipped to the volume (axes shorter than the patch are taken whole)."""
    box = []
    for d, (s, p) in enumerate(zip(shape, patch, strict=True)):
        if s <= p:
            box.append(slice(0, s))
            continue
        start = (int(np.clip(centre[d] - p // 2, 0, s - p)) if centre is not None
                 else int(rng.integers(0, s - p + 1)))
        box.append(slice(start, start + p))
    return tuple(box)


def pad_to(array: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """Zero-pad ``[C, *sp]`` symmetrically up to ``patch`` on each short axis."""
    pads = [(0, 0)] + [((p - s) // 2, p - s - (p - s) // 2) if s < p else (0, 0)
                       for s, p in zip(array.shape[1:], patch, strict=True)]
    return np.pad(array, pads) if any(a or b for a, b in pads) else array


def augmentation(config: RunConfig) -> Compose | None:
    """Flips, a small rotation/scaling (nearest neighbour for masks) and intensity jitter."""
    if not config.data.augment:
        return None
    dims, keys = config.spatial_dims, ["image", "mask", "raters"]
    steps = [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(dims)]
    steps += [
        RandAffined(keys=keys, prob=0.3, rotate_range=[0.26] * (1 if dims == 2 else 3),
                    scale_range=[0.1] * dims, mode=["bilinear", "nearest", "nearest"],
                    padding_mode="zeros"),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
        RandGaussianNoised(keys="image", std=0.05, prob=0.2),
    ]
    return Compose(steps)


def majority_labels(raters: np.ndarray, num_labels: int) -> np.ndarray:
    """Per-voxel most frequent label over raters ``[R, *sp]`` (ties: the higher label, so that a
    2-of-4 split counts as foreground): ``consensus.majority``."""
    return np.asarray(majority(raters, num_labels), dtype=np.int64)


def item_seed(seed: int, step: int, index: int) -> int:
    """The seed of item ``index`` of the global batch at ``step``: a batch depends on (seed, step)
    alone, so a resumed run, or one split over several processes, draws the same batches."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])


def draw_example(source: PatchSource, config: RunConfig, seed: int, step: int, index: int,
                 transform: Compose | None, synthetic: PatchSource | None = None
                 ) -> dict[str, np.ndarray]:
    """Item ``index`` of step ``step``'s batch of the run with ``seed`` (module docstring)."""
    rng = np.random.default_rng(item_seed(seed, step, index))
    case = int(rng.integers(len(source)))
    if synthetic is not None and len(synthetic) and rng.random() < config.data.synthetic_ratio:
        source = synthetic
        case = int(rng.integers(len(source)))
    rater = int(rng.integers(source.n_raters(case)))
    centre = None
    if rng.random() < config.data.foreground_fraction:
        locations = source.locations(case)
        mine = locations[locations[:, 0] == rater]
        if len(mine):
            centre = mine[int(rng.integers(len(mine))), 1:]
    patch = tuple(config.data.patch_size)
    box = choose_box(source.shape(case), patch, rng, centre)
    image, raters = source.crop(case, box)
    image, raters = pad_to(image.astype(np.float32), patch), pad_to(raters, patch)
    if config.data.rater_mode == "majority":
        mask = majority_labels(raters, max(2, config.num_classes))
    else:
        mask = raters[rater]
    item = {"image": image, "mask": mask[None].astype(np.float32),
            "raters": raters.astype(np.float32)}
    if transform is not None:
        transform.set_random_state(seed=int(rng.integers(2**31)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            item = transform(item)
    return {k: np.asarray(v) for k, v in item.items()}


def draw_items(source: PatchSource, config: RunConfig, seed: int, step: int, items: range,
               transform: Compose | None, synthetic: PatchSource | None = None
               ) -> list[dict[str, np.ndarray]]:
    """Items ``items`` (indices into the global batch of ``train.batch_size``) of step ``step``."""
    return [draw_example(source, config, seed, step, i, transform, synthetic) for i in items]

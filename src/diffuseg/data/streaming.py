"""Training batches streamed from a preprocessed folder (data/preprocess.py) through a torch
DataLoader with worker processes.

Every crop opens the case's ``.npy`` with ``np.load(mmap_mode="r")``, copies the patch and closes
the map again, so a process holds only the pages of the patches in flight: resident memory is
bounded by batch size, patch size and worker count, not by the dataset. The examples are
``data/patches.draw_batch``'s, the same as the in-memory loader's for the same seed; worker w of W
makes batches w, w + W, ..., which the DataLoader returns in order, so the stream does not depend
on the number of workers either.

``training_batches`` is what ``train`` calls: it streams when ``data.stream`` is true, or when it
is unset (None) and the in-memory loader would need more than ``STREAM_THRESHOLD_BYTES`` (1 GB);
otherwise it loads the cases into memory.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from diffuseg.config import RunConfig
from diffuseg.data.dataset import Dataset
from diffuseg.data.loader import batches, collate, load_examples
from diffuseg.data.patches import augmentation, draw_batch
from diffuseg.data.preprocess import STREAM_THRESHOLD_BYTES, preprocess, training_bytes
from diffuseg.errors import DataError


class MmapSource:
    """A ``PatchSource`` over the named cases of a preprocessed folder."""

    def __init__(self, folder: str | Path, case_ids: list[str]):
        self.folder = Path(folder)
        index = json.loads((self.folder / "index.json").read_text())
        entries = {e["case_id"]: e for e in index["cases"]}
        missing = [c for c in case_ids if c not in entries]
        if missing:
            raise DataError(f"'{self.folder}' lacks the cases {missing[:5]}; run "
                            "'diffuseg preprocess' again")
        self.entries = [entries[c] for c in case_ids]

    def __len__(self) -> int:
        return len(self.entries)

    def _path(self, index: int, kind: str) -> Path:
        return self.folder / f"{self.entries[index]['case_id']}_{kind}.npy"

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(self.entries[index]["shape"])

    def n_raters(self, index: int) -> int:
        return int(self.entries[index]["raters"])

    def locations(self, index: int) -> np.ndarray:
        return np.load(self._path(index, "fg"))

    def crop(self, index: int, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        return self._read(index, "image", box), self._read(index, "raters", box)

    def _read(self, index: int, kind: str, box: tuple[slice, ...]) -> np.ndarray:
        mapped = np.load(self._path(index, kind), mmap_mode="r")
        patch = np.array(mapped[(slice(None), *box)])
        del mapped  # unmapped: its pages leave this process's resident set
        return patch


class PatchStream(IterableDataset):
    """Endless collated batches; worker w of W makes batches w, w + W, w + 2W, ..."""

    def __init__(self, source: MmapSource, config: RunConfig, seed: int):
        self.source, self.config, self.seed = source, config, seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        transform = augmentation(self.config)
        keep = self.config.data.rater_mode == "all"
        for index in itertools.count(worker, workers):
            items = draw_batch(self.source, self.config, self.seed, index, transform)
            yield collate(items, keep_raters=keep)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def stream_batches(folder: str | Path, case_ids: list[str], config: RunConfig, seed: int
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """The same batches as ``loader.batches`` (same seed), read from ``folder``."""
    if not case_ids:
        raise DataError("the training split is empty; check splits.json or the dataset folder")
    workers = config.data.num_workers
    loader = DataLoader(PatchStream(MmapSource(folder, case_ids), config, seed), batch_size=None,
                        num_workers=workers, worker_init_fn=_one_thread if workers else None,
                        prefetch_factor=2 if workers else None, persistent_workers=workers > 0)
    return iter(loader)


def should_stream(dataset: Dataset, case_ids: list[str], config: RunConfig) -> bool:
    if config.data.stream is not None:
        return config.data.stream
    return training_bytes(dataset, case_ids) > STREAM_THRESHOLD_BYTES


def training_batches(dataset: Dataset, case_ids: list[str], config: RunConfig, seed: int, *,
                     progress: bool = True) -> tuple[Iterator[dict[str, torch.Tensor]], str]:
    """The batch source ``train`` uses and a line for the log saying which it is."""
    if should_stream(dataset, case_ids, config):
        folder = preprocess(dataset.root, config, progress=progress)
        return (stream_batches(folder, case_ids, config, seed),
                f"streaming {len(case_ids)} cases from {folder}")
    examples = load_examples(dataset, case_ids, config)
    return batches(examples, config, seed), f"{len(examples)} cases in memory"

"""Training batches streamed from a preprocessed folder (data/preprocess.py) through a torch
DataLoader with worker processes.

Every crop opens the case's ``.npy`` with ``np.load(mmap_mode="r")``, copies the patch and closes
the map again, so a process holds only the pages of the patches in flight: resident memory is
bounded by batch size, patch size and worker count, not by the dataset. The items are
``data/patches.draw_items``'s, the same as the in-memory loader's (``loader.batch_at``) for the same
seed: item i of step t depends on (seed, t, i) alone. Worker w of W makes steps start + w,
start + w + W, ..., which the DataLoader returns in order, so the stream does not depend on the
number of workers; a resumed run starts the stream at its checkpoint's step (``start``) and each
torchrun rank asks only for its own parts of the global batch (``parts``).

``train`` streams (``StepStream``) when ``data.stream`` is true, or when it is unset (None) and the
in-memory loader would need more than ``STREAM_THRESHOLD_BYTES`` (1 GB); otherwise it loads the
cases into memory (``should_stream``; ``training_batches`` is the same choice as one iterator).
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
from diffuseg.data.loader import Example, InMemorySource, batches, collate, load_examples
from diffuseg.data.patches import augmentation, draw_items
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
        return self._load(index, "fg")

    def crop(self, index: int, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        return self._read(index, "image", box), self._read(index, "raters", box)

    def _read(self, index: int, kind: str, box: tuple[slice, ...]) -> np.ndarray:
        mapped = self._load(index, kind, mmap_mode="r")
        patch = np.array(mapped[(slice(None), *box)])
        del mapped  # unmapped: its pages leave this process's resident set
        return patch

    def _load(self, index: int, kind: str, **kwargs) -> np.ndarray:
        path = self._path(index, kind)
        try:
            return np.load(path, **kwargs)
        except (OSError, ValueError) as err:  # removed, truncated or rewritten under this run
            raise DataError(f"'{path}' cannot be read ({type(err).__name__}: {err}); another "
                            "process removed or rewrote this preprocessed folder while the run "
                            "read it: run 'diffuseg preprocess' and train again with --resume"
                            ) from None


class PatchStream(IterableDataset):
    """Endless steps from ``start``: each a pair (step, [a collated batch per range of ``parts``]);
    worker w of W makes steps start + w, start + w + W, ..."""

    def __init__(self, source: MmapSource, config: RunConfig, seed: int, start: int,
                 parts: list[range], synthetic: list[Example] | None = None):
        self.source, self.config, self.seed = source, config, seed
        self.start, self.parts, self.synthetic = start, parts, synthetic

    def __iter__(self) -> Iterator[tuple[int, list[dict[str, torch.Tensor]]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        transform = augmentation(self.config)
        synthetic = InMemorySource(self.synthetic) if self.synthetic else None
        keep = self.config.data.rater_mode == "all"
        for step in itertools.count(self.start + worker, workers):
            yield step, [collate(draw_items(self.source, self.config, self.seed, step, items,
                                            transform, synthetic), keep_raters=keep)
                         for items in self.parts]


def _worker_start(_: int) -> None:
    """A DataLoader worker: one torch thread, and deaf to SIGINT/SIGTERM. A scheduler (SLURM's
    preemption, ``pkill -f``, Ctrl-C on a terminal) signals every process of the job; a worker
    that died of it made the main process fail mid-step with a traceback and no checkpoint. The
    main process alone handles the signal (``training.budget.StopSignals``: finish the step, save,
    exit 130) and then shuts its workers down; a worker whose parent is gone exits by itself."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


class StepStream:
    """This process's parts of each step's batch, read from ``folder`` by ``data.num_workers``
    DataLoader workers; ``take(step)`` returns them for the steps in order from ``start``."""

    def __init__(self, folder: str | Path, case_ids: list[str], config: RunConfig, seed: int, *,
                 start: int = 0, parts: list[range] | None = None,
                 synthetic: list[Example] | None = None):
        if not case_ids:
            raise DataError("the training split is empty; check splits.json or the dataset "
                            "folder")
        self.source = MmapSource(folder, case_ids)
        parts = [range(config.train.batch_size)] if parts is None else parts
        workers = config.data.num_workers
        stream = PatchStream(self.source, config, seed, start, parts, synthetic)
        self._it = iter(DataLoader(stream, batch_size=None, num_workers=workers,
                                   worker_init_fn=_worker_start if workers else None,
                                   prefetch_factor=2 if workers else None,
                                   persistent_workers=workers > 0))

    def n_raters(self, index: int) -> int:
        return self.source.n_raters(index)

    def close(self) -> None:
        """Stop the workers now: the DataLoader's iterator, dropped, sends each its stop
        sentinel and joins it. Not left to garbage collection: a frame kept alive after the run
        (matplotlib's savefig in ``plot_progress`` keeps one) held the stream until the
        interpreter's exit, where multiprocessing SIGTERMs daemon workers, which ignore it
        (``_worker_start``), and then joins them: a finished ``--minutes`` run never exited."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)  # torch's multi-process iterator
        if shutdown is not None:  # now, even where a traceback still holds the iterator
            shutdown()
        del it

    def take(self, step: int) -> list[dict[str, torch.Tensor]]:
        if self._it is None:
            raise RuntimeError("take() on a closed StepStream")
        try:
            made, parts = next(self._it)
        except DataError as err:  # a worker's: torch re-raises it with the worker's traceback
            raise DataError(_worker_message(err)) from None
        if made != step:  # the loop asks for every step in order; anything else is a bug
            raise RuntimeError(f"streamed step {made} where step {step} was expected")
        return parts


def _worker_message(err: DataError) -> str:
    """The one-line message of a DataError raised in a DataLoader worker: torch re-raises it in
    this process as ``DataError("Caught DataError in DataLoader worker process N. Original
    Traceback ...: <message>")``; the message is what follows the last ``DataError: ``."""
    text = str(err)
    marker = "DataError: "
    return text.rsplit(marker, 1)[1].strip() if marker in text else text


def stream_batches(folder: str | Path, case_ids: list[str], config: RunConfig, seed: int, *,
                   start: int = 0, items: range | None = None,
                   synthetic: list[Example] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """The same batches as ``loader.batches`` (same seed, start and items), read from
    ``folder``."""
    parts = [range(config.train.batch_size) if items is None else items]
    stream = StepStream(folder, case_ids, config, seed, start=start, parts=parts,
                        synthetic=synthetic)
    try:
        for step in itertools.count(start):
            yield stream.take(step)[0]
    finally:  # the generator closed or collected: its workers stop with it
        stream.close()


def should_stream(dataset: Dataset, case_ids: list[str], config: RunConfig) -> bool:
    if config.data.stream is not None:
        return config.data.stream
    return training_bytes(dataset, case_ids, stop_above=STREAM_THRESHOLD_BYTES) > \
        STREAM_THRESHOLD_BYTES


def training_batches(dataset: Dataset, case_ids: list[str], config: RunConfig, seed: int, *,
                     start: int = 0, progress: bool = True
                     ) -> tuple[Iterator[dict[str, torch.Tensor]], str]:
    """The batches ``train`` would use from step ``start`` (one process) and a line for the log
    saying which source they come from."""
    if should_stream(dataset, case_ids, config):
        folder = preprocess(dataset.root, config, progress=progress, dataset=dataset)
        return (stream_batches(folder, case_ids, config, seed, start=start),
                f"streaming {len(case_ids)} cases from {folder}")
    examples = load_examples(dataset, case_ids, config)
    return batches(examples, config, seed, start=start), f"{len(examples)} cases in memory"

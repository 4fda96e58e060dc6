"""What every importer shares: the summary it returns, groups and splits written after the
cases, label sets from names, and PNG bytes decoded into arrays (for archives read in memory)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from diffuseg.data.dataset import DatasetInfo
from diffuseg.data.splits import save_splits
from diffuseg.errors import DataError
from diffuseg.io.limits import check_png_complete, check_raster_size

DEFAULT_LABELS = ("background", "foreground")


@dataclass
class ImportSummary:
    """What an importer wrote: the dataset folder, counts, and notes worth a look."""

    root: Path
    n_cases: int
    n_groups: int
    split_sizes: dict[str, int] | None = None  # cases per fold when splits.json was written
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.root}: {self.n_cases} cases in {self.n_groups} groups"]
        if self.split_sizes is not None:
            lines[0] += ", splits.json " + ", ".join(f"{k} {v}" for k, v in
                                                    self.split_sizes.items())
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def finish(root: Path, groups: dict[str, str], splits: dict[str, list[str]] | None = None,
           notes: Sequence[str] = ()) -> ImportSummary:
    """Add ``groups`` (case -> patient) to the dataset.json that ``write_dataset`` wrote (groups
    equal to the case id are left out, as absent cases are their own group) and write
    ``splits.json`` when ``splits`` is given."""
    path = root / "dataset.json"
    info = DatasetInfo.load(path)
    info.groups = {case: group for case, group in sorted(groups.items()) if case != group}
    path.write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    sizes = None
    if splits is not None:
        save_splits(root, {fold: sorted(ids) for fold, ids in splits.items()})
        sizes = {fold: len(ids) for fold, ids in splits.items()}
    n_groups = len(set(groups.values())) if groups else info.num_training
    return ImportSummary(root, info.num_training, n_groups, sizes, list(notes))


def label_map(names: Sequence[str]) -> dict[str, int]:
    """``("background", "lesion")`` -> ``{"background": 0, "lesion": 1}``."""
    names = [str(name).strip() for name in names]
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise DataError(f"label names {names} must be at least two distinct names, background "
                        "first (e.g. --labels background,lesion)")
    return {name: value for value, name in enumerate(names)}


def decode_png(data: bytes, where: str) -> np.ndarray:
    """A grey PNG (or any image PIL reads) held in memory as a 2D array; colour is refused."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_raster_size(where, image)  # from the header, before decoding
            image.load()
            check_png_complete(where, data)  # PIL zero-fills rows missing from the data
            if image.mode in ("1", "P"):
                image = image.convert("L")
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"'{where}' is not a readable image ({err}); check the archive or "
                        "download it again") from None
    if array.ndim != 2:
        raise DataError(f"'{where}' has shape {array.shape}; expected a grey 2D slice")
    return array


def binary_mask(array: np.ndarray, where: str) -> np.ndarray:
    """A 0/255 (or 0/1) mask as int64 0/1; other values are an error naming the file."""
    values = set(np.unique(array).tolist())
    if values <= {0, 1}:
        return array.astype(np.int64)
    if values <= {0, 255}:
        return (array == 255).astype(np.int64)
    raise DataError(f"mask '{where}' has values {sorted(values)[:10]}; expected 0/255 (or 0/1) "
                    "for a binary mask")

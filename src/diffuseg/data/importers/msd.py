"""``diffuseg convert msd``: a Medical Segmentation Decathlon task folder (``dataset.json``,
``imagesTr/``, ``labelsTr/``) into diffuseg's format.

MSD stores a multi-modal case as one 4D NIfTI ``[X, Y, Z, C]``; it is split into one file per
channel (``{case}_0000.nii.gz``, ``_0001``, ...) in the order of ``modality``. MSD's labels map
value -> name and become nnU-Net's name -> value. Headers and affines are kept (the image's
geometry is written for the image and its mask, which must share its grid). ``imagesTs`` (no
labels) is not converted. Cases are read and written one at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diffuseg.core.paths import check_separate
from diffuseg.data.dataset import DatasetInfo, write_dataset
from diffuseg.data.importers.common import ImportSummary, finish
from diffuseg.errors import DataError
from diffuseg.io import Geometry, read_image, read_mask

_CONVERTED_KEYS = ("modality", "channel_names", "labels", "training", "test", "numTraining",
                   "numTest", "file_ending", "name")


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"'{path}' does not exist; pass an MSD task folder (dataset.json, "
                        "imagesTr/, labelsTr/)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"'{path}' is not valid JSON ({err}); fix the syntax") from None
    if not isinstance(data, dict):
        raise DataError(f"'{path}' must hold a JSON object")
    return data


def msd_info(data: dict[str, Any], where: str) -> DatasetInfo:
    """MSD's dataset.json -> DatasetInfo (3D NIfTI, one rater; numTraining set when writing)."""
    modality = data.get("modality", data.get("channel_names"))
    labels = data.get("labels")
    if not isinstance(modality, dict) or not isinstance(labels, dict):
        raise DataError(f"'{where}' needs 'modality' and 'labels' objects like MSD's "
                        "{\"0\": \"MRI\"} and {\"0\": \"background\", \"1\": \"tumour\"}")
    try:
        by_value = {str(name): int(value) for value, name in labels.items()}
    except (TypeError, ValueError):
        raise DataError(f"'{where}': labels {labels} must map values to names as MSD does; "
                        "region lists are not supported") from None
    extra = {k: v for k, v in data.items() if k not in _CONVERTED_KEYS}
    return DatasetInfo.from_dict({
        "channel_names": {str(k): str(v) for k, v in modality.items()}, "labels": by_value,
        "numTraining": 0, "file_ending": ".nii.gz", "raters": 1, "spatial_dims": 3,
        "name": str(data.get("name", "")), **extra}, where)


def msd_pairs(src: Path, data: dict[str, Any]) -> list[tuple[str, Path, Path]]:
    """(case id, image, label) from ``training``, else every ``imagesTr/*.nii.gz``."""
    training = data.get("training")
    if isinstance(training, list) and training:
        pairs = []
        for item in training:
            if not isinstance(item, dict) or not {"image", "label"} <= set(item):
                raise DataError(f"'{src / 'dataset.json'}': training entry {item!r} needs "
                                "'image' and 'label'")
            image = src / str(item["image"])
            pairs.append((_case_id(image), image, src / str(item["label"])))
        return pairs
    images = sorted(p for p in (src / "imagesTr").glob("*.nii*") if not p.name.startswith("."))
    return [(_case_id(p), p, src / "labelsTr" / p.name) for p in images]


def _case_id(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]


def msd_cases(pairs: list[tuple[str, Path, Path]], info: DatasetInfo
              ) -> Iterator[tuple[str, np.ndarray, np.ndarray, Geometry]]:
    for case_id, image_path, label_path in pairs:
        image, geometry = read_image(image_path)
        if geometry.spatial_dims != 3 or image.shape[0] != info.n_channels:
            raise DataError(f"'{image_path}' has shape {image.shape} (channels first) but "
                            f"dataset.json lists {info.n_channels} modalities of a 3D volume")
        mask, mask_geometry = read_mask(label_path, labels=info.label_values)
        if not mask_geometry.same_grid(geometry):
            raise DataError(f"'{label_path}' {mask_geometry.shape} is not on the grid of "
                            f"'{image_path}' {geometry.shape}; resample the label onto the image")
        yield case_id, image, mask[None], geometry


def import_msd(src: str | Path, dst: str | Path, *, limit_cases: int | None = None,
               overwrite: bool = False) -> ImportSummary:
    """Convert the MSD task at ``src``; ``limit_cases`` keeps the first N (quick runs)."""
    src, dst = Path(src), Path(dst)
    check_separate(src, dst, "convert msd")  # never write into the input
    if limit_cases is not None and limit_cases < 1:
        raise DataError(f"--limit-cases {limit_cases} must be at least 1")
    data = _load_json(src / "dataset.json")
    info = msd_info(data, str(src / "dataset.json"))
    pairs = msd_pairs(src, data)[:limit_cases]
    if not pairs:
        raise DataError(f"'{src}' lists no training cases; pass an MSD task folder")
    write_dataset(dst, msd_cases(pairs, info), info, overwrite=overwrite, total=len(pairs))
    notes = [] if limit_cases is None else [f"first {len(pairs)} cases only (--limit-cases)"]
    return finish(dst, {}, None, notes)

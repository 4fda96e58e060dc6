"""The dataset folder: nnU-Net v2's raw layout extended with several raters per case.

::

    root/
      dataset.json                 channel_names, labels, numTraining, file_ending, raters, ...
      imagesTr/{case}_{XXXX}.ext   one file per channel, XXXX = 0000, 0001, ...
      labelsTr/{case}.ext          one rater   (raters == 1)
      labelsTr/{case}_r{k}.ext     rater k = 0..R-1 (raters == R > 1)
      imagesTs/{case}_{XXXX}.ext   optional, unlabelled (labelsTs/ with the same naming if any)
      splits.json                  optional {"train": [...], "val": [...], "test": [...]}

Full description: docs/dataset_format.md. Splits are drawn by group (patient), so that no patient
is in two folds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from diffuseg.core.atomic import writing
from diffuseg.core.json_files import read_json
from diffuseg.core.validation import show
from diffuseg.errors import DataError
from diffuseg.io import NIFTI_ENDINGS, Geometry, read_image, read_mask, write_image, write_mask

DATASET_ENDINGS = (".png", ".tif", ".tiff", ".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
MAX_RATERS = 100  # masks per case (LIDC has 4, QUBIQ up to 7)
MAX_CASES = 10**6
MAX_CHANNELS = 64
MAX_LABELS = 1000
_KNOWN_KEYS = ("channel_names", "labels", "numTraining", "file_ending", "raters", "spatial_dims",
               "groups", "name")


@dataclass
class DatasetInfo:
    """The parsed ``dataset.json``; unknown keys are kept in ``extra`` and written back."""

    channel_names: dict[str, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str
    raters: int = 1
    spatial_dims: int = 2
    groups: dict[str, str] = field(default_factory=dict)
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels.values()))

    @classmethod
    def load(cls, path: str | Path) -> DatasetInfo:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"'{path}' does not exist; every dataset folder needs a dataset.json "
                            "(see docs/dataset_format.md)")
        data = read_json(path, "dataset file", DataError, mapping=False)
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "dataset.json") -> DatasetInfo:
        if not isinstance(data, dict):
            raise DataError(f"'{where}' must hold a JSON object, got {type(data).__name__}")
        missing = [k for k in ("channel_names", "labels", "numTraining", "file_ending")
                   if k not in data]
        if missing:
            raise DataError(f"'{where}' lacks {missing}; see docs/dataset_format.md for an example")
        ending = data["file_ending"]
        if ending not in DATASET_ENDINGS:
            raise DataError(f"'{where}': file_ending {ending!r} is not one of {DATASET_ENDINGS} "
                            "(JPEG would blur mask labels)")
        spatial_default = 3 if ending in NIFTI_ENDINGS else 2
        info = cls(
            channel_names=_channel_names(data["channel_names"], where),
            labels=_labels(data["labels"], where),
            num_training=_integer(data, "numTraining", where, 0, None, MAX_CASES),
            file_ending=ending,
            raters=_integer(data, "raters", where, 1, 1, MAX_RATERS),
            spatial_dims=_integer(data, "spatial_dims", where, 2, spatial_default, 3),
            groups=_groups(data.get("groups", {}), where),
            name=str(data.get("name", "")),
            extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
        )
        if info.spatial_dims not in (2, 3):
            raise DataError(f"'{where}': spatial_dims={info.spatial_dims} must be 2 or 3")
        return info

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name} if self.name else {}
        data.update(channel_names=self.channel_names, labels=self.labels,
                    numTraining=self.num_training, file_ending=self.file_ending,
                    raters=self.raters, spatial_dims=self.spatial_dims)
        if self.groups:
            data["groups"] = self.groups
        return {**data, **self.extra}


def _integer(data: dict, key: str, where: str, low: int, default: int | None,
             high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DataError(f"'{where}': {key}={show(value)} must be an integer in {low}..{high}; "
                        "write it as a JSON number")
    return value


def _channel_names(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_CHANNELS:
        raise DataError(f"'{where}': channel_names must be an object like {{\"0\": \"CT\"}} "
                        f"with 1..{MAX_CHANNELS} channels")
    keys = sorted(value, key=lambda k: int(k) if k.isascii() and k.isdigit() else -1)
    if keys != [str(i) for i in range(len(keys))]:
        raise DataError(f"'{where}': channel_names keys {show(keys)} must be \"0\", \"1\", ... "
                        "in order")
    return {k: str(value[k]) for k in keys}


def _labels(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        raise DataError(f"'{where}': labels must map names to integers, e.g. "
                        "{\"background\": 0, \"lesion\": 1} (region lists are not supported)")
    if len(value) > MAX_LABELS:
        raise DataError(f"'{where}': {len(value)} labels; at most {MAX_LABELS} are supported")
    if sorted(value.values()) != list(range(len(value))):
        raise DataError(f"'{where}': label values {sorted(value.values())} must be 0..K-1 with "
                        "background 0; renumber the labels")
    return dict(value)


def _groups(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, (str, int)) for v in value.values()):
        raise DataError(f"'{where}': groups must map case ids to patient ids, e.g. "
                        "{\"case_001\": \"patient_07\"}")
    return {str(k): str(v) for k, v in value.items()}


# ---------------------------------------------------------------------------------------------
# cases


@dataclass
class CaseData:
    case_id: str
    image: np.ndarray  # [C, *spatial] float32
    raters: np.ndarray  # [R, *spatial] int64 labels (R = 0 for unlabelled cases)
    geometry: Geometry


@dataclass(frozen=True)
class Case:
    case_id: str
    image_paths: tuple[Path, ...]  # one per channel file
    label_paths: tuple[Path, ...]  # one per rater; empty when unlabelled
    group: str  # patient id; splits never divide a group
    labels: tuple[int, ...] = (0, 1)
    spatial_dims: int = 2
    n_channels: int = 1

    def load(self) -> CaseData:
        """Read all channels and raters; refuses channel counts or shapes that disagree."""
        parts = [_fit_dims(*read_image(p), self.spatial_dims, p) for p in self.image_paths]
        geometry = parts[0][1]
        for path, (array, _) in zip(self.image_paths, parts, strict=True):
            self._same_grid(path, array.shape[1:], geometry)
        image = np.concatenate([array for array, _ in parts])
        if image.shape[0] != self.n_channels:
            raise DataError(f"case '{self.case_id}' has {image.shape[0]} image channels but "
                            f"channel_names lists {self.n_channels}; fix dataset.json or the files")
        raters = []
        for path in self.label_paths:
            mask, mask_geometry = read_mask(path, labels=self.labels)
            mask = _fit_dims(mask[None], mask_geometry, self.spatial_dims, path)[0][0]
            self._same_grid(path, mask.shape, geometry)
            raters.append(mask)
        stacked = np.stack(raters) if raters else np.zeros((0, *geometry.shape), np.int64)
        return CaseData(self.case_id, image, stacked, geometry)

    def _same_grid(self, path: Path, shape: tuple[int, ...], geometry: Geometry) -> None:
        if tuple(shape) != geometry.shape:
            raise DataError(f"'{path}' has shape {tuple(shape)} but '{self.image_paths[0]}' has "
                            f"{geometry.shape}; the files of a case must share one grid")


def _fit_dims(array: np.ndarray, geometry: Geometry, spatial_dims: int,
              path: Path) -> tuple[np.ndarray, Geometry]:
    """Drop a trailing singleton axis of a 3D file in a 2D dataset; refuse other mismatches."""
    if geometry.spatial_dims == spatial_dims:
        return array, geometry
    if spatial_dims == 2 and geometry.spatial_dims == 3 and geometry.shape[2] == 1:
        flat = replace(geometry, shape=geometry.shape[:2], spacing=geometry.spacing[:2])
        return array[..., 0], flat
    raise DataError(f"'{path}' is {geometry.spatial_dims}D {geometry.shape} but dataset.json "
                    f"says spatial_dims={spatial_dims}; fix spatial_dims or the file")


@dataclass
class ScanResult:
    cases: list[Case]
    errors: list[str]
    warnings: list[str]
    found: list[str] = field(default_factory=list)  # every case id seen, errors included


def scan_cases(root: Path, info: DatasetInfo, images: str = "imagesTr",
               labels: str = "labelsTr", labels_required: bool = True) -> ScanResult:
    """List the cases of ``root/images`` with their files, collecting (not raising) problems.
    Without ``labels_required`` (imagesTs) a case whose masks are not all present is unlabelled."""
    result = ScanResult([], [], [])
    label_folder = root / labels
    if labels_required and not label_folder.is_dir():
        result.errors.append(f"'{root}' has no {labels}/ folder; add the masks there")
        return result
    expected_labels: set[str] = set()
    channels = _channel_files(root / images, info.file_ending, result)
    result.found = sorted(channels)
    label_files = {name for name, is_file in _listing(label_folder) if is_file}
    for case_id, files in channels.items():
        label_paths = _label_paths(label_folder, case_id, info)
        expected_labels.update(p.name for p in label_paths)
        rgb_in_one = info.file_ending not in NIFTI_ENDINGS and info.n_channels == 3 and set(
            files) == {0}
        if set(files) != set(range(info.n_channels)) and not rgb_in_one:
            result.errors.append(f"case '{case_id}' has channel files {sorted(files)} but "
                                 f"channel_names lists {info.n_channels}; add or rename the files")
            continue
        missing = [p for p in label_paths if p.name not in label_files]
        if missing and labels_required:
            result.errors.append(f"case '{case_id}' has no mask '{missing[0]}' (raters: "
                                 f"{info.raters}); add it or remove the case's images")
            continue
        result.cases.append(Case(case_id, tuple(files[i] for i in sorted(files)),
                                 () if missing else label_paths,
                                 info.groups.get(case_id, case_id), info.label_values,
                                 info.spatial_dims, info.n_channels))
    stray = sorted(name for name, _ in _listing(label_folder)
                   if name not in expected_labels and not name.startswith("."))
    result.warnings += [f"'{label_folder / name}' matches no case and rater; ignored"
                        for name in stray]
    return result


def _listing(folder: Path) -> list[tuple[str, bool]]:
    """(name, is a file) of each entry of ``folder`` (none when it is not a folder), from one
    ``os.scandir``: no stat per file, which matters at 60,000 files (docs/performance.md)."""
    try:
        with os.scandir(folder) as entries:
            return [(entry.name, entry.is_file()) for entry in entries]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _channel_files(folder: Path, ending: str, result: ScanResult) -> dict[str, dict[int, Path]]:
    channels: dict[str, dict[int, Path]] = {}
    for name, is_file in sorted(_listing(folder)):
        if name.startswith(".") or not is_file:
            continue
        match = _CHANNEL_FILE.match(name[: -len(ending)]) if name.endswith(ending) else None
        if match is None:
            result.warnings.append(f"'{folder / name}' is not named {{case}}_{{XXXX}}{ending}; "
                                   "ignored")
            continue
        channels.setdefault(match["case"], {})[int(match["channel"])] = folder / name
    return channels


def _label_paths(folder: Path, case_id: str, info: DatasetInfo) -> tuple[Path, ...]:
    if info.raters == 1:
        return (folder / f"{case_id}{info.file_ending}",)
    return tuple(folder / f"{case_id}_r{k}{info.file_ending}" for k in range(info.raters))


@dataclass
class Dataset:
    root: Path
    info: DatasetInfo
    cases: list[Case]  # imagesTr, each with all raters' masks
    test_cases: list[Case] = field(default_factory=list)  # imagesTs (masks from labelsTs if any)

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        """List the cases; raises DataError on the first problem that stops loading."""
        root = Path(root)
        if root.is_file():
            raise DataError(f"'{root}' is a file but a dataset folder (holding dataset.json and "
                            "imagesTr/) is expected; give the folder")
        if not root.is_dir():
            raise DataError(f"dataset folder '{root}' does not exist; check the path")
        info = DatasetInfo.load(root / "dataset.json")
        if not (root / "imagesTr").is_dir():
            raise DataError(f"'{root}' has no imagesTr/ folder; see docs/dataset_format.md")
        train = scan_cases(root, info)
        if train.errors:
            more = f" (and {len(train.errors) - 1} more)" if len(train.errors) > 1 else ""
            raise DataError(f"{train.errors[0]}{more}; run `diffuseg check {root}` for all")
        if len(train.cases) != info.num_training:
            raise DataError(f"'{root}/dataset.json' says numTraining={info.num_training} but "
                            f"imagesTr holds {len(train.cases)} cases; fix numTraining")
        test = scan_cases(root, info, "imagesTs", "labelsTs", labels_required=False).cases \
            if (root / "imagesTs").is_dir() else []
        return cls(root, info, train.cases, test)

    @classmethod
    def of(cls, dataset: str | Path | Dataset) -> Dataset:
        """``dataset`` itself when it is opened already, else ``Dataset.open(dataset)``: one
        command lists a large dataset once (plan, config defaults and training share it)."""
        return dataset if isinstance(dataset, Dataset) else cls.open(dataset)

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, case_id: str) -> Case:
        for case in (*self.cases, *self.test_cases):
            if case.case_id == case_id:
                return case
        raise DataError(f"case '{case_id}' is not in '{self.root}'; check the case id")


def write_dataset(root: str | Path,
                  cases: Iterable[tuple[str, np.ndarray, np.ndarray, Geometry]],
                  info: DatasetInfo, *, overwrite: bool = False, total: int | None = None
                  ) -> Path:
    """Write ``(case_id, image [C,*sp], raters [R,*sp], geometry)`` items and dataset.json
    (numTraining counted). An existing non-empty folder is refused unless ``overwrite``, which
    removes only what this function writes (imagesTr, labelsTr, dataset.json, splits.json)."""
    root = Path(root)
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise DataError(f"'{root}' exists and is not empty; choose a new folder or pass "
                            "--overwrite (Python: overwrite=True)")
        for name in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in ("dataset.json", "splits.json"):
            (root / name).unlink(missing_ok=True)
    from diffuseg.core.progress import track

    seen: set[str] = set()
    with writing(root):  # disk full, read-only, a name too long: one line naming the file
        for case_id, image, raters, geometry in track(cases, f"convert -> {root.name}",
                                                      total=total, unit="cases",
                                                      name=lambda item: item[0]):
            _check_item(case_id, np.asarray(image), np.asarray(raters), info, seen)
            for c in range(image.shape[0]):
                write_image(root / "imagesTr" / f"{case_id}_{c:04d}{info.file_ending}",
                            image[c:c + 1], geometry)
            for path, mask in zip(_label_paths(root / "labelsTr", case_id, info), raters,
                                  strict=True):
                write_mask(path, mask, geometry)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        info = replace(info, num_training=len(seen))
        (root / "dataset.json").write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    return root


def _check_item(case_id: str, image: np.ndarray, raters: np.ndarray, info: DatasetInfo,
                seen: set[str]) -> None:
    if not case_id or "/" in case_id or "\\" in case_id or case_id in seen:
        raise DataError(f"case id {case_id!r} is empty, holds a path separator or repeats; "
                        "give each case a unique plain name")
    seen.add(case_id)
    want = (info.n_channels, info.raters, info.spatial_dims)
    got = (image.shape[0], raters.shape[0], image.ndim - 1)
    if got != want or raters.shape[1:] != image.shape[1:]:
        raise DataError(f"case '{case_id}': image {image.shape} and raters {raters.shape} do not "
                        f"match dataset.json (channels, raters, spatial_dims) = {want}")

"""``diffuseg check DATASET``: verify a dataset folder, like nnU-Net's --verify_dataset_integrity.

Errors stop training; warnings are worth a look. Checked: dataset.json parses and is typed; every
case has every channel and every rater's mask; numTraining matches; each file reads; image
channels sum to len(channel_names); images and masks share shape and (NIfTI/DICOM) affine within
``atol`` mm; mask values lie in the declared labels; images hold no NaN/Inf, are not all zero
(error) nor constant (warning); spatial_dims agrees with the files; groups name existing cases;
splits.json, when present, is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffuseg.data.dataset import Case, Dataset, DatasetInfo, scan_cases
from diffuseg.data.splits import load_splits
from diffuseg.errors import DataError
from diffuseg.io import Geometry, read_image, read_mask

GEOMETRY_ATOL = 1e-3  # mm, element-wise on the affines of a case's files


@dataclass
class CheckReport:
    root: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_cases: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.errors)} error(s)"
        lines = [f"dataset {self.root}: {self.n_cases} cases, {verdict}, "
                 f"{len(self.warnings)} warning(s)"]
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def check_dataset(root: str | Path, *, atol: float = GEOMETRY_ATOL) -> CheckReport:
    """Check every case of ``root`` and collect all problems (nothing is raised)."""
    report = CheckReport(Path(root))
    root = report.root
    if not root.is_dir():
        report.errors.append(f"dataset folder '{root}' does not exist; check the path")
        return report
    try:
        info = DatasetInfo.load(root / "dataset.json")
    except DataError as err:
        report.errors.append(str(err))
        return report
    if not (root / "imagesTr").is_dir():
        report.errors.append(f"'{root}' has no imagesTr/ folder; see docs/dataset_format.md")
        return report
    scan = scan_cases(root, info)
    report.errors += scan.errors
    report.warnings += scan.warnings
    report.n_cases = found = len(scan.found)
    if found != info.num_training:
        report.errors.append(f"dataset.json says numTraining={info.num_training} but imagesTr "
                             f"holds {found} cases; fix numTraining")
    unknown = sorted(set(info.groups) - set(scan.found))
    if unknown:
        report.warnings.append(f"groups names cases not in imagesTr: {unknown[:5]}")
    from diffuseg.core.progress import track

    for case in track(scan.cases, "check", unit="cases", name=lambda c: c.case_id):
        errors, warnings = check_case(case, info, atol)
        report.errors += errors
        report.warnings += warnings
    if (root / "splits.json").is_file() and not scan.errors:
        try:
            load_splits(root, Dataset(root, info, scan.cases))
        except DataError as err:
            report.errors.append(str(err))
    return report


def check_case(case: Case, info: DatasetInfo, atol: float = GEOMETRY_ATOL
               ) -> tuple[list[str], list[str]]:
    """Errors and warnings of one case's files. Files are compared with the first image file
    that reads and has the declared spatial_dims."""
    errors: list[str] = []
    warnings: list[str] = []
    reference: tuple[Path, Geometry] | None = None
    channels = 0
    for path in (*case.image_paths, *case.label_paths):
        try:
            if path in case.image_paths:
                image, geometry = read_image(path)
                channels += image.shape[0]
                errors += _value_problems(path, image, warnings)
            else:
                _, geometry = read_mask(path, labels=info.label_values)
        except DataError as err:
            errors.append(str(err))
            continue
        problem = _dims_problem(path, geometry, info) or _grid_problem(path, geometry, reference,
                                                                       atol)
        if problem:
            errors.append(problem)
        elif reference is None:
            reference = (path, geometry)
    if channels and channels != info.n_channels:
        errors.append(f"case '{case.case_id}' has {channels} image channels but channel_names "
                      f"lists {info.n_channels}; fix dataset.json or the files")
    return errors, warnings


def _dims_problem(path: Path, geometry: Geometry, info: DatasetInfo) -> str | None:
    dims = geometry.spatial_dims
    flat_3d = info.spatial_dims == 2 and dims == 3 and geometry.shape[2] == 1
    if dims != info.spatial_dims and not flat_3d:
        return (f"'{path}' is {dims}D {geometry.shape} but dataset.json says spatial_dims="
                f"{info.spatial_dims}; fix spatial_dims or the file")
    return None


def _grid_problem(path: Path, geometry: Geometry, reference: tuple[Path, Geometry] | None,
                  atol: float) -> str | None:
    if reference is None:
        return None
    reference_path, grid = reference
    if geometry.shape != grid.shape:
        return (f"'{path}' has shape {geometry.shape} but '{reference_path}' has {grid.shape}; "
                "the files of a case must share one grid")
    if "png" not in (geometry.kind, grid.kind) and not geometry.same_grid(grid, atol):
        gap = float(np.abs(geometry.affine - grid.affine).max())
        return (f"'{path}' has an affine {gap:.3g} mm away from '{reference_path}' (tolerance "
                f"{atol} mm); resample it onto the image grid")
    return None


def _value_problems(path: Path, image: np.ndarray, warnings: list[str]) -> list[str]:
    bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
    if bad:
        return [f"'{path}' has {bad} NaN/Inf values; replace them (e.g. by 0) before training"]
    if not np.any(image):
        return [f"'{path}' is all zero (empty image); remove the case or fix the export"]
    if float(image.min()) == float(image.max()):
        warnings.append(f"'{path}' is constant ({float(image.min()):g}); it carries no signal")
    return []

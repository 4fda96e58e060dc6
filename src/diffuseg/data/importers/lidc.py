"""``diffuseg convert lidc-slices``: the "LIDC-IDRI slices" release (128x128 CT crops around
lung nodules, four radiologists' masks per slice) from its folder tree or straight from its tar.

Layout read (any leading folders are ignored)::

    <patient>/nodule-<k>/images/slice-<i>.png       CT crop, grey 8-bit
    <patient>/nodule-<k>/mask-<r>/slice-<i>.png     rater r = 0..3, 0/255

Each slice becomes case ``<patient>_n<k>_s<i>`` with one channel and R raters; the patient is the
case's group, so splits never divide a patient. Members are read in archive order and a slice is
written as soon as its image and all R masks have been read: only incomplete slices are held in
memory (one nodule at a time for the release, whose files are grouped by nodule).
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffuseg.core.memory import gib, max_image_bytes
from diffuseg.core.paths import check_separate, safe_name
from diffuseg.data.dataset import DatasetInfo, write_dataset
from diffuseg.data.importers.common import ImportSummary, binary_mask, decode_png, finish
from diffuseg.errors import DataError
from diffuseg.io import Geometry

MEMBER = re.compile(r"(?:^|/)(?P<patient>[^/]+)/nodule-(?P<nodule>\d{1,9})/"
                    r"(?P<kind>images|mask-(?P<rater>\d{1,9}))/slice-(?P<slice>\d{1,9})\.png$")
REFERENCE = ("Armato et al., The Lung Image Database Consortium (LIDC) and Image Database "
             "Resource Initiative (IDRI), Med. Phys. 38(2), 2011; The Cancer Imaging Archive")


@dataclass(frozen=True)
class SliceKey:
    patient: str
    nodule: int
    slice: int

    @property
    def case_id(self) -> str:
        """The release's patient names are kept; a folder name that is no safe file name (too
        long, odd characters) is shortened with a hash (``core.paths.safe_name``)."""
        return f"{safe_name(self.patient, 'patient')}_n{self.nodule}_s{self.slice}"


def parse_member(name: str) -> tuple[SliceKey, str] | None:
    """``.../LIDC-IDRI-0001/nodule-0/mask-2/slice-12.png`` -> (key, "mask-2"); None otherwise."""
    match = MEMBER.search(name)
    if match is None:
        return None
    key = SliceKey(match["patient"], int(match["nodule"]), int(match["slice"]))
    return key, match["kind"]


def members(src: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, read) for every file of the release in ``src`` (a folder or a tar, compressed or
    not), in archive / sorted-path order. Nothing is extracted to disk."""
    if src.is_dir():
        for path in sorted(src.rglob("*.png")):
            name = path.relative_to(src).as_posix()
            yield name, _sized(src, name, lambda p=path: p.stat().st_size, path.read_bytes)
        return
    if not src.is_file():
        raise DataError(f"'{src}' does not exist; pass the LIDC-IDRI slices folder or its tar")
    try:
        with tarfile.open(src, "r:*") as archive:
            for member in archive:
                if member.isfile():
                    yield member.name, _sized(src, member.name, lambda m=member: m.size,
                                              _reader(src, archive, member))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"'{src}' is not a readable tar archive ({err}); pass the folder or a "
                        "complete download") from None


def _sized(src: Path, name: str, size: Callable[[], int], read: Callable[[], bytes]
           ) -> Callable[[], bytes]:
    """``read`` once the file's size is within the image budget: a slice PNG is never larger
    than the float32 array it decodes to (``DIFFUSEG_MAX_IMAGE_BYTES``)."""
    def checked() -> bytes:
        declared, limit = size(), max_image_bytes()
        if declared > limit:
            raise DataError(f"'{src}': '{name}' declares {gib(declared)}, over the "
                            f"{gib(limit)} image budget; no slice of the release is that large, "
                            "the archive is damaged: download it again (or raise "
                            "DIFFUSEG_MAX_IMAGE_BYTES)")
        return read()
    return checked


def _reader(src: Path, archive: tarfile.TarFile, member: tarfile.TarInfo
            ) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            handle = archive.extractfile(member)
            assert handle is not None  # member.isfile()
            return handle.read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"'{src}': member '{member.name}' cannot be read ({err}); "
                            "the archive is damaged, download it again") from None
    return read


def inventory(src: Path) -> dict[SliceKey, set[str]]:
    """Every slice of the release and the kinds ("images", "mask-0", ...) present, from the
    member names alone (nothing is decoded)."""
    found: dict[SliceKey, set[str]] = {}
    for name, _ in members(src):
        parsed = parse_member(name)
        if parsed is not None:
            found.setdefault(parsed[0], set()).add(parsed[1])
    return found


def lidc_cases(src: Path, raters: int = 4, limit_patients: int | None = None
               ) -> Iterator[tuple[SliceKey, np.ndarray, np.ndarray]]:
    """Yield ``(key, image [1, H, W] float32, raters [R, H, W] int64)`` per complete slice.

    ``limit_patients`` keeps the first N patients in archive order and stops reading once a
    later patient starts with no slice left incomplete.
    """
    kinds = {"images", *(f"mask-{r}" for r in range(raters))}
    pending: dict[SliceKey, dict[str, bytes]] = {}
    patients: set[str] = set()
    for name, read in members(src):
        parsed = parse_member(name)
        if parsed is None:
            continue
        key, kind = parsed
        if key.patient not in patients:
            if limit_patients is not None and len(patients) >= limit_patients:
                if not pending:
                    return
                continue
            patients.add(key.patient)
        if kind not in kinds:
            raise DataError(f"'{src}' holds '{name}' but --raters is {raters}; pass --raters "
                            f"{int(kind.split('-')[1]) + 1} or more")
        files = pending.setdefault(key, {})
        files[kind] = read()
        if len(files) == len(kinds):
            del pending[key]
            yield key, *_decode_slice(src, key, files, raters)
    if pending:
        key, files = next(iter(pending.items()))
        missing = sorted(kinds - set(files))
        raise DataError(f"'{src}' lacks {missing} of slice {key.slice} of {key.patient} "
                        f"nodule-{key.nodule}; complete the download or pass --raters")


def _decode_slice(src: Path, key: SliceKey, files: dict[str, bytes], raters: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    where = f"{src}:{key.patient}/nodule-{key.nodule}/{{}}/slice-{key.slice}.png"
    image = decode_png(files["images"], where.format("images")).astype(np.float32)[None]
    masks = []
    for r in range(raters):
        mask = binary_mask(decode_png(files[f"mask-{r}"], where.format(f"mask-{r}")),
                           where.format(f"mask-{r}"))
        if mask.shape != image.shape[1:]:
            raise DataError(f"'{where.format(f'mask-{r}')}' has shape {mask.shape} but its image "
                            f"has {image.shape[1:]}; the release is damaged, download it again")
        masks.append(mask)
    return image, np.stack(masks)


def find_split(src: Path) -> Path | None:
    """The release's split.json beside the tar, or in / beside the folder."""
    candidates = [src.parent / "split.json"] if src.is_file() else [
        src / "split.json", src.parent / "split.json"]
    return next((p for p in candidates if p.is_file()), None)


def read_split(path: Path) -> dict[str, str]:
    """``{"train": [patients], "val": [patients], ("test": [...])}`` -> patient -> fold."""
    if not path.is_file():
        raise DataError(f"split file '{path}' does not exist; check --split")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise DataError(f"'{path}' is not valid JSON ({err}); fix it or pass --split") from None
    if not isinstance(data, dict) or not set(data) <= {"train", "val", "test"} or not all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in data.values()):
        raise DataError(f"'{path}' must map train/val/test to lists of patient ids")
    fold_of: dict[str, str] = {}
    for fold, patients in data.items():
        for patient in patients:
            if fold_of.setdefault(patient, fold) != fold:
                raise DataError(f"'{path}' puts patient {patient} in two folds; fix it")
    return fold_of


def import_lidc_slices(src: str | Path, dst: str | Path, *, raters: int = 4,
                       limit_patients: int | None = None, split: str | Path | None = None,
                       overwrite: bool = False) -> ImportSummary:
    """Convert the release at ``src`` (folder or tar) into a 2D PNG dataset at ``dst``.

    splits.json gets train/val from the release's split.json (``split``, else found beside
    ``src``) by patient, and an empty test fold: the release's test patients are not in it.
    """
    src, dst = Path(src), Path(dst)
    check_separate(src, dst, "convert lidc-slices")  # never write into the input
    if raters < 1 or (limit_patients is not None and limit_patients < 1):
        raise DataError(f"--raters {raters} and --limit-patients {limit_patients} must be >= 1")
    split_path = Path(split) if split is not None else find_split(src)
    fold_of = read_split(split_path) if split_path is not None else None
    info = DatasetInfo(channel_names={"0": "CT"}, labels={"background": 0, "nodule": 1},
                       num_training=0, file_ending=".png", raters=raters, spatial_dims=2,
                       name="LIDC-IDRI-slices",
                       extra={"description": "LIDC-IDRI lung nodule CT crops, one case per "
                              "slice, 4 radiologists' masks", "reference": REFERENCE})
    groups: dict[str, str] = {}

    def cases() -> Iterator[tuple[str, np.ndarray, np.ndarray, Geometry]]:
        for key, image, masks in lidc_cases(src, raters, limit_patients):
            groups[key.case_id] = key.patient
            yield key.case_id, image, masks, Geometry.identity(image.shape[1:])

    write_dataset(dst, cases(), info, overwrite=overwrite)
    if not groups:
        raise DataError(f"'{src}' holds no <patient>/nodule-<k>/images/slice-<i>.png files; "
                        "pass the LIDC-IDRI slices folder or its tar")
    if fold_of is None:
        return finish(dst, groups, None, ["no split.json found: training splits by patient "
                                          "(make_splits); pass --split to use one"])
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    unlisted = set()
    for case_id, patient in groups.items():
        if patient in fold_of:
            splits[fold_of[patient]].append(case_id)
        else:
            unlisted.add(patient)
    notes = [f"splits from '{split_path}'"]
    if unlisted:
        notes.append(f"{len(unlisted)} patients are not in split.json and are left out of "
                     f"splits.json, e.g. {sorted(unlisted)[:3]}")
    return finish(dst, groups, splits, notes)

"""``diffuseg convert folder``: images and masks matched by file name, one mask per rater.

For every image matched by ``image_glob`` (relative to the source folder; files whose name ends
with a mask suffix are never images), rater k's mask is the file named
``{image stem}{mask_suffixes[k]}{ending}`` in ``mask_dir`` (default: the image's own folder;
with ``mask_dir``, the image's sub-folder path is kept), where ``ending`` is ``mask_ending``, or
else the first that exists of the image's own ending, .png, .tif, .tiff, .nii.gz, .nii.

- CHASE_DB1: ``--image-glob '*.jpg' --mask-suffix _1stHO --mask-suffix _2ndHO``
  (``Image_01L.jpg`` + ``Image_01L_1stHO.png`` + ``Image_01L_2ndHO.png``)
- PH2: ``--image-glob '*/*.png' --mask-suffix _lesion``
  (``IMD002/IMD002.png`` + ``IMD002/IMD002_lesion.png``)

The case id is the image's stem; ``group_pattern`` (a regular expression searched in the case
id; its first group, or the whole match) names the patient, e.g. ``'Image_\\d+'`` puts both eyes
of a CHASE_DB1 child in one group. RGB images become three channels R, G, B, or with
``grayscale`` one channel of luma L = round(0.299 R + 0.587 G + 0.114 B) (ITU-R BT.601; PIL's
convert("L") computes it in fixed point and can differ by 1), computed exactly (``luma``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from diffuseg.core.paths import check_separate
from diffuseg.data.dataset import DatasetInfo, write_dataset
from diffuseg.data.importers.common import DEFAULT_LABELS, ImportSummary, finish, label_map
from diffuseg.errors import DataError
from diffuseg.io import NIFTI_ENDINGS, Geometry, file_ending, read_image, read_mask

LUMA_PER_MILLE = (299, 587, 114)  # ITU-R BT.601 luma weights x 1000
MASK_ENDINGS = (".png", ".tif", ".tiff", ".nii.gz", ".nii")


def stem(path: Path) -> str:
    return path.name[: -len(file_ending(path))] if file_ending(path) else path.name


def find_images(src: Path, image_glob: str, mask_suffixes: Sequence[str]) -> list[Path]:
    """Files matching ``image_glob`` under ``src``, sorted, without masks and hidden files."""
    if not src.is_dir():
        raise DataError(f"'{src}' is not a folder; pass the folder holding the images")
    found = sorted(p for p in src.glob(image_glob) if p.is_file() and not p.name.startswith(".")
                   and not any(stem(p).endswith(s) for s in mask_suffixes if s))
    if not found:
        raise DataError(f"no image in '{src}' matches --image-glob '{image_glob}'; pass a glob "
                        "such as '*.png' or '*/*.jpg'")
    return found


def find_mask(image: Path, src: Path, suffix: str, mask_dir: Path | None,
              mask_ending: str | None) -> Path:
    folder = image.parent if mask_dir is None else mask_dir / image.parent.relative_to(src)
    endings = (mask_ending,) if mask_ending else (file_ending(image), *MASK_ENDINGS)
    tried = [folder / f"{stem(image)}{suffix}{ending}" for ending in dict.fromkeys(endings)]
    for path in tried:
        if path.is_file() and path != image:
            return path
    raise DataError(f"no mask '{tried[0].name}' for '{image}' (looked in '{folder}' for endings "
                    f"{[p.name[len(stem(image)) + len(suffix):] for p in tried]}); add it, or "
                    "fix --mask-suffix / --mask-dir / --image-glob")


def group_of(case_id: str, pattern: re.Pattern[str] | None) -> str:
    if pattern is None:
        return case_id
    match = pattern.search(case_id)
    if match is None:
        raise DataError(f"--group-pattern '{pattern.pattern}' does not match case '{case_id}'; "
                        "fix the pattern so that every case names its patient")
    return match.group(1) if pattern.groups else match.group(0)


def luma(rgb: np.ndarray) -> np.ndarray:
    """``[3, *spatial]`` -> ``[1, *spatial]`` float32, round((299 R + 587 G + 114 B) / 1000), ties
    to even. For integer pixels (8/16-bit files) the sum n is an integer below 2^26, exact in
    float64 in any order, and n / 1000 is correctly rounded, so a tie (n = ...500, 20 pixels of
    PH2's IMD002) is exactly k + 0.5 and the answer is the same on every CPU (float pixels: one
    float64 rounding per operation, element by element, also the same everywhere). The former
    float32 dot product (BLAS picks its kernel by SIMD width and may fuse multiply-adds) landed
    ~1e-5 either side of such a tie: (212, 156, 110), 167.5, gave 168 on an AVX-512 CPU and 167
    on AVX2 ones."""
    r, g, b = (np.asarray(c, dtype=np.float64) for c in rgb)
    total = LUMA_PER_MILLE[0] * r + LUMA_PER_MILLE[1] * g + LUMA_PER_MILLE[2] * b
    return np.round(total / 1000)[None].astype(np.float32)


def _load(image_path: Path, mask_paths: list[Path], labels: tuple[int, ...], grayscale: bool
          ) -> tuple[np.ndarray, np.ndarray, Geometry]:
    image, geometry = read_image(image_path)
    if grayscale and image.shape[0] == 3:
        image = luma(image)
    masks = []
    for path in mask_paths:
        mask, mask_geometry = read_mask(path, labels=labels)
        if mask.shape != geometry.shape or ("png" not in (geometry.kind, mask_geometry.kind)
                                            and not mask_geometry.same_grid(geometry)):
            raise DataError(f"mask '{path}' {mask.shape} is not on the grid of '{image_path}' "
                            f"{geometry.shape}; resample or crop it to the image")
        masks.append(mask)
    return image, np.stack(masks), geometry


def import_folder(src: str | Path, dst: str | Path, *, image_glob: str = "*.png",
                  mask_suffixes: Sequence[str] = ("_mask",), mask_dir: str | Path | None = None,
                  mask_ending: str | None = None, labels: Sequence[str] = DEFAULT_LABELS,
                  grayscale: bool = False, group_pattern: str | None = None,
                  file_ending_out: str | None = None, name: str = "",
                  overwrite: bool = False) -> ImportSummary:
    """Convert matched images and masks (module docstring) into a dataset at ``dst``; the
    output ending defaults to .png for raster images and .nii.gz for NIfTI."""
    src, dst = Path(src), Path(dst)
    check_separate(src, dst, "convert folder")  # never write into the input
    if not mask_suffixes:
        raise DataError("give at least one --mask-suffix (one per rater, e.g. _1stHO)")
    try:
        pattern = re.compile(group_pattern) if group_pattern else None
    except re.error as err:
        raise DataError(f"--group-pattern '{group_pattern}' is not a regular expression "
                        f"({err})") from None
    images = find_images(src, image_glob, mask_suffixes)
    label_values = tuple(label_map(labels).values())
    first, geometry = read_image(images[0])  # sets the channel count and dimensionality
    n_channels = 1 if grayscale else first.shape[0]
    ending = file_ending_out or (".nii.gz" if file_ending(images[0]) in NIFTI_ENDINGS
                                 or geometry.spatial_dims == 3 else ".png")
    channel_names = {1: ["grey"], 3: ["R", "G", "B"]}.get(
        n_channels, [f"channel_{c}" for c in range(n_channels)])
    info = DatasetInfo.from_dict({
        "channel_names": {str(c): n for c, n in enumerate(channel_names)},
        "labels": label_map(labels), "numTraining": 0, "file_ending": ending,
        "raters": len(mask_suffixes), "spatial_dims": geometry.spatial_dims,
        "name": name or src.name}, "the import options")
    groups: dict[str, str] = {}

    def cases() -> Iterator[tuple[str, np.ndarray, np.ndarray, Geometry]]:
        for path in images:
            case_id = stem(path)
            groups[case_id] = group_of(case_id, pattern)
            masks = [find_mask(path, src, s, Path(mask_dir) if mask_dir else None, mask_ending)
                     for s in mask_suffixes]
            yield case_id, *_load(path, masks, label_values, grayscale)

    write_dataset(dst, cases(), info, overwrite=overwrite)
    return finish(dst, groups if pattern else {})

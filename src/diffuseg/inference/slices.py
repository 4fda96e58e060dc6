"""2D runs on volumes, slice by slice (nnU-Net's ``2d`` configuration).

A run trained on 2D images segments a volume ``[C, X, Y, Z]`` (a NIfTI file or a DICOM series,
as ``diffuseg.io`` reads them) one slice at a time along the **last voxel axis** ``k``: the NIfTI
``k`` axis, and for a DICOM series the slice axis, its slices ordered along the normal as
``diffuseg.io.dicom`` sorts them. Slice ``k`` is ``volume[:, :, :, k]``, in-plane axes ``(i, j)``
(DICOM: column, row). The samples of every slice are stacked to ``[S, 1, K, X, Y, Z]`` and the
consensus and uncertainty maps formed over the volume, which is written in the input's geometry
(its affine, its source series) like the output of a 3D run.

Each slice is segmented exactly as that slice alone would be as a 2D image:

- **in-plane order**: a run trained on raster images (its ``dataset.json`` has a PNG/TIFF/JPEG
  ``file_ending``) saw them as ``[C, rows, columns]``, the order in which a raster file and a
  DICOM slice's pixel data store them; a volume's slice ``(i, j)`` = (column, row) is handed to it
  transposed, as ``(j, i)``, and its samples transposed back. A run trained on 2D NIfTI files saw
  ``(i, j)`` and gets the slice as stored;
- **intensities**: normalised per slice (``data.intensity``), as each 2D training image was;
- **randomness**: slice ``k`` draws from its own generator, seeded with ``slice_seed(seed, k)``,
  so its samples do not depend on the other slices, on their order or on how many run at once,
  and equal ``Predictor.sample(slice, seed=slice_seed(seed, k))``.

Every method draws the noise of a batch from one ``torch.Generator``, so slices batched into one
method call could not keep their own streams; each slice is therefore one call, and the method
batches that slice's S hypotheses (one denoiser call of S images per step). Memory is checked once
before the first slice (``diffuseg.sampling.memory.check_slices_memory``): one slice's sampling
pass plus the stacked samples of the volume and the maps formed from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from diffuseg.config import RunConfig
from diffuseg.core.validation import check_seed
from diffuseg.errors import DataError
from diffuseg.inference.marks import Constraints
from diffuseg.io.images import RASTER_ENDINGS
from diffuseg.sampling.memory import check_slices_memory


class Predictor(Protocol):
    """What this module uses of ``diffuseg.inference.predictor.Predictor`` (which imports it)."""

    config: RunConfig
    run_dir: Path

    def check_steps(self, steps: int | None, n_samples: int | None) -> tuple[int | None, int]: ...
    def slices_volume(self, image: np.ndarray) -> bool: ...
    def sample(self, image: np.ndarray, **options: Any) -> torch.Tensor: ...

SLICE_AXIS = -1  # the last voxel axis of [C, X, Y, Z]: NIfTI's k, a DICOM series' slices


def slice_seed(seed: int, k: int) -> int:
    """The seed of slice ``k``: the first 63 bits of NumPy's ``SeedSequence([seed, k])`` (the
    hash NumPy uses to derive independent streams; O'Neill 2015, PCG), so distinct slices get
    unrelated streams and the same ``(seed, k)`` the same samples. Within ``--seed``'s range."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"slice index must be a non-negative int, got {k!r}")
    state = np.random.SeedSequence([check_seed(seed), k]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def raster_trained(run_dir: str | Path) -> bool:
    """Whether the run's 2D training images were raster files (``dataset.json``'s
    ``file_ending``), so that a volume's slices are handed to it as ``[C, rows, columns]``. A run
    without a readable dataset.json gets the slices as stored."""
    try:
        ending = json.loads((Path(run_dir) / "dataset.json").read_text()).get("file_ending", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(ending, str) and ending.lower() in RASTER_ENDINGS


def plane(volume: np.ndarray, k: int, transpose: bool) -> np.ndarray:
    """Slice ``k`` of ``[..., X, Y, Z]`` as ``[..., X, Y]``, or ``[..., Y, X]`` when
    ``transpose`` (rows first, for a run trained on raster images)."""
    out = volume[..., k]
    return np.ascontiguousarray(out.swapaxes(-1, -2) if transpose else out)


def slice_constraints(constraints: Constraints | None, k: int,
                      transpose: bool) -> Constraints | None:
    """The reviewer marks of slice ``k`` on the slice's grid (see ``plane``)."""
    if constraints is None:
        return None
    return replace(constraints, inside=plane(np.asarray(constraints.inside), k, transpose),
                   outside=plane(np.asarray(constraints.outside), k, transpose))


def sample_slices(predictor: Predictor, volume: np.ndarray, *, n_samples: int | None = None,
                  steps: int | None = None, seed: int = 0, source: str = "image",
                  progress: Callable[[int], None] | None = None,
                  constraints: Constraints | None = None,
                  on_slice: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The samples ``[S, 1, K, X, Y, Z]`` of a 2D run on ``volume`` ``[C, X, Y, Z]`` (module
    docstring). ``progress(step)`` is called after each sampling step of each slice,
    ``on_slice(done, total)`` after each slice."""
    config = predictor.config
    if volume.ndim != 4 or volume.shape[0] != config.in_channels:
        raise DataError(f"{source}: a 2D run segments a volume [C, X, Y, Z] with "
                        f"{config.in_channels} channel(s) slice by slice, got shape "
                        f"{tuple(volume.shape)}")
    _, n_samples = predictor.check_steps(steps, n_samples)
    check_seed(seed)
    spatial = tuple(int(s) for s in volume.shape[1:])
    if min(spatial) < 1:
        raise DataError(f"{source} has shape {tuple(volume.shape)}, an empty axis; give a volume "
                        "with at least one slice")
    if constraints is not None:
        constraints.check(spatial, config.num_classes)
    width = max(config.network.channels[0], config.num_classes)
    check_slices_memory(n_samples, spatial[0] * spatial[1], spatial[2], width,
                        channels=max(config.num_classes, config.in_channels),
                        classes=config.num_classes)
    transpose = raster_trained(predictor.run_dir)
    stacked: torch.Tensor | None = None
    for k in range(spatial[2]):
        samples = predictor.sample(plane(volume, k, transpose), n_samples=n_samples, steps=steps,
                                   seed=slice_seed(seed, k), source=f"{source} (slice {k})",
                                   progress=progress,
                                   constraints=slice_constraints(constraints, k, transpose))
        if transpose:
            samples = samples.transpose(-1, -2)
        if stacked is None:
            stacked = torch.empty((*samples.shape, spatial[2]), dtype=samples.dtype)
        stacked[..., k] = samples
        if on_slice is not None:
            on_slice(k + 1, spatial[2])
    assert stacked is not None, "checked above: at least one slice"
    return stacked


def slice_record(predictor: Predictor, image: np.ndarray) -> dict:
    """What a prediction records of a slice-by-slice run (empty for any other)."""
    if not predictor.slices_volume(image):
        return {}
    order = "rows, columns (j, i)" if raster_trained(predictor.run_dir) else "as stored (i, j)"
    return {"slice_by_slice": {"axis": "k (last voxel axis)", "slices": int(image.shape[-1]),
                               "in_plane": order,
                               "seeds": "slice k: SeedSequence([seed, k]) (inference.slices)"}}

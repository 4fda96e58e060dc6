"""A procedural phantom whose distribution of expert masks is known exactly.

Coordinates x lie in [-1, 1]^d (d = 2 or 3). Each case draws, with its own ``rng``:

- an organ-like body: a rotated ellipsoid whose normalised distance is perturbed by a smooth
  random field (blobby outline), with a smooth texture inside;
- a lesion field f(x) in [0, 1): a core c(x) = sigmoid((1 - d_core(x)) / w) plus a faint lobe
  l(x) = a sigmoid((1 - d_lobe(x)) / w), f = max(c, l). d_* are perturbed ellipsoid distances (1 on
  the nominal boundary, so c = 1/2 there), w in [0.08, 0.15] is the boundary blur and the lobe's
  peak a in [0.6, 0.72] sits beside the core;
- the image: bias(x) (0.1 + body (0.4 + texture) + contrast f) + Gaussian noise, clipped to
  [0, 1] and quantised to integers 0..255 (so PNG files hold it exactly). ``bias`` is a linear
  field of +-15 % in a random direction; contrast in [0.3, 0.55], noise sigma in [0.03, 0.06].

Rater k marks {x : f(x) > t_k} (``rater_thresholds``): rater 0 traces the true boundary
(t = 0.5), rater 1 over-segments (t = 0.3), rater 2 under-segments (t = 0.8 > a, so it misses the
lobe entirely); raters k >= 3 use thresholds spread evenly over (0.3, 0.8). Hence the masks are
nested, rater 1 >= rater 0 >= rater 2, and the per-pixel probability that a uniformly chosen rater
marks x is the fraction of thresholds below f(x).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from diffuseg.core.consensus import majority
from diffuseg.data.dataset import Dataset, DatasetInfo, write_dataset
from diffuseg.data.splits import make_splits, save_splits
from diffuseg.errors import ConfigError
from diffuseg.io import Geometry

BASE_THRESHOLDS = (0.5, 0.3, 0.8)  # true boundary, over-segmenting, under-segmenting
LOBE_PEAK = (0.6, 0.72)  # above 0.5 (rater 0 sees the lobe), below 0.8 (rater 2 does not)
CASES_PER_PATIENT = 2  # phantom cases 2i and 2i + 1 share group "patient_{i}"


@dataclass
class PhantomCase:
    image: np.ndarray  # [1, *sp] float32, integers 0..255
    raters: np.ndarray  # [R, *sp] uint8 in {0, 1}; rater k = lesion_field > rater_thresholds[k]
    lesion_field: np.ndarray  # [*sp] float32 f in [0, 1)
    lobe: np.ndarray | None = None  # [*sp] bool, where the faint lobe is above 0.5 and the core


def rater_thresholds(n_raters: int) -> tuple[float, ...]:
    """t_0..t_{R-1}: 0.5, 0.3, 0.8, then 0.3 + 0.5 (j + 1/2) / (R - 3) for j = 0..R-4."""
    if n_raters < 1:
        raise ConfigError(f"n_raters={n_raters} must be at least 1")
    extra = n_raters - len(BASE_THRESHOLDS)
    spread = tuple(0.3 + 0.5 * (j + 0.5) / extra for j in range(max(extra, 0)))
    return (BASE_THRESHOLDS + spread)[:n_raters]


def majority_mask(raters: np.ndarray) -> np.ndarray:
    """Foreground where at least half of the R raters mark it (``diffuseg.core.consensus.majority``:
    a tie counts as foreground)."""
    return majority((np.asarray(raters) > 0).astype(np.int64), 2).astype(np.uint8)


def over_segmenting_marks(raters: np.ndarray, n: int = 5, seed: int = 0) -> np.ndarray | None:
    """``n`` pixels, drawn with ``seed``, that only the over-segmenting rater 1 marks (inside
    rater 1's mask, outside rater 0's): the inside marks a reviewer would place to single out
    rater 1's mode (guided resampling's tests and ``benchmarks/guided_jumps.py``). None when the
    ring between the two holds fewer than ``n`` pixels."""
    raters = np.asarray(raters) > 0
    ring = raters[1] & ~raters[0]
    if ring.sum() < n:
        return None
    pick = np.random.default_rng(seed).choice(np.flatnonzero(ring.ravel()), n, replace=False)
    inside = np.zeros(ring.shape, bool)
    inside.ravel()[pick] = True
    return inside


def make_case(spatial_dims: int = 2, size: int = 64, n_raters: int = 3,
              rng: np.random.Generator | None = None) -> PhantomCase:
    """One phantom case on a ``size``^d grid (module docstring: the model)."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims={spatial_dims} must be 2 or 3")
    if size < 8:
        raise ConfigError(f"phantom size={size} must be at least 8 pixels")
    rng = rng if rng is not None else np.random.default_rng()
    x = _grid(spatial_dims, size)
    body_center = rng.uniform(-0.05, 0.05, spatial_dims)
    d_body = _ellipsoid_distance(x, body_center, rng.uniform(0.65, 0.85, spatial_dims), rng)
    d_body += 0.06 * _smooth_noise(x.shape[1:], size / 8, rng)
    body = _sigmoid((1.0 - d_body) / 0.03)

    core, lobe = _lesion(x, body_center, rng)
    field = np.maximum(core, lobe).astype(np.float32)
    raters = np.stack([field > t for t in rater_thresholds(n_raters)]).astype(np.uint8)

    texture = 0.05 * _smooth_noise(x.shape[1:], 1.5, rng)
    direction = _unit(rng.normal(size=spatial_dims))
    bias = 1.0 + 0.15 * np.tensordot(direction, x, axes=1) / np.sqrt(spatial_dims)
    contrast, sigma = rng.uniform(0.3, 0.55), rng.uniform(0.03, 0.06)
    clean = bias * (0.1 + body * (0.4 + texture) + contrast * field)
    noisy = clean + sigma * rng.standard_normal(clean.shape)
    image = np.round(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.float32)[None]
    return PhantomCase(image, raters, field, (lobe > 0.5) & (lobe > core))


def _lesion(x: np.ndarray, body_center: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Core c and lobe l fields (module docstring)."""
    d = len(x)
    center = body_center + _unit(rng.normal(size=d)) * rng.uniform(0.0, 0.25)
    radius = rng.uniform(0.15, 0.27)
    width = rng.uniform(0.08, 0.15)
    d_core = _ellipsoid_distance(x, center, radius * rng.uniform(0.8, 1.2, d), rng)
    d_core += 0.05 * _smooth_noise(x.shape[1:], x.shape[1] / 10, rng)
    lobe_center = center + _unit(rng.normal(size=d)) * radius * rng.uniform(1.0, 1.3)
    d_lobe = _ellipsoid_distance(x, lobe_center, radius * rng.uniform(0.5, 0.7, d), rng)
    peak = rng.uniform(*LOBE_PEAK)
    return _sigmoid((1.0 - d_core) / width), peak * _sigmoid((1.0 - d_lobe) / width)


def _grid(spatial_dims: int, size: int) -> np.ndarray:
    axis = np.linspace(-1.0, 1.0, size)
    return np.stack(np.meshgrid(*([axis] * spatial_dims), indexing="ij"))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _ellipsoid_distance(x: np.ndarray, center: np.ndarray, radii: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """sqrt(sum_i ((Q^T (x - center))_i / radii_i)^2) for a random rotation Q."""
    q, r = np.linalg.qr(rng.normal(size=(len(center), len(center))))
    q = q * np.sign(np.diag(r))
    local = np.tensordot(q.T, x - center.reshape(-1, *[1] * (x.ndim - 1)), axes=1)
    return np.sqrt(np.sum((local / radii.reshape(-1, *[1] * (x.ndim - 1))) ** 2, axis=0))


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """White noise blurred by a Gaussian of ``sigma`` pixels, scaled to unit standard deviation."""
    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def write_phantom_dataset(root: str | Path, n_cases: int, spatial_dims: int = 2, size: int = 64,
                          n_raters: int = 3, seed: int = 0, overwrite: bool = False) -> Path:
    """Write ``n_cases`` phantom cases (PNG in 2D, NIfTI in 3D) with groups and splits.json.

    Case i uses ``np.random.default_rng([seed, i])``, so it does not depend on ``n_cases``.
    """
    if n_cases < 1:
        raise ConfigError(f"n_cases={n_cases} must be at least 1")
    ids = [f"phantom_{i:04d}" for i in range(n_cases)]
    shape = (size,) * spatial_dims
    geometry = Geometry.identity(shape, "png" if spatial_dims == 2 else "nifti")
    info = DatasetInfo(
        channel_names={"0": "phantom"}, labels={"background": 0, "lesion": 1},
        num_training=n_cases, file_ending=".png" if spatial_dims == 2 else ".nii.gz",
        raters=n_raters, spatial_dims=spatial_dims, name="phantom",
        groups={case_id: f"patient_{i // CASES_PER_PATIENT:04d}" for i, case_id in enumerate(ids)},
        extra={"description": f"diffuseg phantom, seed {seed}, raters thresholds "
                              f"{list(rater_thresholds(n_raters))} of the lesion field"},
    )

    def items():
        for i, case_id in enumerate(ids):
            case = make_case(spatial_dims, size, n_raters, np.random.default_rng([seed, i]))
            yield case_id, case.image, case.raters, geometry

    root = write_dataset(root, items(), info, overwrite=overwrite)
    save_splits(root, make_splits(Dataset.open(root), seed))
    return root

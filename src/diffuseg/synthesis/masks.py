"""New masks for new images: besides the real masks, merged masks, elastically deformed masks
and a segmentation model's own samples. Every mask carries its provenance (where it came from),
which ``synthesize`` writes beside each synthetic case.

- ``real``: rater k's mask of a training case, unchanged.
- ``merge``: two real masks combined. Two raters of one case: their union or intersection
  (an intersection that is empty falls back to the union); masks of two different cases (same
  shape): the union, label-wise maximum, so lesions are added.
- ``elastic``: a real mask warped by a smooth random displacement field u = alpha * G_sigma *
  N(0, 1) per axis (Simard et al. 2003), nearest-neighbour so labels stay exact.
- ``model``: one sample of a trained segmentation run (``diffuseg.inference.predictor.Predictor``)
on a
  real training image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from diffuseg.errors import ConfigError

SOURCES = ("real", "merge", "elastic", "model")


@dataclass
class MaskDraw:
    mask: np.ndarray  # [*spatial] int64 labels
    case_id: str  # the training case whose image shape (and prompt) the mask belongs to
    provenance: dict = field(default_factory=dict)


@dataclass
class MaskPool:
    """The real training masks: ``raters[i]`` is ``[R, *sp]`` for case ``case_ids[i]``."""

    case_ids: list[str]
    raters: list[np.ndarray]
    segment: Callable[[int, np.random.Generator], tuple[np.ndarray, dict]] | None = None

    def real(self, rng: np.random.Generator) -> MaskDraw:
        i = int(rng.integers(len(self.case_ids)))
        k = int(rng.integers(len(self.raters[i])))
        return MaskDraw(self.raters[i][k].astype(np.int64), self.case_ids[i],
                        {"source": "real", "case": self.case_ids[i], "rater": k})

    def merge(self, rng: np.random.Generator) -> MaskDraw:
        i = int(rng.integers(len(self.case_ids)))
        if len(self.raters[i]) > 1:
            a, b = rng.choice(len(self.raters[i]), size=2, replace=False)
            ma, mb = self.raters[i][a], self.raters[i][b]
            op = "union" if rng.random() < 0.5 else "intersection"
            merged = np.minimum(ma, mb) if op == "intersection" else np.maximum(ma, mb)
            if op == "intersection" and not merged.any():
                op, merged = "union", np.maximum(ma, mb)
            return MaskDraw(merged.astype(np.int64), self.case_ids[i],
                            {"source": "merge", "op": op, "case": self.case_ids[i],
                             "raters": [int(a), int(b)]})
        same = [j for j in range(len(self.case_ids))
                if j != i and self.raters[j].shape[1:] == self.raters[i].shape[1:]]
        if not same:
            return self.real(rng)
        j = int(rng.choice(same))
        ma = self.raters[i][int(rng.integers(len(self.raters[i])))]
        mb = self.raters[j][int(rng.integers(len(self.raters[j])))]
        return MaskDraw(np.maximum(ma, mb).astype(np.int64), self.case_ids[i],
                        {"source": "merge", "op": "union", "cases": [self.case_ids[i],
                                                                     self.case_ids[j]]})

    def elastic(self, rng: np.random.Generator, alpha: float = 6.0, sigma: float = 4.0
                ) -> MaskDraw:
        draw = self.real(rng)
        warped = elastic_deform(draw.mask, rng, alpha=alpha, sigma=sigma)
        return MaskDraw(warped, draw.case_id, {**draw.provenance, "source": "elastic",
                                               "alpha": alpha, "sigma": sigma})

    def model(self, rng: np.random.Generator) -> MaskDraw:
        if self.segment is None:
            raise ConfigError("mask source 'model' needs a segmentation run: pass --segmentor RUN")
        i = int(rng.integers(len(self.case_ids)))
        mask, info = self.segment(i, rng)
        return MaskDraw(mask.astype(np.int64), self.case_ids[i],
                        {"source": "model", "case": self.case_ids[i], **info})

    def draw(self, source: str, rng: np.random.Generator) -> MaskDraw:
        if source not in SOURCES:
            raise ConfigError(f"mask source {source!r} is unknown; use {', '.join(SOURCES)}")
        return getattr(self, source)(rng)


def elastic_deform(mask: np.ndarray, rng: np.random.Generator, *, alpha: float, sigma: float
                   ) -> np.ndarray:
    """Warp labels ``[*sp]`` by a smooth displacement (pixels): x -> x + alpha G_sigma * n(x)."""
    if alpha < 0 or sigma <= 0:
        raise ConfigError(f"elastic alpha={alpha} must be >= 0 and sigma={sigma} > 0")
    grid = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in mask.shape], indexing="ij")
    coords = []
    for axis_grid in grid:
        field_ = gaussian_filter(rng.standard_normal(mask.shape), sigma)
        field_ *= alpha / max(np.abs(field_).max(), 1e-12)
        coords.append(axis_grid + field_)
    return map_coordinates(mask, coords, order=0, mode="nearest").astype(np.int64)


def parse_sources(text: str | Sequence[str]) -> tuple[str, ...]:
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if not names or unknown:
        raise ConfigError(f"--masks {text!r}: use a comma-separated list of {', '.join(SOURCES)}")
    return tuple(names)

"""The edge map of a label mask: DiffBoost's edge guidance (Zhang et al. 2024, Sec. III-B).

A pixel is an edge pixel when it carries a foreground label and at least one of its face
neighbours (4-connected in 2D, 6-connected in 3D) inside the image carries another label: the
inner boundary of every labelled region. Neighbours outside the image do not count, so a region
touching the border has no edge along it. The map is exact (no smoothing), in {0, 1}.
"""

from __future__ import annotations

import numpy as np


def edge_map(labels: np.ndarray) -> np.ndarray:
    """``[*spatial]`` integer labels -> ``[*spatial]`` float32 edge map in {0, 1}."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        n = labels.shape[axis]
        if n < 2:
            continue
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        differs = labels[tuple(lo)] != labels[tuple(hi)]
        edge[tuple(lo)] |= differs  # the pixel before the change
        edge[tuple(hi)] |= differs  # the pixel after it
    return (edge & (labels > 0)).astype(np.float32)

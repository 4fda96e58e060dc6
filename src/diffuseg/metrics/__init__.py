"""The metric suite: pure functions of NumPy arrays or torch tensors returning floats and dicts.

Formulas, conventions and citations: docs/metrics.md. ``CONVENTIONS`` states the choices that
change the numbers; the evaluator writes it into every results JSON.
"""

from __future__ import annotations

from diffuseg.metrics.calibration import (
    ece,
    ncc,
    reliability_curve,
    s_ncc,
    s_ncc_categorical,
    uncertainty_error_overlap,
    variance_ncc,
)
from diffuseg.metrics.distribution import (
    ci_score,
    ged,
    hm_iou,
    iou_distance,
    reference_masks,
    trivial_references,
)
from diffuseg.metrics.overlap import EMPTY_VALUE, dice, iou, pairwise_dice, pairwise_iou, per_class
from diffuseg.metrics.surface import BOTH_EMPTY_VALUE, assd, hausdorff, hd95, image_diagonal

CONVENTIONS: dict[str, object] = {
    "version": 1,
    "binarisation": "probabilities p -> p > 0.5 (threshold argument; booleans unchanged)",
    "dice_iou_both_empty": EMPTY_VALUE,
    "multi_class": "one-vs-rest per listed label; background only when listed",
    "surface_distances": "MONAI: surface = mask XOR erosion (face connectivity), Euclidean "
    "distances between voxel centres scaled by spacing, so in the spacing's unit (voxels "
    "when no spacing is given; results say which in distance_unit)",
    "hd95": "max of the two directed 95th percentiles (MONAI percentile=95, directed=False)",
    "assd": "mean of the pooled surface distances of both masks (MONAI symmetric=True)",
    "surface_both_empty": BOTH_EMPTY_VALUE,
    "surface_one_empty": "NaN, or empty_penalty when given (e.g. the image diagonal)",
    "ged": "D2_GED = 2E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')], squared form (no root), "
    "d = 1 - IoU, d(empty, empty) = 0, means over all pairs including i = j",
    "hm_iou": "repeat samples and raters to lcm(S, R), Hungarian matching on 1 - IoU, mean "
    "matched IoU; IoU(empty, empty) = 1",
    "ci": "CI = 3 Sc Dmax Da / (Sc + Dmax + Da) as printed by Rahman et al. 2023; Da from "
    "pairwise 1 - Dice within each set; Sc = 1 when the rater union is empty",
    "ece": "foreground probability vs rater mean, per pixel, 10 equal-width bins [k/B, (k+1)/B)",
    "s_ncc": "PHiSeg: mean over raters of NCC(E_s[CE(s_mean, s)], E_s[CE(y, s)]), eps = 1e-8",
}

__all__ = [
    "CONVENTIONS",
    "assd",
    "ci_score",
    "dice",
    "ece",
    "ged",
    "hausdorff",
    "hd95",
    "hm_iou",
    "image_diagonal",
    "iou",
    "iou_distance",
    "ncc",
    "pairwise_dice",
    "pairwise_iou",
    "per_class",
    "reliability_curve",
    "s_ncc",
    "s_ncc_categorical",
    "reference_masks",
    "trivial_references",
    "uncertainty_error_overlap",
    "variance_ncc",
]

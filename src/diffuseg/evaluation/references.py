"""Trivial references for the ambiguity metrics: what a predictor that learned nothing of the
raters' disagreement scores, on the same slices and with the evaluator's own metric code
(``evaluate.distribution_metrics``, ``diffuseg.metrics.dice``).

- **always empty**: n empty masks. With d = 1 - IoU and d(empty, empty) = 0,
  ``GED = 2 E_j[d(0, y_j)] - E[d(Y, Y')]`` where d(0, y_j) is 1 for a non-empty rater mask and 0
  for an empty one; HM-IoU is the share of empty rater masks; the consensus is empty, so its
  Dice against a non-empty majority is 0.
- **one mask repeated**: the same mask m drawn n times. Its samples never differ
  (E[d(S, S')] = 0), so ``GED = 2 E_j[d(m, y_j)] - E[d(Y, Y')]``, the same for every n. With m the
  raters' majority it is a perfect one-mask segmenter (a deterministic U-Net at its best: Dice 1
  against the majority); with m a model's own consensus (``diffuseg demo``), the score its samples
  must beat to show that their diversity helps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from diffuseg.core.consensus import majority
from diffuseg.evaluation.evaluate import distribution_metrics
from diffuseg.metrics import dice, reference_masks


def repeated(mask: np.ndarray, n: int) -> np.ndarray:
    """``[n, *spatial]``: the label map ``mask`` drawn n times."""
    return np.repeat(np.asarray(mask)[None], n, axis=0)


def set_scores(samples: np.ndarray, consensus: np.ndarray, raters: np.ndarray,
               labels: Sequence[int], n: int) -> dict[str, Any]:
    """``ged_<n>`` and ``hm_iou_<n>`` of the first n sample label maps ``[S, *spatial]`` against
    the rater label maps ``[R, *spatial]`` (the evaluator's code), and ``dice``: the consensus
    against the raters' majority (mean over foreground labels), None where the majority is empty
    (a slice without a nodule says nothing of a consensus's overlap)."""
    raters = np.asarray(raters, dtype=np.int64)
    foreground = [lbl for lbl in labels if lbl != 0]
    scores = distribution_metrics(np.asarray(samples, dtype=np.int64), raters, foreground, (n,))
    reference = majority(raters, len(labels))
    out: dict[str, Any] = {f"ged_{n}": scores[f"ged_{n}"], f"hm_iou_{n}": scores[f"hm_iou_{n}"]}
    out["dice"] = (None if not (reference > 0).any() else
                   float(np.mean([dice(consensus == lbl, reference == lbl) for lbl in foreground])))
    return out


def repeated_mask_scores(mask: np.ndarray, raters: np.ndarray, labels: Sequence[int],
                         n: int) -> dict[str, Any]:
    """``set_scores`` of the label map ``mask`` drawn n times (its consensus is itself)."""
    return set_scores(repeated(mask, n), np.asarray(mask), raters, labels, n)


def reference_scores(raters: np.ndarray, labels: Sequence[int], n: int
                     ) -> dict[str, dict[str, Any]]:
    """``{"always_empty": ..., "majority_repeated": ...}``: ``set_scores`` of the trivial
    references' masks (their one definition: ``metrics.reference_masks``) on one case."""
    masks = reference_masks(np.asarray(raters, dtype=np.int64), [lbl for lbl in labels])
    return {"always_empty": repeated_mask_scores(masks["empty"], raters, labels, n),
            "majority_repeated": repeated_mask_scores(masks["majority"], raters, labels, n)}


__all__ = ["reference_scores", "repeated", "repeated_mask_scores", "set_scores"]

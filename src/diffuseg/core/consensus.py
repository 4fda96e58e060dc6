"""The one consensus rule of diffuseg, used for the raters' reference mask (data loader,
evaluation), the phantom's majority mask, training validation and the prediction consensus
(``diffuseg.core.ensemble``: the majority of the binarized samples).

- Label maps (raters or hardened samples) ``[N, *spatial]``: per pixel, the label given by the
  most masks; **a tie goes to the higher label**. With two labels this means "foreground where at
  least half of the masks mark it" (2 of 4 raters is foreground).
- A binary share of masks (the fraction q of masks that mark a pixel): foreground when q >= 0.5,
  the same rule (exactly half is foreground).

Both NumPy arrays and torch tensors are accepted; the result has the input's kind (int64).
"""

from __future__ import annotations

import numpy as np
import torch

TIE_RULE = ("per-pixel most frequent label over the masks; a tie goes to the higher label "
            "(binary: foreground where at least half of the masks mark it; a prediction's "
            "masks are its binarized samples)")


def majority(labels: np.ndarray | torch.Tensor, num_labels: int
             ) -> np.ndarray | torch.Tensor:
    """Per-pixel most frequent label over axis 0 of ``[N, *spatial]`` labels 0..num_labels-1;
    ties go to the higher label. Returns int64 ``[*spatial]`` of the input's kind."""
    as_numpy = not isinstance(labels, torch.Tensor)
    x = torch.as_tensor(np.asarray(labels)) if as_numpy else labels
    counts = torch.stack([(x == k).sum(0) for k in range(max(1, num_labels))])
    # argmax returns the first maximum; over the reversed labels that is the highest label
    winner = (counts.shape[0] - 1 - counts.flip(0).argmax(0)).long()
    return winner.numpy() if as_numpy else winner


def foreground_consensus(mean_probability: np.ndarray | torch.Tensor
                         ) -> np.ndarray | torch.Tensor:
    """Binary consensus of a share of masks q (``majority`` of two labels): q >= 0.5 (a tie is
    foreground)."""
    if isinstance(mean_probability, torch.Tensor):
        return (mean_probability >= 0.5).long()
    return (np.asarray(mean_probability) >= 0.5).astype(np.int64)


__all__ = ["TIE_RULE", "foreground_consensus", "majority"]

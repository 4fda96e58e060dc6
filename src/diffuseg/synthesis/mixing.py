"""Mixing a synthetic dataset into training: ``data.synthetic=PATH``, ``data.synthetic_ratio``.

Each training example is drawn from the synthetic pairs with probability ``synthetic_ratio`` and
from the real training split otherwise, so the number of optimiser steps (and so the compute)
is the same with and without synthetic data. Synthetic pairs only ever join the training
stream: validation and test use real cases alone. A synthetic set whose generator saw any of the
run's validation or test cases is refused, since its images would carry those cases' content
into training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffuseg.config import RunConfig
from diffuseg.data import Dataset
from diffuseg.data.loader import Example, load_examples
from diffuseg.errors import DataError


def load_synthetic(config: RunConfig, splits: dict[str, list[str]], n_raters: int = 1
                   ) -> list[Example]:
    """The synthetic training examples named by ``config.data.synthetic`` (empty when unset);
    each one's single mask is repeated for ``n_raters`` so batches of all raters stack."""
    if config.data.synthetic is None or config.data.synthetic_ratio == 0:
        return []
    root = Path(config.data.synthetic)
    dataset = Dataset.open(root)
    meta = dataset.info.extra.get("synthetic")
    if not isinstance(meta, dict):
        raise DataError(f"data.synthetic='{root}' is not a synthetic dataset (its dataset.json "
                        "has no \"synthetic\" entry); write one with 'diffuseg synthesize'")
    held_out = set(splits.get("val", [])) | set(splits.get("test", []))
    leaked = sorted(held_out & set(meta.get("source_cases", [])))
    if leaked:
        raise DataError(f"data.synthetic='{root}' was generated from cases {leaked[:3]} that "
                        "this run holds out for validation/test; synthesize from the training "
                        "split only (use the same splits.json)")
    if dataset.info.n_channels != config.in_channels or \
            dataset.info.spatial_dims != config.spatial_dims:
        raise DataError(f"data.synthetic='{root}' has {dataset.info.n_channels} channel(s), "
                        f"{dataset.info.spatial_dims}D; the run needs {config.in_channels}, "
                        f"{config.spatial_dims}D")
    examples = load_examples(dataset, [c.case_id for c in dataset.cases], config)
    for ex in examples:
        ex.raters = np.repeat(ex.raters[:1], n_raters, axis=0)
    return examples

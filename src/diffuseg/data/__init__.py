"""Dataset folders (nnU-Net v2 layout with raters), integrity checks and the phantom generator."""

from diffuseg.data.check import CheckReport, check_dataset
from diffuseg.data.dataset import (
    Case,
    CaseData,
    Dataset,
    DatasetInfo,
    write_dataset,
)
from diffuseg.data.phantom import (
    PhantomCase,
    majority_mask,
    make_case,
    rater_thresholds,
    write_phantom_dataset,
)
from diffuseg.data.splits import load_splits, make_splits, save_splits

__all__ = [
    "Case",
    "CaseData",
    "CheckReport",
    "Dataset",
    "DatasetInfo",
    "PhantomCase",
    "check_dataset",
    "load_splits",
    "majority_mask",
    "make_case",
    "make_splits",
    "rater_thresholds",
    "save_splits",
    "write_dataset",
    "write_phantom_dataset",
]

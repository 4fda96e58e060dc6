"""Metric names a clinician can read: label names instead of ``dice_1``, units on distances (mm
when the images carry a spacing, px when they do not: the summary's ``distance_unit``), a
plain-language key to every metric, and which metrics the sample count supports."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# base name -> (shown name, unit, plain-language meaning)
METRIC_KEY: dict[str, tuple[str, str, str]] = {
    "dice": ("Dice", "", "overlap of the consensus mask with the raters' majority mask: "
             "1 = identical, 0 = no overlap"),
    "iou": ("IoU", "", "intersection over union of the same two masks; stricter than Dice"),
    "hd95": ("HD95", "", "how far the consensus outline strays from the reference outline "
             "(95th percentile of the distances); lower is better"),
    "assd": ("ASSD", "", "average distance between the consensus and reference outlines; lower "
             "is better"),
    "ged": ("GED", "", "generalised energy distance between the samples and the raters' masks "
            "(d = 1 - IoU): 0 when the samples vary exactly as the raters do; lower is better"),
    "hm_iou": ("HM-IoU", "", "each sample matched one-to-one to a rater (Hungarian matching), "
               "mean IoU of the pairs: do the samples cover every rater's opinion? 1 is best"),
    "ci": ("CI score", "", "combined sensitivity, maximum Dice matching and diversity agreement "
           "between samples and raters (CIMD, Rahman et al. 2023); 1 is best"),
    "ece": ("ECE", "", "calibration error: the gap between the predicted probability and the "
            "fraction of raters marking the pixel; 0 is best"),
    "s_ncc": ("S_NCC", "", "correlation between the uncertainty map and where the samples "
              "disagree with the raters; 1 is best"),
    "uncertainty_error_overlap": ("uncertainty-error overlap", "", "Dice between the most "
                                  "uncertain pixels and the consensus' errors; 1 is best"),
    "n_samples": ("samples", "", "masks drawn for the case"),
}
SAMPLED = ("ged", "hm_iou", "ci")  # their number is a sample count: ged_16
DISTANCES = ("hd95", "assd")  # in the summary's distance_unit
UNIT_WORDS = {"mm": "in millimetres", "px": "in pixels (the images carry no spacing)"}


def split_name(name: str) -> tuple[str, int | None, int | None, str]:
    """``ged_16`` -> ("ged", 16, None, ""), ``dice_1`` -> ("dice", None, 1, ""),
    ``ci_16_1`` -> ("ci", 16, 1, ""); unknown names come back whole as the base."""
    m = re.fullmatch(r"(ged|hm_iou|ci)_(\d+)(?:_(\d+))?(.*)", name)
    if m:
        return m.group(1), int(m.group(2)), int(m.group(3)) if m.group(3) else None, m.group(4)
    m = re.fullmatch(r"([a-z0-9_]+?)_(\d+)", name)
    if m and m.group(1) in METRIC_KEY:
        return m.group(1), None, int(m.group(2)), ""
    return name, None, None, ""


def pretty(name: str, label_names: Mapping[int, str] | None = None,
           distance_unit: str | None = None) -> str:
    """``dice_1`` -> "Dice (Anterior)", ``hd95`` -> "HD95 (mm)" (``distance_unit`` "mm"; no unit
    when it is not known), ``ged_16`` -> "GED16"."""
    base, n, label, rest = split_name(name)
    shown, unit, _ = METRIC_KEY.get(base, (base, "", ""))
    if base in DISTANCES:
        unit = distance_unit or ""
    text = f"{shown}{n if n is not None else ''}{rest}"
    if label is not None:
        text += f" ({(label_names or {}).get(label, f'label {label}')})"
    return f"{text} ({unit})" if unit else text


def meaning(base: str, distance_unit: str | None = None) -> str:
    """The plain-language key of a metric; distances say their unit when it is known."""
    text = METRIC_KEY[base][2]
    if base in DISTANCES and distance_unit:
        text += f"; {UNIT_WORDS.get(distance_unit, distance_unit)}"
    return text


def supported(name: str, available: int | None) -> bool:
    """False for a sample-count metric (GED100) when fewer samples exist than it names."""
    _, n, _, _ = split_name(name)
    return n is None or available is None or n <= available


def available_samples(summary: Mapping[str, Any]) -> int | None:
    """The most samples any case has (a metric naming more was measured for no case)."""
    value = summary.get("conventions", {}).get("n_samples_available")
    return value.get("max") if isinstance(value, dict) else value

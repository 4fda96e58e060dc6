"""The figures of the evaluation report, returned as PNG bytes.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``, Agg canvas), never
through pyplot, so that no global figure state is touched and nothing needs a display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 80


def to_png(fig: Figure, dpi: int = DPI, tight: bool = True) -> bytes:
    """PNG bytes; ``tight`` trims the margins (costs one more layout pass)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None,
                facecolor="white")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# per-case overlays


def most_foreground_slice(masks: np.ndarray, axis: int = -1) -> int:
    """Index along ``axis`` of a stack of 3D masks ``[N, X, Y, Z]`` with the most foreground
    voxels summed over the stack (the middle slice when all are empty)."""
    masks = np.asarray(masks) > 0
    axis = axis % masks.ndim
    counts = masks.sum(axis=tuple(a for a in range(masks.ndim) if a != axis))
    return int(np.argmax(counts)) if counts.any() else masks.shape[axis] // 2


def display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``[C, H, W]`` -> an RGB ``[H, W, 3]`` (C = 3) or grey ``[H, W]`` picture in [0, 1], windowed
    to the 1st-99th percentile of its intensities; and the colour map to show it with."""
    image = np.asarray(image, dtype=np.float64)
    picture = np.moveaxis(image, 0, -1) if image.shape[0] == 3 else image[0]
    low, high = np.percentile(picture, [1, 99]) if picture.size else (0.0, 1.0)
    scaled = np.clip((picture - low) / (high - low), 0.0, 1.0) if high > low else picture * 0
    return scaled, (None if scaled.ndim == 3 else "gray")


RATER_COLOURS = ("#00e5ff", "#ff4fd8", "#7CFC00", "#ff8c00", "#b39ddb", "#ffffff")
SAMPLE_COLOUR, CONSENSUS_COLOUR = "#ffd400", "#ff2d2d"
# One fixed scale for every case: the variance of a probability lies in [0, 1/4] (p = 1/2).
UNCERTAINTY_RANGE = (0.0, 0.25)
UNCERTAINTY_NAME = "variance of the samples (fixed 0-0.25 scale)"


def _finish(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _contour(ax: Axes, mask: np.ndarray, colour: str, width: float, alpha: float = 1.0) -> None:
    """The outline of every label of a label map (contour lines, never a fill)."""
    mask = np.asarray(mask)
    for label in np.unique(mask[mask > 0]):
        ax.contour(mask == label, levels=[0.5], colors=[colour], linewidths=width, alpha=alpha)


def representative_slices(masks: np.ndarray, uncertainty: np.ndarray, n: int = 3) -> list[int]:
    """3D: the slices (last axis) with the most foreground, the most uncertainty, and the
    centre; unique and sorted."""
    unc = np.asarray(uncertainty, dtype=np.float64)
    per_slice = unc.sum(axis=tuple(range(unc.ndim - 1)))
    picks = [most_foreground_slice(masks), int(np.argmax(per_slice)), unc.shape[-1] // 2]
    return sorted(dict.fromkeys(picks))[:n]


def overlay_figure(image: np.ndarray, raters: np.ndarray, samples: np.ndarray,
                   consensus: np.ndarray, uncertainty: np.ndarray, *, title: str = "",
                   n_samples: int | None = None, max_raters: int = 6) -> bytes:
    """Per view, four panels: the image; the raters' contours (one colour each); every sample's
    contour (thin) and the consensus (thick) in one view; the uncertainty (``UNCERTAINTY_RANGE``,
    the same colour scale for every case) with a colour bar. Arrays are ``[C, *sp]``,
    ``[R, *sp]``, ``[S, *sp]``, ``[*sp]``, ``[*sp]``; a 3D volume gives one row per
    representative slice (``representative_slices``)."""
    consensus = np.asarray(consensus)
    samples = np.asarray(samples)[:n_samples] if n_samples else np.asarray(samples)
    raters = np.asarray(raters)[:max_raters]
    views = [("", image, raters, samples, consensus, np.asarray(uncertainty))]
    if consensus.ndim == 3:
        slices = representative_slices(np.concatenate([raters, consensus[None]]), uncertainty)
        views = [(f"slice {k} of {consensus.shape[-1]}",
                  *(np.swapaxes(np.asarray(a)[..., k], -1, -2)
                    for a in (image, raters, samples, consensus[None], np.asarray(
                        uncertainty)[None])))
                 for k in slices]
        views = [(t, i, r, s, c[0], u[0]) for t, i, r, s, c, u in views]
    fig = Figure(figsize=(8.4, 2.3 * len(views)))
    axes = fig.subplots(len(views), 4, squeeze=False)
    for row, (label, img, rat, samp, cons, unc) in zip(axes, views, strict=True):
        picture, cmap = display_image(img)
        for ax in row[:3]:
            ax.imshow(picture, cmap=cmap, interpolation="nearest")
        _finish(row[0], f"image {label}".strip())
        for k, mask in enumerate(rat):
            _contour(row[1], mask, RATER_COLOURS[k % len(RATER_COLOURS)], 1.2)
        _finish(row[1], f"{len(rat)} rater(s)")
        for mask in samp:
            _contour(row[2], mask, SAMPLE_COLOUR, 0.6, 0.7)
        _contour(row[2], cons, CONSENSUS_COLOUR, 2.0)
        _finish(row[2], f"{len(samp)} samples, consensus thick")
        row[3].imshow(picture, cmap=cmap, interpolation="nearest", alpha=0.4)
        heat = row[3].imshow(unc, cmap="magma", vmin=UNCERTAINTY_RANGE[0],
                             vmax=UNCERTAINTY_RANGE[1], alpha=0.8, interpolation="nearest")
        fig.colorbar(heat, ax=row[3], fraction=0.046, pad=0.04)
        _finish(row[3], "uncertainty")
        if consensus.ndim == 3:
            for ax in row:
                ax.invert_yaxis()  # x to the right, y upwards: a RAS axial slice
    if title:
        fig.suptitle(title, fontsize=10)
    return to_png(fig)


# ---------------------------------------------------------------------------------------------
# summary figures


def metric_boxplots(per_case: Sequence[Mapping[str, Any]], metrics: Sequence[str],
                    columns: int = 5, titles: Mapping[str, str] | None = None) -> bytes | None:
    """One box plot (with the cases as dots) per metric over the cases; None/NaN left out.
    Returns None when no metric has a value."""
    series = {m: _finite([c.get(m) for c in per_case]) for m in metrics}
    series = {m: v for m, v in series.items() if v}
    if not series or max(len(v) for v in series.values()) < 2:
        return None  # a box plot of one case says nothing
    rows = math.ceil(len(series) / columns)
    fig = Figure(figsize=(2.3 * min(columns, len(series)), 2.4 * rows))
    axes = fig.subplots(rows, min(columns, len(series)), squeeze=False).ravel()
    for ax, (name, values) in zip(axes, series.items(), strict=False):
        ax.boxplot(values, widths=0.5, showmeans=True)
        offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
        ax.plot(1 + np.asarray(offsets), values, ".", color="#555555", alpha=0.6, markersize=4)
        ax.set_title(f"{(titles or {}).get(name, name)} (n={len(values)})", fontsize=9)
        ax.set_xticks([])
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=8)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.04, top=0.93, wspace=0.55, hspace=0.35)
    return to_png(fig, tight=False)


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def reliability_diagram(curve: Mapping[str, Sequence[Any]]) -> bytes:
    """Mean observed (rater-mean) vs mean predicted probability per bin with the diagonal, and
    below it the pixel count of each bin (log scale)."""
    centres = np.asarray(curve["bin_centres"], dtype=np.float64)
    predicted = np.asarray([np.nan if v is None else v for v in curve["mean_predicted"]], float)
    observed = np.asarray([np.nan if v is None else v for v in curve["mean_observed"]], float)
    counts = np.asarray(curve["counts"], dtype=np.float64)
    width = 1.0 / len(centres)
    fig = Figure(figsize=(4.6, 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "--", color="#888888", label="perfect calibration")
    top.bar(centres, np.nan_to_num(observed), width=width * 0.9, color="#4363d8", alpha=0.35,
            label="mean observed per bin")
    top.plot(predicted, observed, "o-", color="#e6194b", label="observed vs predicted")
    ece_text = f", ECE {curve['ece']:.4f}" if curve.get("ece") is not None else ""
    top.set_title(f"Reliability, pooled over cases{ece_text}", fontsize=10)
    top.set_ylabel("rater-mean foreground")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centres, np.maximum(counts, 1e-1), width=width * 0.9, color="#888888")
    bottom.set_yscale("log")
    bottom.set_xlabel("mean predicted foreground probability")
    bottom.set_ylabel("pixels")
    fig.subplots_adjust(hspace=0.08)
    return to_png(fig)

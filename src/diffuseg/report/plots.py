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
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 80
MASK_COLOURS = ListedColormap(
    ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c"])
MASK_ALPHA = 0.5


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


def _show_mask(ax: Axes, picture: np.ndarray, cmap: str | None, mask: np.ndarray,
               title: str) -> None:
    ax.imshow(picture, cmap=cmap, interpolation="nearest")
    labels = np.ma.masked_equal(np.asarray(mask), 0)
    ax.imshow(labels - 1, cmap=MASK_COLOURS, vmin=0, vmax=MASK_COLOURS.N - 1, alpha=MASK_ALPHA,
              interpolation="nearest")
    _finish(ax, title)


def _finish(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_figure(image: np.ndarray, raters: np.ndarray, samples: np.ndarray,
                   consensus: np.ndarray, uncertainty: np.ndarray, *, title: str = "",
                   n_samples: int = 4, max_raters: int = 6) -> bytes:
    """One row: the image, each rater's mask, the first ``n_samples`` samples and the consensus
    over the image, then the uncertainty heatmap. Arrays are ``[C, *sp]``, ``[R, *sp]``,
    ``[S, *sp]``, ``[*sp]``, ``[*sp]``; 3D volumes show the axial (last-axis) slice with the most
    foreground in the raters and the consensus."""
    consensus, origin = np.asarray(consensus), "upper"
    if consensus.ndim == 3:
        k = most_foreground_slice(np.concatenate([raters, consensus[None]]))
        title = f"{title} (slice {k} of {consensus.shape[-1]})".strip()
        # x to the right, y upwards: the usual view of a RAS axial slice
        image, raters, samples = (np.swapaxes(a[..., k], -1, -2) for a in (image, raters, samples))
        consensus, uncertainty = (np.asarray(a)[..., k].T for a in (consensus, uncertainty))
        origin = "lower"
    panels = _panels(raters[:max_raters], samples[:n_samples], consensus, len(raters))
    fig = Figure(figsize=(1.6 * (len(panels) + 2), 2.0))
    axes = fig.subplots(1, len(panels) + 2, squeeze=False)[0]
    picture, cmap = display_image(image)
    axes[0].imshow(picture, cmap=cmap, interpolation="nearest")
    _finish(axes[0], "image")
    for ax, (name, mask) in zip(axes[1:-1], panels, strict=True):
        _show_mask(ax, picture, cmap, mask, name)
    heat = axes[-1].imshow(np.asarray(uncertainty), cmap="magma", interpolation="nearest")
    fig.colorbar(heat, ax=axes[-1], fraction=0.046, pad=0.04)
    _finish(axes[-1], "variance")
    if origin == "lower":
        for ax in axes:
            ax.invert_yaxis()
    if title:
        fig.suptitle(title, fontsize=10)
    return to_png(fig)


def _panels(raters: np.ndarray, samples: np.ndarray, consensus: np.ndarray,
            n_raters: int) -> list[tuple[str, np.ndarray]]:
    shown = [(f"rater {k}", m) for k, m in enumerate(raters)]
    if n_raters > len(raters):
        shown[-1] = (f"rater {len(raters) - 1} (of {n_raters})", raters[-1])
    shown += [(f"sample {s}", m) for s, m in enumerate(samples)]
    return [*shown, ("consensus", consensus)]


# ---------------------------------------------------------------------------------------------
# summary figures


def metric_boxplots(per_case: Sequence[Mapping[str, Any]], metrics: Sequence[str],
                    columns: int = 5) -> bytes | None:
    """One box plot (with the cases as dots) per metric over the cases; None/NaN left out.
    Returns None when no metric has a value."""
    series = {m: _finite([c.get(m) for c in per_case]) for m in metrics}
    series = {m: v for m, v in series.items() if v}
    if not series:
        return None
    rows = math.ceil(len(series) / columns)
    fig = Figure(figsize=(2.3 * min(columns, len(series)), 2.4 * rows))
    axes = fig.subplots(rows, min(columns, len(series)), squeeze=False).ravel()
    for ax, (name, values) in zip(axes, series.items(), strict=False):
        ax.boxplot(values, widths=0.5, showmeans=True)
        offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
        ax.plot(1 + np.asarray(offsets), values, ".", color="#555555", alpha=0.6, markersize=4)
        ax.set_title(f"{name} (n={len(values)})", fontsize=9)
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

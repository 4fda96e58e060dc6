"""Pictures people can look at, beside the exact label maps that machines read.

For one case, ``write_previews`` writes:

- ``preview.png``: the image with CONTOURS (never fills) of the consensus (thick) and of every
  sample (thin lines), one colour per label;
- ``uncertainty_preview.png``: the per-pixel entropy of the samples' label shares (the binarized
  samples drawn in ``preview.png``; ``diffuseg.core.ensemble``) divided by log K (K = number of
  classes, 2 for a binary mask), i.e. **entropy in bits for a binary mask**, on the FIXED scale
  [0, 1] (0 = all samples agree, exactly; 1 = half of the samples each way), with a colour bar;
  the same scale for every case, so that two previews compare at a glance.

3D volumes show a few representative slices along the last axis: the slice with the most
consensus foreground, the one with the most uncertainty, and the centre slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABEL_COLOURS = ("#ffd400", "#00e5ff", "#ff4fd8", "#7CFC00", "#ff8c00", "#b39ddb")
UNCERTAINTY_SCALE = (0.0, 1.0)
UNCERTAINTY_LABEL = "entropy / log K (bits for a binary mask), fixed scale 0-1"


def display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``[C, H, W]`` -> an RGB (C == 3) or gray image in [0, 1] (1st-99th percentile window)."""
    img = image[:3].transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    lo, hi = np.percentile(img, (1, 99))
    img = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return img, (None if img.ndim == 3 else "gray")


def representative_slices(consensus: np.ndarray, uncertainty: np.ndarray, n: int = 3
                          ) -> list[int]:
    """Most foreground, most uncertainty and the centre, along the last axis (unique, sorted)."""
    depth = consensus.shape[-1]
    axes = tuple(range(consensus.ndim - 1))
    picks = [int(np.argmax((consensus > 0).sum(axis=axes))),
             int(np.argmax(uncertainty.sum(axis=axes))), depth // 2]
    return sorted(dict.fromkeys(picks))[:n]


def _views(image: np.ndarray, *maps: np.ndarray, slices: list[int] | None):
    """2D: one view; 3D: one per slice (arrays transposed so that rows run along axis 1)."""
    if slices is None:
        return [("", image, *maps)]
    return [(f"slice {k}", image[..., k].transpose(0, 2, 1),
             *[m[..., k].T for m in maps]) for k in slices]


def write_previews(case_dir: Path, image: np.ndarray, samples: np.ndarray, consensus: np.ndarray,
                   uncertainty: np.ndarray) -> list[str]:
    """``image [C, *spatial]``, ``samples [S, *spatial]`` and ``consensus [*spatial]`` label
    maps, ``uncertainty [*spatial]`` in [0, 1] -> the two PNGs (their names are returned)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    slices = representative_slices(consensus, uncertainty) if consensus.ndim == 3 else None
    views = _views(image, consensus, uncertainty, *samples, slices=slices)
    n = len(views)
    height, width = views[0][1].shape[-2:]
    panel = max(4.2, min(8.0, width / 80))  # 2D photos keep about their own pixel size
    names = []
    for kind in ("preview", "uncertainty_preview"):
        fig = Figure(figsize=(panel * n + (1.2 if kind != "preview" else 0),
                              panel * height / width + 0.8))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, n, squeeze=False)[0]
        for ax, (title, img, cons, unc, *samp) in zip(axes, views, strict=True):
            shown, cmap = display_image(img)
            ax.imshow(shown, cmap=cmap, interpolation="nearest")
            if kind == "preview":
                draw_contours(ax, cons, samp)
            else:
                im = ax.imshow(unc, cmap="magma", vmin=UNCERTAINTY_SCALE[0],
                               vmax=UNCERTAINTY_SCALE[1], alpha=0.85, interpolation="nearest")
            ax.set_title(title or ("consensus (thick) and samples (thin)" if kind == "preview"
                                   else "uncertainty"), fontsize=9)
            ax.set_axis_off()
        if kind == "preview":
            fig.suptitle(f"{len(samples)} samples, contours only", fontsize=9)
        else:
            fig.colorbar(im, ax=list(axes), fraction=0.04, pad=0.02).set_label(
                UNCERTAINTY_LABEL, fontsize=8)
        path = case_dir / f"{kind}.png"
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
        names.append(path.name)
    return names


def draw_contours(ax, consensus: np.ndarray, samples: list[np.ndarray]) -> None:
    labels = sorted((set(np.unique(consensus).tolist()) | {
        int(v) for s in samples for v in np.unique(s)}) - {0})  # the background has no contour
    for label in labels:
        colour = LABEL_COLOURS[(label - 1) % len(LABEL_COLOURS)]
        for sample in samples:
            if (sample == label).any():
                _contour(ax, sample == label, colors=[colour], linewidths=0.6, alpha=0.7)
        if (consensus == label).any():
            from matplotlib import patheffects

            lines = _contour(ax, consensus == label, colors=[colour], linewidths=2.2)
            lines.set(path_effects=[patheffects.withStroke(linewidth=4, foreground="black")])


def _contour(ax, mask: np.ndarray, **style):
    """The 0.5 contour of a boolean mask. matplotlib contours only grids of at least 2 x 2, so a
    mask one pixel high or wide (a 1 x 1 image) is padded with background on every side and
    drawn at its own pixel coordinates; the axes keep the image's limits."""
    if min(mask.shape) >= 2:
        return ax.contour(mask, levels=[0.5], **style)
    limits = ax.get_xlim(), ax.get_ylim()
    rows, cols = mask.shape
    lines = ax.contour(np.arange(-1, cols + 1), np.arange(-1, rows + 1),
                       np.pad(mask.astype(np.float64), 1), levels=[0.5], **style)
    ax.set_xlim(limits[0])
    ax.set_ylim(limits[1])
    return lines

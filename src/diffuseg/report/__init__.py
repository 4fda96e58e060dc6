"""The evaluation report: figures (``plots``) and the self-contained HTML page (``html``)."""

from diffuseg.report.html import build_report
from diffuseg.report.plots import (
    metric_boxplots,
    most_foreground_slice,
    overlay_figure,
    reliability_diagram,
)

__all__ = [
    "build_report",
    "metric_boxplots",
    "most_foreground_slice",
    "overlay_figure",
    "reliability_diagram",
]

"""The self-contained evaluation report: one HTML file, images inline as base64 PNG, inline CSS,
no scripts and no external resources. Every piece of text from the data is escaped
(``html.escape``); each function below renders one part of the page."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from diffuseg.evaluation.names import (
    METRIC_KEY,
    SAMPLED,
    UNIT_WORDS,
    available_samples,
    meaning,
    pretty,
    split_name,
    supported,
)
from diffuseg.evaluation.plots import UNCERTAINTY_NAME, metric_boxplots, reliability_diagram

N_WORST = 10
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.case { margin: 1em 0; padding-top: 0.3em; }
.metrics { font-size: 0.85em; color: #444; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; font-size: 0.85em; }
dt { font-weight: 600; } dd { margin: 0; }
"""


def build_report(summary: Mapping[str, Any], overlays: Mapping[str, bytes], *,
                 title: str = "diffuseg evaluation",
                 label_names: Mapping[int, str] | None = None) -> str:
    """The whole page from a summary (``diffuseg.evaluation.evaluate.build_summary``) and per-case
    overlay
    PNGs keyed by case id (cases without one are listed but not pictured). Metrics are shown with
    ``label_names`` (value -> name, from dataset.json), units (the summary's ``distance_unit``:
    mm, or px for images without a spacing; none shown when it is missing) and a plain-language
    key; metrics naming more samples than the cases have (GED100 with 16 samples) are left out."""
    per_case = sorted(summary.get("per_case", []), key=_badness)
    available = available_samples(summary)
    unit = summary.get("conventions", {}).get("distance_unit")
    mean = {k: v for k, v in summary.get("mean", {}).items() if supported(k, available)}
    anchors = case_anchors([c["case"] for c in per_case])
    names = dict(label_names or {})
    body = [
        header(summary, title),
        metric_key(mean, unit),
        conventions(summary.get("conventions", {})),
        mean_table(mean, names, unit),
        worst_table(per_case, anchors, overlays, names=names, available=available, unit=unit),
        figures({**summary, "mean": mean, "label_names": names}, per_case),
        case_sections(per_case, overlays, anchors, names, unit),
    ]
    return page(title, "\n".join(body))


def _badness(case: Mapping[str, Any]) -> tuple[bool, float]:
    """Worst first: lowest consensus Dice (cases without a Dice last)."""
    return (case.get("dice") is None, case.get("dice") or 0.0)


def metric_key(mean: Mapping[str, Any], unit: str | None = None) -> str:
    """What each metric in the report means, in plain words."""
    bases = list(dict.fromkeys(split_name(name)[0] for name in [*mean, "n_samples"]))
    items = "".join(f"<dt>{esc(pretty(b, distance_unit=unit))}</dt>"
                    f"<dd>{esc(meaning(b, unit))}</dd>" for b in bases if b in METRIC_KEY)
    items += (f"<dt>uncertainty panel</dt><dd>{esc(UNCERTAINTY_NAME)}: dark = the samples "
              "agree, bright = they disagree; the same colours in every case</dd>"
              "<dt>contours</dt><dd>outlines only, never fills: raters in their own colours, "
              "every sample as a thin yellow line, the consensus as a thick red line</dd>")
    return f"<h2>What the numbers mean</h2>\n<dl>{items}</dl>"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
            "</body>\n</html>\n")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def fmt(value: Any) -> str:
    """Numbers with 4 significant digits; None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    return esc(value)


def case_anchors(case_ids: Sequence[str]) -> dict[str, str]:
    """An HTML id for each case: ``case-<index>-<id with unsafe characters as _>``."""
    return {cid: f"case-{i}-{re.sub(r'[^A-Za-z0-9_.-]', '_', cid)}"
            for i, cid in enumerate(case_ids)}


def plain(value: Any) -> str:
    """A value as words and numbers, never a Python repr: None -> "none", lists joined with
    commas, ``{"min": 8, "max": 16}`` -> "8 to 16" ("16" when equal), other dicts as
    "key value; key value"."""
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        if set(value) == {"min", "max"}:
            low, high = value["min"], value["max"]
            return plain(low) if low == high else f"{plain(low)} to {plain(high)}"
        return "; ".join(f"{k} {plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def header(summary: Mapping[str, Any], title: str) -> str:
    conv = summary.get("conventions", {})
    rows = {
        "cases": summary.get("n_cases"),
        "run": summary.get("run"),
        "config sha256": summary.get("config_hash"),
        "samples per case": conv.get("n_samples_available"),
        "sample counts requested": conv.get("n_samples_requested"),
    }
    if "n_samples_reported" in conv:
        rows["sample counts reported"] = conv["n_samples_reported"]
    if conv.get("distance_unit"):
        rows["distances"] = UNIT_WORDS.get(conv["distance_unit"], conv["distance_unit"])
    unmatched = summary.get("unmatched_predictions") or []
    if unmatched:
        rows["ignored folders"] = ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10
                                                              else "")
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(plain(v))}</dd>" for k, v in rows.items())
    return f"<h1>{esc(title)}</h1>\n<dl>{items}</dl>"


def mean_table(mean: Mapping[str, Mapping[str, Any]],
               label_names: Mapping[int, str] | None = None, unit: str | None = None) -> str:
    """metric | mean ± std | n | NaN."""
    rows = "".join(
        f"<tr><td>{esc(pretty(name, label_names, unit))} <small>{esc(name)}</small></td>"
        f"<td>{fmt(s.get('mean'))} &plusmn; {fmt(s.get('std'))}</td>"
        f"<td>{fmt(s.get('n'))}</td><td>{fmt(s.get('n_nan'))}</td></tr>"
        for name, s in mean.items())
    return ("<h2>Mean over cases</h2>\n<table><tr><th>metric</th><th>mean &plusmn; std</th>"
            f"<th>n</th><th>NaN</th></tr>{rows}</table>")


WORST_COLUMNS = ("dice", "iou", "hd95", "ged", "hm_iou", "ece")  # ged: the smallest count


def by_count(keys: Iterable[str], base: str) -> list[str]:
    """The whole-mask keys of a sampled metric, by sample count: ``ged_16``, ``ged_100`` (no
    per-label values, no CI components)."""
    found = {}
    for key in keys:
        b, count, label, rest = split_name(key)
        if b == base and count is not None and label is None and not rest:
            found[count] = key
    return [found[c] for c in sorted(found)]


def metric_columns(bases: Sequence[str], keys: Iterable[str], all_counts: bool) -> list[str]:
    """The keys of ``bases`` among ``keys``, in that order; a sampled metric (GED) with every
    count reported (``all_counts``) or with its smallest."""
    keys = list(dict.fromkeys(keys))
    out = []
    for base in bases:
        if base in SAMPLED:
            counts = by_count(keys, base)
            out += counts if all_counts else counts[:1]
        elif base in keys:
            out.append(base)
    return out


def worst_table(per_case: Sequence[Mapping[str, Any]], anchors: Mapping[str, str],
                overlays: Mapping[str, bytes], n: int = N_WORST, *,
                names: Mapping[int, str] | None = None, available: int | None = None,
                unit: str | None = None) -> str:
    """The n cases of lowest consensus Dice, each linked to its overlay."""
    ranked = sorted(per_case, key=_badness)[:n]
    keys = [k for case in per_case for k in case if supported(k, available)]
    columns = metric_columns(WORST_COLUMNS, keys, all_counts=False)
    head = "".join(f"<th>{esc(pretty(c, names, unit))}</th>" for c in columns)
    rows = []
    for rank, case in enumerate(ranked, 1):
        cid = case["case"]
        name = (f'<a href="#{esc(anchors[cid])}">{esc(cid)}</a>' if cid in overlays
                else esc(cid))
        cells = "".join(f"<td>{fmt(case.get(c))}</td>" for c in columns)
        rows.append(f"<tr><td>{rank}. {name}</td>{cells}</tr>")
    return (f"<h2>Worst cases by consensus Dice</h2>\n<table><tr><th>case</th>{head}</tr>"
            f"{''.join(rows)}</table>")


def figures(summary: Mapping[str, Any], per_case: Sequence[Mapping[str, Any]]) -> str:
    """Box plots of every metric in the mean table, and the pooled reliability diagram."""
    parts = []
    names = summary.get("label_names")
    unit = summary.get("conventions", {}).get("distance_unit")
    boxes = metric_boxplots(per_case, list(summary.get("mean", {})),
                            titles={m: pretty(m, names, unit) for m in summary.get("mean", {})})
    if boxes is not None:
        parts.append(img_tag(boxes, "metric distributions over cases"))
    curve = summary.get("reliability")
    if curve and sum(curve.get("counts", [])) > 0:
        parts.append(img_tag(reliability_diagram(curve), "reliability diagram"))
    return f"<h2>Distributions and calibration</h2>\n<div class=\"figures\">{''.join(parts)}</div>"


def case_sections(per_case: Sequence[Mapping[str, Any]], overlays: Mapping[str, bytes],
                  anchors: Mapping[str, str], names: Mapping[int, str] | None = None,
                  unit: str | None = None) -> str:
    shown = sorted((c for c in per_case if c["case"] in overlays), key=_badness)
    note = (f"<p>Worst first (lowest consensus Dice); showing {len(shown)} of {len(per_case)} "
            "cases.</p>")
    sections = "\n".join(case_section(c, overlays[c["case"]], anchors[c["case"]], names, unit)
                         for c in shown)
    return f'<div id="cases">\n<h2>Cases</h2>\n{note}\n{sections}\n</div>'


CASE_METRICS = ("dice", "hd95", "assd", "ged", "hm_iou", "ci", "ece", "s_ncc",
                "uncertainty_error_overlap", "n_samples")  # ged, hm_iou, ci: every count


def case_section(case: Mapping[str, Any], png: bytes, anchor: str,
                 names: Mapping[int, str] | None = None, unit: str | None = None) -> str:
    """The overlay figure of one case with a line of its main metrics (a sampled metric only
    for counts the case has samples for)."""
    cid = case["case"]
    keys = [k for k in case if supported(k, case.get("n_samples"))]
    values = " &middot; ".join(f"{esc(pretty(k, names, unit))} {fmt(case[k])}"
                               for k in metric_columns(CASE_METRICS, keys, all_counts=True))
    return (f'<section class="case" id="{esc(anchor)}">\n<h3>{esc(cid)}</h3>\n'
            f'<p class="metrics">{values}</p>\n{img_tag(png, f"overlays of {cid}")}\n</section>')


def conventions(conv: Mapping[str, Any]) -> str:
    """The metric conventions the numbers depend on (also in summary.json)."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(plain(v))}</dd>" for k, v in conv.items())
    return f"<details><summary>Metric conventions</summary>\n<dl>{items}</dl></details>"

"""The self-contained HTML report: structure, escaping, the 3D slice choice, and a render in
headless Chromium (skipped when Chromium is not installed; CI installs it with
``apt-get install -y chromium``)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.core.ensemble import summarise
from diffuseg.data import Dataset, majority_mask, write_phantom_dataset
from diffuseg.evaluation.evaluate import evaluate
from diffuseg.evaluation.html import build_report, plain
from diffuseg.evaluation.plots import most_foreground_slice, overlay_figure
from diffuseg.inference.prediction_folder import write_result

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
                  "--v=0"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report over 2 phantom cases; samples are the 3 raters and their majority."""
    root = tmp_path_factory.mktemp("report")
    dataset = write_phantom_dataset(root / "ds", n_cases=2, spatial_dims=2, size=32, n_raters=3,
                                    seed=0)
    for case in Dataset.open(dataset).cases:
        data = case.load()
        samples = np.concatenate([data.raters, majority_mask(data.raters)[None]])
        result = summarise(torch.from_numpy(samples.astype(np.float32))[:, None, None])
        write_result(result, data.geometry, root / "pred" / case.case_id, source=Path("x"))
    evaluate(root / "pred", dataset, root / "out")
    return root / "out" / "report.html"


class Elements(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def parse(text: str) -> list[tuple[str, dict[str, str]]]:
    parser = Elements()
    parser.feed(text)
    return parser.tags


def test_report_is_self_contained(report):
    text = report.read_text()
    tags = parse(text)
    names = {tag for tag, _ in tags}
    assert not names & {"script", "link", "iframe", "object", "embed"}
    assert "url(" not in text and "@import" not in text
    images = [a["src"] for tag, a in tags if tag == "img"]
    assert len(images) == 2 + 2  # box plots, reliability diagram, one overlay per case
    for src in images:
        assert src.startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert picture.format == "PNG" and min(picture.size) > 50
    ids = {a["id"] for _, a in tags if "id" in a}
    links = [a["href"] for tag, a in tags if tag == "a"]
    assert len(links) == 2  # the worst-case table links each case to its overlay
    assert all(href.startswith("#") and href[1:] in ids for href in links)


def test_report_holds_means_and_conventions(report):
    text = report.read_text()
    for needle in ("Mean over cases", "Metric conventions", "D2_GED", "What the numbers mean",
                   "HD95 (px)", "GED4", "phantom_0000", "phantom_0001", "&plusmn;"):
        assert needle in text
    assert "(mm)" not in text  # PNG phantom: no spacing, distances in pixels
    # 4 samples per case: reported as GED4; GED16 and GED100 would repeat GED4's samples
    assert "ged_16" not in text and "ged_100" not in text


def test_report_header_shows_numbers_not_python_dicts(report):
    """The header (title to the first section) and the conventions list give "4" and "16, 100",
    not "{'min': 4, 'max': 4}" or "[16, 100]"."""
    text = report.read_text()
    head = text[text.index("<h1>"):text.index("<h2>")]
    assert "{" not in head and "[" not in head and "'" not in head
    assert "<dt>samples per case</dt><dd>4</dd>" in head
    assert "<dt>sample counts requested</dt><dd>16, 100</dd>" in head
    assert "<dt>sample counts reported</dt><dd>4</dd>" in head
    conventions = text[text.index("<details>"):text.index("</details>")]
    assert "{" not in conventions and "[16" not in conventions


def test_plain_values():
    assert plain({"min": 8, "max": 16}) == "8 to 16" and plain({"min": 3, "max": 3}) == "3"
    assert plain([16, 100]) == "16, 100" and plain(None) == "none" and plain(0.123456) == "0.1235"
    assert plain({"a": 1, "b": [2, 3]}) == "a 1; b 2, 3"


def test_report_for_a_clinician():
    """Label names, units, a key to every metric, worst case first, no box plot for n = 1,
    GED100 only where 100 samples exist."""
    png = overlay_figure(np.zeros((1, 8, 8)), np.zeros((2, 8, 8), int), np.zeros((1, 8, 8), int),
                         np.zeros((8, 8), int), np.zeros((8, 8)))
    stat = {"mean": 0.5, "std": 0.1, "n": 2, "n_nan": 0}
    summary = {"n_cases": 2, "conventions": {"n_samples_available": {"min": 16, "max": 16},
                                             "distance_unit": "mm"},
               "mean": {"dice_1": stat, "hd95": stat, "ged_16": stat, "ged_100": stat},
               "per_case": [{"case": "good", "dice": 0.9, "dice_1": 0.9, "ged_16": 0.2},
                            {"case": "bad", "dice": 0.1, "dice_1": 0.1, "ged_16": 0.7}]}
    text = build_report(summary, {"good": png, "bad": png}, label_names={1: "Anterior"})
    assert "Dice (Anterior)" in text and "HD95 (mm)" in text and "GED16" in text
    assert "GED100" not in text and "ged_100" not in text
    assert "generalised energy distance" in text  # the plain-language key
    assert text.index('id="case-0-bad"') < text.index('id="case-1-good"')  # worst first
    unknown = {**summary, "conventions": {"n_samples_available": {"min": 16, "max": 16}}}
    assert "HD95 (" not in build_report(unknown, {})  # no unit claimed when none is known
    one = {**summary, "n_cases": 1, "per_case": summary["per_case"][:1]}
    assert "metric distributions" not in build_report(one, {})  # no box plot for one case


def test_text_is_escaped():
    png = overlay_figure(np.zeros((1, 8, 8)), np.zeros((2, 8, 8), int), np.zeros((1, 8, 8), int),
                         np.zeros((8, 8), int), np.zeros((8, 8)))
    case = '<script>alert("x")</script>'
    summary = {"n_cases": 1, "conventions": {"note": "a < b & c"},
               "mean": {"dice": {"mean": 1.0, "std": 0.0, "n": 1, "n_nan": 0}},
               "per_case": [{"case": case, "dice": 1.0}]}
    text = build_report(summary, {case: png}, title="<b>title</b>")
    assert "<script>" not in text and "<b>title" not in text
    assert "&lt;script&gt;" in text and "a &lt; b &amp; c" in text
    assert not {tag for tag, _ in parse(text)} & {"script", "b"}


def test_3d_overlay_shows_the_slice_with_most_foreground():
    masks = np.zeros((2, 6, 6, 5), int)
    masks[0, 1:3, 1:3, 1] = 1  # 4 voxels in slice 1
    masks[1, 1:4, 1:4, 3] = 1  # 9 voxels in slice 3
    assert most_foreground_slice(masks) == 3
    assert most_foreground_slice(np.zeros((2, 6, 6, 5))) == 2  # empty: the middle slice
    png = overlay_figure(np.random.default_rng(0).random((1, 6, 6, 5)), masks, masks,
                         masks[1], np.zeros((6, 6, 5)))
    assert Image.open(io.BytesIO(png)).format == "PNG"


def screenshot(page: Path, out: Path, size: str = "1200,3000") -> tuple[np.ndarray, str]:
    """Render ``page`` in headless Chromium; the screenshot as RGB and Chromium's stderr."""
    run = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={out.parent / (out.stem + '_profile')}",
         f"--screenshot={out}", f"--window-size={size}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # the report has no scripts: any console message is an error
    return np.asarray(Image.open(out).convert("RGB")), run.stderr


def ink(rgb: np.ndarray) -> tuple[float, int]:
    """The fraction of pixels that are not near-white, and the number of strongly coloured
    pixels (max - min channel > 60: mask overlays and the heatmap, never grey text)."""
    chroma = rgb.max(axis=-1).astype(int) - rgb.min(axis=-1)
    return float((rgb.min(axis=-1) < 240).mean()), int((chroma > 60).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                    "chromium); it renders the report")
def test_report_renders_in_chromium(report, tmp_path):
    whole, _ = screenshot(report, tmp_path / "whole.png")
    assert ink(whole)[1] > 1000
    # the overlays alone: hide everything but the cases section, then the same with the images
    # emptied (the control shows what a page whose images failed to render looks like)
    only_cases = "<style>body > :not(#cases) { display: none !important; }</style></head>"
    text = report.read_text().replace("</head>", only_cases, 1)
    (tmp_path / "cases.html").write_text(text)
    (tmp_path / "blank.html").write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""',
                                                text))
    inked, coloured = ink(screenshot(tmp_path / "cases.html", tmp_path / "c.png", "1200,1000")[0])
    blank_inked, blank_coloured = ink(
        screenshot(tmp_path / "blank.html", tmp_path / "b.png", "1200,1000")[0])
    # 2 cases x 8 mask panels, each lesion ~25 of 32 x 32 pixels shown ~3x enlarged (9x the
    # area): ~3 x 10^3 coloured pixels expected; text and a broken-image icon have few
    assert coloured > 1000 and coloured > 20 * blank_coloured, (coloured, blank_coloured)
    assert inked > 5 * blank_inked, (inked, blank_inked)

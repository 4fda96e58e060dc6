"""The review page in headless Chromium (Debian's chromium driven by Playwright): it renders the
image, overlays and modes, a brush stroke reaches the approved mask on disk and the audit trail,
and the keyboard shortcuts work. Skipped when chromium or playwright is absent."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
from dicom_synth import write_series  # noqa: E402
from PIL import Image  # noqa: E402
from review_helpers import (  # noqa: E402
    ANN_TOKEN,
    make_app,
    make_job,
    tiny_multiclass_run,
    tiny_run,
)

from diffuseg.inference.prediction_folder import read_float_map  # noqa: E402
from diffuseg.inference.predictor import Predictor  # noqa: E402
from diffuseg.io import read_mask  # noqa: E402
from diffuseg.review.audit import read_events  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = os.environ.get("DIFFUSEG_SCREENSHOTS")  # keep screenshots there when set

if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run, data = tiny_run(root)
    predictor = Predictor.from_run(run)
    data_dir = root / "data"
    ids = {f"job{i}": make_job(data_dir, predictor, image)
           for i, image in enumerate(sorted((data / "imagesTr").iterdir())[:2])}
    run3, data3 = tiny_run(root / "3d", size=16, spatial_dims=3,
                           extra=["data.patch_size=[16,16,16]"])
    ids["vol"] = make_job(data_dir, Predictor.from_run(run3),
                          sorted((data3 / "imagesTr").iterdir())[0], n_samples=3)
    series, _ = write_series(root / "series")  # Synthetic^Phantom, 20260101, synthetic oblique
    ids["dcm"] = make_job(data_dir, Predictor.from_run(run3), series, n_samples=2)
    for base in serve(make_app(data_dir, run)):
        yield base, data_dir, ids


def serve(app):
    """Yields the base URL of ``app`` served by uvicorn in a thread, stopped afterwards."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as err:  # noqa: BLE001 - any launch failure is a skip reason
            pytest.skip(f"chromium does not start: {err}")
        yield b
        b.close()


def canvas_pixels(page, name: str) -> np.ndarray:
    png = page.locator("#view").screenshot()
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        (Path(SHOTS) / f"{name}.png").write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def open_job(browser, base: str, job: str):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/review/{job}?token={ANN_TOKEN}")
    page.wait_for_selector("body[data-state=ready]", timeout=20000)
    return page, errors


def test_overlays_modes_brush_and_approve(server, browser):
    base, data_dir, ids = server
    page, errors = open_job(browser, base, ids["job0"])
    plain = canvas_pixels(page, "01_consensus")
    assert plain.std() > 10 and len(np.unique(plain.reshape(-1, 3), axis=0)) > 50  # not blank
    consensus, _ = read_mask(data_dir / "jobs" / ids["job0"] / "output/consensus.png")
    yellow = (plain == [255, 230, 0]).all(-1).sum()
    assert yellow > 20 if 0 < consensus.mean() < 1 else yellow == 0  # the consensus contour
    page.keyboard.press("p")
    page.keyboard.press("u")
    overlays = canvas_pixels(page, "02_probability_uncertainty")
    # the overlays show where a map reaches the page's floor (0.1): the share of samples or their
    # entropy; where every sample agrees both are 0 and nothing is drawn
    output = data_dir / "jobs" / ids["job0"] / "output"
    shown = (read_float_map(output / "probability.png") >= 0.1) | (
        read_float_map(output / "entropy.png") >= 0.1)
    changed = np.abs(overlays - plain).sum(-1).astype(bool).mean()
    assert changed > 0 if shown.any() else changed == 0
    assert page.locator("#colorbars canvas").count() == 2
    summary = page.locator("#modes-summary").inner_text()
    k = int(summary.split()[0])
    assert "plausible contour" in summary and page.locator("#modes li").count() == k
    page.keyboard.press("p")
    page.keyboard.press("u")

    # map values below the page's floor (0.1) are not drawn, they would veil the whole image:
    # both maps set to a ramp over 0..255, compared with and without the overlays
    ramp = page.evaluate("""() => {
        const a = new Uint8Array(S.H * S.W * S.D).map((_, i) => (i * 7) % 256);
        S.maps.probability = a; S.maps.entropy = a; render(); return Array.from(a); }""")
    ramp = np.array(ramp).reshape(consensus.shape)
    page.keyboard.press("c")  # no contour drawn over the maps
    before = canvas_pixels(page, "02b_ramp_plain")
    page.keyboard.press("p")
    page.keyboard.press("u")
    after = canvas_pixels(page, "02c_ramp_overlays")
    page.keyboard.press("p")
    page.keyboard.press("u")
    page.keyboard.press("c")
    zoom = before.shape[0] // consensus.shape[0]
    centre = (slice(zoom // 2, None, zoom), slice(zoom // 2, None, zoom))
    drawn = np.abs(after[centre] - before[centre]).sum(-1) > 0
    floor = 255 * page.evaluate("() => FLOOR")
    free = consensus == 0  # outside the working mask (it starts as the consensus)
    assert (ramp[free] < floor).any() and (ramp[free] >= floor).any()
    assert (drawn[free] == (ramp[free] >= floor)).all()

    # a brush stroke where the consensus is empty (a row without foreground)
    row = int(np.flatnonzero(~consensus.any(1))[0])
    box = page.locator("#view").bounding_box()
    h, w = consensus.shape

    def at(r: float, c: float) -> tuple[float, float]:
        return box["x"] + (c + 0.5) * box["width"] / w, box["y"] + (r + 0.5) * box["height"] / h

    page.keyboard.press("b")
    page.mouse.move(*at(row, 4))
    page.mouse.down()
    for c in range(5, 13):
        page.mouse.move(*at(row, c))
    page.mouse.up()
    page.wait_for_selector("body[data-edits='1']", timeout=10000)
    canvas_pixels(page, "03_brush_stroke")
    page.fill("#comment", "stroke added in the test")
    page.click("#approve")
    page.wait_for_selector("body[data-state=approved]", timeout=10000)
    assert "approved by ann" in page.locator("#decision").inner_text()
    saved, _ = read_mask(data_dir / "jobs" / ids["job0"] / "approved/approved_mask.png")
    assert saved[row, 4:13].all()  # the stroke is in the stored mask
    assert not saved[row].all() or w <= 13
    events = [e for e in read_events(data_dir) if e["job"] == ids["job0"]]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "view" and "edit" in kinds and kinds[-1] == "approve"
    approve = events[-1]
    assert approve["user"] == "ann" and approve["edited_voxels"] >= 9
    assert approve["comment"] == "stroke added in the test" and approve["seconds_open"] > 0
    assert errors == []
    page.close()


def test_keyboard_shortcuts(server, browser):
    base, data_dir, ids = server
    page, errors = open_job(browser, base, ids["job1"])
    checked = "(id) => document.getElementById(id).checked"
    assert page.evaluate(checked, "ov-consensus")
    page.keyboard.press("c")
    assert not page.evaluate(checked, "ov-consensus")
    page.keyboard.press("e")
    assert page.evaluate("() => document.querySelector('input[name=tool]:checked').value") == \
        "eraser"
    page.keyboard.press("i")
    assert page.evaluate("() => document.querySelector('input[name=tool]:checked').value") == \
        "inside"
    # the initial zoom is the largest whose canvas fits beside the panel and in 80 % of the height
    fit = page.evaluate("""() => [S.zoom, S.W, S.H, document.getElementById('left').clientWidth,
                                  innerHeight * 0.8]""")
    zoom, w, h, free_w, free_h = fit
    assert zoom * w <= free_w and zoom * h <= free_h
    assert (zoom + 1) * w > free_w - 4 or (zoom + 1) * h > free_h - 4 or zoom == 32
    assert page.locator("#view").bounding_box()["width"] == zoom * w
    # no colour of the probability or uncertainty ramps comes near the consensus contour's yellow
    for name in ("plasma", "mako"):
        ramp = np.array(page.evaluate(f"() => [...Array(101).keys()].map((t) => {name}(t / 100))"))
        assert np.abs(ramp - [255, 230, 0]).sum(-1).min() > 200, name
    width = page.locator("#view").bounding_box()["width"]
    page.keyboard.press("-")
    assert page.locator("#view").bounding_box()["width"] < width
    page.keyboard.press(".")
    assert page.locator("#sample-label").inner_text().startswith("sample 2 of")
    assert page.evaluate(checked, "ov-sample")
    page.keyboard.press("g")
    page.keyboard.press("]")
    assert page.locator("#agree-label").inner_text().startswith("pixels where \u2265 2 of")
    page.keyboard.press("m")
    assert page.evaluate("() => document.getElementById('unc-kind').value") == \
        "mutual_information"
    page.keyboard.press("?")
    assert page.locator("#help-tab").is_visible()
    assert "Shift+" in page.locator("#shortcuts").inner_text()
    canvas_pixels(page, "04_shortcuts_agreement_sample")

    # guided resampling from the page: one pixel marked inside (tool I), Shift+R
    page.click(".tab[data-tab=review-tab]")
    page.keyboard.press("i")
    box = page.locator("#view").bounding_box()
    page.mouse.click(box["x"] + 16.5 * box["width"] / 32, box["y"] + 20.5 * box["height"] / 32)
    page.keyboard.press("c")  # consensus contour back on: the marks stay visible over it
    marked = canvas_pixels(page, "04b_marks")
    zoom = marked.shape[0] // 32
    for r in range(19, 22):
        for c in range(15, 18):
            assert (marked[r * zoom + zoom // 2, c * zoom + zoom // 2] == [0, 255, 0]).all()
    page.keyboard.press("Shift+R")
    page.wait_for_selector("#original:not([disabled])", timeout=60000)
    assert "(guided)" in page.locator("#sample-label").inner_text()
    page.keyboard.press("1")  # start from the first guided mode: named so in the approval
    assert page.locator("#edit-summary").inner_text().startswith("Start: guided mode 1;")
    canvas_pixels(page, "05_guided")
    guided = sorted((data_dir / "jobs" / ids["job1"] / "guided").glob("sample_*.png"))
    assert len(guided) >= 8
    assert all(read_mask(p)[0][19:22, 15:18].all() for p in guided)  # radius 1 around (20, 16)
    assert read_events(data_dir)[-1]["event"] == "resample"
    page.keyboard.press("Shift+X")
    page.wait_for_selector("body[data-state=rejected]", timeout=10000)
    assert read_events(data_dir)[-1]["event"] == "reject"
    assert errors == []
    page.close()


def test_3d_slices_scroll_and_a_stroke_lands_on_its_slice(server, browser):
    base, data_dir, ids = server
    page, errors = open_job(browser, base, ids["vol"])
    assert page.locator("#slice-label").inner_text() == "9 / 16"  # starts in the middle
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    assert page.locator("#slice-label").inner_text() == "11 / 16"
    box = page.locator("#view").bounding_box()
    page.keyboard.press("b")
    page.keyboard.press("q")  # radius 2 -> 1
    page.mouse.move(box["x"] + 2.5 * box["width"] / 16, box["y"] + 3.5 * box["height"] / 16)
    page.mouse.down()
    page.mouse.move(box["x"] + 6.5 * box["width"] / 16, box["y"] + 3.5 * box["height"] / 16)
    page.mouse.up()
    page.wait_for_selector("body[data-edits='1']", timeout=10000)
    page.keyboard.press("0")  # start again from the consensus ...
    page.keyboard.press("z")  # ... and undo that: the stroke is back
    page.keyboard.press("Shift+A")
    page.wait_for_selector("body[data-state=approved]", timeout=10000)
    saved, _ = read_mask(data_dir / "jobs" / ids["vol"] / "approved/approved_mask.nii.gz")
    consensus, _ = read_mask(data_dir / "jobs" / ids["vol"] / "output/consensus.nii.gz")
    assert saved[3, 2:7, 10].all()  # rows x columns of slice 11 (index 10)
    changed = np.argwhere(saved != consensus)
    assert len(changed) and (changed[:, 2] == 10).all()  # only that slice changed
    edit = [e for e in read_events(data_dir) if e["job"] == ids["vol"] and e["event"] == "edit"]
    assert edit[-1]["slice"] == 10
    assert errors == []
    page.close()


def test_worklist_lists_the_jobs(server, browser):
    base, _, ids = server
    page = browser.new_page()
    page.goto(f"{base}/review?token={ANN_TOKEN}")
    page.wait_for_selector("#jobs tr >> nth=1", timeout=10000)
    text = page.locator("#jobs").inner_text()
    assert ids["job0"] in text and ids["job1"] in text and "approved by ann" in text
    rows = {row.split("\t")[0]: row.split("\t") for row in text.splitlines()}
    assert rows[ids["dcm"]][1:4] == ["Synthetic, Phantom", "2026-01-01", "synthetic oblique"]
    assert rows[ids["job0"]][1:4] == ["\u2014"] * 3  # a PNG job: no patient, date or series
    page.close()


def test_review_header_names_patient_study_date_and_series(server, browser):
    base, _, ids = server
    page, errors = open_job(browser, base, ids["dcm"])
    assert page.locator("#study").inner_text() == \
        "Synthetic, Phantom \u00b7 2026-01-01 \u00b7 synthetic oblique"
    page.close()
    page, more = open_job(browser, base, ids["job0"])
    assert page.locator("#study").inner_text() == "\u2014 \u00b7 \u2014 \u00b7 \u2014"
    assert errors == more == []
    page.close()


@pytest.fixture(scope="module")
def server3(tmp_path_factory):
    """A K = 3 run ('anterior' 1, 'posterior' 2) served with one finished job."""
    root = tmp_path_factory.mktemp("browser3")
    run, data = tiny_multiclass_run(root)
    data_dir = root / "data"
    job = make_job(data_dir, Predictor.from_run(run), sorted((data / "imagesTr").iterdir())[0])
    for base in serve(make_app(data_dir, run)):
        yield base, data_dir, job


def test_multiclass_job_brush_paints_the_active_label(server3, browser):
    base, data_dir, job = server3
    page, errors = open_job(browser, base, job)
    assert page.locator("#label-row").is_visible()
    assert page.locator("#label option").all_inner_texts() == ["1 anterior", "2 posterior"]
    legend = page.locator("#colorbars").inner_text()
    assert "anterior" in legend and "posterior" in legend
    # the consensus contour is drawn per label in its own colour: a synthetic consensus with
    # a square of each label, the working mask emptied so that only the contours show
    colours = page.evaluate("""() => {
        const saved = [S.consensus, S.working];
        S.consensus = new Uint8Array(S.H * S.W);
        S.working = new Uint8Array(S.H * S.W);
        for (let r = 4; r < 12; r++) for (let c = 4; c < 12; c++) {
            S.consensus[r * S.W + c] = 1; S.consensus[(r + 14) * S.W + c + 14] = 2; }
        render(); [S.consensus, S.working] = saved; return [labelColor(1), labelColor(2)]; }""")
    drawn = canvas_pixels(page, "06a_multiclass_contours")
    zoom = drawn.shape[0] // 32
    for k, (r, c) in ((0, (4, 8)), (1, (18, 22))):  # top edge of each square
        assert (drawn[r * zoom + zoom // 2, c * zoom + zoom // 2] == colours[k]).all()
    assert colours[0] != colours[1]
    page.evaluate("() => render()")

    # probability overlay of a K > 1 run: the share of samples with the active label, drawn
    # where it reaches the floor (label 2 here), compared with and without the overlay
    page.select_option("#label", "2")
    page.keyboard.press("c")
    samples = np.array(page.evaluate("() => Array.from(S.samples)")).reshape(-1, 32, 32)
    before = canvas_pixels(page, "06b_multiclass_plain")
    page.keyboard.press("p")
    after = canvas_pixels(page, "06c_multiclass_probability_label2")
    assert "share of samples with label 2 posterior" in page.locator("#colorbars").inner_text()
    page.keyboard.press("p")
    page.keyboard.press("c")
    share = (samples == 2).mean(0)
    assert (share >= 0.1).any() and (share < 0.1).any()
    centre = (slice(zoom // 2, None, zoom), slice(zoom // 2, None, zoom))
    drawn = np.abs(after[centre] - before[centre]).sum(-1) > 0
    assert (drawn == (share >= 0.1)).all()  # not 1 - p(background): label 1 alone is not drawn
    page.select_option("#label", "1")
    page.keyboard.press("l")  # L: next label
    assert page.evaluate("() => S.label") == 2
    page.keyboard.press("Shift+L")
    assert page.evaluate("() => S.label") == 1
    page.select_option("#label", "2")
    assert page.evaluate("() => S.label") == 2
    box = page.locator("#view").bounding_box()

    def at(r: float, c: float) -> tuple[float, float]:
        return box["x"] + (c + 0.5) * box["width"] / 32, box["y"] + (r + 0.5) * box["height"] / 32

    page.keyboard.press("b")
    page.keyboard.press("q")  # radius 2 -> 1
    page.mouse.move(*at(4, 4))
    page.mouse.down()
    for c in range(5, 13):
        page.mouse.move(*at(4, c))
    page.mouse.up()
    page.wait_for_selector("body[data-edits='1']", timeout=10000)
    canvas_pixels(page, "06_multiclass_label2")
    assert page.evaluate("() => S.working[idx(4, 8)]") == 2
    page.select_option("#label", "1")  # the eraser clears the active label only
    page.keyboard.press("e")
    page.mouse.click(*at(4, 8))
    assert page.evaluate("() => S.working[idx(4, 8)]") == 2
    page.select_option("#label", "2")

    # marks are about the active label: the guided samples hold label 2 at the inside mark
    page.keyboard.press("i")
    page.keyboard.press("q")  # radius 1 -> 0: one pixel
    page.mouse.click(*at(16, 16))
    page.keyboard.press("Shift+R")
    page.wait_for_selector("#original:not([disabled])", timeout=60000)
    guided = sorted((data_dir / "jobs" / job / "guided").glob("sample_*.png"))
    assert len(guided) >= 8
    assert all(read_mask(p, labels=range(3))[0][16, 16] == 2 for p in guided)
    assert read_events(data_dir)[-1]["label"] == 2
    page.keyboard.press("Shift+A")
    page.wait_for_selector("body[data-state=approved]", timeout=10000)
    saved, _ = read_mask(data_dir / "jobs" / job / "approved/approved_mask.png", labels=range(3))
    assert (saved[3:6, 5:12] == 2).all()  # the stroke holds label 2
    consensus, _ = read_mask(data_dir / "jobs" / job / "output/consensus.png", labels=range(3))
    changed = np.argwhere(saved != consensus)
    assert len(changed) and (changed[:, 0] >= 3).all() and (changed[:, 0] <= 5).all()
    edits = [(e["tool"], e["label"]) for e in read_events(data_dir) if e["event"] == "edit"]
    assert edits == [("brush", 2), ("inside", 2)]  # the eraser over label 2 changed nothing
    assert "dice_2" in read_events(data_dir)[-1]
    assert errors == []
    page.close()

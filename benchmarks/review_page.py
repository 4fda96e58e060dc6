"""The scripted reviewer of benchmarks/review_session.py acting through the review page itself:
headless Chromium (Debian's /usr/bin/chromium driven by Playwright, as in
tests/service/test_review_browser.py) opens ``/review/{job}``, and every view, stroke, mark, guided
resampling and decision reaches the service from the page's own controls and shortcuts.

The script reads the job's arrays over the HTTP API only to decide (GETs log nothing); what the
page holds (its working mask) is read back from the page, and the stored approved mask is checked
against what the reviewer meant to approve.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 600000  # guided resampling and explanations run the model on a loaded CPU


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def runs(current: np.ndarray, target: np.ndarray) -> list[tuple[int, int, int, bool]]:
    """The row runs ``(row, first column, last column, value)`` that turn ``current`` into
    ``target``: one brush (value True) or eraser stroke each."""
    out = []
    for r in range(target.shape[0]):
        c = 0
        while c < target.shape[1]:
            if current[r, c] == target[r, c]:
                c += 1
                continue
            end = c
            while (end + 1 < target.shape[1] and current[r, end + 1] != target[r, end + 1]
                   and target[r, end + 1] == target[r, c]):
                end += 1
            out.append((r, c, end, bool(target[r, c])))
            c = end + 1
    return out


class Page:
    """One review page in Chromium, with the pixel geometry of its canvas."""

    def __init__(self, browser, base: str, job: str, token: str, shape: tuple[int, int],
                 shots: Path | None):
        self.page = browser.new_page(viewport={"width": 1280, "height": 980})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(f"{base}/review/{job}?token={token}")
        self.page.wait_for_selector("body[data-state=ready]", timeout=60000)
        self.shape, self.shots, self.strokes = shape, shots, 0

    def shot(self, name: str) -> None:
        if self.shots is not None:
            self.shots.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=self.shots / f"{name}.png", full_page=True)

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.page.keyboard.press(key)

    def at(self, r: int, c: int) -> tuple[float, float]:
        box = self.page.locator("#view").bounding_box()
        h, w = self.shape
        return box["x"] + (c + 0.5) * box["width"] / w, box["y"] + (r + 0.5) * box["height"] / h

    def radius_zero(self) -> None:
        while self.page.locator("#radius").input_value() != "0":
            self.keys("q")  # the shortcut for a smaller brush

    def stroke(self, r: int, c0: int, c1: int) -> None:
        """A drag along row ``r`` from column c0 to c1 with the current tool; waits until the
        page has logged it (an edit event, marks included)."""
        self.page.mouse.move(*self.at(r, c0))
        self.page.mouse.down()
        if c1 != c0:
            self.page.mouse.move(*self.at(r, c1))
        self.page.mouse.up()
        self.strokes += 1
        self.page.wait_for_selector(f"body[data-edits='{self.strokes}']", timeout=30000)

    def working(self) -> np.ndarray:
        return np.array(self.page.evaluate("() => Array.from(S.working)"), np.uint8).reshape(
            self.shape) > 0

    def decide(self, kind: str, comment: str, by_key: bool) -> None:
        self.page.fill("#comment", comment)
        self.page.locator("#comment").evaluate("e => e.blur()")  # shortcuts skip text fields
        if by_key:
            self.keys("Shift+A" if kind == "approve" else "Shift+X")
        else:
            self.page.click(f"#{kind}")
        state = "approved" if kind == "approve" else "rejected"
        self.page.wait_for_selector(f"body[data-state={state}]", timeout=60000)


def look_around(p: Page) -> None:
    """What a reader does first: probability and uncertainty, then agreement and mode 1."""
    p.shot("1_opened")
    p.keys("p", "u")
    p.shot("2_probability_uncertainty")
    p.keys("p", "u", "g", "]", "]")  # overlays off; pixels where >= 3 samples agree
    show = p.page.locator("#modes button", has_text="show").first
    show.click()
    p.shot("3_agreement_mode1")
    show.click()
    p.keys("g")


def explain_and_help(p: Page) -> None:
    p.page.click(".tab[data-tab=explain-tab]")
    for kind in ("trajectory", "occlusion", "counterfactual", "attention"):
        p.page.click(f"button[data-kind={kind}]")
        p.page.wait_for_selector(f"#img-{kind}[data-state=done], #img-{kind}[data-state=failed]",
                                 timeout=WAIT_MS)
    p.shot("7_explain")
    p.page.click(".tab[data-tab=review-tab]")
    p.keys("?")
    p.page.wait_for_selector("#help-tab:not(.hidden)")
    p.shot("8_shortcuts")


def review_in_page(browser, base: str, client, job: str, truth: np.ndarray, *, token: str,
                   rng: np.random.Generator, guide_above: int, approved: Path,
                   shots: Path | None, by_key: bool) -> str:
    """Review ``job`` as ``review_session.review`` does, through the page; returns the outcome.
    ``approved`` is where the service writes the approved mask (checked against the intent)."""
    from review_reader import dice, plan, read_arrays

    from diffuseg.io import read_mask

    api = f"/review/api/jobs/{job}"
    meta = client.get(api).json()
    shape = tuple(meta["shape"])
    p = Page(browser, base, job, token, shape, shots)  # the page logs the view
    consensus, samples = read_arrays(client, api, shape)
    look_around(p)
    time.sleep(0.2)  # simulated reading, as in the API path
    decision = plan(meta, consensus, samples, truth)
    intended = consensus if decision["kind"] == "approve" else truth
    if decision["kind"] == "reject":
        p.decide("reject", "proposal far from the lesion", by_key)
        outcome = "rejected"
    elif decision["kind"] == "approve":
        p.decide("approve", "as proposed", by_key)
        outcome = "approved unchanged"
    else:
        best = decision["best"]
        p.keys(str(best + 1))  # start from that mode
        start, label = samples[meta["modes"]["medoids"][best]], f"mode {best + 1}"
        missed = np.flatnonzero((truth & ~start).ravel())
        p.radius_zero()
        if len(missed) > guide_above:
            p.keys("i")
            for flat in rng.choice(missed, min(5, len(missed)), replace=False):
                r, c = divmod(int(flat), shape[1])
                p.stroke(r, c, c)
            p.page.click("#resample")
            p.page.wait_for_selector("#original:not([disabled])", timeout=WAIT_MS)
            p.shot("4_guided")
            guided = client.get(api, params={"source": "guided"}).json()
            _, g_samples = read_arrays(client, api, shape, "guided")
            g = max(range(guided["modes"]["k"]),
                    key=lambda j: dice(g_samples[guided["modes"]["medoids"][j]], truth))
            if dice(g_samples[guided["modes"]["medoids"][g]], truth) > dice(start, truth):
                p.keys(str(g + 1))  # the page now starts from the guided mode
                label = f"guided mode {g + 1}"
        now = p.working()
        todo = runs(now, truth)
        for r, c0, c1, value in todo:
            p.keys("b" if value else "e")
            p.stroke(r, c0, c1)
        if not np.array_equal(p.working(), truth):
            raise RuntimeError(f"{job}: the page's mask is not the one the strokes meant")
        n = int((now != truth).sum())
        time.sleep(0.01 * n)
        p.shot("5_edited")
        p.decide("approve", "corrected", by_key)
        outcome = f"edited ({n} voxels in {len(todo)} strokes, from {label})"
    p.shot("6_decided")
    if decision["kind"] != "reject" and not np.array_equal(read_mask(approved)[0] > 0, intended):
        raise RuntimeError(f"{job}: the stored approved mask is not the one approved")
    if shots is not None:
        explain_and_help(p)
    if p.errors:
        raise RuntimeError(f"{job}: errors in the page: {p.errors}")
    p.page.close()
    return outcome


def worklist_shot(browser, base: str, token: str, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 980})
    page.goto(f"{base}/review?token={token}")
    page.wait_for_selector("#jobs tr >> nth=1", timeout=30000)
    page.screenshot(path=shots / "9_worklist.png", full_page=True)
    page.close()

"""A scripted review of phantom cases through the HTTP API of ``diffuseg serve`` (its review
router), then the workflow report of its audit trail (docs/review.md).

    python benchmarks/review_session.py                       # trains a small phantom model
    python benchmarks/review_session.py --run RUN --cases 20  # reuse a 2D phantom run
    python benchmarks/review_session.py --screenshots shots/  # + pictures of the page (chromium)

The scripted reviewer knows the phantom's rater 0 (the true boundary, threshold 0.5) and acts
like a reader: it opens the job, reads the modes, and
  * approves unchanged when the consensus has Dice >= 0.9 with rater 0;
  * otherwise, when Dice >= 0.5: starts from the mode closest to rater 0, marks five pixels of
    rater 0 that the start misses as certainly inside and resamples (guided) when the start
    misses more than 20 pixels, then edits the remaining disagreement in brush/eraser strokes
    of at most 25 voxels (each logged) and approves the corrected mask;
  * rejects when Dice < 0.5.
Its "reading time" is simulated: a pause of 0.2 s plus 0.01 s per edited voxel, so the seconds
to approve measure the script, not a person.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SMALL = ["network.channels=[16,32]", "network.attention_levels=[false,true]",
         "network.num_heads=2", "train.batch_size=4", "train.max_steps=150", "train.lr=0.001",
         "train.warmup_steps=20", "train.val_every=1000", "train.ema_decay=0.99",
         "train.device=cpu", "process.T=100", "sample.steps=5"]
TOKEN, USER = "bench-token-0123456789", "reviewer1"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def b64(mask: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(mask, np.uint8).tobytes()).decode()


def prepare(out: Path, run: Path | None, n_cases: int, n_samples: int):
    from diffuseg.api import build_config
    from diffuseg.data.phantom import write_phantom_dataset
    from diffuseg.inference import Predictor
    from diffuseg.service.app import segment_job
    from diffuseg.service.jobs import JobStore, now
    from diffuseg.service.settings import ServiceSettings
    from diffuseg.training import train

    data = write_phantom_dataset(out / "phantom", n_cases=64 + n_cases, size=32, n_raters=3,
                                 seed=3, overwrite=True)
    if run is None:
        run = train(build_config(None, SMALL, dataset=data), data, out / "run", progress=False)
    predictor = Predictor.from_run(run)
    data_dir = out / "data"
    truth = {}
    from diffuseg.data import Dataset

    store = JobStore(data_dir)  # jobs made as the service makes an upload job
    state = SimpleNamespace(settings=ServiceSettings(run_dir=run, data_dir=data_dir,
                                                     n_samples=n_samples),
                            predictor=predictor, jobs=store)
    for case in Dataset.open(data).cases[64:64 + n_cases]:  # not among the first 64 trained on
        src = case.image_paths[0]
        job = store.create(source="upload", input_name=case.case_id, user=USER)
        path = store.folder(job.id) / "input" / f"upload{src.suffix}"
        path.write_bytes(src.read_bytes())
        segment_job(state, job, path)
        store.update(job, status="done", progress=1.0, finished=now(),
                     outputs=store.list_outputs(job))
        truth[job.id] = case.load().raters[0] > 0
    fd = os.open(data_dir / "tokens.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({TOKEN: USER}, f)
    return predictor, run, data_dir, truth


def serve(data_dir: Path, run: Path):
    import uvicorn

    from diffuseg.service.app import create_app
    from diffuseg.service.settings import ServiceSettings

    app = create_app(ServiceSettings(run_dir=run, data_dir=data_dir))  # diffuseg serve's app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def review(client, job: str, truth: np.ndarray, rng: np.random.Generator) -> str:
    api = f"/review/api/jobs/{job}"
    client.post(f"{api}/view").raise_for_status()
    meta = client.get(api).json()
    shape = tuple(meta["shape"])

    def array(name: str, source: str = "output") -> np.ndarray:
        raw = client.get(f"{api}/array/{name}", params={"source": source}).content
        return np.frombuffer(raw, np.uint8).reshape(-1, *shape) > 0

    consensus, samples = array("consensus")[0], array("samples")
    time.sleep(0.2)  # simulated reading
    if dice(consensus, truth) >= 0.9:
        client.post(f"{api}/approve", json={"mask": b64(consensus), "comment": "as proposed"}
                    ).raise_for_status()
        return "approved unchanged"
    if dice(consensus, truth) < 0.5:
        client.post(f"{api}/reject", json={"comment": "proposal far from the lesion"}
                    ).raise_for_status()
        return "rejected"
    medoids = meta["modes"]["medoids"]
    best = max(range(len(medoids)), key=lambda j: dice(samples[medoids[j]], truth))
    start, label = samples[medoids[best]].copy(), f"mode {best + 1}"
    missed = np.flatnonzero((truth & ~start).ravel())
    if len(missed) > 20:
        inside = np.zeros(shape, np.uint8)
        inside.ravel()[rng.choice(missed, 5, replace=False)] = 1
        client.post(f"{api}/resample", json={"inside": b64(inside),
                                             "outside": b64(np.zeros(shape, np.uint8)),
                                             "n_samples": 8}).raise_for_status()
        guided = client.get(api, params={"source": "guided"}).json()
        g_samples = array("samples", "guided")
        g_best = max(guided["modes"]["medoids"], key=lambda m: dice(g_samples[m], truth))
        if dice(g_samples[g_best], truth) > dice(start, truth):
            start, label = g_samples[g_best].copy(), "guided mode"
    diff = np.flatnonzero((start != truth).ravel())
    for chunk in np.array_split(diff, max(1, int(np.ceil(len(diff) / 25)))):
        if len(chunk) == 0:
            continue
        tool = "brush" if truth.ravel()[chunk[0]] else "eraser"
        start.ravel()[chunk] = truth.ravel()[chunk]
        client.post(f"{api}/edit", json={"tool": tool, "voxels": int(len(chunk))})
    time.sleep(0.01 * len(diff))
    client.post(f"{api}/approve", json={"mask": b64(start), "comment": "corrected",
                                        "start_from": label}).raise_for_status()
    return f"edited ({len(diff)} voxels, from {label})"


def screenshots(base: str, job: str, out: Path, mark: tuple[int, int], size: int) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 980})
        page.goto(f"{base}/review/{job}?token={TOKEN}")
        page.wait_for_selector("body[data-state]:not([data-state=loading])")
        page.screenshot(path=out / "1_page.png", full_page=True)
        for key in ("p", "u"):
            page.keyboard.press(key)
        page.screenshot(path=out / "2_probability_uncertainty.png", full_page=True)
        for key in ("p", "u", "g", "]", "]"):
            page.keyboard.press(key)
        page.locator("#modes button").first.click()
        page.screenshot(path=out / "3_agreement_mode.png", full_page=True)
        page.keyboard.press("g")
        page.keyboard.press("i")
        box = page.locator("#view").bounding_box()
        page.mouse.click(box["x"] + (mark[1] + 0.5) * box["width"] / size,
                         box["y"] + (mark[0] + 0.5) * box["height"] / size)
        page.keyboard.press("Shift+R")
        page.wait_for_selector("#original:not([disabled])", timeout=600000)
        page.screenshot(path=out / "5_guided.png", full_page=True)
        page.click(".tab[data-tab=explain-tab]")
        for kind in ("trajectory", "occlusion", "counterfactual", "attention"):
            page.click(f"button[data-kind={kind}]")
            page.wait_for_selector(f"#img-{kind}[data-state=done], #img-{kind}[data-state=failed]",
                                   timeout=600000)
        page.screenshot(path=out / "4_explain.png", full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a trained 2D phantom run (else train one)")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/review_session"))
    parser.add_argument("--screenshots", type=Path, help="folder for page screenshots")
    args = parser.parse_args()
    import httpx

    from diffuseg.workflow_report import format_report, workflow_report

    predictor, run, data_dir, truth = prepare(args.out, args.run, args.cases, args.samples)
    server, base = serve(data_dir, run)
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=600) as client:
        for job, mask in truth.items():
            print(f"{job}: {review(client, job, mask, rng)}", flush=True)
    report = workflow_report(data_dir)  # of the scripted review only
    (args.out / "workflow_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report), flush=True)
    if args.screenshots:
        job, first = next(iter(truth.items()))
        consensus = np.frombuffer(httpx.get(
            f"{base}/review/api/jobs/{job}/array/consensus",
            headers={"Authorization": f"Bearer {TOKEN}"}).content, np.uint8).reshape(first.shape)
        missed = np.argwhere(first & (consensus == 0))
        mark = tuple(missed[0]) if len(missed) else tuple(np.argwhere(first)[0])
        screenshots(base, job, args.screenshots, mark, first.shape[0])
    server.should_exit = True


if __name__ == "__main__":
    sys.exit(main())

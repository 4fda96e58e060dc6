"""A scripted review of phantom cases on ``diffuseg serve`` (its review router), then the workflow
report of its audit trail (docs/review.md).

    python benchmarks/review_session.py                       # trains a small phantom model
    python benchmarks/review_session.py --run RUN --cases 20  # reuse a 2D phantom run
    python benchmarks/review_session.py --screenshots shots/  # + pictures of the page

The first ``--browser-cases`` cases (default 3) are reviewed through the review page itself in
headless Chromium (benchmarks/review_page.py: the page's own keys, strokes, marks, resample and
approve/reject buttons, so their audit events come from the page); the others through the HTTP
API. ``--screenshots`` follows one browser case (the first that resamples with marks) and the
worklist.

The scripted reviewer knows the phantom's rater 0 (the true boundary, threshold 0.5) and acts
like a reader: it opens the job, reads the modes, and
  * approves unchanged when the consensus has Dice >= 0.9 with rater 0;
  * otherwise, when Dice >= 0.5: starts from the mode closest to rater 0; when that start misses
    more than ``--guide-above`` (default 5) pixels of rater 0, marks five of them as certainly
    inside, resamples (guided) and starts from the guided mode closest to rater 0 if it is
    closer; then edits the remaining disagreement and approves the corrected mask. Through the
    API the edits are logged strokes of at most 25 voxels; on the page they are real strokes of
    a radius-0 brush or eraser, one per run of pixels along a row;
  * rejects when Dice < 0.5.
Its "reading time" is simulated: a pause of 0.2 s plus 0.01 s per edited voxel, so the seconds
to approve measure the script (and, for browser cases, Chromium driving the page), not a person.
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
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from review_reader import dice, plan, read_arrays

SMALL = ["network.channels=[16,32]", "network.attention_levels=[false,true]",
         "network.num_heads=2", "train.batch_size=4", "train.max_steps=150", "train.lr=0.001",
         "train.warmup_steps=20", "train.val_every=1000", "train.ema_decay=0.99",
         "train.device=cpu", "process.T=100", "sample.steps=5"]
TOKEN, USER = "bench-token-0123456789", "reviewer1"


def b64(mask: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(mask, np.uint8).tobytes()).decode()


def prepare(out: Path, run: Path | None, n_cases: int, n_samples: int):
    from diffuseg.data.phantom import write_phantom_dataset
    from diffuseg.inference.predictor import Predictor
    from diffuseg.service.app import segment_job
    from diffuseg.service.jobs import JobStore, now
    from diffuseg.service.settings import ServiceSettings
    from diffuseg.training.loop import train
    from diffuseg.training.start import build_config

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


def review(client, job: str, truth: np.ndarray, rng: np.random.Generator,
           guide_above: int) -> str:
    api = f"/review/api/jobs/{job}"
    client.post(f"{api}/view").raise_for_status()
    meta = client.get(api).json()
    shape = tuple(meta["shape"])
    consensus, samples = read_arrays(client, api, shape)
    time.sleep(0.2)  # simulated reading
    decision = plan(meta, consensus, samples, truth)
    if decision["kind"] == "approve":
        client.post(f"{api}/approve", json={"mask": b64(consensus), "comment": "as proposed"}
                    ).raise_for_status()
        return "approved unchanged"
    if decision["kind"] == "reject":
        client.post(f"{api}/reject", json={"comment": "proposal far from the lesion"}
                    ).raise_for_status()
        return "rejected"
    best = decision["best"]
    start, label = samples[meta["modes"]["medoids"][best]].copy(), f"mode {best + 1}"
    missed = np.flatnonzero((truth & ~start).ravel())
    if len(missed) > guide_above:
        inside = np.zeros(shape, np.uint8)
        inside.ravel()[rng.choice(missed, min(5, len(missed)), replace=False)] = 1
        client.post(f"{api}/resample", json={"inside": b64(inside),
                                             "outside": b64(np.zeros(shape, np.uint8)),
                                             "n_samples": 8}).raise_for_status()
        guided = client.get(api, params={"source": "guided"}).json()
        _, g_samples = read_arrays(client, api, shape, "guided")
        medoids = guided["modes"]["medoids"]
        g = max(range(len(medoids)), key=lambda j: dice(g_samples[medoids[j]], truth))
        if dice(g_samples[medoids[g]], truth) > dice(start, truth):
            start, label = g_samples[medoids[g]].copy(), f"guided mode {g + 1}"
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


def pick_shots_job(client, truth: dict, browser_jobs: list[str], guide_above: int) -> str:
    """The browser case the screenshots follow: the first that will resample with marks, else
    the first edited, else the first."""
    kinds = {}
    for job in browser_jobs:
        api = f"/review/api/jobs/{job}"
        meta = client.get(api).json()
        consensus, samples = read_arrays(client, api, tuple(meta["shape"]))
        decision = plan(meta, consensus, samples, truth[job])
        if decision["kind"] == "edit":
            start = samples[meta["modes"]["medoids"][decision["best"]]]
            if int((truth[job] & ~start).sum()) > guide_above:
                return job
        kinds[job] = decision["kind"]
    return next((j for j, k in kinds.items() if k == "edit"), browser_jobs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a trained 2D phantom run (else train one)")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/review_session"))
    parser.add_argument("--browser-cases", type=int, default=3,
                        help="review the first N cases through the page in headless Chromium")
    parser.add_argument("--guide-above", type=int, default=5,
                        help="resample with marks when the start misses more pixels than this")
    parser.add_argument("--screenshots", type=Path,
                        help="folder for screenshots of one browser case and the worklist")
    args = parser.parse_args()
    if args.screenshots and args.browser_cases < 1:
        parser.error("--screenshots needs --browser-cases >= 1")
    import httpx

    from diffuseg.review.workflow_report import format_report, workflow_report

    load0 = os.getloadavg()
    predictor, run, data_dir, truth = prepare(args.out, args.run, args.cases, args.samples)
    server, base = serve(data_dir, run)
    rng = np.random.default_rng(0)
    jobs = list(truth)
    browser_jobs = jobs[:args.browser_cases]
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=600) as client, ExitStack() as stack:
        if browser_jobs:
            from playwright.sync_api import sync_playwright
            from review_page import launch, review_in_page, worklist_shot

            browser = launch(stack.enter_context(sync_playwright()))
            shots_job = pick_shots_job(client, truth, browser_jobs, args.guide_above)
        for i, job in enumerate(jobs):
            if job in browser_jobs:
                outcome = review_in_page(
                    browser, base, client, job, truth[job], token=TOKEN, rng=rng,
                    guide_above=args.guide_above,
                    approved=data_dir / "jobs" / job / "approved" / "approved_mask.png",
                    shots=args.screenshots if job == shots_job else None, by_key=i % 2 == 1)
                print(f"{job}: {outcome} [page]", flush=True)
            else:
                print(f"{job}: {review(client, job, truth[job], rng, args.guide_above)} [API]",
                      flush=True)
        if args.screenshots:
            worklist_shot(browser, base, TOKEN, args.screenshots)
    report = workflow_report(data_dir)  # of the scripted review only
    (args.out / "workflow_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report), flush=True)
    load1 = os.getloadavg()
    print(f"data dir {data_dir}; load average (1/5/15 min) at start "
          f"{' '.join(f'{v:.2f}' for v in load0)}, at end {' '.join(f'{v:.2f}' for v in load1)}; "
          f"{os.cpu_count()} CPUs", flush=True)
    server.should_exit = True


if __name__ == "__main__":
    sys.exit(main())

"""Service benchmark: N concurrent clients submitting jobs to a running ``diffuseg serve``.

The script trains a tiny 2D model on the phantom (a few steps; speed, not accuracy, is measured;
or ``--run`` gives one), starts ``diffuseg serve`` on a free localhost port with token
authentication, and runs ``--clients`` client threads. Each client submits ``--jobs-per-client``
PNG uploads one after another and polls each job until it is done; a job's latency is the time
from the upload to the first poll that sees it done (or failed). Prints throughput (finished jobs
per second of wall time), p50 / p95 / max latency and the error count (HTTP errors, failed jobs,
timeouts), and writes them as JSON to ``--out``. Localhost only; clients are capped at 200 and
the run at ``--max-seconds``.

    python benchmarks/service.py --clients 50 --out service.json
    python benchmarks/service.py --clients 5 --jobs-per-client 1      # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

MAX_CLIENTS = 200
TINY = ["network.channels=[8,16]", "network.attention_levels=[false,false]",
        "network.norm_groups=4", "train.device=cpu", "process.T=50", "train.val_cases=1",
        "train.val_samples=1", "train.val_steps=1"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50, help=f"concurrent clients (<= {MAX_CLIENTS})")
    p.add_argument("--jobs-per-client", type=int, default=2)
    p.add_argument("--run", type=Path, default=None, help="run folder (default: train a tiny one)")
    p.add_argument("--size", type=int, default=64, help="uploaded PNG side")
    p.add_argument("--samples", type=int, default=4, help="masks per job")
    p.add_argument("--steps", type=int, default=2, help="sampler steps per mask")
    p.add_argument("--concurrency", type=int, default=2, help="service worker threads")
    p.add_argument("--max-seconds", type=float, default=900.0, help="cap on the client phase")
    p.add_argument("--out", type=Path, default=None, help="JSON results")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        p.error(f"--clients must be 1..{MAX_CLIENTS}")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_run(folder: Path) -> Path:
    from diffuseg.data.phantom import write_phantom_dataset
    from diffuseg.training.loop import train
    from diffuseg.training.start import build_config

    data = write_phantom_dataset(folder / "data", n_cases=4, size=64, n_raters=1)
    config = build_config(None, TINY + ["train.max_steps=5", "data.patch_size=[64,64]"],
                          dataset=data)
    return train(config, data, folder / "run", progress=False)


def png(seed: int, size: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def start_service(run: Path, data: Path, port: int, args: argparse.Namespace
                  ) -> subprocess.Popen:
    command = [sys.executable, "-c", "from diffuseg.cli import main; main()", "serve", str(run),
               "--host", "127.0.0.1", "--port", str(port), "--data", str(data),
               "--samples", str(args.samples), "--steps", str(args.steps),
               "--concurrency", str(args.concurrency), "--device", "cpu"]
    log = open(data.parent / "service.log", "w")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((data.parent / "service.log").read_text()[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("the service did not become ready in 120 s")


def client(base: str, token: str, index: int, args: argparse.Namespace, end: float,
           latencies: list[float], errors: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        for j in range(args.jobs_per_client):
            start = time.monotonic()
            try:
                answer = http.post("/v1/jobs", files={
                    "file": (f"c{index}_{j}.png", png(index * 1000 + j, args.size), "image/png")})
                if answer.status_code != 202:
                    errors.append(f"submit {answer.status_code}: {answer.text[:100]}")
                    continue
                job_id = answer.json()["id"]
                while True:
                    if time.monotonic() > end:
                        errors.append(f"job {job_id} not done before --max-seconds")
                        return
                    job = http.get(f"/v1/jobs/{job_id}").json()
                    if job["status"] in ("done", "failed"):
                        break
                    time.sleep(0.2)
                if job["status"] == "failed":
                    errors.append(f"job failed: {job['error']}")
                else:
                    latencies.append(time.monotonic() - start)
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="diffuseg_service_bench_") as tmp:
        tmp = Path(tmp)
        run = args.run or tiny_run(tmp / "train")
        port = free_port()
        process = start_service(run, tmp / "data", port, args)
        try:
            token = next(iter(json.loads((tmp / "data" / "tokens.json").read_text())))
            latencies: list[float] = []
            errors: list[str] = []
            start = time.monotonic()
            end = start + args.max_seconds
            threads = [threading.Thread(target=client, args=(
                f"http://127.0.0.1:{port}", token, i, args, end, latencies, errors))
                for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - start
        finally:
            process.terminate()
            process.wait(timeout=30)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    result = {
        "clients": args.clients, "jobs_per_client": args.jobs_per_client,
        "jobs_done": len(latencies), "errors": len(errors), "error_examples": errors[:5],
        "wall_s": round(wall, 2), "throughput_jobs_per_s": round(len(latencies) / wall, 3),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 2),
        "latency_p95_s": round(float(np.percentile(lat, 95)), 2),
        "latency_max_s": round(float(lat.max()), 2),
        "image": f"{args.size}x{args.size} PNG", "samples": args.samples, "steps": args.steps,
        "service_concurrency": args.concurrency, "torch_threads": os.environ.get(
            "OMP_NUM_THREADS", "default"),
    }
    print("| clients | jobs | errors | wall (s) | jobs/s | p50 (s) | p95 (s) | max (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.clients} | {len(latencies)} | {len(errors)} | {result['wall_s']} | "
          f"{result['throughput_jobs_per_s']} | {result['latency_p50_s']} | "
          f"{result['latency_p95_s']} | {result['latency_max_s']} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

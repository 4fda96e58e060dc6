"""Latency and throughput of drawing 16 masks for one 128x128 image, against MONAI's
DiffusionInferer and against the machine's physical limit; one run, one machine.

    python benchmarks/latency.py --quick                      # ~2 minutes on a 2-core CPU
    python benchmarks/latency.py --steps 1 2 5 10 20 50 1000  # the full table (long on CPU)
    python benchmarks/latency.py --quick --speedups           # eager / contiguous / bf16 / ONNX
    python benchmarks/latency.py --runs RUN [RUN ...]         # + GED16 and Dice vs latency

Methods are given as ``name[:option=value,...]`` (``ldseg:width=8,downsamples=3``; an item with
a dot is a config override: ``ldseg:width=8,network.channels=[32,64]``); without
``--runs`` their weights are random (latency does not depend on them). Rows:

* ours: ``method.sample(image, 16, steps)`` (all samples in one batch per step);
* peer: ``monai.inferers.DiffusionInferer.sample`` with MONAI's ``DDIMScheduler`` (for our
  DDIM) or ``DDPMScheduler`` (for our ancestral DDPM) driving the SAME denoiser module (our
  ``ConditionalUNet`` behind an adapter taking MONAI's ``(x, timesteps, context)`` call), so
  the ratio measures the sampling loop, not the network. For ldseg, MONAI runs the latent loop
  between our image encoder (once) and mask decoder (once per sample), as in ours;
* limit: FLOPs / peak, with FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on
  one and two steps (fixed + per-step cost, extrapolated linearly to n function evaluations)
  and the peak measured with a large fp32 matmul on the same threads.

Output: a table of latencies and ratios (ours / peer, ours / limit), a JSON file, and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import diffuseg.methods.ldseg  # noqa: F401  (registers "ldseg")
from diffuseg.core.runtime import autocast, resolve_device
from diffuseg.methods import Method, build_method
from diffuseg.training.start import build_config

QUICK_STEPS = (1, 2)
FULL_STEPS = (1, 2, 5, 10, 20, 50, 1000)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="steps 1 2, ddim only, 1 repeat")
    p.add_argument("--steps", type=int, nargs="+", help="sampling steps (default: all)")
    p.add_argument("--methods", nargs="+", default=["ddpm", "ldseg"])
    p.add_argument("--samplers", nargs="+", default=None, choices=["ddim", "ddpm"],
                   help="default: ddim and ddpm (quick: ddim)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (the fastest is kept)")
    p.add_argument("--no-peer", action="store_true", help="skip MONAI's DiffusionInferer")
    p.add_argument("--speedups", action="store_true",
                   help="also time channels-last off, bf16 autocast and ONNX Runtime")
    p.add_argument("--compile", action="store_true", help="with --speedups: torch.compile too")
    p.add_argument("--runs", type=Path, nargs="*", default=[], help="trained run folders")
    p.add_argument("--cases", type=int, default=8, help="cases per run for quality")
    p.add_argument("--quality-only", action="store_true",
                   help="with --runs: skip the latency table (random weights), score the runs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/latency.json"))
    args = p.parse_args()
    args.steps = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    args.samplers = args.samplers or (["ddim"] if args.quick else ["ddim", "ddpm"])
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


# -- measurement ----------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 0) -> float:
    """Shortest wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones: on a
    shared machine other jobs only ever add time, so the minimum estimates the cost best."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_matmul_flops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Best of ``repeats`` fp32 ``[n, n] @ [n, n]`` products: 2 n^3 FLOPs each."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = min(timed(lambda: a @ b, device, 1, warmup=1 if i == 0 else 0)
               for i in range(repeats))
    return 2 * n**3 / best


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# -- methods ---------------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``name[:item,...]`` -> (name, config overrides). An item with a dot is a config override
    (``network.channels=[32,64]``), one without is a method option (``width=8`` ->
    ``method.options.width=8``); commas inside brackets belong to the value."""
    name, _, rest = spec.partition(":")
    overrides = [f"method.name={name}"]
    for item in filter(None, re.split(r",(?![^\[]*\])", rest)):
        key, _, value = item.partition("=")
        overrides.append(f"{key}={value}" if "." in key else f"method.options.{key}={value}")
    return name, overrides


def build(spec: str, size: int, device: torch.device) -> Method:
    _, overrides = parse_spec(spec)
    config = build_config(None, [*overrides, f"data.patch_size=[{size},{size}]"], dataset=None)
    torch.manual_seed(0)
    method = build_method(config)
    with torch.no_grad():  # random weights everywhere (the output conv is zero-initialised)
        for p in method.parameters():
            p.normal_(0.0, 0.05)
    return method.to(device).eval()


class MonaiAdapter(nn.Module):
    """Our ``denoiser(x, t, cond)`` behind MONAI's ``model(x_and_cond, timesteps, context)``
    call (``mode="concat"``); MONAI passes one timestep for the whole batch."""

    def __init__(self, denoiser: nn.Module, channels: int) -> None:
        super().__init__()
        self.denoiser, self.channels = denoiser, channels

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context=None) -> torch.Tensor:
        t = timesteps.long().reshape(-1).expand(x.shape[0])
        return self.denoiser(x[:, : self.channels], t, x[:, self.channels:])


def monai_sample(method: Method, image: torch.Tensor, n: int, steps: int, sampler: str):
    """Masks from MONAI's DiffusionInferer + scheduler over the method's own networks."""
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    prediction = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[
        method.config.process.prediction]
    kind = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    scheduler = kind(num_train_timesteps=method.config.process.T, schedule="cosine",
                     prediction_type=prediction, clip_sample=True)
    scheduler.set_timesteps(steps)
    latent = hasattr(method, "image_encoder")
    if latent:
        features = method.image_encoder(image)
        cond = features.repeat(n, 1, 1, 1)
        channels = method.latent_channels
    else:
        cond, channels = image.repeat(n, 1, 1, 1), method.config.num_classes
    noise = torch.randn(n * image.shape[0], channels, *cond.shape[2:], device=image.device)
    x0 = DiffusionInferer(scheduler).sample(noise, MonaiAdapter(method.denoiser, channels),
                                            scheduler, conditioning=cond, mode="concat",
                                            verbose=False)
    if latent:
        return torch.sigmoid(method.autoencoder.decode(x0))
    return (x0 + 1) / 2


def flop_model(method: Method, image: torch.Tensor, n: int) -> tuple[float, float]:
    """(fixed, per-step) FLOPs of ``sample(image, n, steps)``. The count is affine,
    F(n, k) = a + b n + c n k (a: once per image, b: once per sample, c: per sample and step),
    so three small calls fix it: c = F(1, 2) - F(1, 1), b = F(2, 1) - F(1, 1) - c."""
    f11, f21, f12 = (count_flops(lambda s=s, k=k: method.sample(image, s, steps=k))
                     for s, k in ((1, 1), (2, 1), (1, 2)))
    c = f12 - f11
    b = f21 - f11 - c
    a = f11 - b - c
    return a + b * n, c * n


def latency_rows(args, device: torch.device, peak: float) -> list[dict]:
    image = torch.randn(1, 1, args.size, args.size, device=device)
    rows = []
    for spec in args.methods:
        rows += method_rows(spec, build(spec, args.size, device), image, args, device, peak)
    return rows


@torch.inference_mode()
def method_rows(spec: str, method: Method, image: torch.Tensor, args, device: torch.device,
                peak: float) -> list[dict]:
    fixed, per_step = flop_model(method, image, args.samples)
    method.sample(image, args.samples, steps=1)  # warm-up: allocations, kernel choice
    rows = []
    for sampler in args.samplers:
        method.config.sample.sampler = sampler
        for steps in args.steps:
            row = {"method": spec, "sampler": sampler, "steps": steps,
                   "gflop": (fixed + steps * per_step) / 1e9}
            row["latency_s"] = timed(lambda s=steps: method.sample(image, args.samples, steps=s),
                                     device, args.repeats)  # fmt: skip
            row["samples_per_s"] = args.samples / row["latency_s"]
            row["limit_s"] = (fixed + steps * per_step) / peak
            row["ours_over_limit"] = row["latency_s"] / row["limit_s"]
            if not args.no_peer:
                row["peer_s"] = timed(lambda s=steps, k=sampler: monai_sample(
                    method, image, args.samples, s, k), device, args.repeats)
                row["ours_over_peer"] = row["latency_s"] / row["peer_s"]
            rows.append(row)
            print_row(row)
    return rows


def print_row(row: dict) -> None:
    peer = (f"{row['peer_s']:9.3f} {row['ours_over_peer']:6.2f}" if "peer_s" in row
            else f"{'-':>9} {'-':>6}")
    print(f"{row['method']:<28} {row['sampler']:<5} {row['steps']:>5} {row['gflop']:9.1f} "
          f"{row['latency_s']:9.3f} {row['samples_per_s']:8.1f} {peer} {row['limit_s']:8.3f} "
          f"{row['ours_over_limit']:6.1f}", flush=True)


HEADER = (f"{'method':<28} {'smp':<5} {'steps':>5} {'GFLOP':>9} {'ours_s':>9} {'smp/s':>8} "
          f"{'monai_s':>9} {'o/peer':>6} {'limit_s':>8} {'o/lim':>6}")


# -- speed-ups -------------------------------------------------------------------------------

def speedup_rows(args, device: torch.device) -> list[dict]:
    """One step count (the first of --steps) per method: eager channels-last (the default),
    bf16 autocast, contiguous weights, torch.compile (with --compile) and ONNX Runtime."""
    from diffuseg.inference.onnx import OrtDenoiser, export_onnx, make_session

    rows = []
    for spec in args.methods:
        method = build(spec, args.size, device)
        rows.append(variant_row(spec, "eager fp32 channels-last", method, args, device))
        rows.append(variant_row(spec, "eager bf16 autocast", method, args, device,
                                torch.bfloat16))
        contiguous = build(spec, args.size, device)
        for net in contiguous.networks().values():
            for m in net.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous()
        rows.append(variant_row(spec, "eager fp32 contiguous", contiguous, args, device))
        if args.compile:
            compiled = build(spec, args.size, device)
            compiled.denoiser = torch.compile(compiled.denoiser, dynamic=False)
            rows.append(variant_row(spec, "torch.compile", compiled, args, device))
        if device.type == "cpu":
            ort = build(spec, args.size, device)
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(ort, Path(tmp) / "d.onnx", exporter="torchscript")
                ort.denoiser = OrtDenoiser(make_session(Path(tmp) / "d.onnx", args.threads))
                rows.append(variant_row(spec, "onnxruntime", ort, args, device))
    return rows


@torch.inference_mode()
def variant_row(spec: str, name: str, method: Method, args, device: torch.device,
                dtype: torch.dtype | None = None) -> dict:
    """Latency of ``sample`` at the first of --steps; the first (untimed-before) call's time
    is kept as ``first_call_s`` (torch.compile's compile time is in it)."""
    steps = args.steps[0]

    def call() -> None:
        with autocast(device, dtype):
            method.sample(torch.zeros(1, 1, args.size, args.size, device=device), args.samples,
                          steps=steps)

    first = timed(call, device, 1)
    row = {"method": spec, "variant": name, "steps": steps, "first_call_s": first,
           "latency_s": timed(call, device, args.repeats)}
    print(f"{spec:<28} {name:<26} first {first:8.3f} s, then {row['latency_s']:8.3f} s",
          flush=True)
    return row


# -- quality of trained runs -------------------------------------------------------------------

def quality_rows(args) -> list[dict]:
    """GED (16 samples) and consensus Dice against the raters' majority on ``--cases`` val (else
    test, else train) cases of each run's dataset (a seeded subset), per step count. Every step
    count starts from the same noise (``segment``'s seed 0), so the rows of a run are paired."""
    from diffuseg.data import Dataset
    from diffuseg.data.phantom import majority_mask
    from diffuseg.inference.predictor import Predictor
    from diffuseg.metrics.distribution import ged
    from diffuseg.metrics.overlap import dice

    rows = []
    for run in args.runs:
        predictor = Predictor.from_run(run, device=args.device)
        dataset = Dataset.open(json.loads((run / "fingerprint.json").read_text())["dataset"])
        splits = json.loads((run / "splits.json").read_text())
        ids = splits.get("val") or splits.get("test") or splits["train"]
        if len(ids) > args.cases:  # a seeded subset: the first ids may all be one patient's
            ids = np.random.default_rng(0).choice(ids, size=args.cases, replace=False).tolist()
        cases = [c.load() for c in dataset.cases if c.case_id in ids]
        mine: list[dict] = []
        for steps in args.steps:
            geds, dices, times = [], [], []
            for data in cases:
                t0 = time.perf_counter()
                result = predictor.segment(data.image, n_samples=args.samples, steps=steps)
                times.append(time.perf_counter() - t0)
                p = result.samples[:, 0]
                fg = (p.argmax(1) > 0) if p.shape[1] > 1 else (p[:, 0] > 0.5)
                geds.append(ged(fg.numpy(), data.raters > 0)["ged"])
                dices.append(dice(result.consensus[0].numpy() > 0, majority_mask(data.raters)))
            mine.append({"run": str(run), "method": predictor.config.method.name,
                         "steps": steps, "ged16": float(np.mean(geds)),
                         "dice": float(np.mean(dices)), "latency_s": float(np.median(times)),
                         "cases": len(cases)})
            print(f"{run.name:<24} steps {steps:>5}: GED16 {mine[-1]['ged16']:.4f} "
                  f"Dice {mine[-1]['dice']:.4f} {mine[-1]['latency_s']:.3f} s", flush=True)
        rows += relative_to_most_steps(mine)
    return rows


def relative_to_most_steps(rows: list[dict]) -> list[dict]:
    """Each row's GED16 relative to the row with the most steps (``ged16_rel``: 0.05 = 5 %
    higher), the issue's yardstick "GED within 5 % of the 1000-step result"."""
    ref = max(rows, key=lambda r: r["steps"])["ged16"]
    for row in rows:
        row["ged16_rel"] = row["ged16"] / ref - 1.0 if ref > 0 else float("nan")
        print(f"  steps {row['steps']:>5}: GED16 {100 * row['ged16_rel']:+.1f} % vs "
              f"{max(r['steps'] for r in rows)} steps", flush=True)
    return rows


def plot(rows: list[dict], quality: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (["latency"] if rows else []) + (["ged16", "dice"] if quality else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        source = rows if panel == "latency" else quality
        key = "method" if panel == "latency" else "run"
        for label in dict.fromkeys(r[key] for r in source):
            mine = [r for r in source if r[key] == label and r.get("sampler", "ddim") == "ddim"]
            if panel == "latency":
                ax.plot([r["steps"] for r in mine], [r["latency_s"] for r in mine], "o-",
                        label=label)
                if mine and "peer_s" in mine[0]:
                    ax.plot([r["steps"] for r in mine], [r["peer_s"] for r in mine], "x--",
                            label=f"{label} (MONAI)")
                ax.set(xscale="log", yscale="log", xlabel="steps", ylabel="latency (s)")
            else:
                ax.plot([r["latency_s"] for r in mine], [r[panel] for r in mine], "o-",
                        label=Path(label).name)
                ax.set(xscale="log", xlabel="latency (s)", ylabel=panel)
        if panel != "latency":
            ax.axvline(0.25, color="grey", lw=0.8)  # the target: 0.25 s
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    peak = peak_matmul_flops(device)
    print(f"device {device}, {args.threads} threads, peak fp32 matmul {peak / 1e9:.1f} GFLOP/s, "
          f"{args.samples} samples of {args.size}x{args.size}, load {os.getloadavg()}")
    rows = []
    if not args.quality_only:
        print(HEADER)
        rows = latency_rows(args, device, peak)
    speed = speedup_rows(args, device) if args.speedups else []
    quality = quality_rows(args) if args.runs else []
    out = {"device": str(device), "cpu": platform.processor() or platform.machine(),
           "threads": args.threads, "batch_size": args.samples, "size": args.size,
           "peak_gflops": peak / 1e9, "torch": torch.__version__,
           "loadavg": os.getloadavg(), "ld_preload": os.environ.get("LD_PRELOAD", ""),
           "rows": rows, "speedups": speed, "quality": quality}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, quality, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

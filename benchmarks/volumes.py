"""3D at scale: hippocampus accuracy, whole-volume sampling cost, and training start-up.

    # (a) MSD hippocampus: Dice and HD95 per label on the held-out (test) fold, equal budgets
    #     of CPU time per method (train.budget_clock=cpu: fair on a machine shared with others)
    python benchmarks/volumes.py hippocampus --minutes 2 --methods ddpm wdm ldseg unet
    # (b) sampling a synthetic volume with each 3D strategy, one subprocess per configuration
    python benchmarks/volumes.py sampling --sizes 64 128 192 256 --samples 16 --steps 2
    # (b) training start-up time and peak RSS against the number of volumes
    python benchmarks/volumes.py startup --counts 50 200 800
    # (c) LIDC (12,492 slices): peak RSS and time to the first optimiser step
    python benchmarks/volumes.py lidc

Peak RSS: every measured configuration runs in its own process (``python volumes.py _child
JSON``); the parent polls the resident set of that process and all its descendants (DataLoader
workers) in /proc every 50 ms and reports the largest sum ("tree", an upper bound: pages shared
between a parent and its forked workers count twice), beside the child's own
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Time to the first optimiser step is measured
inside the child from its start (imports included) to the return of the first
``optimizer.step()``. Every table records the machine load (``uptime``) when it was made.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START = time.perf_counter()
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
WORK = Path(os.environ.get("VOLUMES_WORK", "/tmp/volumes_data"))
HIPPOCAMPUS_SRC = HERE.parent.parent / "shared" / "data" / "msd_hippocampus"
NET = ["network.channels=[16,32,64]", "network.attention_levels=[false,false,false]",
       "network.norm_groups=8"]
SMALL_NET = ["network.channels=[8,16,32]", "network.attention_levels=[false,false,false]",
             "network.norm_groups=4"]  # the sampling-scaling rows: cost and memory, not accuracy
PRESET_3D = [*NET, "train.batch_size=4", "train.lr=0.001", "train.warmup_steps=20",
             "train.max_steps=100000000", "train.checkpoint_every=100000000",
             "train.val_every=100000000", "train.val_cases=2", "train.val_samples=2",
             "train.val_steps=5", "train.device=cpu", "process.T=1000", "sample.steps=10",
             "data.patch_size=[32,32,32]", "train.precision=fp32"]
METHOD_OVERRIDES = {"ddpm": ["method.name=ddpm"], "wdm": ["method.name=wdm"],
                    "ldseg": ["method.name=ldseg"], "unet": ["method.name=unet"]}


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------
# measuring a child process


def _tree_memory_kb(root: int) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) over ``root`` and its descendants, in kB. Pss divides each
    shared page among the processes mapping it, so forked workers are not counted twice."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh process; its JSON result plus the peak RSS of its process tree."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, __file__, "_child", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, peak_pss, t0 = 0, 0, time.perf_counter()
    while proc.poll() is None:
        rss, pss = _tree_memory_kb(proc.pid)
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            return {**spec, "error": f"timed out after {timeout:.0f} s",
                    "tree_peak_rss_mb": round(peak / 1024, 1),
                    "tree_peak_pss_mb": round(peak_pss / 1024, 1)}
        time.sleep(0.05)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": (err or out).strip().splitlines()[-3:],
                "tree_peak_rss_mb": round(peak / 1024, 1)}
    return {**json.loads(lines[-1]), "tree_peak_rss_mb": round(peak / 1024, 1),
            "tree_peak_pss_mb": round(peak_pss / 1024, 1)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    result = {"sample": child_sample, "startup": child_startup}[spec["kind"]](spec)
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {**spec, **result, "self_peak_rss_mb": round(usage, 1),
            "max_worker_peak_rss_mb": round(workers, 1)}


def child_sample(spec: dict[str, Any]) -> dict[str, Any]:
    """Sample a synthetic volume (random weights: cost does not depend on them)."""
    import torch

    from diffuseg.methods import build_method
    from diffuseg.training.start import build_config

    n, strategy = spec["size"], spec["strategy"]
    method_name = "ddpm" if strategy == "patch" else "wdm"
    w = spec["window"]
    overrides = [*PRESET_3D, *SMALL_NET, "spatial_dims=3", f"method.name={method_name}",
                 f"data.patch_size=[{w},{w},{w}]"]
    if strategy == "wavelet":
        overrides.append(f"method.options={{\"chunk\": {spec['chunk']}}}")
    config = build_config(None, overrides, dataset=None)
    torch.manual_seed(0)
    method = build_method(config).eval()
    if strategy == "patch":
        method.window = (spec["window"],) * 3  # as Predictor sets it for 3D runs
    image = torch.randn(1, 1, n, n, n, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    samples = method.segment(image, spec["samples"], steps=spec["steps"],
                             generator=torch.Generator().manual_seed(1))
    seconds = time.perf_counter() - t0
    assert samples.shape == (spec["samples"], 1, 1, n, n, n) and torch.isfinite(samples).all()
    return {"seconds": round(seconds, 2), "seconds_per_step": round(seconds / spec["steps"], 2)}


def child_startup(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one step; seconds from process start to the first optimiser step's return."""
    import torch

    from diffuseg.data import Dataset
    from diffuseg.training.loop import train
    from diffuseg.training.start import build_config

    first: list[float] = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if not first:
            first.append(time.perf_counter() - START)
        return out

    torch.optim.AdamW.step = step
    dataset = Dataset.open(spec["dataset"])  # as `diffuseg train` does: listed once per command
    config = build_config(None, spec["overrides"], dataset=dataset)
    train(config, dataset, spec["run"], progress=False)
    return {"first_step_s": round(first[0], 1)}


# ---------------------------------------------------------------------------------------------
# (a) hippocampus


def hippocampus_dataset() -> Path:
    from diffuseg.data import Dataset, make_splits, save_splits
    from diffuseg.data.importers import import_msd

    root = WORK / "hippocampus"
    if not (root / "dataset.json").is_file():
        print(import_msd(HIPPOCAMPUS_SRC, root, overwrite=True).format(), flush=True)
    if not (root / "splits.json").is_file():
        save_splits(root, make_splits(Dataset.open(root), 0))
    return root


def score_case(result, labels, spacing) -> dict[str, float]:
    from diffuseg.metrics.overlap import dice
    from diffuseg.metrics.surface import hd95, image_diagonal

    consensus = result.consensus[0].numpy()
    penalty = image_diagonal(consensus.shape, spacing)  # a label missed entirely
    out = {}
    for name, value in (("anterior", 1), ("posterior", 2)):
        pred, true = consensus == value, labels == value
        out[f"dice_{name}"] = dice(pred, true)
        out[f"hd95_{name}"] = hd95(pred, true, spacing, empty_penalty=penalty)
    return out


def hippocampus(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from diffuseg.data import Dataset, load_splits
    from diffuseg.inference.predictor import Predictor
    from diffuseg.training.loop import train
    from diffuseg.training.start import build_config

    root = hippocampus_dataset()
    dataset = Dataset.open(root)
    cases = load_splits(root, dataset)["test"][: args.cases]
    rows: dict[str, Any] = {"load_before": load()}
    for name in args.methods:
        run = WORK / f"hippo_runs/{name}_{args.minutes}min_{args.clock}"
        if not (run / "model.safetensors").is_file():
            import shutil

            shutil.rmtree(run, ignore_errors=True)
            config = build_config(None, [*PRESET_3D, *METHOD_OVERRIDES[name],
                                         f"train.max_minutes={args.minutes}",
                                         f"train.budget_clock={args.clock}"], dataset=root)
            train(config, root, run, progress=False)
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
                 if '"loss"' in x]
        predictor = Predictor.from_run(run, device="cpu")
        scores, seconds = [], []
        for i, case_id in enumerate(cases):
            data = dataset.case(case_id).load()
            t0 = time.perf_counter()
            result = predictor.segment(data.image, n_samples=args.samples, steps=args.steps,
                                       seed=i)
            seconds.append(time.perf_counter() - t0)
            scores.append(score_case(result, data.raters[0], data.geometry.spacing))
        row = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        rows[name] = {**row, "seconds_per_volume": float(np.mean(seconds)),
                      "train_steps": steps[-1] if steps else 0, "cases": len(cases)}
        print(name, json.dumps(rows[name]), flush=True)
    rows["load_after"] = load()
    return rows


# ---------------------------------------------------------------------------------------------
# (b) scaling, (c) LIDC


def sampling(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes:
        for strategy in args.strategies:
            spec = {"kind": "sample", "strategy": strategy, "size": size, "window": args.window,
                    "samples": args.samples, "steps": args.steps, "chunk": args.chunk}
            row = {**run_child(spec, args.timeout), "load": load()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def startup_datasets(counts: list[int], size: int) -> dict[int, Path]:
    """The largest phantom dataset once; smaller ones hard-link its first cases."""
    import shutil

    from diffuseg.data import Dataset, make_splits, save_splits
    from diffuseg.data.phantom import write_phantom_dataset

    big = WORK / f"phantom3d_{max(counts)}_{size}"
    if not (big / "splits.json").is_file():
        write_phantom_dataset(big, max(counts), spatial_dims=3, size=size, overwrite=True)
    out = {max(counts): big}
    info = json.loads((big / "dataset.json").read_text())
    for n in counts:
        if n == max(counts):
            continue
        root = WORK / f"phantom3d_{n}_{size}"
        if not (root / "splits.json").is_file():
            shutil.rmtree(root, ignore_errors=True)
            keep = {f"phantom_{i:04d}" for i in range(n)}
            for sub in ("imagesTr", "labelsTr"):
                (root / sub).mkdir(parents=True)
                for f in (big / sub).iterdir():
                    if f.name.split("_")[0] + "_" + f.name.split("_")[1][:4] in keep:
                        os.link(f, root / sub / f.name)
            groups = {k: v for k, v in info["groups"].items() if k in keep}
            (root / "dataset.json").write_text(json.dumps({**info, "numTraining": n,
                                                           "groups": groups}))
            save_splits(root, make_splits(Dataset.open(root), 0))
        out[n] = root
    return out


def startup(args: argparse.Namespace) -> list[dict[str, Any]]:
    import shutil

    datasets = startup_datasets(args.counts, args.size)
    rows = []
    tiny = [*NET, "train.max_steps=1", "train.val_cases=1", "train.val_samples=1",
            "train.val_steps=1", "train.batch_size=4", "train.device=cpu",
            f"data.patch_size=[{args.size},{args.size},{args.size}]", "train.precision=fp32",
            f"data.num_workers={args.workers}"]
    for n, root in sorted(datasets.items()):
        for mode in ("memory", "stream (first: preprocesses)", "stream (preprocessed)"):
            if mode.startswith("stream (first"):
                shutil.rmtree(root / "preprocessed", ignore_errors=True)
            run = WORK / "startup_run"
            shutil.rmtree(run, ignore_errors=True)
            stream = "false" if mode == "memory" else "true"
            spec = {"kind": "startup", "dataset": str(root), "run": str(run),
                    "overrides": [*tiny, f"data.stream={stream}"]}
            row = {**run_child(spec, args.timeout), "volumes": n, "mode": mode, "load": load()}
            row.pop("overrides", None)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def lidc(args: argparse.Namespace) -> list[dict[str, Any]]:
    import shutil

    from common import lidc_dataset

    root = lidc_dataset(WORK / "lidc")
    rows = []
    modes = ["stream (preprocessed)"] if args.preprocessed_only else [
        "stream (first: preprocesses)", "stream (preprocessed)"]
    for mode in modes:
        if mode.startswith("stream (first"):
            shutil.rmtree(root / "preprocessed", ignore_errors=True)
        run = WORK / "lidc_run"
        shutil.rmtree(run, ignore_errors=True)
        spec = {"kind": "startup", "dataset": str(root), "run": str(run), "overrides": [
            "network.channels=[16,32,64]", "network.attention_levels=[false,false,false]",
            "train.max_steps=1", "train.val_cases=1", "train.val_samples=1", "train.val_steps=1",
            "train.batch_size=8", "train.device=cpu", "data.patch_size=[128,128]",
            f"data.num_workers={args.workers}"]}
        row = {**run_child(spec, args.timeout), "mode": mode, "load": load()}
        row.pop("overrides", None)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_child":
        print(json.dumps(child(json.loads(sys.argv[2]))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("hippocampus")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="what --minutes counts (train.budget_clock): cpu = equal CPU budgets")
    p.add_argument("--methods", nargs="+", default=list(METHOD_OVERRIDES))
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p = sub.add_parser("sampling")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192, 256])
    p.add_argument("--strategies", nargs="+", default=["patch", "wavelet"])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--timeout", type=float, default=3600)
    p = sub.add_parser("startup")
    p.add_argument("--counts", type=int, nargs="+", default=[50, 200, 800])
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800)
    p = sub.add_parser("lidc")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--preprocessed-only", action="store_true",
                   help="only the row with the data already preprocessed (diffuseg preprocess)")
    p.add_argument("--timeout", type=float, default=3600)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    result = {"hippocampus": hippocampus, "sampling": sampling, "startup": startup,
              "lidc": lidc}[args.what](args)
    out = args.out or HERE / "results" / f"volumes_{args.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                               "result": result}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

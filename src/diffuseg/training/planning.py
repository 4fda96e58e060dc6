"""Plans that fit the data and the machine (nnU-Net's planning habit, Isensee et al. 2021).

``make_plan(dataset_dir, preset)`` reads a dataset fingerprint (dimensionality, median shape and
spacing, channels, labels, number of cases) and the hardware (CPU cores and vector extensions, or
GPU memory) and chooses the network width and depth, attention, patch size, batch size, sampler
steps and validation size, each with a one-line reason. The plan is a config dict: it is the
lowest layer of a run's configuration (plan < config file < ``--set``), and ``plan.json`` in the
run folder keeps the values, the reasons and the hardware.

Presets: ``auto`` (GPU when one is visible, else CPU), ``cpu``, ``gpu``, ``quick`` (a smoke test:
the smallest network, a handful of steps) and ``none`` (no plan: the config defaults).

The cost model is deliberately crude: the multiply-adds of the U-Net's 3^d convolutions per
training step (forward + backward ~ 3x forward) divided by a throughput measured on the project's
2-core AVX2 machines (docs/performance.md). It only has to rank candidates and keep a CPU step to
seconds, not a minute.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffuseg.errors import ConfigError

PRESETS = ("auto", "cpu", "gpu", "quick", "none")
# Effective training throughput, multiply-adds per second per core (fp32 AVX2, tcmalloc); AVX-512
# roughly doubles it. Calibrated on hippocampus and PH2 (docs/performance.md, "Plans").
MACS_PER_CORE = 2.0e9
GPU_MACS = 2.0e12
WIDTHS = ((8, 16, 32), (16, 32, 64), (32, 64, 128), (32, 64, 128, 256))
VAL_SECONDS = {"cpu": 15.0, "gpu": 30.0, "quick": 5.0}  # one validation pass
# The fewest optimiser steps worth a verdict (``min_useful_steps``): two passes over the training
# cases, at least MIN_USEFUL (the 2D phantom's model learns in 150-400 steps: tests/training,
# README's demo; 19-28 steps learned nothing) and at most MAX_USEFUL (ldseg reached GED16 0.33 on
# unseen LIDC patients after 982 steps, DESIGN.md; 211 steps on 150 patients had not learned)
MIN_USEFUL, MAX_USEFUL, USEFUL_PASSES = 200, 1000, 2
TARGET_SECONDS = {"cpu": 2.0, "gpu": 0.3, "quick": 0.5}  # per training step
# The method a CPU plan picks for multi-rater 2D data when the user names none, and its denoiser
# widths: the best rows of benchmarks/RESULTS.md, "LIDC at CPU scale". At an equal budget of 30
# CPU-minutes, every method with widths [16, 32, 64] ("Equal budget"): ldseg 0.337, berdiff
# 0.347 (10x slower to sample), flow_matching 0.456, mc_dropout 0.467, ddpm 0.486, prob_unet
# 0.571, unet 0.652 GED16 on 600 slices of 89 validation patients. ldseg's step time is its
# full-resolution mask autoencoder and image encoder, so its latent denoiser at [32, 64, 128]
# costs about the same per step (2,586 against 2,568 steps in 30 CPU-minutes) and scored 0.300
# against 0.335, a paired gain of 0.035 [0.019, 0.050] ("Training levers on ldseg"). It was
# measured on thousands of slices, so small data sets (below MULTI_RATER_MIN_CASES) keep ddpm.
MULTI_RATER_2D_CPU = ("ldseg", (32, 64, 128))
MULTI_RATER_MIN_CASES = 500


@dataclass
class Hardware:
    kind: str  # "cpu" or "gpu"
    cores: int
    vector: str  # "amx", "avx512", "avx2" or "basic"
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def detect_hardware() -> Hardware:
    """CPU cores this process may use, the widest vector extension in /proc/cpuinfo, and the
    first CUDA device's name and memory when torch sees one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    vector = ("amx" if "amx_bf16" in flags else "avx512" if "avx512f" in flags
              else "avx2" if "avx2" in flags else "basic")
    gpu_name = gpu_memory = None
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            gpu_name, gpu_memory = props.name, round(props.total_memory / 2**30, 1)
    except Exception:  # noqa: BLE001 - no usable CUDA: plan for the CPU
        pass
    return Hardware("gpu" if gpu_name else "cpu", int(cores or 1), vector, gpu_name, gpu_memory)


def fingerprint(dataset_dir: str | Path, max_cases: int = 12) -> dict[str, Any]:
    """Dimensionality, channels, labels, raters, number of cases, and median shape and spacing over
    up to ``max_cases`` cases spread evenly through the dataset."""
    from diffuseg.data import Dataset

    dataset = Dataset.of(dataset_dir)  # a path, or the Dataset the command opened
    cases = dataset.cases
    picks = np.unique(np.linspace(0, len(cases) - 1, min(max_cases, len(cases))).astype(int))
    shapes, spacings = [], []
    for i in picks:
        data = cases[int(i)].load()
        shapes.append(data.image.shape[1:])
        spacings.append(tuple(float(s) for s in data.geometry.spacing)[: len(shapes[-1])])
        channels = int(data.image.shape[0])
    info = dataset.info
    return {"spatial_dims": len(shapes[0]), "in_channels": channels,
            "labels": dict(info.labels), "raters": info.raters, "n_cases": len(cases),
            "median_shape": [int(v) for v in np.median(np.array(shapes), axis=0)],
            "median_spacing": [round(float(v), 4) for v in np.median(np.array(spacings), axis=0)],
            "cases_measured": len(picks)}


@dataclass
class Plan:
    preset: str
    values: dict[str, Any] = field(default_factory=dict)  # a nested config dict
    reasons: dict[str, str] = field(default_factory=dict)  # dotted key -> why
    hardware: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    estimate_seconds_per_step: float | None = None
    min_useful_steps: int | None = None  # the fewest steps worth a verdict (min_useful_steps)
    min_useful_reason: str = ""

    def set(self, key: str, value: Any, reason: str) -> None:
        node = self.values
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        self.reasons[key] = reason

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "values": self.values, "reasons": self.reasons,
                "estimate_seconds_per_step": self.estimate_seconds_per_step,
                "min_useful_steps": self.min_useful_steps,
                "min_useful_reason": self.min_useful_reason,
                "hardware": self.hardware, "fingerprint": self.fingerprint,
                "precedence": "plan < config file < --set"}

    def write(self, run_dir: Path) -> None:
        tmp = run_dir / "plan.json.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(run_dir / "plan.json")


def step_macs(channels: tuple[int, ...], patch: list[int], batch: int, in_ch: int = 2,
              res_blocks: int = 1) -> float:
    """Multiply-adds of one training step: 3^d convolutions of the encoder (``res_blocks`` blocks
    of 2 convs per level), the decoder (``res_blocks + 1`` blocks fed with skips), x3 for the
    backward pass."""
    d = len(patch)
    voxels = float(np.prod(patch))
    k = 3**d
    total = in_ch * channels[0] * k * voxels
    for level, c in enumerate(channels):
        n = voxels / (2**d) ** level
        total += res_blocks * 2 * c * c * k * n  # encoder
        total += (res_blocks + 1) * (3 * c * c) * k * n  # decoder: (2c -> c) + (c -> c)
    return 3.0 * batch * total


def _round_patch(shape: list[int], cap: int, multiple: int, floor: int) -> list[int]:
    return [int(max(floor, min(cap, s) // multiple * multiple)) for s in shape]


def make_plan(dataset_dir: str | Path, preset: str = "auto",
              hardware: Hardware | None = None, fp: dict[str, Any] | None = None,
              method: str | None = None) -> Plan:
    """The plan; ``method``: the method the user chose (``--method``, ``method.name`` in a config
    file or ``--set``, ``--init``'s model), None when they chose none and the plan may pick one."""
    if preset not in PRESETS:
        import difflib

        close = difflib.get_close_matches(preset, PRESETS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"--plan {preset!r} is unknown; {hint}use one of {list(PRESETS)}")
    hardware = hardware or detect_hardware()
    fp = fp or fingerprint(dataset_dir)
    kind = {"auto": hardware.kind}.get(preset, preset)
    plan = Plan(preset, hardware=hardware.to_dict(), fingerprint=fp)
    if kind == "none":
        return plan
    if kind == "gpu" and hardware.gpu_memory_gb is None:
        hardware = Hardware("gpu", hardware.cores, hardware.vector, "assumed", 16.0)
    picked = _plan_method(plan, fp, kind, method)
    if not picked:
        _plan_network(plan, fp, hardware, kind)
    _plan_sampling(plan, fp, kind)
    _bound_validation(plan, fp, _throughput(hardware, kind)[0], kind)
    if picked:  # ldseg samples in its latent space: validation is cheap, so more cases
        plan.set("train.val_cases", 32, "32 images x 4 samples drawn across patients, half with "
                 "an empty reference: ldseg validates in its latent space (4 x 4 took 0.38 s, "
                 "measured), and a verdict on 4 images is noise")
    n_train = max(1, round(0.8 * fp["n_cases"]))  # splits: 80 % of the patients train
    plan.min_useful_steps, plan.min_useful_reason = min_useful_steps(
        n_train, plan.values["train"]["batch_size"])
    return plan


def min_useful_steps(n_train: int, batch_size: int) -> tuple[int, str]:
    """The fewest optimiser steps after which a model of this data is expected to have learned
    something (``USEFUL_PASSES`` passes over ``n_train`` cases at ``batch_size``, clipped to
    [MIN_USEFUL, MAX_USEFUL]; the bounds are measurements, see above), with the reason. Advice
    only: the verdict at the end of training is measured, never derived from it."""
    passes = -(-USEFUL_PASSES * max(1, n_train) // max(1, batch_size))
    steps = min(MAX_USEFUL, max(MIN_USEFUL, passes))
    reason = (f"{USEFUL_PASSES} passes over {n_train} training cases at batch {batch_size}, "
              f"at least {MIN_USEFUL} and at most {MAX_USEFUL} steps: the 2D phantom learns in "
              "150-400 steps, LIDC in about 1,000")
    return steps, reason


def _throughput(hardware: Hardware, kind: str) -> tuple[float, str]:
    if kind == "gpu":
        return GPU_MACS, f"GPU {hardware.gpu_name} ({hardware.gpu_memory_gb} GiB)"
    per_core = MACS_PER_CORE * (2.0 if hardware.vector in ("avx512", "amx") else 1.0)
    return per_core * hardware.cores, f"{hardware.cores} CPU cores ({hardware.vector})"


def _plan_network(plan: Plan, fp: dict[str, Any], hardware: Hardware, kind: str) -> None:
    d, shape = fp["spatial_dims"], fp["median_shape"]
    macs, machine = _throughput(hardware, kind)
    target = TARGET_SECONDS[kind]
    if kind == "gpu":
        memory = hardware.gpu_memory_gb or 16.0
        cap, widths, batch = (256, WIDTHS[3], 32) if d == 2 else (128, WIDTHS[3], 2)
        batch = max(2, int(batch * min(1.0, memory / 40.0)))
    elif kind == "quick":
        cap, widths, batch = (64, WIDTHS[0], 4) if d == 2 else (32, WIDTHS[0], 1)
    else:
        cap, widths, batch = (128, WIDTHS[1], 8) if d == 2 else (64, WIDTHS[1], 2)
    floor = 16
    patch = _round_patch(shape, cap, 16, floor)
    min_batch = 2 if d == 2 else 1
    notes = []
    seconds = step_macs(widths, patch, batch) / macs
    ladder = [w for w in WIDTHS if len(w) == len(widths) and w[0] <= widths[0]]
    while seconds > target:
        smaller = [w for w in ladder if w[0] < widths[0]]
        if smaller:
            widths = smaller[-1]
            notes.append("narrower network")
        elif batch > min_batch:
            batch = max(min_batch, batch // 2)
            notes.append("smaller batch")
        elif max(patch) > 2 * floor:
            axis = int(np.argmax(patch))
            patch[axis] = max(floor, patch[axis] // 2 // 16 * 16)
            notes.append("smaller patch")
        else:
            break
        seconds = step_macs(widths, patch, batch) / macs
    plan.estimate_seconds_per_step = round(seconds, 2)
    budget = f"target {target:g} s/step on {machine}, estimated {seconds:.2f} s"
    shrunk = f" (shrunk: {', '.join(dict.fromkeys(notes))})" if notes else ""
    plan.set("network.channels", list(widths),
             f"{len(widths)} levels of widths {list(widths)}: {budget}{shrunk}")
    plan.set("network.attention_levels", [False] * (len(widths) - 1) + [_attention(
        patch, len(widths), kind)], _attention_reason(patch, len(widths), kind))
    plan.set("network.norm_groups", min(8, widths[0]), "GroupNorm groups divide the first width")
    plan.set("data.patch_size", patch, f"median image {shape} capped at {cap} per axis "
             f"({'GPU' if kind == 'gpu' else kind.upper()}), a multiple of 16{shrunk}")
    plan.set("train.batch_size", batch, f"{batch} per step keeps a step near {target:g} s")


def _plan_method(plan: Plan, fp: dict[str, Any], kind: str, method: str | None) -> bool:
    """On a CPU, for multi-rater 2D data of at least MULTI_RATER_MIN_CASES cases and no method
    chosen, pick MULTI_RATER_2D_CPU (method and denoiser widths, with the measurement as the
    reason); return whether it did (the network is then planned here, not by the cost ladder)."""
    if (method is not None or kind != "cpu" or fp["spatial_dims"] != 2 or fp["raters"] < 2
            or fp["n_cases"] < MULTI_RATER_MIN_CASES):
        return False
    name, widths = MULTI_RATER_2D_CPU
    cited = ("benchmarks/RESULTS.md, 'LIDC at CPU scale': at 30 CPU-minutes each with widths "
             "[16, 32, 64], ldseg reached GED16 0.337 on unseen LIDC patients, berdiff 0.347 (10x "
             "slower to sample), flow_matching 0.456, mc_dropout 0.467, ddpm 0.486, prob_unet "
             "0.571, unet 0.652; ldseg with its denoiser at [32, 64, 128] 0.300 in the same 30 "
             "minutes")
    plan.set("method.name", name, f"multi-rater 2D data ({fp['raters']} raters, "
             f"{fp['n_cases']} cases) on a CPU, no method chosen: the best measured ({cited}); "
             "--method overrides")
    patch = _round_patch(fp["median_shape"], 128, 16, 16)
    batch = 8
    plan.estimate_seconds_per_step = 0.70  # measured: 86 steps per CPU-minute, one thread
    plan.set("network.channels", list(widths), f"ldseg's latent denoiser of widths {list(widths)}:"
             " about 0.70 s per step on one core of the project's AVX-512 machine (measured; "
             "[16, 32, 64] costs the same per step: the full-resolution encoders dominate)")
    plan.set("network.attention_levels", [False] * len(widths), "no self-attention, as measured")
    plan.set("network.norm_groups", 8, "GroupNorm groups divide the first width")
    plan.set("data.patch_size", patch, f"median image {fp['median_shape']} capped at 128 per "
             "axis, a multiple of 16, as measured")
    plan.set("train.batch_size", batch, f"{batch} per step, as measured")
    return True


def _attention(patch: list[int], levels: int, kind: str) -> bool:
    tokens = int(np.prod([p // 2 ** (levels - 1) for p in patch]))
    return kind == "gpu" or tokens <= 256


def _attention_reason(patch: list[int], levels: int, kind: str) -> str:
    tokens = int(np.prod([p // 2 ** (levels - 1) for p in patch]))
    if kind == "gpu":
        return f"self-attention at the lowest level ({tokens} tokens) is cheap on a GPU"
    if tokens <= 256:
        return f"self-attention at the lowest level: {tokens} tokens, cheap"
    return f"no self-attention: {tokens} tokens at the lowest level cost O(n^2) on a CPU"


def _plan_sampling(plan: Plan, fp: dict[str, Any], kind: str) -> None:
    d, n_cases, raters = fp["spatial_dims"], fp["n_cases"], fp["raters"]
    quick, gpu = kind == "quick", kind == "gpu"
    steps = 5 if quick else 10 if (gpu or d == 2) else 5
    why = ("quick preset" if quick else "GPU" if gpu else "fewest that keep 2D masks sharp"
           if d == 2 else "3D sampling on a CPU costs a window pass per step")
    plan.set("sample.steps", steps, f"{steps} sampler steps: {why}")
    samples = 4 if quick else 16 if (gpu or d == 2 or raters > 1) else 8
    plan.set("sample.n_samples", samples, f"{samples} masks per image"
             + (" (GED16 needs 16)" if samples == 16 else ", enough for an uncertainty map"))
    # 16 images (32 on a GPU), every 200 steps on a CPU: a verdict or a best-weights choice on 4
    # images was noise (unet "learned" with GED4 0.325 and scored 0.652 on 600 LIDC slices);
    # _bound_validation then keeps one validation within VAL_SECONDS
    val_cases = max(1, min(32 if gpu else 2 if quick else 16, n_cases // 10 or 1))
    plan.set("train.val_cases", val_cases, f"{val_cases} validation images")
    val_steps = 3 if quick or (d == 3 and not gpu) else 5 if not gpu else 10
    plan.set("train.val_steps", val_steps, f"{val_steps} sampler steps at validation")
    plan.set("train.val_samples", 2 if quick else 4, "samples per validation image")
    every = 20 if quick else 200 if not gpu else 500
    plan.set("train.val_every", every, f"validate every {every} steps")
    plan.set("train.checkpoint_every", every // 2 if not quick else every,
             f"a checkpoint every {every // 2 if not quick else every} steps: a few minutes of "
             "work at most is lost")
    if quick:
        plan.set("train.max_steps", 50, "quick preset: a smoke test, not a model")
        plan.set("train.warmup_steps", 5, "quick preset")


def _bound_validation(plan: Plan, fp: dict[str, Any], macs: float, kind: str) -> None:
    """Validation samples whole 2D images and, in 3D, one patch of ``data.patch_size`` around the
    reference (``diffuseg.training.validation``): keep one validation under ~VAL_SECONDS by using
    fewer images, then fewer samples per image."""
    v = plan.values
    shape = fp["median_shape"]
    if fp["spatial_dims"] == 3:
        shape = [min(s, p) for s, p in zip(shape, v["data"]["patch_size"], strict=True)]
    forward = step_macs(tuple(v["network"]["channels"]), shape, 1) / 3.0
    t = v["train"]
    cost = forward / macs * t["val_steps"]  # one sample of one image
    limit = VAL_SECONDS[kind if kind in VAL_SECONDS else "cpu"]
    while t["val_cases"] * t["val_samples"] * cost > limit and t["val_cases"] > 1:
        t["val_cases"] -= 1
    while t["val_cases"] * t["val_samples"] * cost > limit and t["val_samples"] > 2:
        t["val_samples"] -= 1
    seconds = t["val_cases"] * t["val_samples"] * cost
    what = "patches" if fp["spatial_dims"] == 3 else "whole images"
    plan.reasons["train.val_cases"] = (f"{t['val_cases']} {what} x {t['val_samples']} "
                                       f"samples: one validation ~{seconds:.0f} s (limit "
                                       f"{limit:g} s), drawn across patients, half with an "
                                       "empty reference where there are such")
    plan.reasons["train.val_samples"] = "see train.val_cases"


def plan_dict(dataset_dir: str | Path, preset: str = "auto",
              method: str | None = None) -> tuple[dict[str, Any], Plan]:
    plan = make_plan(dataset_dir, preset, method=method)
    return plan.values, plan

"""What benchmarks/lidc.py and benchmarks/ambiguity.py share: the data they build, the presets
they train with, and train -> sample -> evaluate for one method.

Data. The LIDC-IDRI slices release (``../shared/data/lidc_idri_slices/trainval.tar`` with its
``split.json``: 606 train / 97 val patients) is converted with the importer's ``lidc_cases`` into
a dataset folder holding only the patients a benchmark uses, with ``splits.json`` taken from the
release's split by patient: the models train on train patients and are scored on val patients.
The phantom (``diffuseg.data.phantom``) has three raters whose distribution is known exactly.

Scoring. ``Predictor.segment`` draws ``max(n_samples)`` samples per held-out image (in chunks
of ``CHUNK``, seed = case index * 1000 + chunk), ``write_result`` writes them, and
``diffuseg.evaluation.evaluate.evaluate`` scores them: GED^2 (d = 1 - IoU) with the first n samples
for each
n, HM-IoU and the CI score with the first n_0, consensus Dice against the raters' majority, ECE
against the rater mean, S_NCC. Sampling seconds per image are the wall time of ``segment`` alone
(not the writing), with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffuseg.core.ensemble import summarise
from diffuseg.data import Dataset, load_splits
from diffuseg.data.dataset import DatasetInfo, write_dataset
from diffuseg.errors import DataError
from diffuseg.evaluation.evaluate import evaluate
from diffuseg.inference.prediction_folder import write_result
from diffuseg.inference.predictor import Predictor
from diffuseg.io import Geometry
from diffuseg.run.folder import training_cases
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LIDC_TAR = SHARED_DATA / "lidc_idri_slices" / "trainval.tar"
CHUNK = 25  # samples drawn per segment() call (bounds memory at 100 samples)
ORACLE = "raters (ref.)"

# method name -> its config overrides (network widths come from the preset, shared by all)
METHODS: dict[str, list[str]] = {
    "ddpm": ["method.name=ddpm"],
    # cimd's default conditions the denoiser on z: this project's variant, not the published or
    # released CIMD; cimd_paper is the faithful configuration (no z in the denoiser, no prior net)
    "cimd_z": ["method.name=cimd"],
    "cimd_paper": ["method.name=cimd", "method.options.condition_on_z=false"],
    "unet": ["method.name=unet"],
    "mc_dropout": ["method.name=mc_dropout"],
    "ensemble": ["method.name=ensemble"],
    "prob_unet": ["method.name=prob_unet"],
}
_COMMON = ["train.max_steps=100000000", "train.checkpoint_every=100000000",
           "train.val_every=100000000", "train.val_cases=4", "train.val_samples=4"]
PRESETS: dict[str, list[str]] = {
    # 2-core CPU, minutes of training: a narrow U-Net without attention (attention at 32x32 of
    # 128x128 took 37% of a denoiser forward here)
    "cpu": _COMMON + ["network.channels=[16,32,64]",
                      "network.attention_levels=[false,false,false]",
                      "network.norm_groups=8", "train.batch_size=8", "train.lr=0.0005",
                      "train.warmup_steps=20", "process.T=1000", "sample.steps=10",
                      "train.val_steps=10", "train.device=cpu"],
    # one CUDA GPU, an hour or more: the width of the published LIDC models' order of magnitude
    "gpu": _COMMON + ["network.channels=[64,128,256,256]",
                      "network.attention_levels=[false,false,true,true]",
                      "network.num_res_blocks=2", "network.norm_groups=32",
                      "train.batch_size=32", "train.lr=0.0002", "train.warmup_steps=500",
                      "train.val_every=2000", "process.T=1000", "sample.steps=25",
                      "train.val_steps=25", "train.device=cuda"],
    # end-to-end check in seconds: numbers say nothing about the methods
    "quick": _COMMON + ["network.channels=[8,16]", "network.attention_levels=[false,false]",
                        "network.norm_groups=4", "train.batch_size=4", "train.lr=0.001",
                        "train.warmup_steps=5", "train.val_cases=1", "train.val_samples=1",
                        "train.val_steps=1", "process.T=100", "sample.steps=3",
                        "train.device=cpu"],
}


def parse_counts(text: str, parser: argparse.ArgumentParser) -> tuple[int, ...]:
    """``--n-samples 16,100`` -> (16, 100); a bad value ends the parser with its message."""
    try:
        counts = tuple(int(n) for n in text.split(","))
    except ValueError:
        parser.error(f"--n-samples {text!r} must be comma-separated integers, e.g. 16,100")
    if not counts or min(counts) < 1:
        parser.error(f"--n-samples {text!r} must list counts >= 1")
    return counts


# ---------------------------------------------------------------------------------------------
# data


def phantom_dataset(root: Path, n_cases: int, size: int, n_raters: int = 3) -> Path:
    """The 2D phantom (splits by patient, written once and reused)."""
    from diffuseg.data.phantom import write_phantom_dataset

    marker = root / "benchmark.json"
    want = {"n_cases": n_cases, "size": size, "n_raters": n_raters}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return root
    write_phantom_dataset(root, n_cases=n_cases, size=size, n_raters=n_raters, seed=0,
                          overwrite=True)
    marker.write_text(json.dumps(want) + "\n")
    return root


def choose_patients(split_path: Path, train_patients: int | None, val_patients: int | None,
                    seed: int = 0) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}`` from the release's split.json, each fold cut to a random
    (``seed``) subset of the given size when a size is given; sorted."""
    from diffuseg.data.importers.lidc import read_split

    fold_of = read_split(split_path)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for fold, limit in (("train", train_patients), ("val", val_patients)):
        patients = sorted(p for p, f in fold_of.items() if f == fold)
        if limit is not None and limit < len(patients):
            patients = sorted(rng.choice(patients, size=limit, replace=False).tolist())
        out[fold] = patients
    return out


def lidc_dataset(root: Path, src: Path = LIDC_TAR, *, train_patients: int | None = None,
                 val_patients: int | None = None, crop: int | None = None) -> Path:
    """A dataset folder of the chosen LIDC patients (``choose_patients``) with splits.json by the
    release's split; written once per choice and reused. ``crop`` keeps the central crop x crop
    pixels of every slice (the release centres each crop on its nodule); the fraction of rater
    foreground pixels that falls outside is recorded in ``benchmark.json`` ("foreground_lost")."""
    from diffuseg.data.importers.common import finish
    from diffuseg.data.importers.lidc import REFERENCE, find_split, lidc_cases

    split_path = find_split(src)
    if split_path is None:
        raise DataError(f"no split.json beside '{src}'; the benchmark needs the release's split")
    patients = choose_patients(split_path, train_patients, val_patients)
    marker = root / "benchmark.json"
    want = {"src": str(src), "patients": patients, "crop": crop}
    if marker.is_file() and {k: v for k, v in json.loads(marker.read_text()).items()
                             if k != "foreground_lost"} == want:
        return root
    fold_of = {p: fold for fold, ps in patients.items() for p in ps}
    info = DatasetInfo(channel_names={"0": "CT"}, labels={"background": 0, "nodule": 1},
                       num_training=0, file_ending=".png", raters=4, spatial_dims=2,
                       name="LIDC-IDRI-slices", extra={"reference": REFERENCE})
    groups: dict[str, str] = {}
    foreground = [0, 0]  # rater pixels kept, rater pixels in all

    def cases():
        for key, image, masks in lidc_cases(src, raters=4):
            if key.patient in fold_of:
                groups[key.case_id] = key.patient
                foreground[1] += int((masks > 0).sum())
                image, masks = centre_crop(image, crop), centre_crop(masks, crop)
                foreground[0] += int((masks > 0).sum())
                yield key.case_id, image, masks, Geometry.identity(image.shape[1:])

    write_dataset(root, cases(), info, overwrite=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for case_id, patient in groups.items():
        splits[fold_of[patient]].append(case_id)
    print(finish(root, groups, splits).format(), flush=True)
    lost = 1.0 - foreground[0] / max(foreground[1], 1)
    print(f"  crop {crop}: {100 * lost:.3f}% of rater foreground pixels fall outside", flush=True)
    marker.write_text(json.dumps({**want, "foreground_lost": lost}) + "\n")
    return root


def centre_crop(array: np.ndarray, size: int | None) -> np.ndarray:
    """The central ``size`` pixels of each spatial axis of ``[C, *sp]`` (all when None/larger)."""
    if size is None:
        return array
    index = [slice(None)] + [slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + size)
                             for n in array.shape[1:]]
    return array[tuple(index)]


def downscale_dataset(src: Path, dst: Path, factor: int) -> Path:
    """A copy of the 2D dataset ``src`` with every case shrunk ``factor`` times per axis (ceil):
    images by area averaging (rounded: PNG holds integers), each rater's binary mask by area
    averaging thresholded at 0.5; ``splits.json`` copied. Written once per (src, factor)
    and reused."""
    import shutil

    marker = dst / "benchmark.json"
    want = {"src": str(Path(src).resolve()), "factor": factor}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return dst
    dataset = Dataset.open(src)

    def cases():
        for case in dataset.cases:
            data = case.load()
            image = np.round(shrink(data.image, factor))  # PNG stores integers
            raters = (shrink((data.raters > 0).astype(np.float32), factor) >= 0.5)
            yield case.case_id, image, raters.astype(np.uint8), Geometry.identity(image.shape[1:])

    write_dataset(dst, cases(), dataset.info, overwrite=True)
    if (src / "splits.json").is_file():
        shutil.copyfile(src / "splits.json", dst / "splits.json")
    marker.write_text(json.dumps(want) + "\n")
    return dst


def shrink(array: np.ndarray, factor: int) -> np.ndarray:
    """``[C, H, W]`` area-averaged by ``factor`` (edges padded by replication to a multiple)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    height, width = array.shape[1:]
    tensor = torch.nn.functional.pad(tensor, [0, -width % factor, 0, -height % factor],
                                     mode="replicate")
    return torch.nn.functional.avg_pool2d(tensor, factor)[0].numpy()


def held_out(dataset_dir: Path, fold: str, limit: int | None, seed: int = 0) -> list[str]:
    """Up to ``limit`` case ids of ``fold`` (a random subset by ``seed`` when cut), sorted.
    A proposal made before training: ``run_method`` checks it against the run's own splits.json
    (``check_held_out``), the only source of truth once a run exists."""
    splits = load_splits(dataset_dir, Dataset.open(dataset_dir))
    cases = sorted(splits[fold])
    if not cases:
        raise DataError(f"'{dataset_dir}/splits.json' has no '{fold}' cases to evaluate")
    if limit is not None and limit < len(cases):
        rng = np.random.default_rng(seed)
        cases = sorted(rng.choice(cases, size=limit, replace=False).tolist())
    return cases


# ---------------------------------------------------------------------------------------------
# train, sample, evaluate


def train_method(dataset_dir: Path, method: str, preset: Sequence[str], minutes: float,
                 run_dir: Path, extra: Sequence[str] = ()) -> Path:
    """Train ``method`` for ``minutes`` of wall clock (``train.max_minutes``)."""
    own = METHODS.get(method, [f"method.name={method}"])  # e.g. ldseg: its own defaults
    overrides = [*preset, *own, f"train.max_minutes={minutes}", *extra]
    config = build_config(None, overrides, dataset=dataset_dir)
    return train(config, dataset_dir, run_dir, progress=False)


def predict_cases(run: Path, dataset_dir: Path, cases: Sequence[str], pred_dir: Path,
                  n_samples: int, device: str) -> float:
    """Sample every case into ``pred_dir/<case>/``; returns sampling seconds per image."""
    predictor = Predictor.from_run(run, device=device)
    dataset = Dataset.open(dataset_dir)
    seconds = 0.0
    for i, case_id in enumerate(cases):
        case = dataset.case(case_id)
        data = case.load()
        t0 = time.perf_counter()
        parts = [predictor.segment(data.image, n_samples=min(CHUNK, n_samples - start),
                                   seed=1000 * i + start // CHUNK, source=case_id).samples
                 for start in range(0, n_samples, CHUNK)]
        seconds += time.perf_counter() - t0
        write_result(summarise(torch.cat(parts)), data.geometry, pred_dir / case_id,
                     source=case.image_paths[0], extra={"run": str(run)})
    return seconds / len(cases)


def oracle_predictions(dataset_dir: Path, cases: Sequence[str], pred_dir: Path,
                       n_samples: int) -> None:
    """The reference row: each "sample" is a uniformly drawn rater's mask (binary datasets), so
    its scores are those of the raters' own distribution against itself."""
    dataset = Dataset.open(dataset_dir)
    rng = np.random.default_rng(0)
    for case_id in cases:
        case = dataset.case(case_id)
        data = case.load()
        picks = data.raters[rng.integers(len(data.raters), size=n_samples)] > 0
        samples = torch.from_numpy(picks.astype(np.float32))[:, None, None]  # [S, 1, 1, *sp]
        write_result(summarise(samples), data.geometry, pred_dir / case_id,
                     source=case.image_paths[0], extra={"oracle": "rater masks"})


def row_of(summary: dict[str, Any], n_samples: Sequence[int]) -> dict[str, Any]:
    """The benchmark's columns from an evaluation summary (means over cases)."""
    mean = summary["mean"]
    n0 = n_samples[0]
    keys = [f"ged_{n}" for n in n_samples] + [f"hm_iou_{n0}", f"ci_{n0}", "dice", "ece",
                                              "s_ncc"]
    row = {key: mean[key]["mean"] for key in keys if key in mean}
    row["cases"] = summary["n_cases"]
    return row


def run_method(dataset_dir: Path, method: str, preset: Sequence[str], minutes: float,
               work: Path, cases: Sequence[str], n_samples: Sequence[int], device: str,
               extra: Sequence[str] = ()) -> dict[str, Any]:
    """One row: train, sample, evaluate. A failure is recorded (``error``), not raised, so that
    one broken method does not lose the others' hours."""
    try:
        t0 = time.perf_counter()
        run = train_method(dataset_dir, method, preset, minutes, work / "run", extra)
        train_seconds = time.perf_counter() - t0
        check_held_out(run, cases)
        seconds = predict_cases(run, dataset_dir, cases, work / "pred", max(n_samples), device)
        summary = evaluate(work / "pred", dataset_dir, work / "eval", n_samples_list=n_samples,
                           report=False, run=run, strict=True)
    except Exception as err:  # noqa: BLE001 (recorded in the results, printed in full)
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"}
    return {**row_of(summary, n_samples), "seconds_per_image": seconds,
            "train_seconds": train_seconds, "steps": trained_steps(run),
            "parameters": parameter_count(run), "run": str(run)}


def check_held_out(run: Path, cases: Sequence[str]) -> None:
    """Refuse to score cases the run trained on (its splits.json is the only source of truth)."""
    leaked = training_cases(run, cases)
    if leaked:
        raise DataError(f"{len(leaked)} of the {len(cases)} scored cases were in the training "
                        f"split of '{run}' (e.g. {leaked[:3]}); choose the cases from "
                        "RUN/splits.json")


def per_case(work: Path, key: str) -> dict[str, float]:
    """``{case: value}`` of one metric from the evaluation ``run_method`` wrote under ``work``."""
    summary = json.loads((work / "eval" / "summary.json").read_text())
    return {row["case"]: row[key] for row in summary["per_case"] if row.get(key) is not None}


def paired_difference(a: dict[str, float], b: dict[str, float], n_boot: int = 10000,
                      seed: int = 0) -> dict[str, float]:
    """Mean of a - b over the cases both score, with a 95% percentile-bootstrap interval (cases
    resampled with replacement) and the number of cases where a is lower."""
    cases = sorted(set(a) & set(b))
    if not cases:
        raise DataError("the two evaluations share no case")
    diff = np.array([a[c] - b[c] for c in cases])
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(diff.mean()), "ci95": [float(low), float(high)],
            "a_lower": int((diff < 0).sum()), "cases": len(cases)}


def run_oracle(dataset_dir: Path, work: Path, cases: Sequence[str],
               n_samples: Sequence[int]) -> dict[str, Any]:
    oracle_predictions(dataset_dir, cases, work / "pred", max(n_samples))
    summary = evaluate(work / "pred", dataset_dir, work / "eval", n_samples_list=n_samples,
                       report=False)
    return row_of(summary, n_samples)


def trained_steps(run: Path) -> int:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return max((json.loads(line).get("step", 0) for line in lines), default=0)


def parameter_count(run: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        return sum(int(np.prod(f.get_slice(key).get_shape())) for key in f.keys())


# ---------------------------------------------------------------------------------------------
# reporting


def columns(n_samples: Sequence[int]) -> list[tuple[str, str]]:
    """(result key, table header) pairs."""
    n0 = n_samples[0]
    return ([(f"ged_{n}", f"GED{n}") for n in n_samples]
            + [(f"hm_iou_{n0}", f"HM-IoU{n0}"), (f"ci_{n0}", f"CI{n0}"), ("dice", "Dice"),
               ("ece", "ECE"), ("s_ncc", "S_NCC"), ("seconds_per_image", "s/img"),
               ("steps", "steps")])


def format_table(rows: dict[str, dict[str, Any]], cols: Sequence[tuple[str, str]],
                 first: str = "method") -> str:
    """Rows as right-aligned text columns, missing values as '-'; a row that failed is listed
    under the table with its error."""
    head = [first] + [label for _, label in cols]
    lines = [head] + [[name] + [_fmt(row.get(key)) for key, _ in cols]
                      for name, row in rows.items() if "error" not in row]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    text += [f"{name}: failed: {row['error']}" for name, row in rows.items() if "error" in row]
    return "\n".join(text)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def hardware(device: str) -> dict[str, Any]:
    """The machine the numbers come from."""
    info: dict[str, Any] = {"machine": platform.machine(), "python": platform.python_version(),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "device": device}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "").strip()
        info["cpus"] = fields.get("CPU(s)", "").strip()
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info

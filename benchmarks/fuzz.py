"""The long fuzz run: >= 10,000 hostile inputs through diffuseg's entry points, in-process (plus a
smaller sample through the CLI in subprocesses). Each input ends as one of

- **clean error**: a DiffusegError with a one-line message naming the file or key;
- **valid result**: checked: finite outputs, a config whose values are finite, outputs only
  inside the output folder, the input untouched;
- **unclean error**: a DiffusegError whose message spans lines or does not name the input;
- **traceback**: any other exception (its type and raising line are listed);
- **hang**: no answer within ``--timeout`` seconds;
- **silent wrong output**: a valid-looking result that fails the checks (NaN, empty, a file
  written outside the output folder, the input changed).

The last four must be 0. Usage (a few minutes on one busy core)::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/fuzz.py --inputs 10000 --cli 40
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_inputs as gen  # noqa: E402

from diffuseg.config import load_config  # noqa: E402
from diffuseg.data import Dataset, DatasetInfo  # noqa: E402
from diffuseg.data.importers import import_lidc_slices, import_msd  # noqa: E402
from diffuseg.data.phantom import write_phantom_dataset  # noqa: E402
from diffuseg.errors import DiffusegError, one_line  # noqa: E402
from diffuseg.evaluation.evaluate import evaluate  # noqa: E402
from diffuseg.inference.batch import predict_cases  # noqa: E402
from diffuseg.inference.predictor import Predictor, case_name  # noqa: E402
from diffuseg.io import read_image, read_mask  # noqa: E402
from diffuseg.training.start import build_config  # noqa: E402

KEYS = tuple(path for path, _ in gen.PATHS if "." in path) + ("spatial_dims", "num_classes")
STATUSES = ("clean error", "valid result", "unclean error", "traceback", "hang", "silent wrong")
WEIGHTS = {"override": 30, "config_file": 10, "dataset_json": 10, "nifti": 15, "png": 12,
           "dicom": 9, "case_name": 10, "predict": 4, "convert": 2, "lidc": 3, "evaluate": 2,
           "run_config": 2, "write": 2, "overlap": 2}
TINY = ["network.channels=[8,16]", "network.attention_levels=[false,false]",
        "network.norm_groups=4", "train.max_steps=1", "train.device=cpu", "process.T=50",
        "train.val_cases=1", "train.val_samples=1", "train.val_steps=1"]


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no library's `except Exception` eats it."""


def _alarm(signum, frame):
    raise Hang()


def signature(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(err).__name__} at {where}: {' '.join(str(err).split())[:100]}"


def run_one(call: Callable[[], str | None], needles: tuple[str, ...], timeout: float
            ) -> tuple[str, str]:
    """(status, detail) of one input; ``call`` returns None for a checked valid result, or a
    description of what is wrong with it."""
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        problem = call()
    except Hang:
        return "hang", "timeout"
    except DiffusegError as err:
        message = str(err)
        if not message or "\n" in message:
            return "unclean error", f"multi-line: {message[:120]!r}"
        if needles and not any(n in message or one_line(n) in message for n in needles):
            return "unclean error", f"does not name {needles[0]!r}: {message[:120]}"
        return "clean error", message
    except Exception as err:  # noqa: BLE001 (what the fuzz run counts)
        return "traceback", signature(err)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return ("silent wrong", problem) if problem else ("valid result", "")


# ---------------------------------------------------------------------------------------------
# the entry points


def finite_config(config) -> str | None:
    import dataclasses
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            problem = finite_config(value)
            if problem:
                return problem
        for item in value if isinstance(value, tuple) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                return f"{f.name}={item}"
    return None


def try_override(rng, folder):
    overrides = [gen.override(rng) for _ in range(rng.randint(1, 4))]
    needles = tuple(o.split("=")[0].split(".")[0] for o in overrides) + tuple(
        o.split("=")[0].rsplit(".", 1)[-1] for o in overrides)
    return (lambda: finite_config(load_config(None, overrides))), needles


def try_config_file(rng, folder):
    path = folder / "config.json"
    path.write_bytes(gen.config_file(rng))

    def call():
        finite = finite_config(load_config(path))
        return finite or finite_config(build_config(path, [], dataset=None))
    return call, ("config.json", *KEYS)  # the file, or the key of a merged value


def try_dataset_json(rng, folder):
    path = folder / "dataset.json"
    path.write_bytes(gen.dataset_json(rng))

    def call():
        info = DatasetInfo.load(path)
        ok = 1 <= info.raters <= 100 and info.n_channels >= 1 and info.spatial_dims in (2, 3)
        return None if ok else f"accepted {info}"
    return call, ("dataset.json",)


def check_arrays(image: np.ndarray, geometry) -> str | None:
    if not np.isfinite(image).all():
        return "NaN/Inf in a returned image"
    if not np.isfinite(geometry.affine).all():
        return "non-finite affine returned"
    if image.size == 0:
        return "empty image returned"
    return None


def try_file(kind):
    def make(rng, folder):
        ending, raw = (gen.nifti if kind == "nifti" else gen.png)(rng)
        path = folder / f"fuzz{ending}"
        path.write_bytes(raw)

        def call():
            image, geometry = read_image(path)
            problem = check_arrays(image, geometry)
            if problem:
                return problem
            try:
                mask, _ = read_mask(path)
            except DiffusegError as err:  # a refused mask is fine; it must be one clean line
                return None if "\n" not in str(err) else "multi-line mask error"
            return None if mask.min(initial=0) >= 0 else "negative labels"
        return call, ("fuzz",)
    return make


def try_dicom(rng, folder):
    series = gen.dicom_series(rng, folder / "series")

    def call():
        image, geometry = read_image(series)
        return check_arrays(image, geometry)
    return call, ("series", ".dcm")


def try_case_name(rng, folder):
    name = gen.case_file_name(rng)
    out = folder / "out"

    def call():
        safe = case_name(Path(name)) if "/" not in name else case_name(Path(name.replace(
            "/", "_")))
        target = (out / safe).resolve()
        if safe in ("", ".", "..") or any(c in safe for c in "/\\\0"):
            return f"unsafe case name {safe!r}"
        if target.parent != out.resolve() or len(safe.encode()) > 255 - 24:
            return f"case name {safe!r} leaves the output folder or is too long"
        return None
    return call, ()


class Fixtures:
    """What the predict, convert and evaluate trials share: one tiny trained run, the phantom
    dataset it was trained on and its predictions of that dataset."""

    def __init__(self, root: Path) -> None:
        self.data = write_phantom_dataset(root / "phantom", n_cases=4, size=24, n_raters=2)
        from diffuseg.training.loop import train
        self.run = train(build_config(None, TINY, dataset=self.data), self.data, root / "run",
                         progress=False)
        self.predictor = Predictor.from_run(self.run)
        self.pred = root / "pred"
        for image in sorted((self.data / "imagesTr").iterdir()):
            self.predictor.predict_file(image, self.pred, n_samples=2, steps=1)


FIXTURES: Fixtures | None = None


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def try_predict(rng, folder):
    inputs, out = folder / "in", folder / "work" / "out"
    inputs.mkdir()
    (folder / "work").mkdir()
    name = gen.case_file_name(rng).replace("/", "_").replace("\0", "_")
    try:
        path = inputs / name
        path.write_bytes(b"")
    except (OSError, ValueError):
        path = inputs / "img.png"
    kind = rng.random()
    if kind < 0.5:
        ending, raw = gen.png(rng) if kind < 0.25 else gen.nifti(rng)
        path = path.with_name(path.name + ending) if not path.name.endswith(ending) else path
        path.write_bytes(raw)
    else:
        from PIL import Image
        size = (rng.randint(8, 40), rng.randint(8, 40))
        Image.fromarray(np.random.default_rng(rng.getrandbits(32)).integers(
            0, 255, size).astype(np.uint8)).save(path, format="PNG")
    hostile = rng.random() < 0.3  # else plausible options, so that most inputs reach sampling
    samples = rng.choice([0, -1, 10**6] if hostile else [None, 1, 2, 3])
    steps = rng.choice([0, 51, 10**9] if hostile else [None, 1, 2])
    seed = rng.choice([2**64, -1] if hostile else [0, 1, 2**63 - 1])
    before = snapshot(inputs)

    def call():
        case = FIXTURES.predictor.predict_file(path, out, n_samples=samples, steps=steps,
                                               seed=seed, overwrite=rng.random() < 0.5)
        if sorted(p.name for p in (folder / "work").iterdir()) != ["out"]:
            return "wrote outside the output folder"
        if case.parent.resolve() != out.resolve():
            return f"case folder {case} is not inside -o"
        consensus = [p for p in case.iterdir() if p.name.startswith("consensus")]
        if not consensus:
            return "no consensus written"
        mask, _ = read_mask(consensus[0])
        probability = [p for p in case.iterdir() if p.name.startswith("probability")]
        image, _ = read_image(probability[0])
        return None if np.isfinite(image).all() and mask.size else "NaN or empty output"

    def checked():
        problem = call()
        return problem or (None if snapshot(inputs) == before else "the input changed")
    return checked, (path.name[:20], "--samples", "--steps", "--seed", "samples")


def try_convert(rng, folder):
    src = folder / "Task"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    import nibabel as nib
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)),
             src / "imagesTr" / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)),
             src / "labelsTr" / "a.nii.gz")
    (src / "dataset.json").write_text(json.dumps(
        {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"}}))
    dst = rng.choice([src, src / "out", folder, src / "imagesTr", folder / "dst", src / "."])
    overwrite = rng.random() < 0.7
    before = snapshot(src)

    def checked():
        try:
            import_msd(src, dst, overwrite=overwrite)
        except DiffusegError:
            if snapshot(src) != before:
                return "the input changed (before the refusal)"
            raise
        if snapshot(src) != before:
            return "the input changed"
        return None if (Path(dst) / "dataset.json").is_file() else "no dataset.json written"
    return checked, ("input", "Task", "dst")


def try_lidc(rng, folder):
    tar = gen.lidc_tar(rng, folder / "release.tar")
    dst = folder / "ds"

    def call():
        summary = import_lidc_slices(tar, dst)
        dataset = Dataset.open(dst)
        if summary.n_cases != len(dataset.cases) or not dataset.cases:
            return f"{summary.n_cases} cases reported, {len(dataset.cases)} written"
        longest = max(len(p.name.encode()) for p in dst.rglob("*"))
        return None if longest <= 255 else f"a file name of {longest} bytes"
    return call, ("release.tar",)


def try_evaluate(rng, folder):
    pred = shutil.copytree(FIXTURES.pred, folder / "pred")
    case = rng.choice(sorted(p for p in pred.iterdir() if p.is_dir()))
    gen.damage_prediction(rng, case)

    def call():
        summary = evaluate(pred, FIXTURES.data, folder / "out", n_samples_list=(2,),
                           report=rng.random() < 0.2)
        values = [v for c in summary["per_case"] for v in c.values()
                  if isinstance(v, float)]
        return None if all(math.isfinite(v) or math.isnan(v) for v in values) else "Inf metric"
    return call, (case.name,)


def try_run_config(rng, folder):
    run = folder / "run"
    run.mkdir()
    for name in ("config.json", "dataset.json", "model.safetensors", "ema.safetensors"):
        shutil.copy(FIXTURES.run / name, run / name)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(gen.damage_run_config(rng, config)))

    def call():
        predictor = Predictor.from_run(run)
        result = predictor.segment(np.ones((1, 24, 24), np.float32), n_samples=1, steps=1)
        return None if torch.isfinite(result.probability).all() else "NaN probabilities"
    return call, ("config.json", *KEYS)  # the file, or the key of a bad value


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries of the atomic writers (and the lock) left under ``folder``."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".")] if folder.exists() \
        else []


@contextlib.contextmanager
def refused_writes(rng, under: Path):
    """One way the file system refuses writes below ``under``: a file-size limit (a real
    RLIMIT_FSIZE, EFBIG), or disk full / read-only / permission denied (ENOSPC, EROFS, EACCES)
    raised by ``open`` for writing or by ``os.replace``."""
    import builtins
    import errno
    import resource

    mode = rng.choice(["fsize", "open", "replace"])
    code = rng.choice([errno.ENOSPC, errno.EROFS, errno.EACCES])
    real_open, real_replace = builtins.open, os.replace
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(file).startswith(str(under)):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(under)):
            raise OSError(code, os.strerror(code))
        return real_replace(src, dst, *args, **kwargs)
    try:
        if mode == "fsize":
            resource.setrlimit(resource.RLIMIT_FSIZE, (rng.choice([0, 300, 3000]), limits[1]))
        elif mode == "open":
            builtins.open = open_
        else:
            os.replace = replace
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        builtins.open, os.replace = real_open, real_replace


def try_write(rng, folder):
    out = folder / "out"
    image = rng.choice(sorted((FIXTURES.data / "imagesTr").iterdir()))
    overwrite = rng.random() < 0.5
    if overwrite:  # a previous prediction that a refused write must leave whole
        FIXTURES.predictor.predict_file(image, out, n_samples=1, steps=1)
    before = snapshot(out) if out.exists() else {}

    def call():
        try:
            with refused_writes(rng, out):
                case = FIXTURES.predictor.predict_file(image, out, n_samples=2, steps=1,
                                                       overwrite=True)
        except DiffusegError:
            if leftovers(out):
                return f"temporaries left after the refusal: {leftovers(out)[:2]}"
            if out.exists() and snapshot(out) != before:
                return "the previous prediction changed"
            raise
        if leftovers(out):
            return f"temporaries left: {leftovers(out)[:2]}"
        return None if (case / "result.json").is_file() else "no result.json"
    return call, (str(out),)


def try_overlap(rng, folder):
    inputs = folder / "in"
    inputs.mkdir()
    for image in sorted((FIXTURES.data / "imagesTr").iterdir())[:2]:
        shutil.copy(image, inputs / image.name)
    files = sorted(inputs.iterdir())
    out = rng.choice([files[0], inputs, inputs / ".", inputs / "sub", folder / "out",
                      folder, files[1].with_suffix(".x")])
    if out.suffix == ".x":
        out.write_bytes(b"a file")
    before = {p.name: p.read_bytes() for p in files}

    def call():
        try:
            done = predict_cases(FIXTURES.predictor, [[p] for p in files], out, n_samples=1,
                                 steps=1)
        except DiffusegError:
            if {p.name: p.read_bytes() for p in files} != before:
                return "the input changed (before the refusal)"
            raise
        if {p.name: p.read_bytes() for p in files if p.is_file()} != before:
            return "the input changed"
        if any(name in {p.name for p in inputs.iterdir()} for name, *_ in done):
            return "case folders written among the inputs"
        return None if all((f / "result.json").is_file() for _, f, _ in done) else "incomplete"
    return call, ("-o", "input", str(out.name))


ENTRY = {"override": try_override, "config_file": try_config_file,
         "dataset_json": try_dataset_json, "nifti": try_file("nifti"), "png": try_file("png"),
         "dicom": try_dicom, "case_name": try_case_name, "predict": try_predict,
         "convert": try_convert, "lidc": try_lidc, "evaluate": try_evaluate,
         "run_config": try_run_config, "write": try_write, "overlap": try_overlap}


# ---------------------------------------------------------------------------------------------
# CLI sample (subprocesses)


def cli_args(rng, folder: Path) -> list[str]:
    roll = rng.random()
    if roll < 0.45:
        files = folder / "in"
        files.mkdir(exist_ok=True)
        ending, raw = (gen.png if rng.random() < 0.5 else gen.nifti)(rng)
        (files / f"x{ending}").write_bytes(raw)
        extra = []
        for option, values in (("--samples", ["1", "0", "100000", "1e3", "x"]),
                               ("--steps", ["1", "0", "-5", "99999999999"]),
                               ("--seed", ["0", str(2**64), "-1", "1.5"]),
                               ("--device", ["cpu", "meta", "1", "cuda:99", "auto"])):
            if rng.random() < 0.4:
                extra += [option, rng.choice(values)]
        return ["predict", str(FIXTURES.run), "-i", str(files), "-o", str(folder / "out"),
                *extra]
    if roll < 0.85:
        args = ["train", str(folder.parent / "phantom"), "-o", str(folder / "run")]
        for _ in range(rng.randint(1, 3)):
            args += ["--set", gen.override(rng)]
        if rng.random() < 0.3:
            (folder / "c.json").write_bytes(gen.config_file(rng))
            args += ["-c", str(folder / "c.json")]
        return args + ["--set", "train.max_steps=2", "--set", "train.device=cpu",
                       "--set", "network.channels=[8,16]", "--set",
                       "network.attention_levels=[false,false]", "--set", "network.norm_groups=4",
                       "--set", "train.max_minutes=0.2"]
    dataset = folder / "ds"
    shutil.copytree(folder.parent / "phantom", dataset)
    (dataset / "dataset.json").write_bytes(gen.dataset_json(rng))
    return ["check", str(dataset)]


def run_cli(args: list[str], timeout: float) -> tuple[str, str]:
    command = [sys.executable, "-c", "from diffuseg.cli import main; main()", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return "hang", " ".join(args[:3])
    err = done.stderr.strip()
    if "Traceback" in err:
        return "traceback", err.splitlines()[-1][:160]
    lines = [line for line in err.splitlines() if line.strip()]
    if done.returncode == 0:
        return "valid result", ""
    if done.returncode == 1 and args[0] == "check" and "error" in done.stdout:
        return "clean error", done.stdout.splitlines()[0]
    if done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "clean error", lines[0]
    if done.returncode == 2 and "Usage:" in err and "Error" in err:
        return "clean error", "click usage error: " + lines[-2][:100]
    return "unclean error", f"exit {done.returncode}: {err[-160:]!r}"


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--cli", type=int, default=40, help="CLI runs in subprocesses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per input")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fuzz.json"))
    args = parser.parse_args()
    global FIXTURES
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="diffuseg-fuzz-"))
    start = time.monotonic()
    FIXTURES = Fixtures(root)
    kinds = list(WEIGHTS)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    details: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for index in range(args.inputs):
        kind = rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
        folder = root / f"t{index}"
        folder.mkdir()
        call, needles = ENTRY[kind](rng, folder)
        status, detail = run_one(call, needles, args.timeout)
        counts[kind][status] += 1
        if status not in ("clean error", "valid result"):
            details[status][f"{kind}: {detail}"] += 1
        elif rng.random() < 0.002:  # a few examples of what the users see
            details[f"example {status}"][f"{kind}: {detail[:160]}"] += 1
        shutil.rmtree(folder, ignore_errors=True)
        if (index + 1) % 1000 == 0:
            print(f"{index + 1} inputs, {time.monotonic() - start:.0f} s", flush=True)
    for index in range(args.cli):
        folder = root / f"c{index}"
        folder.mkdir()
        status, detail = run_cli(cli_args(rng, folder), timeout=max(args.timeout, 180))
        counts["cli"][status] += 1
        if status not in ("clean error", "valid result"):
            details[status][f"cli: {detail}"] += 1
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    report(counts, details, time.monotonic() - start, args)


def report(counts, details, seconds: float, args) -> None:
    total = collections.Counter()
    for kind_counts in counts.values():
        total.update(kind_counts)
    print(f"\n{'entry point':<14}{'inputs':>8}" + "".join(f"{s:>15}" for s in STATUSES))
    for kind in [*WEIGHTS, "cli"]:
        c = counts.get(kind, collections.Counter())
        print(f"{kind:<14}{sum(c.values()):>8}" + "".join(f"{c[s]:>15}" for s in STATUSES))
    print(f"{'total':<14}{sum(total.values()):>8}" + "".join(f"{total[s]:>15}"
                                                            for s in STATUSES))
    for status, found in sorted(details.items()):
        print(f"\n{status}:")
        for text, n in found.most_common(25):
            print(f"  {n:5d}  {text}")
    print(f"\n{seconds:.0f} s, seed {args.seed}, per-input timeout {args.timeout} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "inputs": sum(total.values()), "totals": dict(total), "seconds": round(seconds),
        "by_entry_point": {k: dict(v) for k, v in counts.items()},
        "problems": {k: dict(v.most_common(200)) for k, v in details.items()},
        "seed": args.seed, "timeout_s": args.timeout, "load_average": os.getloadavg(),
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()

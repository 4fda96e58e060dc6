"""Equal-budget comparison on LIDC (issue 24): score runs that the CLI trained, and draw their
learning curves.

``score`` takes run folders (``diffuseg train ... --set train.budget_clock=cpu``) and scores each
on the validation patients of its own ``splits.json`` (every run must have the same val fold): all
their slices, or a seeded subset of ``--cases`` slices (the same subset for every run, and for
every later call with the same fold, ``--cases`` and ``--seed``). Each slice gets ``--samples``
masks from ``Predictor.segment`` (seed = ``--seed`` + crc32 of the case id; ``--steps`` defaults
to what ``diffuseg predict`` uses: the run's ``sample.steps``, LDSeg's option ``steps``; the JSON
records the sampler and steps run), scored in memory with the evaluator's code
(``diffuseg.evaluation.references.set_scores``):

- GED16 (squared form, d = 1 - IoU, d(empty, empty) = 0, all pairs incl. i = j) and HM-IoU16;
- consensus Dice against the raters' majority, on the slices whose majority is not empty only;
- ``own consensus x16``: GED16 of the run's own consensus drawn 16 times (what its samples'
  diversity must beat);
- the trivial references on the same slices (``diffuseg.evaluation.references``): always empty,
  and the raters' majority drawn 16 times (a perfect one-mask segmenter);
- where the GED comes from: the same GED and the majority reference per number of raters who
  marked the slice (0 .. R; ``raters_marked`` of each row), and each group's share of the mean;
- 95 % intervals by a bootstrap over **patients** (``--boot`` resamples, seeded by ``--boot-seed``;
  each resample draws as many patients as were scored, with replacement, and averages over all
  the slices of the drawn patients; patients from dataset.json "groups", a case without a group
  is its own patient). The same seed draws the same patients for every run and metric;
- training minutes and optimiser steps of the weights scored (``checkpoint/state.json``:
  ``elapsed_seconds`` on the run's ``train.budget_clock``, CPU seconds of the training process
  with ``budget_clock=cpu``), the budget asked (``train.max_minutes``), and sampling seconds per
  slice (``segment`` alone, ``--threads`` torch threads, default 1).

Every slice's scores are appended to ``WORK/<label>/cases.jsonl`` as soon as they exist: a
killed ``score`` resumes where it stopped (a call with other settings is refused). A run still
training has its final weights only at the end; ``--checkpoint`` scores its latest complete
checkpoint instead (copied to ``WORK/<label>/weights``, reused by a resumed call). Such a
checkpoint is not a run of that shorter budget (the learning rate anneals over the whole
``train.max_minutes``): the table says "13.4 of 95"; curves should use runs trained to their end.
Each run's JSON goes to ``WORK/<label>/score.json`` and, with ``--out DIR``, to
``DIR/<label>.json`` beside ``DIR/table.md``; the markdown table is printed, with one line per run
saying when, where, under which load and with which command it was scored.

``curve`` reads those JSON files (or folders of them) and draws GED16 against training minutes,
one line per series (``--series`` at scoring, default the method name) with the bootstrap
intervals as error bars and the references as horizontal lines, into ``--out`` (PNG), with the
combined table beside it (``.md``). Runs scored on other slices or other clocks are refused.

``compare BASE OTHER...`` reads the per-slice scores of ``WORK/<label>`` folders scored on the
same slices with the same number of samples and reports, per other run, the **paired**
difference to the base (other - base, per slice, then the patients' bootstrap of the mean
difference): two levers scored on the same 600 slices differ by less than their separate
intervals suggest, since the slices' difficulty is shared.

    python benchmarks/lidc_budget.py score --runs runs/ldseg_30 runs/flow_30 \\
        --dataset Dataset010_LIDC --cases 600 --work /tmp/lidc_budget --out /tmp/lidc_scores
    python benchmarks/lidc_budget.py curve /tmp/lidc_scores --out docs/lidc_learning_curves.png
    python benchmarks/lidc_budget.py compare /tmp/lidc_budget/ldseg_30 /tmp/lidc_budget/flow_30
    python benchmarks/lidc_budget.py --quick   # the same code on a tiny phantom, seconds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py, beside this script)
import lidc  # noqa: E402  (its PUBLISHED rows)

from diffuseg.core.atomic import folder_lock, write_json_atomic, write_text_atomic  # noqa: E402
from diffuseg.core.progress import Progress  # noqa: E402
from diffuseg.data import Dataset  # noqa: E402
from diffuseg.errors import DataError  # noqa: E402
from diffuseg.evaluation.references import (  # noqa: E402
    reference_scores,
    repeated_mask_scores,
    set_scores,
)
from diffuseg.inference.predictor import Predictor  # noqa: E402
from diffuseg.run.checkpoint import complete_step  # noqa: E402
from diffuseg.run.folder import check_same_dataset, held_out_cases  # noqa: E402
from diffuseg.run.verdict import BEST, WEIGHTS, predict_weights  # noqa: E402

REFERENCES = {"always_empty": "always empty (ref.)",
              "majority_repeated": "raters' majority x16 (ref.)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true",
                   help="train 4 tiny runs on a phantom, score them and draw the curve (seconds)")
    p.add_argument("--work", type=Path, default=Path("/tmp/lidc_budget"),
                   help="scratch folder: per-slice scores, checkpoint copies (default "
                   "/tmp/lidc_budget)")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("score", help="score run folders on their validation patients")
    s.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders")
    s.add_argument("--dataset", type=Path, help="the dataset folder (default: the one in the "
                   "first run's fingerprint.json)")
    s.add_argument("--cases", type=int, default=600,
                   help="val slices scored, a seeded subset (default 600; 0 = all)")
    s.add_argument("--samples", type=int, default=16, help="masks per slice (default 16)")
    s.add_argument("--steps", type=int,
                   help="sampler steps (default: each run's own, as diffuseg predict)")
    s.add_argument("--seed", type=int, default=0, help="subset and sampling seed (default 0)")
    s.add_argument("--boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    s.add_argument("--boot-seed", type=int, default=0, help="bootstrap seed (default 0)")
    s.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="sampling precision (default auto: bf16 on AVX-512 BF16 CPUs)")
    s.add_argument("--checkpoint", action="store_true",
                   help="score each run's latest complete checkpoint (a run still training)")
    s.add_argument("--labels", nargs="+", help="one name per run (default: folder names)")
    s.add_argument("--series", nargs="+", help="curve line of each run (default: method name)")
    s.add_argument("--out", type=Path, help="folder for <label>.json per run and table.md")
    c = sub.add_parser("curve", help="learning curves from score JSON files")
    c.add_argument("scores", type=Path, nargs="+", help="score JSON files or folders of them")
    c.add_argument("--out", type=Path, required=True, help="PNG (the table goes beside, .md)")
    c.add_argument("--target", type=float, help="a GED16 target drawn as a line (e.g. 0.25)")
    d = sub.add_parser("compare", help="paired differences of runs scored on the same slices")
    d.add_argument("base", type=Path, help="a WORK/<label> folder of 'score' (cases.jsonl)")
    d.add_argument("others", type=Path, nargs="+", help="WORK/<label> folders to compare")
    d.add_argument("--boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    d.add_argument("--boot-seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = p.parse_args(argv)
    if args.command is None and not args.quick:
        p.error("choose 'score', 'curve' or 'compare' (or --quick)")
    if args.command == "score":
        n = len(args.runs)
        for name in ("labels", "series"):
            if getattr(args, name) is not None and len(getattr(args, name)) != n:
                p.error(f"--{name} needs one name per run ({n}), got {getattr(args, name)}")
        args.labels = args.labels or [r.resolve().name for r in args.runs]
        if len(set(args.labels)) != n:
            p.error(f"run folder names repeat ({args.labels}); give --labels")
        if args.samples < 2 or args.boot < 1 or args.cases < 0 or args.threads < 1:
            p.error("--samples must be >= 2, --boot and --threads >= 1, --cases >= 0")
    return args


# ---------------------------------------------------------------------------------------------
# what a run says about itself


def trained_state(run: Path, weights: Path) -> dict[str, Any]:
    """Method, clock and budget from config.json; step and elapsed seconds of the weights in
    ``weights`` (their ``state.json``, the checkpoint written with the final weights), else the
    last ``metrics.jsonl`` record."""
    config = json.loads((run / "config.json").read_text())
    state_path = weights / "state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        step, seconds = int(state["step"]), float(state["elapsed_seconds"])
    else:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
        last = max((r for r in records if "seconds" in r), key=lambda r: r["step"])
        step, seconds = int(last["step"]), float(last["seconds"])
    train = config["train"]
    return {"method": config["method"]["name"], "budget_clock": train.get("budget_clock", "wall"),
            "budget_minutes": train.get("max_minutes"), "train_steps": step,
            "train_minutes": seconds / 60.0, "channels": config["network"]["channels"]}


def used_weights(run: Path, state: dict[str, Any]) -> str:
    """What ``predict`` loads from a finished run (``weights.json``): ``final`` for its last EMA
    weights; for the EMA weights of its best validation, ``ema_best`` and their step, which then
    replaces ``state["train_steps"]`` (the table's steps are those of the weights scored; its
    minutes stay the run's whole budget, what the weights cost)."""
    used = predict_weights(run).name
    if used != BEST:
        return "final"
    best = json.loads((run / WEIGHTS).read_text())["best"]["step"]
    label = f"ema_best (step {best} of {state['train_steps']})"
    state["train_steps"] = int(best)
    return label


def final_weights(run: Path) -> Path:
    """A finished run (its final weights are those of its last checkpoint): a folder holding the
    weights and their state.json, i.e. the run's ``checkpoint`` beside top-level weights."""
    if not (run / "ema.safetensors").is_file() and not (run / "model.safetensors").is_file():
        step = complete_step(run / "checkpoint")
        raise DataError(f"'{run}' has no final weights (still training?); pass --checkpoint to "
                        f"score its latest complete checkpoint (step {step})")
    log = (run / "training_log.txt").read_text() if (run / "training_log.txt").is_file() else ""
    finished = [line for line in log.splitlines() if "finished at step" in line]
    step = complete_step(run / "checkpoint")
    if finished and step is not None and f"finished at step {step} " not in finished[-1]:
        raise DataError(f"'{run}' is training again (checkpoint at step {step}, final weights: "
                        f"'{finished[-1].strip()}'); wait for it, or pass --checkpoint")
    return run


def snapshot(run: Path, folder: Path) -> Path:
    """A copy of ``run``'s latest complete checkpoint as a loadable run folder (config, splits,
    EMA weights, state.json), made once and reused; checked against a checkpoint swap during the
    copy (the step before and after must agree)."""
    if (folder / "state.json").is_file():
        return folder
    for _ in range(5):
        before = complete_step(run / "checkpoint")
        if before is None:
            raise DataError(f"'{run}/checkpoint' holds no complete checkpoint yet; wait for one")
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for name in ("config.json", "dataset.json", "splits.json", "fingerprint.json"):
                if (run / name).is_file():
                    shutil.copyfile(run / name, tmp / name)
            for name in ("ema.safetensors", "state.json"):
                shutil.copyfile(run / "checkpoint" / name, tmp / name)
        except FileNotFoundError:
            continue  # the checkpoint was swapped while we copied
        state = json.loads((tmp / "state.json").read_text())
        if complete_step(run / "checkpoint") == before == state["step"]:
            os.replace(tmp, folder)
            return folder
    raise DataError(f"'{run}/checkpoint' changed during 5 copies; try again")


# ---------------------------------------------------------------------------------------------
# which slices


def val_cases(runs: Sequence[Path], limit: int, seed: int) -> list[str]:
    """The val fold shared by every run (refused if they differ), or a seeded subset of
    ``limit`` of its slices (0 = all); sorted."""
    folds = {run: held_out_cases(run, "val") for run in runs}
    first = folds[runs[0]]
    for run, fold in folds.items():
        if fold != first:
            raise DataError(f"'{run}/splits.json' has another val fold than '{runs[0]}' "
                            f"({len(fold)} vs {len(first)} cases); score runs of one split")
    if not first:
        raise DataError(f"'{runs[0]}/splits.json' has no val cases to score")
    if limit and limit < len(first):
        rng = np.random.default_rng(seed)
        return sorted(rng.choice(first, size=limit, replace=False).tolist())
    return first


def cases_hash(cases: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(cases).encode()).hexdigest()[:16]


def case_seed(case_id: str, seed: int) -> int:
    """The sampling seed of a slice: the same whatever the subset it is scored in."""
    return seed + zlib.crc32(case_id.encode())


# ---------------------------------------------------------------------------------------------
# scoring one run, streamed to WORK/<label>/cases.jsonl


def score_case(predictor: Predictor, case, n: int, steps: int | None, seed: int
               ) -> dict[str, Any]:
    """One slice: n samples, their scores, the run's consensus repeated, the references."""
    data = case.load()
    labels = case.labels
    t0 = time.perf_counter()
    result = predictor.segment(data.image, n_samples=n, steps=steps, seed=seed,
                               source=case.case_id)
    seconds = time.perf_counter() - t0
    samples = result.sample_labels()[:, 0].numpy()
    consensus = result.consensus[0].numpy()
    own = repeated_mask_scores(consensus, data.raters, labels, n)[f"ged_{n}"]
    return {"case": case.case_id, "patient": case.group, "seconds": seconds,
            **set_scores(samples, consensus, data.raters, labels, n),
            "own_consensus_ged": own, "raters_marked": raters_marked(data.raters),
            "references": reference_scores(data.raters, labels, n)}


def raters_marked(raters: np.ndarray) -> int:
    """How many raters marked any foreground on the slice (0 .. R)."""
    return int(sum(np.asarray(r).any() for r in raters))


def with_raters_marked(rows: dict[str, dict], dataset: Dataset, path: Path) -> None:
    """Fill ``raters_marked`` into rows scored before it was recorded (rewrites cases.jsonl)."""
    old = [c for c, row in rows.items() if "raters_marked" not in row]
    for case_id in old:
        rows[case_id]["raters_marked"] = raters_marked(dataset.case(case_id).load().raters)
    if old:
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows.values()))


def read_rows(path: Path) -> dict[str, dict]:
    """The complete lines of a cases.jsonl (a line cut by a kill is dropped, and the file
    rewritten without it so that appends stay valid)."""
    if not path.is_file():
        return {}
    rows, lines = {}, path.read_text().splitlines()
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["case"]] = row
    if len(rows) != len([line for line in lines if line.strip()]):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows.values()))
    return rows


def score_run(run: Path, label: str, dataset: Dataset, cases: Sequence[str],
              args: argparse.Namespace) -> tuple[list[dict], dict[str, Any]]:
    """Every slice's row (resumed from WORK/<label>/cases.jsonl), and the settings they share."""
    folder = args.work / label
    with folder_lock(folder, "score folder"):
        weights = snapshot(run, folder / "weights") if args.checkpoint else final_weights(run)
        predictor = Predictor.from_run(weights, device="cpu", precision=args.precision)
        sampler, steps = predictor.method.sampling(args.steps)
        state = trained_state(run, weights if args.checkpoint else run / "checkpoint")
        used = "checkpoint" if args.checkpoint else used_weights(run, state)
        settings = {"run": str(run.resolve()), "weights": used,
                    "train_steps": state["train_steps"], "samples": args.samples,
                    "sampler_steps": steps, "sampler": sampler,
                    "precision": predictor.precision_used(),
                    "seed": args.seed, "cases": len(cases), "cases_sha256": cases_hash(cases)}
        recorded = folder / "settings.json"
        if recorded.is_file() and json.loads(recorded.read_text()) != settings:
            raise DataError(f"'{folder}' holds scores made with other settings "
                            f"({recorded.read_text().strip()}); pass another --work or delete "
                            "that folder")
        write_json_atomic(recorded, settings)
        rows = read_rows(folder / "cases.jsonl")
        with_raters_marked(rows, dataset, folder / "cases.jsonl")
        todo = [c for c in cases if c not in rows]
        with open(folder / "cases.jsonl", "a") as stream, \
                Progress(f"score {label}", len(cases), unit="slices",
                         start=len(cases) - len(todo)) as bar:
            for case_id in todo:
                row = score_case(predictor, dataset.case(case_id), args.samples, steps,
                                 case_seed(case_id, args.seed))
                stream.write(json.dumps(row) + "\n")
                stream.flush()
                rows[case_id] = row
                bar.advance(info=case_id)
    return [rows[c] for c in cases], {**settings, **state}


# ---------------------------------------------------------------------------------------------
# patients' bootstrap


class PatientBootstrap:
    """Means over slices with 95 % percentile intervals from resampling patients (a cluster
    bootstrap): resample b draws P patients out of the P scored with replacement, ``W[b, p]``
    times patient p, and its statistic is ``sum_p W[b,p] S_p / sum_p W[b,p] N_p`` with S_p, N_p
    the sum and count of patient p's (eligible) slices."""

    def __init__(self, patients: Sequence[str], n_boot: int, seed: int):
        self.ids, self.index = np.unique(np.asarray(patients), return_inverse=True)
        draws = np.random.default_rng(seed).integers(len(self.ids), size=(n_boot, len(self.ids)))
        self.weights = np.zeros((n_boot, len(self.ids)))
        np.add.at(self.weights, (np.arange(n_boot)[:, None], draws), 1.0)

    def interval(self, values: Sequence[float | None]) -> dict[str, Any]:
        """``{"mean", "ci95", "slices", "patients"}`` over the slices whose value is not None."""
        x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        keep = ~np.isnan(x)
        if not keep.any():
            return {"mean": None, "ci95": [None, None], "slices": 0, "patients": 0}
        size = len(self.ids)
        sums = np.bincount(self.index[keep], weights=x[keep], minlength=size)
        counts = np.bincount(self.index[keep], minlength=size).astype(np.float64)
        num, den = self.weights @ sums, self.weights @ counts
        boot = num[den > 0] / den[den > 0]  # a resample without an eligible slice says nothing
        low, high = np.percentile(boot, [2.5, 97.5])
        return {"mean": float(x[keep].mean()), "ci95": [float(low), float(high)],
                "slices": int(keep.sum()), "patients": int((counts > 0).sum())}


def summarise(rows: Sequence[dict], n: int, n_boot: int, seed: int) -> dict[str, Any]:
    """Per metric ``PatientBootstrap.interval``, for the run and for each reference."""
    boot = PatientBootstrap([r["patient"] for r in rows], n_boot, seed)
    keys = (f"ged_{n}", f"hm_iou_{n}", "dice")

    def block(get) -> dict[str, Any]:
        return {key: boot.interval([get(r).get(key) for r in rows]) for key in keys}

    metrics = block(lambda r: r)
    metrics["own_consensus_ged"] = boot.interval([r["own_consensus_ged"] for r in rows])
    return {"metrics": metrics, "by_raters_marked": by_raters_marked(rows, n, boot),
            "references": {name: block(lambda r, k=name: r["references"][k])
                           for name in REFERENCES}}


def by_raters_marked(rows: Sequence[dict], n: int, boot: PatientBootstrap) -> dict[str, Any]:
    """Where the GED comes from: per number of raters who marked the slice, the run's GED and the
    raters' majority x n reference on those slices (patients' bootstrap), and the share of the
    run's mean GED over all slices that those slices carry (their GED sum / all slices)."""
    key, out = f"ged_{n}", {}
    for k in sorted({r["raters_marked"] for r in rows}):
        mine = [r[key] if r["raters_marked"] == k else None for r in rows]
        ref = [r["references"]["majority_repeated"][key] if r["raters_marked"] == k else None
               for r in rows]
        out[str(k)] = {key: boot.interval(mine), "majority_repeated": boot.interval(ref),
                       "share": float(sum(v for v in mine if v is not None) / len(rows))}
    return out


# ---------------------------------------------------------------------------------------------
# reporting


def _ci(entry: dict[str, Any]) -> str:
    if entry.get("mean") is None:
        return "-"
    low, high = entry["ci95"]
    return f"{entry['mean']:.3f} [{low:.3f}, {high:.3f}]"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per run, then the references of the first run's slices, then (LIDC) the published
    rows of ``lidc.PUBLISHED`` (other protocols: a scale, not a like-for-like comparison)."""
    n = results[0]["settings"]["samples"]
    head = ["run", "method (sampler steps)", "train min (clock)", "train steps",
            f"GED{n} [95% CI]",
            f"HM-IoU{n} [95% CI]", "Dice, non-empty majority [95% CI]",
            f"own consensus x{n} GED{n}", "s/slice", "slices / patients"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        m, s = r["metrics"], r["settings"]
        budget = f" of {s['budget_minutes']:g}" if s.get("budget_minutes") else ""
        sampler = f" ({s['sampler']} {s['sampler_steps']})" if s.get("sampler") else ""
        cells = [r["label"], s["method"] + sampler,
                 f"{s['train_minutes']:.1f}{budget} ({s['budget_clock']})",
                 str(s["train_steps"]), _ci(m[f"ged_{n}"]), _ci(m[f"hm_iou_{n}"]),
                 f"{_ci(m['dice'])} (n={m['dice']['slices']})", _ci(m["own_consensus_ged"]),
                 f"{r['seconds_per_slice']:.2f}",
                 f"{m[f'ged_{n}']['slices']} / {m[f'ged_{n}']['patients']}"]
        lines.append("| " + " | ".join(cells) + " |")
    for key, name in REFERENCES.items():
        ref = results[0]["references"][key]
        cells = [name, "-", "-", "-", _ci(ref[f"ged_{n}"]), _ci(ref[f"hm_iou_{n}"]),
                 _ci(ref["dice"]), "-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    published = lidc.PUBLISHED if "LIDC" in results[0].get("dataset_name", "") else []
    for name, values, _ in published:
        cells = [name, "-", "-", "-", f"{values['ged_16']:.3f}", f"{values['hm_iou_16']:.3f}",
                 "-", "-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + rater_table(results) + [""] + provenance(results))


def rater_table(results: Sequence[dict[str, Any]]) -> list[str]:
    """GED by how many raters marked the slice: the run's mean (the majority x n reference in
    brackets) and that group's share of the run's mean GED."""
    n = results[0]["settings"]["samples"]
    groups = sorted({k for r in results for k in r.get("by_raters_marked", {})}, key=int)
    if not groups:
        return []
    # slice counts from the first run that has the split (score JSONs of older versions lack it)
    first = next(r["by_raters_marked"] for r in results if r.get("by_raters_marked"))
    head = ["run"] + [f"{k} of the raters marked (n={first[k][f'ged_{n}']['slices']})"
                      if k in first else f"{k} marked" for k in groups]
    lines = [f"GED{n} by how many raters marked the slice: run (raters' majority x{n}) / share "
             f"of the run's GED{n}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["label"]]
        for k in groups:
            g = r.get("by_raters_marked", {}).get(k)
            cells.append("-" if g is None else
                         f"{g[f'ged_{n}']['mean']:.3f} ({g['majority_repeated']['mean']:.3f}) / "
                         f"{g['share']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def provenance(results: Sequence[dict[str, Any]]) -> list[str]:
    """One line per run: when, where, under which load and with which command it was scored."""
    out = []
    for r in results:
        m, s = r["meta"], r["settings"]
        load = "/".join(f"{x:.1f}" for x in m["load_average"])
        hw = m["hardware"]
        weights = s["weights"] if "step" in s["weights"] else \
            f"{s['weights']} (step {s['train_steps']})"
        out.append(f"- {r['label']}: weights {weights}, "
                   f"{s['precision']}, scored {m['date']} on {hw.get('cpu')} ({hw.get('cpus')} "
                   f"CPUs), {hw['threads']} thread(s), load {load}, LD_PRELOAD "
                   f"'{m['ld_preload']}': `{m['command']}`")
    return out


def meta() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average": os.getloadavg(),
            "hardware": common.hardware("cpu"), "ld_preload": os.environ.get("LD_PRELOAD", ""),
            "command": " ".join(sys.argv), "conventions": __doc__.split("\n\n")[1]}


def score(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    runs = [r.resolve() for r in args.runs]
    dataset_dir = args.dataset or Path(json.loads(
        (runs[0] / "fingerprint.json").read_text())["dataset"])
    dataset = Dataset.open(dataset_dir)
    for run in runs:
        check_same_dataset(run, dataset)  # the data the run trained on, unchanged
    cases = val_cases(runs, args.cases, args.seed)
    print(f"scoring {len(runs)} run(s) on {len(cases)} val slices of '{dataset_dir}' x "
          f"{args.samples} samples ({args.threads} thread(s))", flush=True)
    results = []
    for i, (run, label) in enumerate(zip(runs, args.labels, strict=True)):
        rows, settings = score_run(run, label, dataset, cases, args)
        result = {"label": label, "series": args.series[i] if args.series else settings["method"],
                  "settings": settings, **summarise(rows, args.samples, args.boot, args.boot_seed),
                  "seconds_per_slice": float(np.mean([r["seconds"] for r in rows])),
                  "bootstrap": {"resamples": args.boot, "seed": args.boot_seed, "over": "patients"},
                  "dataset": str(dataset_dir), "dataset_name": dataset.info.name or "",
                  "meta": meta()}
        write_json_atomic(args.work / label / "score.json", result)
        if args.out:
            write_output(args.out / f"{label}.json", json.dumps(result, indent=2) + "\n")
        results.append(result)
    table = markdown_table(results)
    print(table)
    if args.out:
        write_output(args.out / "table.md", table + "\n")
    return results


def write_output(path: Path, text: str) -> None:
    """Write (atomically) a score JSON or table, replacing only an earlier one of this script."""
    if path.is_file() and path.suffix == ".json" and '"settings"' not in path.read_text():
        raise DataError(f"'{path}' exists and is not a score JSON; choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


# ---------------------------------------------------------------------------------------------
# learning curves


def load_scores(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Score JSONs (files, or every ``*.json`` of a folder), checked to share slices and clock."""
    files = [f for p in paths for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    if not files:
        raise DataError(f"no score JSON in {[str(p) for p in paths]}; run 'score --out DIR'")
    results = [json.loads(f.read_text()) for f in files]
    for f, r in zip(files, results, strict=True):
        if "settings" not in r or "metrics" not in r:
            raise DataError(f"'{f}' is not a score JSON of lidc_budget.py score")
    for key in ("cases_sha256", "samples", "budget_clock"):
        seen = {r["settings"][key] for r in results}
        if len(seen) > 1:
            raise DataError(f"the score files differ in {key} ({sorted(map(str, seen))}): "
                            "curves compare runs scored on the same slices, samples and clock")
    return results


def plot_curves(results: Sequence[dict[str, Any]], path: Path, target: float | None = None
                ) -> Path:
    """GED against training minutes, one line per series with its intervals; references as
    horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = results[0]["settings"]["samples"]
    key = f"ged_{n}"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for series in sorted({r["series"] for r in results}):
        points = sorted((r["settings"]["train_minutes"], r["metrics"][key]) for r in results
                        if r["series"] == series)
        x = [p[0] for p in points]
        y = [p[1]["mean"] for p in points]
        err = [[m - p[1]["ci95"][0] for p, m in zip(points, y, strict=True)],
               [p[1]["ci95"][1] - m for p, m in zip(points, y, strict=True)]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=series)
    for (name, label), style in zip(REFERENCES.items(), ("--", ":"), strict=True):
        ax.axhline(results[0]["references"][name][key]["mean"], ls=style, c="grey", label=label)
    if target is not None:
        ax.axhline(target, ls="-.", c="tab:red", lw=1, label=f"target {target:g}")
    clock = results[0]["settings"]["budget_clock"]
    ax.set(xlabel=f"training minutes ({clock} clock)", ylabel=f"GED$^2$ ({n} samples)",
           title=f"validation patients, {results[0]['metrics'][key]['slices']} slices; "
           "95 % CI over patients")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve(args: argparse.Namespace) -> dict[str, Any]:
    results = load_scores(args.scores)
    plot_curves(results, args.out, args.target)
    table = markdown_table(results)
    write_output(args.out.with_suffix(".md"), table + "\n")
    print(table)
    print(f"curves: {args.out}")
    return {"plot": str(args.out), "table": table}


# ---------------------------------------------------------------------------------------------
# paired comparison


def scored(folder: Path) -> tuple[dict[str, Any], dict[str, dict]]:
    """``settings.json`` and the rows of ``cases.jsonl`` of a scored WORK/<label> folder."""
    settings_path = folder / "settings.json"
    if not settings_path.is_file():
        raise DataError(f"'{folder}' holds no scores (no settings.json); give a WORK/<label> "
                        "folder that 'lidc_budget.py score' wrote")
    return json.loads(settings_path.read_text()), read_rows(folder / "cases.jsonl")


def paired(base: dict[str, dict], other: dict[str, dict], cases: Sequence[str], key: str,
           boot: PatientBootstrap) -> dict[str, Any]:
    """The patients' bootstrap of the per-slice difference other - base of ``key`` (slices where
    either is None are left out: Dice on an empty majority)."""
    values = [None if base[c].get(key) is None or other[c].get(key) is None
              else other[c][key] - base[c][key] for c in cases]
    return boot.interval(values)


def compare(args: argparse.Namespace) -> str:
    """One markdown row per other run: its paired GED, HM-IoU and Dice differences to the base."""
    settings, base = scored(args.base)
    n = settings["samples"]
    cases = list(base)
    if len(cases) != settings["cases"]:
        raise DataError(f"'{args.base}' is scored on {len(cases)} of {settings['cases']} slices; "
                        "finish its scoring first (run 'score' again: it resumes)")
    boot = PatientBootstrap([base[c]["patient"] for c in cases], args.boot, args.boot_seed)
    lines = [f"| run - {args.base.name} | paired slices / patients | GED{n} diff [95% CI] | "
             f"HM-IoU{n} diff [95% CI] | Dice diff, non-empty majority [95% CI] |",
             "|---|---|---|---|---|"]
    for folder in args.others:
        theirs, rows = scored(folder)
        same = {k: theirs.get(k) for k in ("cases_sha256", "samples", "seed")}
        if same != {k: settings.get(k) for k in same} or set(rows) != set(cases):
            raise DataError(f"'{folder}' is not scored on the same slices, samples and seed as "
                            f"'{args.base}' ({same}); score both with the same --cases, "
                            "--samples, --seed and validation fold")
        ged = paired(base, rows, cases, f"ged_{n}", boot)
        lines.append(f"| {folder.name} | {ged['slices']} / {ged['patients']} | {_ci(ged)} | "
                     f"{_ci(paired(base, rows, cases, f'hm_iou_{n}', boot))} | "
                     f"{_ci(paired(base, rows, cases, 'dice', boot))} |")
    table = "\n".join(lines)
    print(table)
    return table


# ---------------------------------------------------------------------------------------------
# --quick: the same code on a tiny phantom


def quick(work: Path) -> dict[str, Any]:
    """Two methods at two CPU budgets (steps, in fact: a tiny budget is noise) on a 40-case
    phantom, scored and drawn."""
    dataset = common.phantom_dataset(work / "data", n_cases=40, size=32)
    runs = []
    for method in ("ddpm", "unet"):
        for steps in (3, 6):
            run = work / "runs" / f"{method}_{steps}"
            if not (run / "ema.safetensors").is_file():
                shutil.rmtree(run, ignore_errors=True)
                common.train_method(dataset, method, common.PRESETS["quick"], 5.0, run,
                                    [f"train.max_steps={steps}", "train.budget_clock=cpu"])
            runs.append(str(run))
    out = work / "scores"
    scores = score(parse_args(["--work", str(work / "score"), "score", "--runs", *runs,
                               "--dataset", str(dataset), "--cases", "0", "--boot", "200",
                               "--out", str(out)]))
    drawn = curve(parse_args(["curve", str(out), "--out", str(work / "curves.png")]))
    return {"scores": scores, **drawn}


def main(argv: list[str] | None = None) -> Any:
    args = parse_args(argv)
    if args.quick:
        return quick(args.work)
    if args.command == "compare":
        return compare(args)
    return score(args) if args.command == "score" else curve(args)


if __name__ == "__main__":
    try:
        main()
    except DataError as err:
        raise SystemExit(f"error: {err}") from None

"""The verdict at the end of training: did the model beat the trivial references on validation?

The trivial references (``diffuseg.metrics.trivial_references``) are what a model scores without
having learned: the always-empty mask, and the raters' majority mask repeated (the best single
mask; with one rater, the reference itself). The rule (``judge``), on the validation record of
the weights ``predict`` uses, is that the model

1. has a lower GED than always empty, and a higher HM-IoU (it finds more than nothing: a model
   that predicts nothing scores exactly these);
2. has a GED nearer the raters' majority repeated than always empty (below their midpoint: the
   one threshold the two references define without a tuned number). A mask covering the image
   or samples of noise fail here; a model that segments passes.

Beating the majority mask repeated itself (GED below it) means the samples reproduce the
raters' disagreement better than one good mask; it is reported (``beats_one_mask``, for a
stochastic method on data with two raters or more, validated with 16 samples or more: with S
samples the diversity term counts the S pairs i = j as 0, which inflates GED for small S while
the repeated mask has no diversity to lose) but not required: on the 2D phantom a model with
consensus Dice 0.93 after 500 steps was level with it with 4 samples (GED4 0.146 vs 0.143), and
the demo's model, level on validation (GED4 0.142 vs 0.137), beat it on its test images with 16
(GED16 0.113 vs 0.143).
No validation scored, no verdict of "learned". The run folder records it in ``verdict.json`` and
which weights ``predict`` uses in ``weights.json`` (``diffuseg.run.verdict``).

Which weights: the EMA weights of the best validation (``ema_best.safetensors``) only when they
beat the last EMA weights by more than chance among the validations compared (``choose``); the
lowest of K noisy validations is below the truth by itself (the winner's curse). On LIDC, 30
CPU-minutes with 4 validation cases chose step 300 of 2,228: GED16 0.446 on 600 validation
slices, where the last weights scored 0.337 (prob_unet: 0.708 against 0.571).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffuseg.core.atomic import save_tensors_atomic, write_json_atomic
from diffuseg.core.json_files import read_json
from diffuseg.errors import DataError
from diffuseg.run.verdict import BEST, LAST, VERDICT, WEIGHTS

ONE_MASK_SAMPLES = 16  # fewer samples inflate GED (the i = j pairs), so no beats_one_mask then
RULE = ("learned when, on validation, GED < GED(always empty), HM-IoU > HM-IoU(always empty) and "
        "GED < (GED(always empty) + GED(raters' majority repeated)) / 2")


def judge(record: dict | None, stochastic: bool) -> tuple[bool, list[dict], bool | None]:
    """(learned, the comparisons made, whether the samples beat the raters' majority repeated:
    None where that does not apply) for one validation record (``validation.validate``)."""
    if record is None:
        return False, [], None
    n = record["val_samples"]
    empty, one = record["ref_ged_empty"], record["ref_ged_majority"]
    checks = [(f"GED{n}", "always empty", record["val_ged"], empty, "lower"),
              (f"HM-IoU{n}", "always empty", record["val_hm_iou"], record["ref_hm_iou_empty"],
               "higher"),
              (f"GED{n}", "midway between always empty and the raters' majority repeated",
               record["val_ged"], round((empty + one) / 2, 5), "lower")]
    out = [{"metric": m, "reference": ref, "model": a, "reference_value": b, "better": better,
            "passed": bool(a < b if better == "lower" else a > b)}
           for m, ref, a, b, better in checks]
    beats_one = (bool(record["val_ged"] < one) if stochastic and record["val_raters"] >= 2
                 and n >= ONE_MASK_SAMPLES else None)
    return all(c["passed"] for c in out), out, beats_one


def summary_of(record: dict | None) -> str:
    """The numbers in a few words."""
    if record is None:
        return "no validation case was scored"
    n = record["val_samples"]
    return (f"GED{n} {record['val_ged']:.3f} (always empty {record['ref_ged_empty']:.3f}, the "
            f"raters' majority repeated {record['ref_ged_majority']:.3f}), HM-IoU{n} "
            f"{record['val_hm_iou']:.3f} (always empty {record['ref_hm_iou_empty']:.3f}) on "
            f"{record['val_cases']} validation cases from {record['val_patients']} patient(s)")


@dataclass
class Advice:
    """What the verdict suggests when the model did not learn."""

    steps: int  # optimiser steps the run has made
    min_useful: int  # planning.min_useful_steps
    reason: str  # why that many
    resume: str  # the command that continues the run
    minutes: float | None = None  # a --minutes that would buy min_useful steps (budget-bound)
    step_bound: bool = True  # a step count was given (not the BIG that --minutes alone sets)

    def text(self) -> str:
        if self.steps < self.min_useful:
            # a run that only --minutes ends needs more minutes, not a step count it never had
            more = (f" --max-steps {self.min_useful}"
                    if self.step_bound or self.minutes is None else "")
            budget = f" --minutes {self.minutes:g}" if self.minutes is not None else ""
            return (f"{self.steps} steps ran; this data needs about {self.min_useful}: train "
                    f"longer with '{self.resume}{more}{budget}'")
        return (f"{self.steps} steps ran, more than the ~{self.min_useful} this data usually "
                f"needs: train longer with '{self.resume}', or try another method or plan "
                "(docs/training.md, 'When a run did not learn')")


def choose(best: dict | None, last: dict | None, validations: int) -> tuple[str, str]:
    """(the weights file ``predict`` uses, why). ``best``'s weights only when their GED beats the
    last validation's on the same cases by more than z standard errors of the paired per-case
    difference, z = max(2, sqrt(2 ln K)) for K complete validations: the expected largest of K
    standard normals stays below sqrt(2 ln K), so a best picked by chance among K does not pass.
    Otherwise the last EMA weights (the most trained), also when the two cannot be compared."""
    if best is None:
        return LAST, "the last EMA weights: no validation scored every chosen case"
    if last is None:  # resumed with no validation since: nothing to compare it with
        return BEST, "the EMA weights of the best validation (no later validation to compare)"
    if best["step"] == last["step"]:
        return BEST, "the EMA weights of the last validation, the best (every chosen case scored)"
    a, b = best.get("val_ged_cases"), last.get("val_ged_cases")
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return LAST, (f"the last EMA weights: the best validation (step {best['step']}) and the "
                      "last cannot be compared case by case (other cases, or too few)")
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)  # > 0: best is better
    se = float(diff.std(ddof=1)) / math.sqrt(len(diff))
    z = max(2.0, math.sqrt(2.0 * math.log(max(validations, 2))))
    gain = float(diff.mean())
    verdict = (f"GED {best['val_ged']:.3f} at step {best['step']} against {last['val_ged']:.3f} "
               f"at step {last['step']} on {len(diff)} cases: a gain of {gain:.3f}, "
               f"{'above' if gain > z * se else 'within'} {z:.2f} standard errors "
               f"({z * se:.3f}; {validations} validations compared)")
    if gain > z * se:
        return BEST, f"the EMA weights of the best validation: {verdict}"
    return LAST, f"the last EMA weights: the best validation is no better than chance: {verdict}"


class Outcome:
    """The validations of a run: the best one (its EMA weights kept in ``ema_best.safetensors``)
    and the last, then the verdict."""

    def __init__(self, run_dir: Path, resumed: bool = False):
        self.run_dir = run_dir
        self.best: dict | None = None
        self.last: dict | None = None
        self.validations = 0  # complete validations so far: the K of the winner's curse
        self.per_case = 0.0  # the longest validation case so far (seconds)
        path = run_dir / WEIGHTS
        if resumed and path.is_file() and (run_dir / BEST).is_file():
            saved = read_json(path, "weights file", DataError)
            self.best, self.validations = saved.get("best"), int(saved.get("validations") or 1)

    def observe(self, record: dict | None, ema_shadow: dict) -> None:
        """Keep ``record`` as the last; when it scored every chosen case and beats the best GED
        (of the same chosen cases), write its EMA weights to ``ema_best.safetensors``."""
        if record is None:
            return
        self.last = record
        if record["val_cases"] < record["val_cases_chosen"] or not math.isfinite(
                record["val_ged"]):
            return
        self.validations += 1
        best = self.best
        if (best is None or best.get("val_cases_chosen") != record["val_cases_chosen"]
                or record["val_ged"] <= best["val_ged"]):  # a tie goes to the later weights
            save_tensors_atomic({k: v.detach().cpu().contiguous() for k, v in ema_shadow.items()},
                                self.run_dir / BEST)
            self.best = record
            self._write_weights(BEST, record["step"])

    def _write_weights(self, uses: str, last_step: int, why: str | None = None) -> None:
        why = why or ("the EMA weights of the validation with the lowest GED so far (every "
                      "chosen case scored)")
        write_json_atomic(self.run_dir / WEIGHTS, {
            "predict_uses": uses, "why": why, "best": self.best, "validations": self.validations,
            "last": {"file": LAST, "step": last_step, "validation": self.last}})

    def finish(self, step: int, stochastic: bool, advice: Advice) -> dict:
        """Write weights.json and verdict.json; return the verdict (with its ``line``)."""
        uses, why = choose(self.best, self.last, self.validations)
        self._write_weights(uses, step, why)
        record = self.best if uses == BEST else self.last
        learned, checks, beats_one = judge(record, stochastic)
        summary = summary_of(record)
        where = f" ({uses}, step {record['step']})" if record is not None else ""
        if learned:
            one = ("; its samples also beat one mask" if beats_one else
                   "; its samples do not beat one mask yet (train longer for the raters' "
                   "disagreement)" if beats_one is False else "")
            line = f"verdict: the model learned: {summary}{where}{one}."
        else:
            failed = "; ".join(f"{c['metric']} not {c['better']} than {c['reference']} "
                               f"({c['reference_value']:.3f})" for c in checks if not c["passed"])
            failed = failed or "no validation case was scored"
            line = (f"verdict: the model has NOT learned: {summary}{where}: {failed}. "
                    f"{advice.text()}")
        verdict = {"learned": learned, "beats_one_mask": beats_one, "line": line,
                   "summary": summary,
                   "advice": None if learned else advice.text(), "rule": RULE,
                   "checks": checks, "validation": record, "weights": uses, "steps": step,
                   "min_useful_steps": advice.min_useful, "min_useful_reason": advice.reason}
        write_json_atomic(self.run_dir / VERDICT, verdict)
        return verdict

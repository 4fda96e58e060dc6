"""Validation during training that means something (docs/training.md, "Validation and verdict").

- **Which cases** (``choose_cases``): ``train.val_cases`` cases of the run's validation fold,
  drawn with ``train.seed`` round-robin over the patients (groups) in a shuffled order, so that
  they come from as many patients as there are cases; stratified by whether the reference (the
  raters' majority, ``diffuseg.core.consensus.majority``) is empty: half of them (rounded up)
  with a foreground reference, half with an empty one, the other kind filling in when one runs
  short. Only the masks of the cases looked at are read (at most ``4 n + 8``).
- **What is sampled**: with ``train.val_steps`` sampler steps, never more than ``predict``
  takes (``steps_at_validation``); whole 2D images; in 3D, one patch of ``data.patch_size``
  centred on the reference's bounding box (the volume's centre when the reference is empty),
  so that a volume costs what a training patch costs (``validation_view``).
- **What is measured** (``validate``): with the EMA weights, ``train.val_samples`` samples per
  case against all raters: GED and HM-IoU (``diffuseg.metrics``), the headline; the consensus
  Dice on the cases whose reference has foreground only; the number of empty-reference cases and
  how many of them the model left empty. Beside them, the trivial references
  (``metrics.trivial_references``): always empty, and the raters' majority repeated.
- **How long**: at most ``seconds`` on the budget's clock; a case is started only when the
  longest case so far (or of the last validation) still fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from diffuseg.core.consensus import majority
from diffuseg.core.ensemble import to_labels
from diffuseg.core.runtime import autocast
from diffuseg.metrics import dice, ged, hm_iou, trivial_references


def reference_is_empty(case) -> bool:
    """Whether the raters' majority of ``case`` (a ``data.Case``) marks nothing; reads its masks
    only. A case without raters counts as empty."""
    from diffuseg.io import read_mask

    masks = [np.asarray(read_mask(p, labels=case.labels)[0]) for p in case.label_paths]
    if not masks:
        return True
    if len({m.shape for m in masks}) > 1:
        case.load()  # the one-line error about raters on different grids
    return not bool((majority(np.stack(masks), max(case.labels) + 1) > 0).any())


def choose_cases(cases: list, n: int, seed: int,
                 is_empty: Callable[[object], bool] = reference_is_empty) -> list:
    """``n`` of ``cases`` (objects with ``case_id`` and ``group``), seeded, across patients and
    stratified by an empty reference (module docstring). Deterministic for a seed."""
    if n <= 0 or not cases:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, 23]))
    by_group: dict[str, list] = {}
    for case in sorted(cases, key=lambda c: c.case_id):
        by_group.setdefault(case.group, []).append(case)
    queues = [by_group[str(g)] for g in rng.permutation(sorted(by_group))]
    queues = [[q[i] for i in rng.permutation(len(q))] for q in queues]
    want = {False: (n + 1) // 2, True: n // 2}  # False: a foreground reference
    found: dict[bool, list] = {False: [], True: []}
    for looked, case in enumerate(_round_robin(queues)):
        if looked >= 4 * n + 8 or all(len(found[k]) >= want[k] for k in want):
            break
        found[is_empty(case)].append(case)
    chosen = _interleave(found[False][:want[False]], found[True][:want[True]])
    spare = _interleave(found[False][want[False]:], found[True][want[True]:])
    return (chosen + spare)[:n]


def _round_robin(queues: list[list]) -> Iterator:
    for index in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if index < len(queue):
                yield queue[index]


def _interleave(a: list, b: list) -> list:
    out = []
    for i in range(max(len(a), len(b))):
        out += ([a[i]] if i < len(a) else []) + ([b[i]] if i < len(b) else [])
    return out


def validation_view(image: np.ndarray, raters: np.ndarray, patch: tuple[int, ...],
                    num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A 3D case cut to ``patch`` (``data.patch_size``) around its reference's bounding box, or
    the volume's centre when the reference is empty; 2D images and volumes within the patch are
    returned whole. ``image [C, *sp]``, ``raters [R, *sp]``."""
    spatial = image.shape[1:]
    if len(spatial) != 3 or all(s <= p for s, p in zip(spatial, patch, strict=True)):
        return image, raters
    reference = (majority(raters, max(2, num_labels)) > 0 if len(raters)
                 else np.zeros(spatial, bool))
    if reference.any():
        centre = [int(round((ix.min() + ix.max()) / 2)) for ix in np.nonzero(reference)]
    else:
        centre = [s // 2 for s in spatial]
    box = []
    for c, s, p in zip(centre, spatial, patch, strict=True):
        size = min(s, p)
        start = int(np.clip(c - size // 2, 0, s - size))
        box.append(slice(start, start + size))
    return image[(slice(None), *box)].copy(), raters[(slice(None), *box)].copy()


@dataclass
class Scores:
    """Per-case validation numbers, gathered by ``validate``."""

    ged: list[float] = field(default_factory=list)
    hm_iou: list[float] = field(default_factory=list)
    dice_foreground: list[float] = field(default_factory=list)
    empty_cases: int = 0
    empty_predicted_empty: int = 0
    references: list[dict] = field(default_factory=list)
    raters: list[int] = field(default_factory=list)
    groups: set = field(default_factory=set)

    def add(self, labels: np.ndarray, raters: np.ndarray, num_classes: int, group: str) -> None:
        """``labels [S, *sp]`` hardened samples, ``raters [R, *sp]``."""
        foreground = list(range(1, num_classes)) if num_classes > 1 else None
        by_label = {} if foreground is None else {"labels": foreground}
        s, y = (labels, raters) if foreground else (labels > 0, raters > 0)
        self.ged.append(float(ged(s, y, **by_label)["ged"]))
        self.hm_iou.append(float(hm_iou(s, y, **by_label)))
        self.references.append(trivial_references(raters, len(labels), labels=foreground))
        consensus = majority(labels, max(2, num_classes)) > 0
        reference = majority(raters, max(2, num_classes)) > 0
        if reference.any():
            self.dice_foreground.append(dice(consensus, reference))
        else:
            self.empty_cases += 1
            self.empty_predicted_empty += int(not consensus.any())
        self.raters.append(len(raters))
        self.groups.add(group)

    def record(self, step: int, chosen: int, n_samples: int, seconds: float) -> dict:
        def mean(values):
            return round(float(np.mean(values)), 5) if len(values) else None

        refs = self.references
        return {"step": step, "val_cases": len(self.ged), "val_cases_chosen": chosen,
                "val_patients": len(self.groups), "val_samples": n_samples,
                "val_raters": min(self.raters), "val_ged": mean(self.ged),
                "val_ged_cases": [round(g, 5) for g in self.ged],  # paired comparisons (verdict)
                "val_hm_iou": mean(self.hm_iou),
                "val_dice_nonempty": mean(self.dice_foreground),
                "val_nonempty_cases": len(self.dice_foreground),
                "val_empty_cases": self.empty_cases,
                "val_empty_predicted_empty": self.empty_predicted_empty,
                "ref_ged_empty": mean([r["empty"]["ged"] for r in refs]),
                "ref_hm_iou_empty": mean([r["empty"]["hm_iou"] for r in refs]),
                "ref_ged_majority": mean([r["majority"]["ged"] for r in refs]),
                "ref_hm_iou_majority": mean([r["majority"]["hm_iou"] for r in refs]),
                "val_seconds": round(seconds, 2)}


def steps_at_validation(method) -> int:
    """``train.val_steps``, but never more than ``predict`` takes (``method.default_steps()``):
    validation must score the sampler that will be used. With LDSeg's 2 steps at prediction and
    5 at validation, a newcomer's LIDC run kept the weights of step 300 of 3,910 as the best
    (its validation Dice fell as 5-step samples shrank), while the last weights scored GED16
    0.323 against 0.422 with 2 steps on all 315 validation slices (benchmarks/RESULTS.md)."""
    c = method.config.train
    if getattr(method, "process", None) is None:
        return c.val_steps
    return min(c.val_steps, method.default_steps())


@torch.no_grad()
def validate(method, weights: Callable[[], object], val_set: list, groups: list[str], step: int,
             device, dtype, seconds: float = float("inf"), now=time.monotonic,
             per_case: float = 0.0, show: Callable[[str], None] | None = None
             ) -> tuple[dict | None, float]:
    """Score the EMA weights on ``val_set`` (``data.loader.Example``, ``groups`` aligned) within
    ``seconds`` on the clock ``now``; ``weights()`` is the context that swaps the EMA weights in.
    ``per_case``: the longest case of an earlier validation (seconds), so that a case is started
    only when it fits. Returns (the record for metrics.jsonl, None when no case fitted; the
    longest case's seconds)."""
    c = method.config.train
    t0 = now()
    scores = Scores()
    generator = torch.Generator(device=device).manual_seed(1234)
    with weights():
        method.eval()
        for ex, group in zip(val_set, groups, strict=True):
            if now() - t0 + per_case > seconds:
                break
            start = now()
            image = torch.from_numpy(ex.image)[None].to(device)
            with autocast(device, dtype):
                samples = method.segment(image, c.val_samples, steps=steps_at_validation(method),
                                         generator=generator)
            labels = to_labels(samples.float().cpu()[:, 0], class_dim=1).numpy()
            scores.add(labels, ex.raters, method.config.num_classes, group)
            per_case = max(per_case, now() - start)
            if show is not None:
                show(f"validation at step {step}: {len(scores.ged)}/{len(val_set)} cases, "
                     f"{now() - t0:.0f} s")
    if not scores.ged:
        return None, per_case
    return scores.record(step, len(val_set), c.val_samples, now() - t0), per_case


def describe(record: dict) -> str:
    """The log line of one validation record."""
    n = record["val_samples"]
    majority_part = (f", raters' majority repeated {record['ref_ged_majority']:.3f}"
                     if record["val_raters"] > 1 else "")
    dice_part = (f"consensus Dice {record['val_dice_nonempty']:.3f} on "
                 f"{record['val_nonempty_cases']} cases with a foreground reference"
                 if record["val_nonempty_cases"] else "no case with a foreground reference")
    return (f"step {record['step']}: validation on {record['val_cases']} of "
            f"{record['val_cases_chosen']} cases from {record['val_patients']} patient(s): "
            f"GED{n} {record['val_ged']:.3f} (always empty {record['ref_ged_empty']:.3f}"
            f"{majority_part}), HM-IoU{n} {record['val_hm_iou']:.3f} (always empty "
            f"{record['ref_hm_iou_empty']:.3f}); {dice_part}; {record['val_empty_cases']} "
            f"empty-reference cases, left empty on {record['val_empty_predicted_empty']}; "
            f"{record['val_seconds']:.1f} s")

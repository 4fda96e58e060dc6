"""The state of one training run (``Run``): its method, optimiser, EMA weights, log and budget,
and what it does at a checkpoint, a validation and the end (the verdict). The loop that drives it
is ``diffuseg.training.loop``."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffuseg.config import RunConfig
from diffuseg.core.atomic import save_tensors_atomic
from diffuseg.core.distributed import Dist
from diffuseg.core.validation import BIG
from diffuseg.errors import TrainingDiverged
from diffuseg.methods import Method
from diffuseg.run.checkpoint import save_checkpoint
from diffuseg.run.log import RunLog, plot_progress
from diffuseg.run.weights import load_networks, save_networks
from diffuseg.training.budget import Budget
from diffuseg.training.validation import describe, validate
from diffuseg.training.verdict import Advice, Outcome


class EMA:
    """Exponential moving average of weights (Polyak averaging), kept in fp32."""

    def __init__(self, method: Method, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in state_of_live(method).items()}

    @torch.no_grad()
    def update(self, method: Method, step: int) -> None:
        """shadow <- d shadow + (1 - d) theta, with d = min(decay, (1 + step) / (10 + step)) so
        that early, still-random weights are forgotten quickly."""
        d = min(self.decay, (1 + step) / (10 + step))
        for key, value in state_of_live(method).items():
            if value.is_floating_point():
                self.shadow[key].lerp_(value.float(), 1 - d)
            else:
                self.shadow[key].copy_(value)


def state_of_live(method: Method) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, net in method.networks().items()
            for k, v in net.state_dict().items()}


@dataclass
class Run:
    """Everything the loop touches, so that its functions stay short."""

    config: RunConfig
    method: Method
    optimizer: torch.optim.Optimizer
    ema: EMA
    log: RunLog
    run_dir: Path
    device: torch.device
    dtype: torch.dtype | None
    ctx: Dist
    budget: Budget
    micro: int
    val_set: list = field(default_factory=list)
    val_groups: list = field(default_factory=list)  # the patient of each validation case
    outcome: Outcome | None = None  # validations so far and the verdict (rank 0)
    dataset_root: Path | None = None
    min_useful: tuple[int, str] = (0, "")  # planning.min_useful_steps for this run
    loop_seconds: float = 0.0  # training steps of this command, on the budget's clock
    loop_steps: int = 0
    first_step_seconds: float = 0.0
    checked: bool = False  # the budget was checked against the steps the data needs
    synthetic: list = field(default_factory=list)  # data.synthetic examples (training only)
    skipped: int = 0
    saved_step: int = -1
    interrupted: bool = False

    def checkpoint(self, step: int) -> None:
        """Rank 0 writes; weights are never saved non-finite."""
        if not self.ctx.is_main or step == self.saved_step:
            return
        check_finite_weights(self.method, step)
        t0 = self.budget.now()
        save_checkpoint(self.run_dir, self.method.networks(), self.optimizer, self.ema.shadow,
                        {"step": step, "skipped": self.skipped,
                         "elapsed_seconds": self.budget.elapsed()})
        self.budget.save_seconds = max(self.budget.save_seconds, self.budget.now() - t0)
        self.saved_step = step

    def validate(self, step: int, seconds: float) -> None:
        if not self.ctx.is_main or self.outcome is None:
            return
        t0 = self.budget.now()
        record, self.outcome.per_case = validate(
            self.method, lambda: ema_weights(self.method, self.ema), self.val_set,
            self.val_groups, step, self.device, self.dtype, seconds, self.budget.now,
            self.outcome.per_case, self.log.progress_line)
        self.budget.val_seconds = self.budget.now() - t0
        if record is None:
            self.log.text(f"step {step}: validation skipped ("
                          + ("no validation cases" if not self.val_set else
                             "no time left in the budget") + ")")
        else:
            self.log.metrics(record)
            self.log.text(describe(record))
            self.outcome.observe(record, self.ema.shadow)
        plot_progress(self.run_dir)

    def finish(self, step: int) -> None:
        """Checkpoint and final weights first, then a final validation in the time left, then
        the verdict (``verdict.json``, ``weights.json``)."""
        self.checkpoint(step)
        if self.ctx.is_main:
            save_networks(self.method.networks(), self.run_dir / "model.safetensors")
            save_tensors_atomic({k: v.contiguous() for k, v in self.ema.shadow.items()},
                                self.run_dir / "ema.safetensors")
        left = self.budget.remaining() - self.budget.save_seconds
        self.validate(step, min(self.budget.val_limit(), left))
        self.log.text(f"finished at step {step} after {self.budget.elapsed():.1f} s "
                      f"({self.skipped} non-finite steps skipped)")
        if self.ctx.is_main and self.outcome is not None:
            verdict = self.outcome.finish(step, self.method.stochastic, self.advice(step))
            self.log.text(verdict["line"])

    def advice(self, step: int) -> Advice:
        """What to do when the model did not learn: more steps, and a budget that buys them."""
        c = self.config.train
        minutes = None
        if c.max_minutes is not None and step < c.max_steps and self.loop_steps:
            per_step = self.loop_seconds / self.loop_steps
            need = self.budget.elapsed() + (self.min_useful[0] - step) * per_step
            minutes = float(math.ceil(need * 1.1 / 60))
        return Advice(step, self.min_useful[0], self.min_useful[1],
                      f"diffuseg train {self.dataset_root} -o {self.run_dir} --resume", minutes,
                      step_bound=c.max_steps < BIG)

    def check_budget(self, step: int) -> None:
        """After the first few steps of a command (CHECK_AFTER + 1, the first one, a warm-up,
        left out of the rate): warn when the budget left cannot buy the steps this data needs,
        and suggest the --minutes that would."""
        self.checked = True
        c = self.config.train
        want = min(self.min_useful[0], c.max_steps)
        per_step = ((self.loop_seconds - self.first_step_seconds) / (self.loop_steps - 1)
                    if self.loop_steps > 1 else self.budget.step_seconds)
        if c.max_minutes is None or step >= want or per_step <= 0:
            return
        affordable = step + int(max(0.0, self.budget.remaining() - self.budget.reserve())
                                // per_step)
        if affordable >= want:
            return
        need = self.budget.elapsed() + (want - step) * per_step + self.budget.reserve()
        self.log.say(
            f"warning: train.max_minutes={c.max_minutes:g} leaves time for about {affordable} "
            f"steps ({per_step:.2f} s each on the {c.budget_clock} clock, "
            f"{self.budget.elapsed():.0f} s spent so far), but this data needs about {want} "
            f"({self.min_useful[1]}); --minutes {math.ceil(need * 1.1 / 60)} would buy them")


@contextlib.contextmanager
def ema_weights(method: Method, ema: EMA):
    """The EMA weights in ``method``'s networks for the duration, the live ones back after."""
    live = {k: v.clone() for k, v in state_of_live(method).items()}
    load_networks(method.networks(), ema.shadow, "EMA")
    try:
        yield
    finally:
        load_networks(method.networks(), live, "live weights")


def check_finite_weights(method: Method, step: int) -> None:
    bad = [name for name, net in method.networks().items()
           if not all(torch.isfinite(p).all() for p in net.parameters())]
    if bad:
        raise TrainingDiverged(f"training diverged by step {step}: network '{bad[0]}' holds "
                               "non-finite weights, which are never saved; lower train.lr")

"""The training loop: reads top to bottom.

``train(config, dataset_dir, run_dir)`` writes a self-describing run folder (see
docs/architecture.md): the config, the dataset's description and fingerprint, safetensors weights
(raw and EMA), a plain-text log, ``metrics.jsonl`` and ``progress.png``, with a checkpoint at step
0 and every ``train.checkpoint_every`` steps so that ``resume=True`` continues where it stopped,
bit for bit (docs/training.md: checkpoints, budgets, signals, torchrun).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from diffuseg.config import RunConfig
from diffuseg.core.atomic import holds_files, run_lock, write_json_atomic
from diffuseg.core.distributed import Dist, barrier, device_name_for, init_distributed, shutdown
from diffuseg.core.runtime import (  # re-exported: diffuseg.training.loop.resolve_device, ...
    autocast,
    autocast_dtype,
    cpu_has_native_bf16,
    resolve_device,
)
from diffuseg.data import Dataset
from diffuseg.data import files as dataset_files
from diffuseg.data.loader import (
    Example,
    InMemorySource,
    batch_at,
    every_rater,
    load_examples,
    prepare_case,
)
from diffuseg.data.preprocess import default_folder, is_current, preprocess
from diffuseg.data.streaming import MmapSource, StepStream, should_stream
from diffuseg.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from diffuseg.methods import Method, build_method
from diffuseg.metrics import dice
from diffuseg.run.checkpoint import complete_step, load_checkpoint
from diffuseg.run.folder import splits_for_run
from diffuseg.run.log import RunLog
from diffuseg.run.setup import describe_run, prepare_run_dir, resume_run
from diffuseg.run.weights import state_of
from diffuseg.training.budget import Budget, StopSignals
from diffuseg.training.distributed import all_reduce_sum, sum_gradients
from diffuseg.training.planning import min_useful_steps
from diffuseg.training.run_state import EMA, Run
from diffuseg.training.validation import choose_cases, validation_view
from diffuseg.training.verdict import Outcome


def train(config: RunConfig, dataset_dir: str | Path | Dataset, run_dir: str | Path, *,
          resume: bool = False, progress: bool = True,
          notes: dict[str, dict] | None = None, started: float | None = None) -> Path:
    """Train (or, with ``resume``, continue) a run; under torchrun, every rank calls this.
    ``dataset_dir``: a dataset folder, or the ``Dataset`` the caller opened already.
    ``notes``: extra JSON files written into a new run folder beside config.json (plan.json).
    ``started``: time.monotonic() at the command's start (the CLI passes its own), from which
    ``train.max_minutes`` counts; None: from this call."""
    budget = Budget(config.train.max_minutes, config.train.val_minutes,
                    config.train.budget_clock, command_started=started)
    config.validate()
    ctx = init_distributed(config.train.device)
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        micro = micro_batches_of(config, ctx)
        with (run_lock_for(run_dir, resume) if ctx.is_main else contextlib.nullcontext()):
            return _train(config, Dataset.of(dataset_dir), run_dir, resume, progress,
                          ctx, micro, budget, notes or {})
    except BaseException:
        if created and ctx.is_main and run_dir.is_dir() and not holds_files(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # a failed start leaves no empty folder
        raise
    finally:
        shutdown(ctx)


def run_lock_for(run_dir: Path, resume: bool):
    """Lock first, then check the folder, so a second writer is told who holds it."""
    if resume:
        prepare_run_dir(run_dir, resume=True)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_lock(run_dir)


def _train(config, dataset, run_dir, resume, progress, ctx, micro, budget, notes) -> Path:
    c = config.train
    device = resolve_device(device_name_for(ctx, c.device))
    if ctx.is_main and not resume:
        prepare_run_dir(run_dir, resume=False)  # re-checked under the lock, before any write
    log = RunLog(run_dir, enabled=ctx.is_main, show_progress=progress,
                 tensorboard=c.tensorboard)
    # the dataset folder, listed once for both fingerprints (the run's and the preprocessed one's)
    files = dataset_files.scan(dataset.root) if ctx.is_main else None
    if ctx.is_main:  # a new run describes itself; a resumed one recovers its checkpoint
        splits = splits_for_run(run_dir, dataset, c.seed, resume=resume)  # the run's own folds
        if not resume:
            describe_run(run_dir, config, dataset, files)
            for name, content in notes.items():
                write_json_atomic(run_dir / name, content)
        else:
            resume_run(run_dir, config, dataset, splits, log, files)
    barrier(ctx)
    if not ctx.is_main:
        splits = splits_for_run(run_dir, dataset, c.seed, resume=True)
    run, step = build_run(config, run_dir, device, log, ctx, micro, budget)
    run.dataset_root = dataset.root
    run.min_useful = min_useful_steps(len(splits["train"]), c.batch_size)
    if ctx.is_main:
        load_validation(run, dataset, splits, step > 0)
    train_set, source = training_data(run, dataset, splits, step, progress, files)
    log.text(f"training data: {source}")
    log.text(f"{'resumed' if step else 'started'} at step {step}: method={config.method.name} "
             f"device={device} world_size={ctx.world} train={len(splits['train'])} "
             f"val={len(run.val_set)} cases from {len(set(run.val_groups))} patient(s), "
             f"{sum(p.numel() for p in run.method.parameters()):,} parameters")
    if c.max_steps < run.min_useful[0]:
        log.say(f"warning: train.max_steps={c.max_steps} is below the ~{run.min_useful[0]} "
                f"steps this data needs ({run.min_useful[1]}); the verdict at the end says "
                "whether the model learned")
    try:
        with StopSignals() as signals:
            if step == 0:
                run.checkpoint(0)  # a run killed before its first interval resumes from here
            step = run_loop(run, train_set, step, signals, progress)
    finally:
        if isinstance(train_set, StepStream):
            train_set.close()  # its workers stop here, not at the interpreter's exit
    if run.interrupted or signals.requested:
        run.checkpoint(step)
        raise TrainingInterrupted(f"interrupted at step {step}; checkpoint saved, resume with "
                                  f"'diffuseg train ... -o {run_dir} --resume'")
    run.finish(step)
    return run_dir


def load_validation(run: Run, dataset: Dataset, splits: dict, resumed: bool) -> None:
    """The validation cases (``training.validation.choose_cases``: seeded, across patients,
    stratified by an empty reference; 3D cut to a patch), loaded once, and the best validation
    so far when resuming."""
    config = run.config
    ids = set(splits.get("val") or splits["train"])
    if not splits.get("val") and config.train.val_cases:
        run.log.say("warning: the run's splits have no validation cases; validating on training "
                    "cases, so the verdict is optimistic (give the dataset more patients, or a "
                    "splits.json with a val fold)")
    cases = choose_cases([case for case in dataset.cases if case.case_id in ids],
                         config.train.val_cases, config.train.seed)
    patch = tuple(config.data.patch_size)
    for case in cases:
        image, raters = validation_view(*prepare_case(case, config), patch,
                                        max(2, config.num_classes))
        run.val_set.append(Example(case.case_id, image, raters))
        run.val_groups.append(case.group)
    run.outcome = Outcome(run.run_dir, resumed=resumed)


def training_data(run: Run, dataset: Dataset, splits: dict, step: int, progress: bool,
                  files: dataset_files.DatasetFiles | None = None
                  ) -> tuple[InMemorySource | StepStream, str]:
    """The training cases in memory, or (data.stream, or unset and over 1 GB) streamed from the
    preprocessed folder from ``step`` on, with this rank's parts of each batch; the same items
    either way (data/patches.py). Also loads ``data.synthetic`` into ``run.synthetic``.
    ``files``: the dataset's listing (``data.files.scan``) made by ``_train`` on rank 0."""
    from diffuseg.synthesis.mixing import load_synthetic

    config, ids = run.config, splits["train"]
    streamed = should_stream(dataset, ids, config)
    if streamed:
        t0 = run.budget.now()
        if run.ctx.is_main:
            folder = run_preprocess(run, dataset, progress, files)
        barrier(run.ctx)
        if not run.ctx.is_main:  # the other ranks find it current
            folder = preprocess(dataset.root, config, progress=False, dataset=dataset)
        run.budget.exclude(run.budget.now() - t0)  # preprocessing is not counted (every rank)
        n_raters = MmapSource(folder, ids).n_raters(0) if ids else 1
    else:
        train_set = InMemorySource(load_examples(dataset, ids, config))
        n_raters = train_set.n_raters(0) if len(train_set) else 1
    run.synthetic = load_synthetic(config, splits, n_raters=n_raters)
    if run.synthetic:
        run.log.text(f"mixing {len(run.synthetic)} synthetic cases from {config.data.synthetic} "
                     f"(ratio {config.data.synthetic_ratio})")
    if not streamed:
        return train_set, f"{len(train_set)} cases in memory"
    size = config.train.batch_size // run.micro
    parts = [range(p * size, (p + 1) * size) for p in range(run.ctx.rank, run.micro, run.ctx.world)]
    stream = StepStream(folder, ids, config, config.train.seed, start=step, parts=parts,
                        synthetic=run.synthetic)
    return stream, f"streaming {len(ids)} cases from {folder}"


def run_preprocess(run: Run, dataset: Dataset, progress: bool,
                   files: dataset_files.DatasetFiles | None) -> Path:
    """``diffuseg preprocess`` when its cached folder is missing or stale, saying so; its time is
    taken out of the budget (docs/training.md: preprocessing is outside the clock)."""
    config = run.config
    folder = default_folder(dataset.root, config)
    if is_current(folder, dataset.root, config, files):
        return preprocess(dataset.root, config, progress=False, dataset=dataset, files=files)
    clock = run.config.train.budget_clock
    run.log.say(f"preprocessing {len(dataset.cases)} cases into {folder} (cached for later runs, "
                f"'diffuseg preprocess' does the same; not counted in train.max_minutes)")
    t0 = run.budget.now()
    folder = preprocess(dataset.root, config, progress=progress, dataset=dataset, files=files)
    run.log.say(f"preprocessing took {run.budget.now() - t0:.1f} s on the {clock} clock, not "
                "counted in train.max_minutes")
    return folder


def build_run(config, run_dir, device, log, ctx, micro, budget) -> tuple[Run, int]:
    """Method, optimiser and EMA, restored from ``run_dir/checkpoint`` when there is one; a new
    run with ``train.init`` starts from that model's matching weights (its EMA too)."""
    c = config.train
    torch.manual_seed(c.seed)  # network initialisation only
    method = build_method(config).to(device)
    fresh = complete_step(run_dir / "checkpoint") is None
    if fresh and c.init is not None:
        start_from_model(method, config, run_dir, log, ctx)
    optimizer = torch.optim.AdamW(method.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    run = Run(config, method, optimizer, EMA(method, c.ema_decay), log, run_dir, device,
              autocast_dtype(c.precision, device), ctx, budget, micro)
    if fresh:
        return run, 0
    state, run.ema.shadow = load_checkpoint(run_dir / "checkpoint", method.networks(), optimizer,
                                            device)
    run.skipped = int(state.get("skipped", 0))
    budget.prior = float(state.get("elapsed_seconds", 0.0))
    return run, int(state["step"])


def start_from_model(method: Method, config: RunConfig, run_dir: Path, log: RunLog,
                     ctx: Dist) -> None:
    """``train.init``: load the model's matching tensors (every rank), record them in
    ``init.json`` and say in one line which were not loaded (docs/pretrained.md)."""
    from diffuseg.core.progress import log as say
    from diffuseg.pretrained.finetune import init_networks

    report = init_networks(method.networks(), config.train.init, config.method.name)
    if ctx.is_main:
        write_json_atomic(run_dir / "init.json", report.to_dict())
        log.text(report.line())
        say(report.line())


def micro_batches_of(config: RunConfig, ctx: Dist) -> int:
    """The global batch (train.batch_size) is cut into this many equal parts, spread round-robin
    over the ranks; each part's noise comes from its own seed, so the same ``micro_batches``
    gives the same training on any number of processes."""
    c = config.train
    micro = c.micro_batches or ctx.world
    if micro < 1 or micro % ctx.world or c.batch_size % micro:
        raise ConfigError(f"train.micro_batches={micro} must be a multiple of the number of "
                          f"processes ({ctx.world}) and divide train.batch_size={c.batch_size}; "
                          f"e.g. train.micro_batches={ctx.world} with a batch size divisible by it")
    return micro


def learning_rate(step: int, time_fraction: float | None, config: RunConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of lr. Progress is the larger of the step fraction
    and the fraction of the wall-clock budget spent (across resumes), so a time-limited run still
    anneals."""
    c = config.train
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    frac = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
    if time_fraction is not None:
        frac = max(frac, time_fraction)
    frac = min(1.0, frac)
    return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


CHECK_AFTER = 4  # steps after the first, before the budget is checked against the data's needs


def run_loop(run: Run, train_set, step: int, signals: StopSignals, progress: bool) -> int:
    c = run.config.train
    parts = range(run.ctx.rank, run.micro, run.ctx.world)  # this rank's parts of each batch
    size = c.batch_size // run.micro
    budget_s = 60 * c.max_minutes if c.max_minutes else None
    first = step + 1  # the first step of this command
    with run.log.progress(total=c.max_steps, start=step, enabled=progress, budget_s=budget_s,
                          timer=run.budget.elapsed, clock=c.budget_clock) as bar:
        while step < c.max_steps:
            t0 = run.budget.now()
            lr = learning_rate(step, run.budget.fraction(), run.config)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            if isinstance(train_set, StepStream):  # the same items, read by DataLoader workers
                micro = train_set.take(step)
            else:
                micro = [batch_at(train_set, run.config, c.seed, step,
                                  range(p * size, (p + 1) * size), run.synthetic) for p in parts]
            loss, terms, grad_norm, votes = train_step(run, micro, parts, step, signals.requested)
            stop, run.interrupted = votes[0] or votes[1], votes[1]
            finite = math.isfinite(loss) and math.isfinite(grad_norm)
            if finite:
                run.optimizer.step()
            else:
                skip_or_stop(run, step, loss, grad_norm)
            step += 1
            if finite:
                run.ema.update(run.method, step)
            bar.advance(step, loss)
            run.budget.step_seconds = run.budget.now() - t0
            run.loop_seconds += run.budget.step_seconds
            run.loop_steps += 1
            if step == first:
                run.first_step_seconds = run.budget.step_seconds  # warm-up: slower than the rest
            if step in (first + CHECK_AFTER, c.max_steps) and run.ctx.is_main and not run.checked:
                run.check_budget(step)
            if step % 20 == 0 or step == c.max_steps or stop or not finite:
                run.log.metrics({"step": step, "lr": lr, "seconds": round(run.budget.elapsed(), 2),
                                 **terms, "loss": loss, "skipped": run.skipped})
            if step % c.checkpoint_every == 0 or stop:
                run.checkpoint(step)  # before any validation
            if step % c.val_every == 0 and step < c.max_steps and not stop:
                run.validate(step, run.budget.val_limit())
            if stop:
                break
    if step < c.max_steps and not run.interrupted:
        run.log.text(f"stopped at step {step}: train.max_minutes={c.max_minutes} reached "
                     "(time kept for the final save and validation)")
    return step


def train_step(run: Run, micro: list[dict], parts: range, step: int, signalled: bool
               ) -> tuple[float, dict, float, tuple[bool, bool]]:
    """Forward and backward over this rank's parts of the batch, gradients summed over ranks.
    Returns (global loss, this rank's loss terms, gradient norm, (out of time, signalled) on any
    rank: all ranks stop after the same step)."""
    run.method.train()
    run.optimizer.zero_grad(set_to_none=True)
    local, terms = torch.zeros(3, dtype=torch.float64), {}
    for part, batch in zip(parts, micro, strict=True):
        seed = part_seed(run.config.train.seed, step, part)
        torch.manual_seed(seed)  # dropout and any other global-RNG draw
        generator = torch.Generator(device=run.device).manual_seed(seed)
        batch = {k: v.to(run.device) for k, v in batch.items()}
        if "raters" in batch:  # data.rater_mode=all
            batch = every_rater(batch)
        with autocast(run.device, run.dtype):
            out = run.method.loss(batch, generator=generator)
        (out["loss"] / run.micro).backward()
        local[0] += float(out["loss"].detach()) / run.micro
        for k, v in out.items():
            terms[k] = terms.get(k, 0.0) + round(float(v.detach()), 6) / len(parts)
    parameters = run.method.parameters()
    sum_gradients(parameters, run.ctx)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, run.config.train.grad_clip))
    local[1], local[2] = float(run.budget.out_of_time()), float(signalled)
    all_reduce_sum(local, run.ctx)  # [global loss, out-of-time votes, signal votes]
    return (float(local[0]), {k: round(v, 6) for k, v in terms.items()}, grad_norm,
            (bool(local[1] > 0), bool(local[2] > 0)))


def part_seed(seed: int, step: int, part: int) -> int:
    """Seed of the noise for part ``part`` of step ``step``'s batch: the loss depends on
    (seed, step, part) alone, never on how many steps ran in this process."""
    return int(np.random.SeedSequence([seed, step, part, 1]).generate_state(1)[0])


def skip_or_stop(run: Run, step: int, loss: float, grad_norm: float) -> None:
    """A non-finite loss or gradient: stop with an error (the last checkpoint stays as it was),
    or under train.skip_nonfinite drop the step and count it."""
    c = run.config.train
    what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
    run.optimizer.zero_grad(set_to_none=True)
    run.skipped += 1
    run.log.text(f"step {step + 1}: non-finite {what}")
    if not c.skip_nonfinite or run.skipped > max(10, c.max_steps // 10):
        reason = ("more than 10% of steps were skipped" if c.skip_nonfinite else
                  "set train.skip_nonfinite=true to skip such steps instead")
        raise TrainingDiverged(
            f"training diverged at step {step + 1}: non-finite {what} (train.lr={c.lr}); "
            f"the last good checkpoint (step {max(run.saved_step, 0)}) is kept in "
            f"'{run.run_dir / 'checkpoint'}'; lower train.lr, or {reason}")


def foreground_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice over all foreground labels (label > 0); both empty counts as 1 (``metrics.dice``)."""
    return dice(np.asarray(pred) > 0, np.asarray(target) > 0)


__all__ = ["train", "resolve_device", "autocast", "autocast_dtype", "cpu_has_native_bf16",
           "state_of"]

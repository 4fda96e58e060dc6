"""The training loop: reads top to bottom.

``train(config, dataset_dir, run_dir)`` writes a self-describing run folder (see
docs/architecture.md): the config, the dataset's description and fingerprint, safetensors weights
(raw and EMA), a plain-text log, ``metrics.jsonl`` and ``progress.png``, with an atomic checkpoint
every ``train.checkpoint_every`` steps so that ``resume=True`` continues where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from diffuseg.config import RunConfig, save_config
from diffuseg.data import Dataset, load_splits
from diffuseg.data.loader import load_examples, majority
from diffuseg.data.streaming import training_batches
from diffuseg.errors import ConfigError, DataError
from diffuseg.methods import Method, build_method
from diffuseg.runlog import RunLog, dataset_fingerprint, plot_progress
from diffuseg.weights import (
    load_networks,
    load_optimizer,
    load_state,
    replace_folder_atomically,
    save_networks,
    save_optimizer,
    state_of,
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but CUDA is not available; use cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not valid; use auto, cpu, cuda or cuda:N") from None


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: there bf16 autocast is about 2x faster; without them (AVX2 only) bf16
    convolutions are emulated and were measured 30x slower than fp32 (docs/performance.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA where supported (else fp16), bf16 on CPUs with native bf16, else fp32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "checkpoint").is_dir():
            raise DataError(f"cannot resume: '{run_dir}' holds no checkpoint/; "
                            "start a new run without --resume")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise DataError(f"run folder '{run_dir}' already holds files; pass --resume to continue "
                        "it, or choose another output folder")
    run_dir.mkdir(parents=True, exist_ok=True)


def train(config: RunConfig, dataset_dir: str | Path, run_dir: str | Path, *,
          resume: bool = False, progress: bool = True) -> Path:
    config.validate()
    dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
    dataset = Dataset.open(dataset_dir)
    prepare_run_dir(run_dir, resume)
    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)  # network initialisation only
    method = build_method(config).to(device)
    optimizer = torch.optim.AdamW(method.parameters(), lr=config.train.lr,
                                  weight_decay=config.train.weight_decay)
    ema = EMA(method, config.train.ema_decay)
    step = 0
    if resume:
        step = load_checkpoint(run_dir / "checkpoint", method, optimizer, ema)
    else:
        save_config(config, run_dir / "config.json")
        shutil.copy(dataset.root / "dataset.json", run_dir / "dataset.json")
        (run_dir / "fingerprint.json").write_text(
            json.dumps(dataset_fingerprint(dataset), indent=2) + "\n")
    splits = load_splits(dataset.root, dataset, seed=config.train.seed)
    if not resume:
        (run_dir / "splits.json").write_text(json.dumps(splits, indent=2) + "\n")
    val_ids = (splits.get("val") or splits["train"])[: config.train.val_cases]
    val_set = load_examples(dataset, val_ids, config)
    log = RunLog(run_dir)
    log.text(f"{'resumed' if resume else 'started'} at step {step}: method={config.method.name} "
             f"device={device} train={len(splits['train'])} val={len(val_set)} cases, "
             f"{sum(p.numel() for p in method.parameters()):,} parameters")
    data, source = training_batches(dataset, splits["train"], config, config.train.seed + step,
                                    progress=progress)  # in memory, or streamed (data.stream)
    log.text(f"training data: {source}")
    dtype = autocast_dtype(config.train.precision, device)
    generator = torch.Generator(device=device).manual_seed(config.train.seed + 7919 * step)
    run_loop(method, optimizer, ema, data, val_set, log, run_dir, device, dtype, generator,
             start=step, progress=progress)
    return run_dir


def learning_rate(step: int, elapsed: float, config: RunConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of lr. Progress is the larger of the step fraction
    and the fraction of the wall-clock budget, so a time-limited run still anneals."""
    c = config.train
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    frac = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
    if c.max_minutes:
        frac = max(frac, elapsed / (60 * c.max_minutes))
    frac = min(1.0, frac)
    return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def run_loop(method, optimizer, ema, data, val_set, log, run_dir, device, dtype, generator,
             *, start: int, progress: bool) -> None:
    c = method.config.train
    t0 = time.monotonic()
    step = start
    with log.progress(total=c.max_steps, start=start, enabled=progress) as bar:
        while step < c.max_steps:
            batch = {k: v.to(device) for k, v in next(data).items()}
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, time.monotonic() - t0, method.config)
            method.train()
            with autocast(device, dtype):
                terms = method.loss(batch, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(method.parameters(), c.grad_clip)
            optimizer.step()
            step += 1
            ema.update(method, step)
            bar.advance(step, float(terms["loss"].detach()))
            elapsed = time.monotonic() - t0
            out_of_time = c.max_minutes is not None and elapsed > 60 * c.max_minutes
            if step % 20 == 0 or step == c.max_steps or out_of_time:
                log.metrics({"step": step, "lr": optimizer.param_groups[0]["lr"],
                             "seconds": round(elapsed, 2),
                             **{k: round(float(v.detach()), 6) for k, v in terms.items()}})
            if step % c.val_every == 0 or step == c.max_steps or out_of_time:
                validate(method, ema, val_set, log, step, device, dtype)
                plot_progress(run_dir)
            if step % c.checkpoint_every == 0 or step == c.max_steps or out_of_time:
                save_checkpoint(run_dir, method, optimizer, ema, step)
            if out_of_time:
                log.text(f"stopped at step {step}: train.max_minutes={c.max_minutes} reached")
                break
    save_networks(method.networks(), run_dir / "model.safetensors")
    save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(run_dir / "ema.safetensors"))
    log.text(f"finished at step {step} after {time.monotonic() - t0:.1f} s")


@torch.no_grad()
def validate(method: Method, ema: EMA, val_set, log: RunLog, step: int, device, dtype) -> None:
    """Consensus Dice of EMA-weight samples against the majority of raters, per val case."""
    c = method.config.train
    live = {k: v.clone() for k, v in state_of_live(method).items()}
    load_networks(method.networks(), ema.shadow, "EMA")
    method.eval()
    generator = torch.Generator(device=device).manual_seed(1234)
    dices = []
    for ex in val_set:
        image = torch.from_numpy(ex.image)[None].to(device)
        with autocast(device, dtype):
            samples = method.segment(image, c.val_samples, steps=c.val_steps, generator=generator)
        consensus = (samples.float().mean(0)[0].argmax(0) if samples.shape[2] > 1
                     else samples.float().mean(0)[0, 0] > 0.5).cpu().numpy()
        target = majority(ex.raters, max(2, method.config.num_classes))
        dices.append(foreground_dice(consensus, target))
    load_networks(method.networks(), live, "live weights")
    log.metrics({"step": step, "val_dice": round(float(np.mean(dices)), 5)})
    log.text(f"step {step}: validation consensus Dice {np.mean(dices):.4f} "
             f"over {len(dices)} cases")


def foreground_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice over all foreground labels (label > 0); both empty counts as 1."""
    p, t = pred > 0, target > 0
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2 * (p & t).sum() / denom)


def save_checkpoint(run_dir: Path, method, optimizer, ema: EMA, step: int) -> None:
    tmp = run_dir / "checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_networks(method.networks(), tmp / "model.safetensors")
    save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
    save_optimizer(optimizer, tmp)
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    replace_folder_atomically(tmp, run_dir / "checkpoint")


def load_checkpoint(folder: Path, method, optimizer, ema: EMA) -> int:
    load_networks(method.networks(), load_state(folder / "model.safetensors"), folder)
    ema.shadow = {k: v.to(method.device) for k, v in load_state(folder / "ema.safetensors").items()}
    load_optimizer(optimizer, folder)
    return int(json.loads((folder / "state.json").read_text())["step"])


__all__ = ["train", "resolve_device", "autocast_dtype", "state_of"]

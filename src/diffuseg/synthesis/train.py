"""Training the image generator on a dataset's training split, and its self-describing folder.

The folder holds ``generator.json`` (the typed ``GeneratorConfig``, including the source dataset
and the cases it saw), ``model.safetensors`` (EMA weights), ``training_log.txt`` and
``metrics.jsonl``. ``load_generator(folder)`` rebuilds the model from these files alone.
Only the training split of the source dataset is used (its ``splits.json``, else the same
patient-grouped split ``diffuseg train`` draws with the given seed), so no validation or test
image ever shapes a synthetic image.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from diffuseg.config import NetworkConfig, from_dict, to_dict
from diffuseg.data import Dataset, load_splits
from diffuseg.errors import DataError
from diffuseg.run.log import RunLog
from diffuseg.run.weights import load_networks, load_state
from diffuseg.synthesis.edges import edge_map
from diffuseg.synthesis.generator import GeneratorConfig, ImageGenerator, to_unit
from diffuseg.synthesis.prompts import build_vocabulary, encode

CONFIG_FILE = "generator.json"


def case_prompts(dataset: Dataset) -> dict[str, str | None]:
    """The prompt of every case from dataset.json (``prompts`` per case, else ``prompt``)."""
    extra = dataset.info.extra
    per_case = extra.get("prompts") or {}
    if not isinstance(per_case, dict) or not all(isinstance(v, str) for v in per_case.values()):
        raise DataError(f"'{dataset.root}/dataset.json': prompts must map case ids to text, "
                        "e.g. {\"case_01\": \"benign lesion\"}")
    default = extra.get("prompt")
    if default is not None and not isinstance(default, str):
        raise DataError(f"'{dataset.root}/dataset.json': prompt must be a text, got {default!r}")
    return {case.case_id: per_case.get(case.case_id, default) for case in dataset.cases}


def plan_generator(dataset: Dataset, train_ids: list[str], images: list[np.ndarray],
                   prompts: dict[str, str | None], **overrides) -> GeneratorConfig:
    """What the data fixes (dims, channels, labels, intensity range, vocabulary) plus a patch
    that fits the images; ``overrides`` replace any field."""
    info = dataset.info
    dims = info.spatial_dims
    labels = info.label_values
    pixels = np.concatenate([im.reshape(im.shape[0], -1) for im in images], axis=1)
    lo, hi = np.percentile(pixels, [0.5, 99.5], axis=1)
    network = overrides.get("network") or NetworkConfig(
        channels=(32, 64, 128), attention_levels=(False, False, True))
    factor = 2 ** (len(network.channels) - 1)
    smallest = np.min([im.shape[1:] for im in images], axis=0)
    cap = 64 if dims == 2 else 32
    patch = tuple(int(max(factor, min(cap, s) // factor * factor)) for s in smallest)
    integer = all(np.array_equal(im, np.round(im)) for im in images[:8])
    config = GeneratorConfig(
        spatial_dims=dims, image_channels=info.n_channels,
        num_classes=1 if len(labels) <= 2 else len(labels), patch_size=patch, network=network,
        vocabulary=build_vocabulary(prompts[c] for c in train_ids),
        intensity_lo=tuple(float(v) for v in lo), intensity_hi=tuple(float(v) for v in hi),
        integer_intensities=bool(integer), dataset=str(dataset.root),
        source_cases=tuple(train_ids))
    return replace(config, **overrides).validate()


class PairSampler:
    """Random (image, mask, edge, prompt) training crops: a random training case, one random
    rater, a random crop of ``patch_size`` (zero-padded when smaller), random flips."""

    def __init__(self, images, raters, prompt_ids, config: GeneratorConfig, seed: int):
        self.images, self.raters, self.prompt_ids = images, raters, prompt_ids
        self.config = config
        self.rng = np.random.default_rng(seed)

    def crop(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        patch = self.config.patch_size
        pad = [(0, max(0, p - s)) for p, s in zip(patch, mask.shape, strict=True)]
        image = np.pad(image, [(0, 0), *pad], constant_values=-1)
        mask = np.pad(mask, pad)
        start = [int(self.rng.integers(s - p + 1)) for s, p in zip(mask.shape, patch, strict=True)]
        window = tuple(slice(a, a + p) for a, p in zip(start, patch, strict=True))
        image, mask = image[(slice(None), *window)], mask[window]
        for axis in range(mask.ndim):
            if self.rng.random() < 0.5:
                image, mask = np.flip(image, axis + 1), np.flip(mask, axis)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        items = []
        for i in self.rng.integers(len(self.images), size=size):
            mask = self.raters[i][self.rng.integers(len(self.raters[i]))]
            image, mask = self.crop(self.images[i], mask)
            items.append((image, mask, edge_map(mask), self.prompt_ids[i]))
        image, mask, edge, ids = zip(*items, strict=True)
        return {"image": torch.from_numpy(np.stack(image)),
                "mask": torch.from_numpy(np.stack(mask)).long(),
                "edge": torch.from_numpy(np.stack(edge)).unsqueeze(1),
                "prompt": torch.stack(ids)}


def train_generator(dataset_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                    device: str = "cpu", log_every: int = 20, **overrides) -> Path:
    """Train on the training split of ``dataset_dir``; write the generator folder ``out_dir``."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"generator folder '{out_dir}' already holds files; choose another "
                        "folder or remove it")
    dataset = Dataset.open(dataset_dir)
    train_ids = sorted(load_splits(dataset_dir, dataset, seed=seed)["train"])
    if not train_ids:
        raise DataError(f"'{dataset_dir}' has no training cases to learn images from")
    by_id = {case.case_id: case for case in dataset.cases}
    loaded = [by_id[c].load() for c in train_ids]
    prompts = case_prompts(dataset)
    config = plan_generator(dataset, train_ids, [d.image for d in loaded], prompts, **overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(config, out_dir)
    torch.manual_seed(config.train.seed)
    model = ImageGenerator(config).to(device)
    ids = encode([prompts[c] for c in train_ids], config.vocabulary)
    sampler = PairSampler([to_unit(d.image, config) for d in loaded],
                          [d.raters for d in loaded], ids, config, config.train.seed)
    run_training(model, sampler, out_dir, torch.device(device), log_every)
    return out_dir


def run_training(model: ImageGenerator, sampler: PairSampler, out_dir: Path,
                 device: torch.device, log_every: int) -> None:
    c = model.config.train
    log = RunLog(out_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr)
    ema = {k: v.detach().clone() for k, v in _state(model).items()}
    generator = torch.Generator(device=device).manual_seed(c.seed)
    t0, step = time.monotonic(), 0
    log.text(f"generator: {sum(p.numel() for p in model.parameters()):,} parameters, "
             f"{len(sampler.images)} training cases, patch {list(model.config.patch_size)}")
    while step < c.max_steps:
        if c.max_minutes is not None and time.monotonic() - t0 > 60 * c.max_minutes:
            log.text(f"stopped at step {step}: max_minutes={c.max_minutes} reached")
            break
        batch = {k: v.to(device) for k, v in sampler.batch(c.batch_size).items()}
        terms = model.loss(batch, generator=generator)
        loss = float(terms["loss"].detach())
        if not np.isfinite(loss):
            raise DataError(f"generator loss became {loss} at step {step}; lower the learning "
                            "rate (e.g. lr=1e-4)")
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        step += 1
        decay = min(c.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for key, value in _state(model).items():
                if value.is_floating_point():
                    ema[key].lerp_(value, 1 - decay)
                else:
                    ema[key].copy_(value)
        if step % log_every == 0 or step == c.max_steps:
            log.metrics({"step": step, "seconds": round(time.monotonic() - t0, 2),
                         "loss": round(loss, 6)})
    save_networks_state(ema, out_dir / "model.safetensors")
    log.text(f"finished at step {step} after {time.monotonic() - t0:.1f} s")


def _state(model: ImageGenerator) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, net in model.networks().items()
            for k, v in net.state_dict().items()}


def save_networks_state(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def write_config(config: GeneratorConfig, folder: Path) -> None:
    tmp = folder / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(to_dict(config), indent=2) + "\n")
    tmp.replace(folder / CONFIG_FILE)


def is_generator_folder(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def load_generator(folder: str | Path, device: str = "cpu") -> ImageGenerator:
    """The generator of ``folder`` (``generator.json`` + ``model.safetensors``); nothing is
    unpickled."""
    folder = Path(folder)
    if not is_generator_folder(folder):
        raise DataError(f"'{folder}' is not a generator folder (no {CONFIG_FILE}); give the "
                        "folder 'diffuseg synthesize' trained, or a dataset folder")
    try:
        data = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"'{folder / CONFIG_FILE}' is not valid JSON ({err})") from None
    model = ImageGenerator(from_dict(GeneratorConfig, data).validate())
    load_networks(model.networks(), load_state(folder / "model.safetensors"),
                  folder / "model.safetensors", folder / CONFIG_FILE)
    for net in model.networks().values():
        net.eval()
    return model.to(device)


__all__ = ["train_generator", "load_generator", "is_generator_folder"]

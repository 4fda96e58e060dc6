"""``synthesize``: new (image, mask) pairs written as a dataset folder that ``train`` can mix in.

The folder has the usual layout (docs/dataset_format.md) with one rater, the conditioning mask.
Its dataset.json says ``"synthetic": {...}`` (the source dataset, the generator folder, the source
cases the generator saw, the guidance scale and steps), ``prompts`` per synthetic case, and
``provenance.json`` records, for each case, where its mask came from (``masks.MaskDraw``) and
the seed of its image. ``splits.json`` puts every synthetic case in ``train``: synthetic pairs
never enter a validation or test fold (and ``data.synthetic`` refuses a synthetic set whose
source cases overlap the run's validation or test cases).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from diffuseg.data import Dataset, DatasetInfo, save_splits, write_dataset
from diffuseg.errors import DataError
from diffuseg.synthesis.generator import ImageGenerator, from_unit
from diffuseg.synthesis.masks import MaskDraw, MaskPool, parse_sources
from diffuseg.synthesis.prompts import encode
from diffuseg.synthesis.train import (
    case_prompts,
    is_generator_folder,
    load_generator,
    train_generator,
)


@dataclass
class SynthesisSummary:
    root: Path
    generator: Path
    n_cases: int
    sources: dict[str, int]  # mask source -> cases

    def format(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.sources.items())
        return f"{self.root}: {self.n_cases} synthetic cases ({counts}); generator {self.generator}"


def synthesize(source: str | Path, out: str | Path, n: int, *, generator_dir: Path | None = None,
               prompt: str | None = None, masks: str | Sequence[str] = ("real", "merge",
                                                                          "elastic"),
               segmentor: Path | None = None, steps: int | None = None,
               guidance: float | None = None, seed: int = 0, batch_size: int = 4,
               device: str = "cpu", overwrite: bool = False, progress=None,
               **train_overrides) -> SynthesisSummary:
    """Draw ``n`` pairs. ``source`` is a generator folder, or a dataset folder (then the generator
    in ``generator_dir``, default ``OUT_generator`` beside ``out``, is trained if absent)."""
    source, out = Path(source), Path(out)
    sources = parse_sources(masks)
    if n < 1 or n > 100_000:
        raise DataError(f"--n {n} must be between 1 and 100000")
    gen_dir = source if is_generator_folder(source) else (
        generator_dir or out.parent / f"{out.name}_generator")
    if not is_generator_folder(gen_dir):
        check_paths(source, out)
        train_generator(source, gen_dir, seed=seed, device=device, **train_overrides)
    model = load_generator(gen_dir, device)
    dataset = Dataset.open(model.config.dataset)
    check_paths(dataset.root, out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"'{out}' exists and is not empty; choose a new folder or pass "
                        "--overwrite")
    pool, geometry_of, prompts = mask_pool(dataset, model, segmentor, device)
    draws = draw_masks(pool, sources, n, seed)
    cases, provenance, case_prompt = [], {}, {}
    for start in range(0, n, batch_size):
        chunk = draws[start:start + batch_size]
        texts = [prompt if prompt is not None else prompts.get(d.case_id) for d in chunk]
        images = generate(model, [d.mask for d in chunk], texts, steps=steps,
                          guidance=guidance, seed=seed + start)
        for j, (draw, image, text) in enumerate(zip(chunk, images, texts, strict=True)):
            case_id = f"syn_{start + j:05d}"
            cases.append((case_id, image, draw.mask[None], geometry_of[draw.case_id]))
            provenance[case_id] = {**draw.provenance, "image_seed": seed + start, "prompt": text}
            if text:
                case_prompt[case_id] = text
        if progress is not None:
            progress(min(start + batch_size, n), n)
    write_folder(out, cases, dataset, model, gen_dir, provenance, case_prompt, overwrite)
    counts = {s: sum(p["source"] == s for p in provenance.values()) for s in sources}
    return SynthesisSummary(out, gen_dir, n, counts)


def check_paths(source: Path, out: Path) -> None:
    """Never write into (or over) the source dataset."""
    a, b = source.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise DataError(f"output '{out}' overlaps the source '{source}'; write the synthetic "
                        "dataset to a separate folder")


def mask_pool(dataset: Dataset, model: ImageGenerator, segmentor: Path | None, device: str):
    """The generator's own training cases (never validation or test cases) as the mask pool."""
    by_id = {case.case_id: case for case in dataset.cases}
    missing = [c for c in model.config.source_cases if c not in by_id]
    if missing:
        raise DataError(f"the generator was trained on cases {missing[:3]} that are no longer in "
                        f"'{dataset.root}'; train a new generator")
    loaded = [by_id[c].load() for c in model.config.source_cases]
    segment = None
    if segmentor is not None:
        from diffuseg.inference.predictor import Predictor

        predictor = Predictor.from_run(segmentor, device=device)

        def segment(i: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
            sample_seed = int(rng.integers(2**31))
            result = predictor.segment(loaded[i].image, geometry=loaded[i].geometry,
                                       n_samples=1, seed=sample_seed)
            return result.sample_labels()[0, 0].numpy(), {"run": str(segmentor),
                                                          "sample_seed": sample_seed}

    pool = MaskPool([d.case_id for d in loaded], [d.raters for d in loaded], segment)
    geometry_of = {d.case_id: d.geometry for d in loaded}
    return pool, geometry_of, case_prompts(dataset)


def generate(model: ImageGenerator, masks: list[np.ndarray], prompts: list[str | None], *,
             steps: int | None, guidance: float | None, seed: int) -> list[np.ndarray]:
    """Images ``[C, *sp]`` in source intensities for label masks ``[*sp]``; masks of one shape
    form one batch, each padded to a multiple of 2^(levels - 1) and cropped back."""
    c = model.config
    factor = 2 ** (len(c.network.channels) - 1)
    shape = masks[0].shape
    if any(m.shape != shape for m in masks):
        return [img for i, m in enumerate(masks) for img in generate(
            model, [m], [prompts[i]], steps=steps, guidance=guidance, seed=seed + i)]
    pad = [(0, (-s) % factor) for s in shape]
    labels = torch.from_numpy(np.stack([np.pad(m, pad) for m in masks])).long()
    device = next(model.denoiser.parameters()).device
    ids = encode(prompts, c.vocabulary).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    x = model.sample(labels.to(device), ids, steps=steps, guidance=guidance, generator=g)
    crop = (slice(None), slice(None), *[slice(0, s) for s in shape])
    x = x[crop].float().cpu().numpy()
    if not np.isfinite(x).all():
        raise DataError("the generator produced non-finite pixels; retrain it (lower lr)")
    return [from_unit(img, c) for img in x]


def write_folder(out: Path, cases: list, dataset: Dataset, model: ImageGenerator, gen_dir: Path,
                 provenance: dict, prompts: dict, overwrite: bool) -> None:
    info: DatasetInfo = dataset.info
    c = model.config
    extra = {k: v for k, v in info.extra.items() if k not in ("prompts", "prompt", "synthetic")}
    extra["synthetic"] = {
        "source_dataset": str(dataset.root), "generator": str(gen_dir),
        "source_cases": list(c.source_cases), "guidance": c.guidance, "steps": c.steps,
        "provenance": "provenance.json",
        "method": "DiffBoost-style mask- and edge-guided diffusion (docs/synthesis.md)"}
    if prompts:
        extra["prompts"] = prompts
    synthetic_info = replace(info, raters=1, groups={}, name=f"{info.name or 'dataset'}"
                             "-synthetic", extra=extra)
    root = write_dataset(out, cases, synthetic_info, overwrite=overwrite)
    save_splits(root, {"train": sorted(p[0] for p in cases), "val": [], "test": []})
    tmp = root / "provenance.json.tmp"
    tmp.write_text(json.dumps(provenance, indent=2) + "\n")
    tmp.replace(root / "provenance.json")


def draw_masks(pool: MaskPool, sources: Sequence[str], n: int, seed: int) -> list[MaskDraw]:
    rng = np.random.default_rng(seed)
    return [pool.draw(sources[int(rng.integers(len(sources)))], rng) for _ in range(n)]

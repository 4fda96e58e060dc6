"""``diffuseg synthesize``: a thin layer over ``diffuseg.synthesis.synthesize.synthesize``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command


@command("synthesize")
def synthesize_command(
    source: Annotated[Path, typer.Argument(
        help="A generator folder, or a dataset folder (a generator is trained on its training "
        "split first)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Synthetic dataset to write")],
    n: Annotated[int, typer.Option("--n", help="Number of synthetic pairs")] = 100,
    prompt: Annotated[str | None, typer.Option(
        help="Prompt for every image", show_default="each source case's prompt in dataset.json")
    ] = None,
    masks: Annotated[str, typer.Option(
        help="Mask sources, comma-separated: real, merge, elastic, model")
    ] = "real,merge,elastic",
    segmentor: Annotated[Path | None, typer.Option(
        help="Segmentation run whose samples are the 'model' mask source",
        show_default="none")] = None,
    generator: Annotated[Path | None, typer.Option(
        help="Generator folder to train or reuse", show_default="OUTPUT_generator")] = None,
    guidance: Annotated[float | None, typer.Option(
        help="Classifier-free guidance scale s (1 = none)", show_default="the generator's")
    ] = None,
    steps: Annotated[int | None, typer.Option(
        help="DDIM steps per image", show_default="the generator's")] = None,
    train_steps: Annotated[int, typer.Option(help="Generator training steps")] = 2000,
    minutes: Annotated[float | None, typer.Option(
        help="Wall-clock budget for training the generator", show_default="no cap")] = None,
    batch_size: Annotated[int, typer.Option(help="Generator training batch")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed (split, masks, images)")] = 0,
    device: Annotated[str, typer.Option("-device", "--device", help="auto, cpu or cuda")
                      ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUTPUT")] = False,
    fidelity: Annotated[Path | None, typer.Option(
        help="A run trained on real data: report its Dice on the synthetic images (mask "
        "fidelity) and image statistics into OUTPUT/fidelity.json", show_default="none")] = None,
) -> None:
    """Generate (image, mask) pairs with a mask- and edge-guided diffusion model (DiffBoost-
    style) and write them as a dataset folder that 'train' mixes in with data.synthetic=PATH."""
    from diffuseg.core.runtime import resolve_device
    from diffuseg.synthesis.generator import GeneratorTrainConfig
    from diffuseg.synthesis.synthesize import synthesize

    dev = str(resolve_device(device))
    train = GeneratorTrainConfig(max_steps=train_steps, max_minutes=minutes,
                                 batch_size=batch_size, seed=seed)

    def progress(done: int, total: int) -> None:
        typer.echo(f"  {done}/{total} images", err=True)

    summary = synthesize(source, output, n, generator_dir=generator, prompt=prompt, masks=masks,
                         segmentor=segmentor, steps=steps, guidance=guidance, seed=seed,
                         device=dev, overwrite=overwrite, progress=progress, train=train)
    typer.echo(summary.format())
    if fidelity is not None:
        from diffuseg.synthesis.fidelity import fidelity_report

        report = fidelity_report(summary.root, fidelity, device=dev, seed=seed)
        typer.echo(json.dumps({k: v for k, v in report.items() if k != "mask_fidelity"} | {
            "mask_fidelity": report["mask_fidelity"]["mean"]}, indent=2))

"""``diffuseg predict``: a thin layer over ``diffuseg.inference.batch``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command, warn
from diffuseg.core.progress import Quiet, set_quiet
from diffuseg.errors import DiffusegError


@command("predict")
def predict_command(
    run: Annotated[Path, typer.Argument(
        help="Run folder written by 'diffuseg train', or a model name ('diffuseg models')")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder")],
    input: Annotated[Path | None, typer.Option(
        "-i", "--input", help="Image file, folder of images, DICOM series or study folder",
        show_default="none: use --dataset and --split")] = None,
    dataset: Annotated[Path | None, typer.Option(
        "-d", "--dataset", help="Dataset folder to take --split from",
        show_default="none")] = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="train, val or test (from RUN/splits.json), or imagesTs",
        show_default="none")] = None,
    series: Annotated[str | None, typer.Option(
        "--series", help="Part of the series folder name when -i is a DICOM study",
        show_default="the study's only image series")] = None,
    samples: Annotated[int | None, typer.Option(
        "--samples", "-n", help="Masks to draw", show_default="the run's sample.n_samples")
    ] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Sampler steps", show_default="the run's sample.steps")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    device: Annotated[str, typer.Option("-device", "--device", help="auto, cpu or cuda")] = "auto",
    onnx: Annotated[Path | None, typer.Option(
        "--onnx", help="Predict with this ONNX denoiser (ONNX Runtime, CPU); see 'diffuseg "
        "export'", show_default="none: torch")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Predict again cases that are already complete (each case folder "
        "is replaced atomically)")] = False,
    format: Annotated[str, typer.Option("--format", help="auto (DICOM objects for a DICOM "
                                        "input) or dicom (also for NIfTI, needs --reference)")
                      ] = "auto",
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="DICOM series folder a NIfTI input was converted from",
        show_default="none")] = None,
    dicom_samples: Annotated[bool, typer.Option(
        "--dicom-samples", help="Also write every sample as a segment of seg_samples.dcm")
    ] = False,
    rtstruct: Annotated[bool, typer.Option(
        "--rtstruct", help="Also write the consensus as an RT Structure Set of contours "
        "(rtstruct_consensus.dcm; DICOM series input or --reference)")] = False,
    inside: Annotated[Path | None, typer.Option(
        "--inside", help="Mask of pixels certainly inside, on the image's grid (guided "
        "resampling: every sample holds them; docs/review.md)", show_default="none")] = None,
    outside: Annotated[Path | None, typer.Option(
        "--outside", help="Mask of pixels certainly outside (guided resampling)",
        show_default="none")] = None,
    label: Annotated[int, typer.Option(
        "--label", help="The class --inside/--outside mark (multi-class runs: inside = this "
        "class, outside = not this class)")] = 1,
    jumps: Annotated[int | None, typer.Option(
        "--jumps", help="RePaint resamplings per step for --inside/--outside (1 = one pass)",
        show_default="the run's sample.resample_jumps")] = None,
    guidance_scale: Annotated[float | None, typer.Option(
        "--guidance-scale", help="Decoder-guidance step size for --inside/--outside (ldseg's "
        "DPS zeta; 0 = final projection only)",
        show_default="the run's method.options.guidance_scale")] = None,
    quiet: Quiet = False,
) -> None:
    """Draw samples; write them, the consensus, uncertainty maps and previews in the input's
    geometry. Cases whose result.json is complete are skipped (an interrupted call resumes).
    A 2D run segments a volume slice by slice. Under torchrun the processes share the cases
    (case k on rank k % N) and write the files one process would; rank 0 prints."""
    from diffuseg.core.distributed import device_name_for, process_group
    from diffuseg.core.validation import check_predict_options
    from diffuseg.inference.batch import predict_cases, select_cases

    check_predict_options(samples, steps, seed, device)  # one-line errors before any work
    if format not in ("auto", "dicom"):
        raise DiffusegError(f"--format {format} is unknown; use auto or dicom")
    from diffuseg.pretrained.lookup import resolve

    run = resolve(run)  # a path that exists, else a model name
    with process_group(device) as ctx:
        set_quiet(quiet or not ctx.is_main)  # one progress display and summary: rank 0's
        cases, chosen = select_cases(run, input=input, dataset=dataset, split=split,
                                     series=series)
        from diffuseg.inference.marks import read_constraints

        constraints = read_constraints(inside, outside, label=label, jumps=jumps,
                                       scale=guidance_scale)
        if constraints is not None and len(cases) > 1:
            raise DiffusegError("--inside/--outside mark one image; give a single image with -i")
        file_options = {"constraints": constraints} if constraints is not None else {}
        predictor = load_predictor(run, device_name_for(ctx, device), onnx)
        results = predict_cases(predictor, cases, output, split=chosen, dataset=dataset,
                                n_samples=samples, steps=steps, seed=seed, overwrite=overwrite,
                                dicom=True if format == "dicom" else None, reference=reference,
                                dicom_samples=dicom_samples, rtstruct=rtstruct, ctx=ctx,
                                **file_options)
        if not ctx.is_main:
            return
    skipped = sum(1 for *_, was_skipped in results if was_skipped)
    for name, folder, was_skipped in results:
        if not quiet:
            typer.echo(f"{name}: {folder}{' (already complete)' if was_skipped else ''}")
    typer.echo(f"{len(results)} case(s) in {output}" + (f", {skipped} already complete"
                                                         if skipped else ""))
    from diffuseg.run.verdict import not_learned_warning

    message = not_learned_warning(run)  # last, so that an error is never preceded by it
    if message:
        warn(message)


def load_predictor(run: Path, device: str, onnx: Path | None):
    from diffuseg.inference.predictor import Predictor

    if onnx is None:
        return Predictor.from_run(run, device=device)
    if not onnx.is_file():
        raise DiffusegError(f"--onnx '{onnx}' does not exist; write it with 'diffuseg export "
                            f"{run} --format onnx'")
    warn_if_stale(onnx, run)
    from diffuseg.inference.onnx import onnx_predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnx_predictor(run, model=onnx)


def warn_if_stale(onnx: Path, run: Path) -> bool:
    """Warn (and return True) when the ONNX file is older than the run's weights."""
    weights = [p for p in (run / "ema_best.safetensors", run / "ema.safetensors",
                           run / "model.safetensors") if p.is_file()]
    newest = max((p.stat().st_mtime for p in weights), default=0.0)
    if onnx.stat().st_mtime < newest:
        typer.echo(f"warning: '{onnx}' is older than the weights in '{run}'; the predictions "
                   f"use the old model unless you run 'diffuseg export {run} --format onnx' again",
                   err=True)
        return True
    return False

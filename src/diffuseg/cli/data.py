"""``diffuseg check DATASET`` and ``diffuseg convert KIND SRC DST``: verify a dataset folder, and
import real data into diffuseg's dataset format (docs/importers.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command
from diffuseg.core.progress import Quiet, set_quiet


@command("check")
def check_command(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder to verify")],
    quiet: Quiet = False,
) -> None:
    """Verify a dataset folder (like nnU-Net's --verify_dataset_integrity)."""
    from diffuseg.data.check import check_dataset

    set_quiet(quiet)
    report = check_dataset(dataset)
    typer.echo(report.format())
    raise typer.Exit(1 if report.errors else 0)


Src = Annotated[Path, typer.Argument(help="Source folder (or archive) as downloaded")]
Dst = Annotated[Path, typer.Argument(help="Dataset folder to write")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace the dataset files in an existing DST")]
Labels = Annotated[str, typer.Option(
    "--labels", help="Label names for values 0, 1, ..., comma-separated, background first")]


def _labels(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


@command("lidc-slices", group="convert")
def lidc_slices_command(
    src: Annotated[Path, typer.Argument(
        help="LIDC-IDRI slices folder, or its tar (read without extracting)")],
    dst: Dst,
    limit_patients: Annotated[int | None, typer.Option(
        "--limit-patients", help="Keep the first N patients in archive order (quick runs)",
        show_default="all")] = None,
    raters: Annotated[int, typer.Option("--raters", help="Masks per slice (mask-0..R-1)")] = 4,
    split: Annotated[Path | None, typer.Option(
        "--split", help="The release's split.json (train/val patients)",
        show_default="split.json beside SRC")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """LIDC-IDRI slices: one case per slice, 4 raters, grouped and split by patient."""
    from diffuseg.data.importers import import_lidc_slices
    set_quiet(quiet)

    summary = import_lidc_slices(src, dst, raters=raters, limit_patients=limit_patients,
                                 split=split, overwrite=overwrite)
    typer.echo(summary.format())


@command("msd", group="convert")
def msd_command(
    src: Annotated[Path, typer.Argument(help="MSD task folder (dataset.json, imagesTr, labelsTr)")],
    dst: Dst,
    limit_cases: Annotated[int | None, typer.Option(
        "--limit-cases", help="Keep the first N training cases (quick runs)",
        show_default="all")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Medical Segmentation Decathlon task: one file per channel, labels and affines kept."""
    from diffuseg.data.importers import import_msd
    set_quiet(quiet)

    typer.echo(import_msd(src, dst, limit_cases=limit_cases, overwrite=overwrite).format())


@command("folder", group="convert")
def folder_command(
    src: Annotated[Path, typer.Argument(help="Folder holding the images and masks")],
    dst: Dst,
    image_glob: Annotated[str, typer.Option(
        "--image-glob", help="Images, relative to SRC (files ending in a mask suffix are "
        "skipped), e.g. '*.jpg' or '*/*.png'")] = "*.png",
    mask_suffix: Annotated[list[str] | None, typer.Option(
        "--mask-suffix", help="Mask name = image stem + suffix; repeat once per rater, e.g. "
        "--mask-suffix _1stHO --mask-suffix _2ndHO", show_default="_mask")] = None,
    mask_dir: Annotated[Path | None, typer.Option(
        "--mask-dir", help="Folder of the masks (sub-folders as under SRC)",
        show_default="beside each image")] = None,
    mask_ending: Annotated[str | None, typer.Option(
        "--mask-ending", help="Ending of mask files, e.g. .png",
        show_default="the image's, else .png .tif .tiff .nii.gz .nii")] = None,
    labels: Labels = "background,foreground",
    grayscale: Annotated[bool, typer.Option(
        "--grayscale", help="Convert RGB images to one luma channel")] = False,
    group_pattern: Annotated[str | None, typer.Option(
        "--group-pattern", help="Regex naming the patient in a case id (first group or whole "
        "match), e.g. 'Image_\\d+'", show_default="each case its own patient")] = None,
    file_ending: Annotated[str | None, typer.Option(
        "--file-ending", help="Output ending (.png, .tif, .nii.gz)",
        show_default=".png for raster images, .nii.gz for NIfTI")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Images and masks matched by file name, one mask suffix per rater (CHASE_DB1, PH2)."""
    from diffuseg.data.importers import import_folder
    set_quiet(quiet)

    summary = import_folder(src, dst, image_glob=image_glob,
                            mask_suffixes=tuple(mask_suffix or ("_mask",)), mask_dir=mask_dir,
                            mask_ending=mask_ending, labels=_labels(labels),
                            grayscale=grayscale, group_pattern=group_pattern,
                            file_ending_out=file_ending, overwrite=overwrite)
    typer.echo(summary.format())


@command("dicom", group="convert")
def dicom_command(
    src: Annotated[Path, typer.Argument(
        help="A study folder (one sub-folder per series) or a folder above several")],
    dst: Dst,
    image: Annotated[str, typer.Option(
        "--image", help="Part of the image series' folder name, e.g. T1post")],
    mask: Annotated[list[str], typer.Option(
        "--mask", help="Part of a mask series' folder name; repeat once per rater")],
    channel: Annotated[list[str] | None, typer.Option(
        "--channel", help="Extra image series on the same grid (repeatable), e.g. FLAIRreg",
        show_default="none")] = None,
    labels: Labels = "background,foreground",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """DICOM studies: an image series and mask series on its grid -> one 3D NIfTI case each."""
    from diffuseg.data.importers import import_dicom
    set_quiet(quiet)

    summary = import_dicom(src, dst, image=image, masks=mask, channels=channel or (),
                           labels=_labels(labels), overwrite=overwrite)
    typer.echo(summary.format())

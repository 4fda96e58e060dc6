"""Predicting many cases: a dataset's split, a folder, or a DICOM study, resumably.

``select_cases`` turns the user's choice into ``(case, channel files)`` pairs:

- ``--dataset D --split test``: the cases the RUN folder's ``splits.json`` puts in that split
  (the run's own record is the only source of truth: the split it was trained with), read from
  ``D/imagesTr``; ``--split imagesTs`` (or ``-i D/imagesTs``) takes the unlabelled test folder;
- ``-i FOLDER``: every image in it; ``-i STUDY`` (a folder of DICOM series folders): its one image
  series (mask/segmentation series are skipped; several image series are refused with a list).

``predict_cases`` skips cases whose ``result.json`` is complete (resuming where a previous call
stopped), records in each result.json which run and split produced it, and shows progress per
case, per slice (a 2D run on volumes, ``diffuseg.inference.slices``) and per sampling step.
Under ``torchrun`` it shards the cases over the ranks (``predict_cases``' ``ctx``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from diffuseg.core.distributed import Dist, gather_objects
from diffuseg.core.paths import check_output
from diffuseg.core.progress import Progress
from diffuseg.errors import DataError
from diffuseg.inference.predictor import case_name, list_inputs

SPLITS = ("train", "val", "test", "imagesTs")
MASK_WORDS = ("mask", "seg", "label", "roi", "rtstruct")


def run_splits(run: Path) -> dict[str, list[str]]:
    path = Path(run) / "splits.json"
    if not path.is_file():
        raise DataError(f"run folder '{run}' has no splits.json; predict with -i FOLDER instead "
                        "of --split")
    return json.loads(path.read_text())


def select_cases(run: Path, *, input: Path | None, dataset: Path | None, split: str | None,
                 series: str | None = None) -> tuple[list[list[Path]], str | None]:
    """The channel files of each case to predict, and the split they came from (or None)."""
    if split is not None and split not in SPLITS:
        import difflib

        close = difflib.get_close_matches(split, SPLITS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise DataError(f"--split {split!r} is unknown; {hint}use one of {list(SPLITS)}")
    if split is not None:
        if dataset is None:
            raise DataError("--split needs --dataset DATASET (the dataset folder the run was "
                            "trained on)")
        _folder(dataset, "--dataset")
        if split == "imagesTs":
            return list_inputs(_folder(dataset / "imagesTs", "--dataset")), "imagesTs"
        ids = run_splits(run).get(split, [])
        if not ids:
            raise DataError(f"the run's splits.json has no '{split}' cases; choose another split")
        by_case = {case_name(paths[0]): paths
                   for paths in list_inputs(_folder(dataset / "imagesTr", "--dataset"))}
        missing = [c for c in ids if c not in by_case]
        if missing:
            raise DataError(f"{len(missing)} '{split}' case(s) of the run are not in "
                            f"'{dataset}/imagesTr' (e.g. {missing[0]}); is it the dataset the run "
                            "was trained on?")
        return [by_case[c] for c in ids], split
    if input is None:
        raise DataError("say what to predict: -i FILE_OR_FOLDER, or --dataset DATASET --split "
                        "test")
    if dataset is not None:
        raise DataError("--dataset goes with --split; give either -i or --dataset/--split")
    study = study_series(input, series)
    if study is not None:
        return [[study]], None
    return list_inputs(input), ("imagesTs" if Path(input).name == "imagesTs" else None)


def _folder(path: Path, flag: str) -> Path:
    if path.is_file():
        raise DataError(f"'{path}' is a file but {flag} expects a folder")
    if not path.is_dir():
        raise DataError(f"'{path}' does not exist; check {flag}")
    return path


def is_mask_series(name: str, modality: str = "") -> bool:
    """A series of masks, not of images: its name (a folder name, or a PACS's SeriesDescription)
    holds one of ``MASK_WORDS`` (e.g. 'Mask_Tumor'), or its Modality is SEG or RTSTRUCT. The one
    rule of ``study_series`` (the CLI) and of the service's PACS series choice."""
    return any(word in name.lower() for word in MASK_WORDS) or modality in ("SEG", "RTSTRUCT")


def _looks_like_mask(folder: Path) -> bool:
    import pydicom

    if is_mask_series(folder.name):
        return True
    for file in sorted(folder.iterdir())[:1]:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM: not a mask series either
            return False
        return is_mask_series("", str(ds.get("Modality", "")))
    return False


def study_series(path: Path, series: str | None = None) -> Path | None:
    """A DICOM study folder (no files, one sub-folder per series) -> its image series folder;
    None when ``path`` is not such a folder."""
    path = Path(path)
    if not path.is_dir() or any(p.is_file() and not p.name.startswith(".")
                                for p in path.iterdir()):
        return None
    folders = sorted(p for p in path.iterdir() if p.is_dir())
    if not folders:
        return None
    if series is not None:
        chosen = [f for f in folders if series.lower() in f.name.lower()]
        if len(chosen) != 1:
            raise DataError(f"--series {series!r} matches {len(chosen)} of the series in "
                            f"'{path}': {', '.join(f.name for f in folders)}")
        return chosen[0]
    images = [f for f in folders if not _looks_like_mask(f)]
    if len(images) == 1:
        return images[0]
    masks = [f.name for f in folders if f not in images]
    skipped = f" (skipped as masks: {', '.join(masks)})" if masks else ""
    raise DataError(f"study folder '{path}' holds {len(images)} image series: "
                    f"{', '.join(f.name for f in images)}{skipped}; pick one with --series NAME "
                    "or -i STUDY/SERIES")


def is_complete(case_dir: Path) -> bool:
    """A case is done when its result.json (written last) parses and lists files that exist."""
    return completed_settings(case_dir) is not None


def completed_settings(case_dir: Path) -> dict | None:
    """The result.json of a complete case (None when the case is absent or incomplete)."""
    try:
        result = json.loads((case_dir / "result.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(result, dict):
        return None
    return result if all((case_dir / name).is_file() for name in result.get("files", [])) \
        else None


def same_settings(result: dict, wanted: dict) -> bool:
    """Whether a complete case was drawn with the settings asked for now (samples, seed, steps);
    a case drawn otherwise is not silently kept."""
    return all(result.get(key) == value for key, value in wanted.items() if value is not None)


def settings_text(result: dict) -> str:
    return ", ".join(f"{k} {result.get(k)}" for k in ("n_samples", "steps", "seed"))


def predict_cases(predictor, cases: Sequence[Sequence[Path]], out_dir: Path, *,
                  split: str | None = None, dataset: Path | None = None,
                  n_samples: int | None = None, steps: int | None = None, seed: int = 0,
                  overwrite: bool = False, ctx: Dist | None = None,
                  **file_options) -> list[tuple[str, Path, bool]]:
    """Predict each case into ``out_dir/<case>/`` (one writer at a time: ``lock_output``);
    ``file_options`` go to ``Predictor.predict_file`` (e.g. the DICOM outputs). Returns (case,
    folder, skipped) per case, in the order of ``cases``.

    ``ctx``: the ranks of a torchrun job (``diffuseg.core.distributed``; None: one process).
    Case k goes to rank k % world; every case is drawn with the same ``seed`` whatever its rank,
    so the job writes the files one process would. The job holds the folder as one writer
    (``prediction_folder.job_lock``); every rank returns the whole list (gathered). A case that
    fails on one rank lets the others finish theirs, then raises on that rank (its own error)
    and on rank 0 (naming the rank), so a second call resumes like after one process's failure.
    """
    from diffuseg.inference.prediction_folder import lock_output

    ctx = ctx or Dist()
    out_dir = Path(out_dir)
    for paths in cases:  # before anything is written (or an unfinished case folder deleted)
        check_output(paths, out_dir, out_dir / case_name(Path(paths[0])))
    mine = [(k, paths) for k, paths in enumerate(cases) if k % ctx.world == ctx.rank]
    options = dict(split=split, dataset=dataset, n_samples=n_samples, steps=steps, seed=seed,
                   overwrite=overwrite, **file_options)
    label = "predict" if ctx.world == 1 else f"predict (rank {ctx.rank} of {ctx.world})"
    with lock_output(out_dir, ctx), Progress(label, len(mine), unit="cases") as bar:
        if ctx.world == 1:
            return [row for _, row in _predict_own(predictor, mine, out_dir, bar, **options)]
        done, error = [], None
        try:
            done = _predict_own(predictor, mine, out_dir, bar, **options)
        except Exception as err:  # noqa: BLE001 - reported after every rank has finished
            error = err
        gathered = gather_objects((done, None if error is None else str(error)), ctx)
    if error is not None:
        raise error
    failed = [(rank, message) for rank, (_, message) in enumerate(gathered) if message]
    if failed and ctx.is_main:
        rank, message = failed[0]
        raise DataError(f"rank {rank} of {ctx.world} failed: {message}")
    return [row for _, row in sorted(item for part, _ in gathered for item in part)]


def _predict_own(predictor, cases: Sequence[tuple[int, Sequence[Path]]], out_dir: Path,
                 bar: Progress, *, split: str | None, dataset: Path | None,
                 n_samples: int | None, steps: int | None, seed: int, overwrite: bool,
                 **file_options) -> list[tuple[int, tuple[str, Path, bool]]]:
    """``predict_cases`` for the cases ``(index, channel files)`` of this process."""
    done: list[tuple[int, tuple[str, Path, bool]]] = []
    method = getattr(predictor, "method", None)  # the ONNX predictor has none
    n_steps = (method.sampling(steps)[1] if method is not None else None) or steps or \
        predictor.config.sample.steps  # the steps sample() runs (LDSeg: its own default)
    wanted = {"n_samples": n_samples or predictor.config.sample.n_samples, "seed": seed,
              "steps": steps}
    for index, paths in cases:
        name = case_name(Path(paths[0]))
        case_dir = out_dir / name
        previous = None if overwrite else completed_settings(case_dir)
        if previous is not None:
            if not same_settings(previous, wanted):
                raise DataError(f"output folder '{case_dir}' already holds a prediction drawn "
                                f"with other settings ({settings_text(previous)}); pass "
                                "--overwrite to replace it or choose another -o")
            done.append((index, (name, case_dir, True)))
            bar.advance(info=f"{name} (done before, skipped)")
            continue
        if case_dir.exists() and not overwrite:
            shutil.rmtree(case_dir)  # an interrupted case: predict it again
        extra = {"split": split, "dataset": str(dataset) if dataset else None}
        where = {"slice": ""}  # "slice k/Z, " while a volume runs slice by slice

        def on_step(k: int, name: str = name, where: dict = where) -> None:
            bar.update(bar.completed, info=f"{name}: {where['slice']}sampling step {k}/{n_steps}")

        def on_slice(k: int, total: int, name: str = name, where: dict = where) -> None:
            where["slice"] = f"slice {min(k + 1, total)}/{total}, "
            bar.update(bar.completed, info=f"{name}: slice {k}/{total} done")

        folder = predictor.predict_file(list(paths), out_dir, n_samples=n_samples,
                                        steps=steps, seed=seed, overwrite=True,
                                        progress=on_step, on_slice=on_slice, extra=extra,
                                        **file_options)
        done.append((index, (name, folder, False)))
        bar.advance(info=name)
    return done

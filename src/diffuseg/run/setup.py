"""The run folder's setup when a training command starts: a new folder described (config,
dataset, fingerprint, splits), or a resumed one checked against its own record."""

from __future__ import annotations

import json
from pathlib import Path

from diffuseg.config import RunConfig, to_dict
from diffuseg.core.atomic import holds_files, write_json_atomic, write_text_atomic
from diffuseg.errors import DataError
from diffuseg.run.checkpoint import recover_checkpoint
from diffuseg.run.folder import check_same_dataset, dataset_fingerprint
from diffuseg.run.log import RunLog, truncate_metrics


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not run_dir.is_dir():
            raise DataError(f"cannot resume: run folder '{run_dir}' does not exist; start a new "
                            "run without --resume")
        return
    if holds_files(run_dir):
        raise DataError(f"run folder '{run_dir}' already holds files; pass --resume to continue "
                        "it, or choose another output folder")
    run_dir.mkdir(parents=True, exist_ok=True)


def describe_run(run_dir: Path, config: RunConfig, dataset, files=None) -> None:
    """config.json, dataset.json and fingerprint.json, each written atomically (splits.json is
    written by ``run_folder.splits_for_run``). ``files``: the dataset's ``data.files.scan``."""
    write_json_atomic(run_dir / "config.json", to_dict(config))
    write_text_atomic(run_dir / "dataset.json", (dataset.root / "dataset.json").read_text())
    write_json_atomic(run_dir / "fingerprint.json", dataset_fingerprint(dataset, files))


def resume_run(run_dir: Path, config: RunConfig, dataset, splits: dict, log: RunLog,
               files=None) -> int | None:
    """Recover the newest complete checkpoint, refuse other data, record changed settings, drop
    metrics of steps to be replayed. Returns the checkpoint's step (None: none was written, the
    run restarts from step 0 in its folder). ``files``: the dataset's ``data.files.scan``."""
    check_same_dataset(run_dir, dataset, files)
    step = recover_checkpoint(run_dir)
    if step is None and (run_dir / "checkpoint").is_dir():
        raise DataError(f"checkpoint folder '{run_dir / 'checkpoint'}' is incomplete (its "
                        "COMPLETE marker is missing or does not match its files); start over in "
                        "a new run folder, or put back an older copy of the checkpoint folder")
    changes = config_changes(run_dir / "config.json", to_dict(config))
    if step is None:
        describe_run(run_dir, config, dataset, files)
        log.text("no complete checkpoint in the run folder: starting again from step 0")
    elif changes:
        write_json_atomic(run_dir / "config.json", to_dict(config))
    if changes:
        log.text("resumed with changed settings: " + ", ".join(changes))
    truncate_metrics(run_dir, step or 0)
    return step


def config_changes(path: Path, new: dict) -> list[str]:
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in _diff(old, new, "")]


def _diff(old, new, prefix: str):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _diff(old.get(key), new.get(key), f"{prefix}{key}.")
    elif old != new:
        yield prefix.rstrip("."), old, new

"""Job folders made the way ``diffuseg serve`` makes them (``JobStore`` + ``segment_job``) from a
tiny phantom model, and the service app itself (``create_app``, which mounts the review router)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from helpers import tiny

from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.inference.predictor import Predictor
from diffuseg.io import read_mask, write_mask
from diffuseg.service.app import create_app, segment_job
from diffuseg.service.jobs import JobStore, now
from diffuseg.service.settings import ServiceSettings
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

TINY = tiny("network.num_heads=2", "sample.steps=3", attention=True, max_steps=2)
ANN_TOKEN, BOB_TOKEN = "tok-ann-0123456789abcdef", "tok-bob-0123456789abcdef"
TOKENS = {ANN_TOKEN: "ann", BOB_TOKEN: "bob"}
ANN = {"Authorization": f"Bearer {ANN_TOKEN}"}
BOB = {"Authorization": f"Bearer {BOB_TOKEN}"}


def tiny_run(root: Path, *, n_cases: int = 4, size: int = 32, extra: list[str] = (),
             spatial_dims: int = 2) -> tuple:
    data = write_phantom_dataset(root / "phantom", n_cases=n_cases, size=size, n_raters=3,
                                 spatial_dims=spatial_dims)
    config = build_config(None, TINY + list(extra), dataset=data)
    return train(config, data, root / "run", progress=False), data


def tiny_multiclass_run(root: Path, *, n_cases: int = 4, size: int = 32) -> tuple:
    """``tiny_run`` on a K = 3 phantom: every rater's lesion split at its mean column into label 1
    ('anterior', left) and label 2 ('posterior', right), declared so in dataset.json."""
    data = write_phantom_dataset(root / "phantom3", n_cases=n_cases, size=size, n_raters=3)
    info = json.loads((data / "dataset.json").read_text())
    info["labels"] = {"background": 0, "anterior": 1, "posterior": 2}
    (data / "dataset.json").write_text(json.dumps(info, indent=2))
    for path in sorted((data / "labelsTr").iterdir()):
        mask, geometry = read_mask(path)
        columns = np.flatnonzero(mask.any(0))
        split = int(columns.mean()) if len(columns) else size // 2
        mask[:, split:] *= 2
        write_mask(path, mask.astype(np.uint8), geometry)
    config = build_config(None, TINY, dataset=data)
    assert config.num_classes == 3
    return train(config, data, root / "run3", progress=False), data


def make_job(data_dir: Path, predictor: Predictor, image: Path, *, n_samples: int = 6,
             seed: int = 0, source: str = "upload", study_uid: str | None = None) -> str:
    """A finished job of ``image`` (a file, or a DICOM series folder): the input stored as the
    upload handler stores it, segmented by the service's own ``segment_job``; returns its id."""
    store = JobStore(data_dir)
    job = store.create(source=source, input_name=image.name, user="ann", study_uid=study_uid)
    folder = store.folder(job.id)
    if image.is_dir():
        path = folder / "input" / "series"
        shutil.copytree(image, path)
    else:
        ext = ".nii.gz" if image.name.endswith(".nii.gz") else image.suffix
        path = folder / "input" / f"upload{ext}"
        shutil.copy(image, path)
    settings = ServiceSettings(run_dir=predictor.run_dir or Path("run"), data_dir=data_dir,
                               n_samples=n_samples, seed=seed)
    segment_job(SimpleNamespace(settings=settings, predictor=predictor, jobs=store), job, path)
    store.update(job, status="done", progress=1.0, finished=now(),
                 outputs=store.list_outputs(job))
    return job.id


def write_tokens(data_dir: Path, tokens: dict[str, str] = TOKENS) -> None:
    """``tokens.json`` as the service wants it: owner-only (0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "tokens.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f)


def make_app(data_dir: Path, run_dir: Path, *, auth: bool = True, **settings):
    """The service's app (``create_app``) on ``run_dir``, with the TOKENS users."""
    write_tokens(data_dir)
    return create_app(ServiceSettings(run_dir=run_dir, data_dir=data_dir, auth=auth,
                                      **settings))


def wait(client, job_id: str, deadline_s: float = 300, poll_s: float = 0.1) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job ends (a hang guard, not a timing assertion)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} did not finish")

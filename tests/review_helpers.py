"""Job folders as ``diffuseg serve`` leaves them, made from a tiny phantom model, and a small
FastAPI app that mounts the review router the way ``create_app`` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from diffuseg.api import build_config
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.inference import Predictor, read_channels
from diffuseg.outputs import write_result
from diffuseg.training import train

TINY = ["network.channels=[8,16]", "network.attention_levels=[false,true]",
        "network.norm_groups=4", "network.num_heads=2", "train.max_steps=2",
        "train.device=cpu", "process.T=50", "train.val_cases=1", "train.val_samples=1",
        "train.val_steps=1", "sample.steps=3"]
TOKENS = {"tok-ann": "ann", "tok-bob": "bob"}


def tiny_run(root: Path, *, n_cases: int = 4, size: int = 32, extra: list[str] = (),
             spatial_dims: int = 2) -> tuple:
    data = write_phantom_dataset(root / "phantom", n_cases=n_cases, size=size, n_raters=3,
                                 spatial_dims=spatial_dims)
    config = build_config(None, TINY + list(extra), dataset=data)
    return train(config, data, root / "run", progress=False), data


def make_job(data_dir: Path, job_id: str, predictor: Predictor, image: Path, *,
             n_samples: int = 6, seed: int = 0) -> Path:
    job = data_dir / "jobs" / job_id
    (job / "input").mkdir(parents=True)
    shutil.copy(image, job / "input" / image.name)
    array, geometry = read_channels([job / "input" / image.name])
    result = predictor.segment(array, geometry=geometry, n_samples=n_samples, seed=seed)
    write_result(result, geometry, job / "output", source=job / "input" / image.name)
    (job / "job.json").write_text(json.dumps({"id": job_id, "status": "done",
                                              "source": "upload", "input_name": image.name}))
    return job


def make_app(data_dir: Path, run_dir: Path, predictor: Predictor | None, *, auth: bool = True):
    from fastapi import FastAPI

    from diffuseg.service.review import review_router

    (data_dir / "tokens.json").write_text(json.dumps(TOKENS))
    settings = SimpleNamespace(data_dir=data_dir, run_dir=run_dir, auth=auth)
    app = FastAPI()
    app.state.settings = settings
    app.state.predictor = predictor
    app.state.tokens = TOKENS if auth else None  # what service.auth.current_user reads
    app.include_router(review_router(settings, app.state))
    return app

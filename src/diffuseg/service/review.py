"""The review router: the clinician's page and the JSON/binary endpoints it uses.

Mounted by ``diffuseg.service.app.create_app`` with
``app.include_router(review_router(settings, app.state))``. It uses what ``create_app`` puts on
``app.state``: ``jobs`` (the ``JobStore``: the jobs and their folders), ``predictor`` (guided
resampling and explanations; None answers 503), ``tokens`` (read by
``diffuseg.service.auth.current_user``: every data endpoint needs the token's user; the HTML and
static files carry no data and need none) and ``pacs`` (the DICOMweb client: an approved
segmentation of a job that came from the PACS is stored back into its study). ``settings`` gives
``data_dir`` and ``run_dir``. Every view, edit, resampling, approval and rejection is appended to
``DATA_DIR/audit.jsonl``.
"""

from __future__ import annotations

import base64
import threading
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from diffuseg.errors import DiffusegError
from diffuseg.io.segment_codes import user_table
from diffuseg.review.audit import append_event, label_change, last_view
from diffuseg.service import review_data as rd
from diffuseg.service.auth import current_user
from diffuseg.service.jobs import JOB_ID, Job, JobStore

STATIC = {"review.js": "text/javascript", "review.css": "text/css",
          "review.html": "text/html", "worklist.html": "text/html"}
ARRAYS = ("image", "consensus", "samples", *rd.MAPS)
EXPLANATIONS = ("trajectory", "occlusion", "counterfactual", "attention")
Source = Literal["output", "guided"]


class EditBody(BaseModel):
    tool: str = Field(max_length=32)
    slice: int | None = None
    voxels: int = Field(ge=0)
    label: int | None = Field(None, ge=0)  # the active label of a brush/eraser/mark stroke


class DecisionBody(BaseModel):
    comment: str = Field("", max_length=4000)
    mask: str | None = None  # base64 of uint8 C-order bytes on the image grid (approve)
    start_from: str = Field("consensus", max_length=64)


class ResampleBody(BaseModel):
    inside: str  # base64 uint8 masks like DecisionBody.mask
    outside: str
    n_samples: int = Field(8, ge=1, le=64)
    steps: int | None = Field(None, ge=1, le=1000)
    seed: int = 0
    label: int = Field(1, ge=0)  # the class the marks are about (binary runs: 1)
    jumps: int | None = Field(None, ge=1, le=20)  # RePaint resamplings per step
    guidance_scale: float | None = Field(None, ge=0, le=100)  # ldseg's DPS step size


def static_text(name: str) -> str:
    return resources.files("diffuseg.service").joinpath("static", name).read_text()


@lru_cache(maxsize=16)
def _cached_case(folder: str, source: str, stamp: float, n_labels: int) -> rd.Case:
    return rd.load_case(Path(folder), source, n_labels)


def load(job: Path, source: str, n_labels: int = 2) -> rd.Case:
    result = rd.case_folder(job, source) / "result.json"
    return _cached_case(str(job), source, result.stat().st_mtime, n_labels)


def quantise(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def label_names(run_dir: Path | None, n_labels: int) -> dict[int, str]:
    """{label: name} of the foreground labels 1..n_labels-1: the run's dataset.json names, else
    'foreground' (binary) or 'label k'."""
    from diffuseg.io.dicom_seg import run_label_names

    names = (run_label_names(run_dir) if run_dir is not None else None) or {}
    default = "foreground" if n_labels <= 2 else "label {}"
    return {k: names.get(k, default.format(k)) for k in range(1, n_labels)}


def run_labels(state, run_dir: Path | None) -> int:
    """How many label values the run's masks hold (background included): 2 for a binary run
    (num_classes 1), K for a K-class run; from the loaded predictor's config, else the run's
    config.json, else binary."""
    predictor = getattr(state, "predictor", None)
    if predictor is not None:
        return max(2, int(predictor.config.num_classes))
    if run_dir is not None and (Path(run_dir) / "config.json").is_file():
        from diffuseg.config import load_config

        try:
            return max(2, int(load_config(Path(run_dir) / "config.json").num_classes))
        except DiffusegError:
            pass
    return 2


def store_reviewed(state, job: Job, seg: Path, user: str) -> dict:
    """STOW-RS of the reviewed SEG into the job's study; what was stored, or the PACS's error
    (the approval itself stands either way and is reported with it)."""
    import pydicom

    from diffuseg.service.pacs import PacsError

    if state.pacs is None:
        return {"stored": False, "error": "no PACS configured; start the service with --pacs"}
    try:
        state.pacs.store(job.study_uid, [seg])
    except PacsError as err:
        return {"stored": False, "error": " ".join(str(err).split())}
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    stored = {"stored": True, "series_uid": str(ds.SeriesInstanceUID),
              "sop_instance_uid": str(ds.SOPInstanceUID), "reviewer": user}
    state.jobs.update(job, pacs={**(job.pacs or {}), "reviewed": stored})
    return stored


def review_router(settings, state) -> APIRouter:
    data_dir = Path(settings.data_dir)
    store: JobStore = state.jobs
    run_dir = getattr(settings, "run_dir", None)
    router = APIRouter(prefix="/review", tags=["review"])
    lock = threading.Lock()  # one review model call at a time

    def find(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job '{job_id[:40]}'")
        return job

    def job_or_404(job_id: str) -> Path:
        return store.folder(find(job_id).id)

    def done_or_409(job_id: str) -> Job:
        """A job that can be reviewed: it exists (else 404) and is done (else 409, before
        anything is written)."""
        job = find(job_id)
        if job.status != "done":
            why = f" ({job.error})" if job.error else ""
            raise HTTPException(409, f"job {job.id} is {job.status}{why}; only a finished job "
                                "can be edited, resampled, approved or rejected")
        return job

    def n_labels() -> int:
        return run_labels(state, run_dir)

    def case_or_409(job: Path, source: str) -> rd.Case:
        try:
            return load(job, source, n_labels())
        except DiffusegError as err:
            raise HTTPException(409, str(err)) from None

    def predictor():
        model = getattr(state, "predictor", None)
        if model is None:
            raise HTTPException(503, "no model is loaded in this service")
        return model

    def mask_from(b64: str | None, shape: tuple[int, ...], what: str, labels: int = 2
                  ) -> np.ndarray:
        if b64 is None:
            raise HTTPException(400, f"{what}: no mask sent")
        try:
            return rd.decode_mask(base64.b64decode(b64, validate=True), shape, labels)
        except (ValueError, DiffusegError) as err:
            raise HTTPException(400, f"{what}: {err}") from None

    @router.get("", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page() -> str:
        return static_text("worklist.html")

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response(static_text(name), media_type=STATIC[name])

    @router.get("/api/me")
    def me(user: str = Depends(current_user)) -> dict:
        return {"user": user}

    @router.get("/api/jobs")
    def jobs(user: str = Depends(current_user)) -> list[dict]:
        return [{**vars(job), "review": rd.read_json(store.folder(job.id) / "review.json")}
                for job in store.all()]

    @router.get("/api/jobs/{job_id}")
    def job_meta(job_id: str, source: Source = "output", user: str = Depends(current_user)
                 ) -> dict:
        from diffuseg.review.modes import find_modes

        job = job_or_404(job_id)
        case = case_or_409(job, source)
        lo, hi = np.percentile(case.image, [1, 99])
        return {"id": job_id, "job": vars(find(job_id)), "source": source,
                "shape": list(case.image.shape), "spacing": list(case.geometry.spacing),
                "n_samples": len(case.samples), "window": [float(lo), float(hi)],
                "image_range": [float(case.image.min()), float(case.image.max())],
                "modes": find_modes(case.samples).to_json(),
                "review": rd.read_json(job / "review.json"),
                "guided": (job / "guided").is_dir(), "dicom": rd.is_dicom(job),
                "num_classes": 1 if case.n_labels <= 2 else case.n_labels,
                "labels": [{"value": k, "name": name}
                           for k, name in label_names(run_dir, case.n_labels).items()]}

    @router.get("/api/jobs/{job_id}/array/{name}")
    def array(job_id: str, name: str, source: Source = "output",
              user: str = Depends(current_user)) -> Response:
        """Raw C-order bytes; X-Shape and X-Dtype headers (float32 image, uint8 masks, maps as
        uint8 round(255 v))."""
        if name not in ARRAYS:
            raise HTTPException(404, f"unknown array {name!r}; one of {list(ARRAYS)}")
        case = case_or_409(job_or_404(job_id), source)
        if name == "image":
            values = case.image.astype(np.float32)
        elif name in ("consensus", "samples"):
            values = getattr(case, name).astype(np.uint8)
        else:
            values = quantise(case.maps[name])
        values = np.ascontiguousarray(values)
        return Response(values.tobytes(), media_type="application/octet-stream",
                        headers={"X-Shape": ",".join(map(str, values.shape)),
                                 "X-Dtype": str(values.dtype)})

    @router.post("/api/jobs/{job_id}/view")
    def view(job_id: str, user: str = Depends(current_user)) -> dict:
        job_or_404(job_id)
        return append_event(data_dir, "view", user, job_id)

    @router.post("/api/jobs/{job_id}/edit")
    def edit(job_id: str, body: EditBody, user: str = Depends(current_user)) -> dict:
        done_or_409(job_id)
        extra = {} if body.label is None else {"label": body.label}
        return append_event(data_dir, "edit", user, job_id, tool=body.tool, slice=body.slice,
                            voxels=body.voxels, **extra)

    @router.post("/api/jobs/{job_id}/approve")
    def approve(job_id: str, body: DecisionBody, user: str = Depends(current_user)) -> dict:
        info = done_or_409(job_id)
        job = store.folder(info.id)
        case = case_or_409(job, "output")
        mask = mask_from(body.mask, case.consensus.shape, "approve", case.n_labels)
        opened = last_view(data_dir, job_id, user)
        change = label_change(case.consensus, mask, case.n_labels)
        seconds = None if opened is None else round(time.time() - opened, 3)
        record = {"user": user, "decision": "approved", "comment": body.comment,
                  "start_from": body.start_from, "time": rd.utc_now(),
                  "seconds_open": seconds, **change}
        method = state.predictor.config.method.name if state.predictor is not None else (
            rd.read_json(rd.case_folder(job) / "result.json") or {}).get("method", "diffuseg")
        try:  # the files first: the audit records an approval only once it is on disk
            files = rd.write_approved(job, mask, case, record, method=method,
                                      label_names=label_names(run_dir, case.n_labels),
                                      code_table=user_table(run_dir))
        except DiffusegError as err:
            raise HTTPException(400, " ".join(str(err).split())) from None
        append_event(data_dir, "approve", user, job_id, comment=body.comment,
                     start_from=body.start_from, seconds_open=seconds, **change)
        record["files"] = files
        if info.source == "pacs" and rd.SEG_FILE in files:
            record["pacs"] = store_reviewed(state, info, job / "approved" / rd.SEG_FILE, user)
            append_event(data_dir, "store", user, job_id, **record["pacs"])
        rd.write_json_atomic(job / "review.json", record)
        return record

    @router.post("/api/jobs/{job_id}/reject")
    def reject(job_id: str, body: DecisionBody, user: str = Depends(current_user)) -> dict:
        job = store.folder(done_or_409(job_id).id)
        event = append_event(data_dir, "reject", user, job_id, comment=body.comment)
        record = {"user": user, "decision": "rejected", "comment": body.comment,
                  "time": event["time"]}
        rd.write_json_atomic(job / "review.json", record)
        return record

    @router.post("/api/jobs/{job_id}/resample")
    def resample(job_id: str, body: ResampleBody, user: str = Depends(current_user)) -> dict:
        from diffuseg.inference.marks import Constraints
        from diffuseg.inference.prediction_folder import write_result
        from diffuseg.inference.predictor import read_channels

        job = store.folder(done_or_409(job_id).id)
        case = case_or_409(job, "output")
        inside = mask_from(body.inside, case.consensus.shape, "inside") > 0
        outside = mask_from(body.outside, case.consensus.shape, "outside") > 0
        model = predictor()
        paths = rd.input_paths(job)
        image, geometry = read_channels(paths)
        try:
            with lock:
                result = model.segment(image, geometry=geometry, n_samples=body.n_samples,
                                       steps=body.steps, seed=body.seed,
                                       constraints=Constraints(inside, outside, body.label,
                                                               body.jumps, body.guidance_scale))
        except DiffusegError as err:
            raise HTTPException(400, str(err)) from None
        write_result(result, geometry, job / "guided", source=paths[0],
                     extra={"guided": True, "inside": int(inside.sum()),
                            "outside": int(outside.sum()), "seed": body.seed})
        append_event(data_dir, "resample", user, job_id, inside=int(inside.sum()),
                     outside=int(outside.sum()), n_samples=body.n_samples, label=body.label)
        return {"source": "guided", "n_samples": body.n_samples}

    @router.get("/api/jobs/{job_id}/explain/{kind}.png")
    def explain(job_id: str, kind: str, user: str = Depends(current_user)) -> Response:
        from diffuseg.review import explain as ex

        if kind not in EXPLANATIONS:
            raise HTTPException(404, f"unknown explanation {kind!r}; one of {EXPLANATIONS}")
        job = job_or_404(job_id)
        path = job / "explain" / f"{kind}.png"
        if not path.is_file():
            model = predictor()
            from diffuseg.inference.predictor import read_channels

            image, _ = read_channels(rd.input_paths(job))
            path.parent.mkdir(exist_ok=True)
            try:
                with lock:
                    ex.explain_to_png(model, image, kind, path)
            except DiffusegError as err:
                raise HTTPException(400, str(err)) from None
        append_event(data_dir, "explain", user, job_id, kind=kind)
        return Response(path.read_bytes(), media_type="image/png")

    @router.get("/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def review_page(job_id: str) -> str:
        if not JOB_ID.match(job_id):
            raise HTTPException(404, "no such job")
        return static_text("review.html")

    return router

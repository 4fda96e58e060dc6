"""The FastAPI app of ``diffuseg serve``.

``create_app(settings)`` loads the model once and puts on ``app.state``:

- ``settings``  the ServiceSettings;
- ``predictor`` the ``diffuseg.inference.predictor.Predictor`` (shared by the worker threads);
- ``jobs``      the ``JobStore`` (``DATA_DIR/jobs/{id}/``: job.json, input/, output/, dicom/);
- ``runner``    the ``JobRunner`` (bounded worker threads; ``runner.submit(job, work)``);
- ``tokens``    the token table (None when authentication is off); protect routes with
                ``Depends(diffuseg.service.auth.current_user)``;
- ``pacs``      a ``DicomWeb`` client of the configured PACS, or None.

The review page and its API (``diffuseg.service.review``, docs/review.md) are included as
``review_router(settings, app.state)``: it reviews this store's jobs with this predictor, these
tokens, and stores approved segmentations of PACS jobs back through ``pacs``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import diffuseg
from diffuseg.errors import DiffusegError
from diffuseg.inference.prediction_folder import write_result
from diffuseg.inference.predictor import Predictor, read_channels
from diffuseg.inference.slices import slice_record
from diffuseg.service.auth import current_user, load_tokens
from diffuseg.service.jobs import Job, JobRunner, JobStore
from diffuseg.service.pacs import DicomWeb, PacsError, check_uid
from diffuseg.service.review import review_router
from diffuseg.service.review_data import approved_file
from diffuseg.service.settings import ServiceSettings
from diffuseg.service.uploads import (
    UploadError,
    check_dicom_headers,
    receive_upload,
    series_info,
)

log = logging.getLogger("diffuseg.service")
User = Annotated[str, Depends(current_user)]


class BodyLimit:
    """413 for a request body over ``limit`` bytes: at once from Content-Length, or as soon as
    a chunked body passes the limit (before the multipart parser spools it)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self._reason())
            return message

        await self.app(scope, counting, send)

    def _reason(self) -> str:
        return f"request body larger than the limit of {self.limit} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": self._reason()}, 413)(scope, receive, send)


def check_image_shape(predictor: Predictor, spatial_dims: int, channels: int | None,
                      name: str) -> None:
    """The model's spatial axes and channels; ``channels`` None: the spatial axes only (from the
    header, before the image is decoded)."""
    config = predictor.config
    volume_for_2d = config.spatial_dims == 2 and spatial_dims == 3  # slice by slice
    if (spatial_dims != config.spatial_dims and not volume_for_2d) or channels not in (
            None, config.in_channels):
        has = "" if channels is None else f" with {channels} channel(s)"
        takes = ("2D images (or 3D volumes, slice by slice)" if config.spatial_dims == 2
                 else f"{config.spatial_dims}D images")
        raise UploadError(400, f"'{name[:80]}' is a {spatial_dims}D image{has}; the model takes "
                          f"{takes} with {config.in_channels} channel(s)")


def segment_job(app_state, job: Job, input_path: Path) -> None:
    """Read, segment, write the case folder and (DICOM input) the DICOM objects; a DICOM
    input's patient name, study date and series description go into the job (worklist)."""
    settings: ServiceSettings = app_state.settings
    predictor: Predictor = app_state.predictor
    store: JobStore = app_state.jobs
    folder = store.folder(job.id)
    image, geometry = read_channels([input_path])
    info = series_info(input_path) if geometry.kind == "dicom" else {}
    store.update(job, progress=0.2, **info)

    def on_slice(done: int, total: int) -> None:  # a 2D run on a volume: 0.2 .. 0.8 by slice
        store.update(job, progress=round(0.2 + 0.6 * done / total, 3))

    result = predictor.segment(image, geometry=geometry, n_samples=settings.n_samples,
                               steps=settings.steps, seed=settings.seed, source=job.input_name,
                               on_slice=on_slice)
    store.update(job, progress=0.8)
    write_result(result, geometry, folder / "output", source=input_path.relative_to(folder),
                 extra={"job": job.id, "run": str(settings.run_dir), "seed": settings.seed,
                        "steps": settings.steps or predictor.config.sample.steps,
                        "method": predictor.config.method.name, "version": diffuseg.__version__,
                        **slice_record(predictor, image)})
    if geometry.kind == "dicom":
        from diffuseg.io.dicom_outputs import write_dicom_outputs
        from diffuseg.io.dicom_seg import reference_for, run_label_names
        from diffuseg.io.segment_codes import user_table

        write_dicom_outputs(result, reference_for(geometry), folder / "dicom",
                            method=predictor.config.method.name,
                            samples=settings.dicom_samples, rtstruct=settings.rtstruct,
                            label_names=run_label_names(settings.run_dir),
                            code_table=user_table(settings.run_dir))
    store.update(job, progress=0.95)


def pacs_job(app_state, job: Job, series_uid: str) -> None:
    """Fetch the series (WADO-RS), segment it, store the DICOM objects back (STOW-RS)."""
    import pydicom

    settings: ServiceSettings = app_state.settings
    store: JobStore = app_state.jobs
    folder = store.folder(job.id)
    series = folder / "input" / "series"
    app_state.pacs.fetch_series(job.study_uid, series_uid, series,
                                max_bytes=settings.max_upload_bytes, max_files=settings.max_files)
    try:
        check_dicom_headers(sorted(series.iterdir()), settings.max_voxels)
    except UploadError as err:
        raise PacsError(err.reason) from None
    store.update(job, progress=0.1)
    segment_job(app_state, job, series)
    files = sorted((folder / "dicom").glob("*.dcm"))
    app_state.pacs.store(job.study_uid, files)
    stored = []
    for file in files:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        stored.append({"name": file.stem, "series_uid": str(ds.SeriesInstanceUID),
                       "sop_instance_uid": str(ds.SOPInstanceUID),
                       "sop_class_uid": str(ds.SOPClassUID)})
    store.update(job, pacs={**(job.pacs or {}), "stored": stored})


def create_app(settings: ServiceSettings) -> FastAPI:
    settings.validate()
    predictor = Predictor.from_run(settings.run_dir, device=settings.device)
    predictor.check_steps(settings.steps, settings.n_samples)
    store = JobStore(settings.data_dir)
    interrupted = store.recover()
    if interrupted:
        log.warning("%d job(s) interrupted by the last stop were marked failed", interrupted)
    runner = JobRunner(store, settings.concurrency, settings.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        runner.shutdown()
        if app.state.pacs is not None:
            app.state.pacs.close()

    app = FastAPI(title="diffuseg", version=diffuseg.__version__, lifespan=lifespan,
                  description="Segmentation with diffusion models: samples, consensus and "
                  "uncertainty, as files and DICOM objects. Send 'Authorization: Bearer "
                  "<token>' (DATA_DIR/tokens.json).")
    app.state.settings, app.state.predictor, app.state.jobs = settings, predictor, store
    app.state.runner = runner
    app.state.tokens = load_tokens(settings.data_dir) if settings.auth else None
    app.state.pacs = DicomWeb(settings.pacs_url, settings.pacs_timeout) \
        if settings.pacs_url else None
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, err: UploadError) -> JSONResponse:
        return JSONResponse({"detail": err.reason}, err.status)

    @app.exception_handler(DiffusegError)
    async def user_error(request: Request, err: DiffusegError) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(err).split())}, 400)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """The model is loaded and the queue accepts jobs."""
        ready = not runner.full()
        return JSONResponse({"ready": ready, "method": predictor.config.method.name,
                             "pending": runner.pending, "version": diffuseg.__version__},
                            200 if ready else 503)

    @app.post("/v1/jobs", status_code=202, tags=["jobs"])
    async def submit(file: Annotated[UploadFile, File()], user: User) -> dict:
        """Upload a NIfTI (.nii.gz/.nii), a PNG, or a .zip of one DICOM series; returns the job
        (status 'queued'). Poll ``GET /v1/jobs/{id}``."""
        if runner.full():
            raise HTTPException(503, "the job queue is full; retry later")
        name = file.filename or "upload"
        job = store.create(source="upload", input_name=name[:200], user=user)
        try:
            path, spatial_dims = await run_in_threadpool(
                receive_upload, file.file, name, store.folder(job.id) / "input", settings)
            check_image_shape(predictor, spatial_dims, None, name)  # before decoding
            image, _ = await run_in_threadpool(read_channels, [path])
            check_image_shape(predictor, image.ndim - 1, image.shape[0], name)
            del image
        except (UploadError, DiffusegError) as err:
            store.remove(job)  # a refused upload leaves nothing behind
            reason = err.reason if isinstance(err, UploadError) else " ".join(str(err).split())
            log.info("upload '%s' refused: %s", name[:80], reason)
            raise UploadError(getattr(err, "status", 400), reason) from None
        except BaseException:
            store.remove(job)
            raise
        runner.submit(job, lambda j: segment_job(app.state, j, path))
        return vars(job)

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(user: User) -> list[dict]:
        return [vars(j) for j in store.all()]

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str, user: User) -> dict:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job '{job_id[:40]}'")
        return vars(job)

    @app.get("/v1/jobs/{job_id}/result/{name}", tags=["jobs"])
    def get_result(job_id: str, name: str, user: User) -> FileResponse:
        """One output by name: consensus, probability, variance, entropy, mutual_information,
        sample_00..., result (JSON), seg_consensus, seg_probability, pmap_uncertainty,
        seg_samples, rtstruct_consensus (DICOM); once the job is approved on the review page,
        approved (the reviewed DICOM-SEG of a DICOM input, else the mask in the input's format)
        and approved_mask (the mask as NIfTI or PNG, whatever the input)."""
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job '{job_id[:40]}'")
        if name in ("approved", "approved_mask"):
            path, why = approved_file(store.folder(job.id), dicom=name == "approved")
            if path is None:
                raise HTTPException(404, f"job {job_id} has no approved mask: {why}")
            media = "application/dicom" if path.suffix == ".dcm" else None
            return FileResponse(path, media_type=media, filename=path.name)
        path = store.output_path(job, name)
        if path is None:
            raise HTTPException(404, f"job {job_id} has no output '{name[:40]}' (status "
                                f"{job.status}); it has {job.outputs}")
        media = "application/dicom" if path.suffix == ".dcm" else None
        return FileResponse(path, media_type=media, filename=path.name)

    @app.post("/v1/pacs/studies/{study_uid}/segment", status_code=202, tags=["pacs"])
    def segment_study(study_uid: str, user: User,
                      series: Annotated[str | None, Query()] = None) -> dict:
        """Fetch the study's image series from the PACS (QIDO-RS to choose it, WADO-RS), segment
        it, and store the SEGs and the Parametric Map back into the study (STOW-RS). The job's
        ``pacs.stored`` lists the new Series and SOP Instance UIDs when it is done."""
        if app.state.pacs is None:
            raise HTTPException(409, "no PACS configured; start the service with --pacs URL")
        check_uid(study_uid, "StudyInstanceUID")
        if runner.full():
            raise HTTPException(503, "the job queue is full; retry later")
        chosen = app.state.pacs.pick_series(study_uid, series)
        job = store.create(source="pacs", input_name=study_uid, user=user, study_uid=study_uid,
                           pacs={"url": settings.pacs_url, **chosen})
        runner.submit(job, lambda j: pacs_job(app.state, j, chosen["series_uid"]))
        return vars(job)

    app.include_router(review_router(settings, app.state))
    return app

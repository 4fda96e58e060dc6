"""Jobs on disk and the worker threads that run them.

Each job is a folder ``DATA_DIR/jobs/{id}/`` (the id is server-made, 32 hex digits):

- ``job.json``  id, status (queued | running | done | failed), progress 0..1, created and finished
                times (ISO 8601, UTC), source (upload | pacs), input_name (the client's file name
                or the study UID, for display only), study_uid, user, error, outputs (names served
                by ``GET /v1/jobs/{id}/result/{name}``) and, for PACS jobs, ``pacs`` (the series
                segmented and the UIDs stored back), and for DICOM inputs patient_name,
                study_date (YYYY-MM-DD) and series_description from the series' headers (empty
                for other inputs); rewritten atomically at each change;
- ``input/``    the upload as received (``upload.nii.gz`` / ``upload.png``) or the DICOM series
                (``series/00000.dcm`` ...);
- ``output/``   the case folder of ``diffuseg.inference.prediction_folder.write_result``;
- ``dicom/``    the DICOM objects of ``diffuseg.io.dicom_seg`` (DICOM inputs only).

At start-up, a job left queued or running by a stopped service is marked failed ("interrupted by a
service restart"); finished jobs are kept as they are. A refused upload leaves no job: its folder
is removed (``JobStore.remove``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from diffuseg.errors import DiffusegError

log = logging.getLogger("diffuseg.service")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
INTERRUPTED = "interrupted by a service restart; submit the job again"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Job:
    id: str
    source: str  # "upload" | "pacs"
    input_name: str
    user: str
    status: str = "queued"
    progress: float = 0.0
    created: str = field(default_factory=now)
    finished: str | None = None
    study_uid: str | None = None
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    pacs: dict | None = None
    patient_name: str = ""  # DICOM inputs: from the series' headers (uploads.series_info)
    study_date: str = ""
    series_description: str = ""


class JobStore:
    """Jobs as folders with a ``job.json`` each (module docstring)."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def create(self, **fields) -> Job:
        job = Job(id=uuid.uuid4().hex, **fields)
        folder = self.folder(job.id)
        for sub in ("input", "output", "dicom"):
            (folder / sub).mkdir(parents=True)
        self.save(job)
        return job

    def remove(self, job: Job) -> None:
        """Delete the job's folder and everything in it (a refused upload)."""
        shutil.rmtree(self.folder(job.id), ignore_errors=True)

    def save(self, job: Job) -> None:
        path = self.folder(job.id) / "job.json"
        tmp = path.with_name(f".job.{threading.get_ident()}.tmp")
        with self.lock:
            tmp.write_text(json.dumps(asdict(job), indent=2) + "\n")
            os.replace(tmp, path)

    def update(self, job: Job, **changes) -> Job:
        for key, value in changes.items():
            setattr(job, key, value)
        self.save(job)
        return job

    def get(self, job_id: str) -> Job | None:
        try:
            path = self.folder(job_id) / "job.json"
        except KeyError:
            return None
        if not path.is_file():
            return None
        return Job(**json.loads(path.read_text()))

    def all(self) -> list[Job]:
        jobs = [self.get(p.name) for p in self.root.iterdir() if JOB_ID.match(p.name)]
        return sorted((j for j in jobs if j is not None),
                      key=lambda j: (j.created, j.input_name, j.id))

    def recover(self) -> int:
        """Mark jobs a stopped service left queued or running as failed; returns their count."""
        count = 0
        for job in self.all():
            if job.status in ("queued", "running"):
                self.update(job, status="failed", error=INTERRUPTED, finished=now())
                count += 1
        return count

    def output_path(self, job: Job, name: str) -> Path | None:
        """The file of output ``name`` (listed in ``job.outputs``), or None."""
        if name not in job.outputs:
            return None
        folder = self.folder(job.id)
        for candidate in (folder / "dicom" / f"{name}.dcm", folder / "output" / f"{name}.json",
                          folder / "output" / f"{name}.nii.gz", folder / "output" / f"{name}.png"):
            if candidate.is_file():
                return candidate
        return None

    def list_outputs(self, job: Job) -> list[str]:
        folder = self.folder(job.id)
        names = []
        for sub in ("output", "dicom"):
            for path in sorted((folder / sub).iterdir()):
                name = path.name
                for ending in (".nii.gz", ".png", ".json", ".dcm"):
                    if name.endswith(ending):
                        names.append(name[: -len(ending)])
        return names


class JobRunner:
    """A bounded pool of worker threads; ``submit`` refuses beyond ``max_queue`` waiting jobs."""

    def __init__(self, store: JobStore, concurrency: int, max_queue: int):
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="diffuseg-job")
        self.max_queue = max_queue
        self.pending = 0
        self.lock = threading.Lock()

    def full(self) -> bool:
        return self.pending >= self.max_queue

    def submit(self, job: Job, work: Callable[[Job], None]) -> None:
        with self.lock:
            self.pending += 1
        self.pool.submit(self._run, job, work)

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        try:
            self.store.update(job, status="running", progress=0.05)
            work(job)
            self.store.update(job, status="done", progress=1.0, finished=now(),
                              outputs=self.store.list_outputs(job))
        except DiffusegError as err:
            self.store.update(job, status="failed", error=" ".join(str(err).split()),
                              finished=now())
        except Exception as err:  # a job failure must never kill the worker
            log.exception("job %s failed", job.id)
            self.store.update(job, status="failed", finished=now(),
                              error=f"internal error: {type(err).__name__}: "
                              + " ".join(str(err).split())[:300])
        finally:
            with self.lock:
                self.pending -= 1

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

"""The review audit trail: one JSON object per line in ``DATA_DIR/audit.jsonl``, append-only.

Every event has ``time`` (UTC ISO 8601), ``unix`` (seconds), ``user``, ``event`` (view, edit,
resample, explain, approve, reject, store) and ``job``; approvals add what changed: ``dice``
between the proposal (the consensus) and the approved mask, ``edited_voxels`` (voxels that
differ), ``seconds_open`` (from the reviewer's latest view of the job to the approval) and
``start_from`` (consensus or a mode); ``store`` follows the approval of a PACS job (the reviewed
SEG stored back: ``stored``, its ``series_uid``, or the PACS's ``error``). Each line is written
with one ``write`` to a file opened with O_APPEND and fsync'ed, so concurrent writers never
interleave inside a line and an event acknowledged to the client survives a crash. Nothing ever
rewrites the file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

AUDIT_FILE = "audit.jsonl"
_LOCK = threading.Lock()


def append_event(data_dir: str | Path, event: str, user: str, job: str, **fields) -> dict:
    """Append one event and return it."""
    now = time.time()
    record = {"time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
              "unix": now, "user": user, "event": event, "job": job, **fields}
    line = (json.dumps(record, sort_keys=False) + "\n").encode()
    path = Path(data_dir) / AUDIT_FILE
    with _LOCK:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    return record


def read_events(data_dir: str | Path) -> list[dict]:
    """Every event in order; a torn last line (a crash mid-write) is skipped."""
    path = Path(data_dir) / AUDIT_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def last_view(data_dir: str | Path, job: str, user: str) -> float | None:
    """Unix time of the user's latest view of the job."""
    views = [e["unix"] for e in read_events(data_dir)
             if e.get("event") == "view" and e.get("job") == job and e.get("user") == user]
    return max(views) if views else None


def mask_change(proposal: np.ndarray, approved: np.ndarray) -> dict:
    """Dice between proposal and approved mask (both empty: 1) and the voxels that differ."""
    p, a = np.asarray(proposal) > 0, np.asarray(approved) > 0
    total = int(p.sum() + a.sum())
    dice = 1.0 if total == 0 else 2.0 * int((p & a).sum()) / total
    return {"dice": dice, "edited_voxels": int((p != a).sum()),
            "added_voxels": int((a & ~p).sum()), "removed_voxels": int((p & ~a).sum())}

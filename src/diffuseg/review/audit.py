"""The review audit trail: one JSON object per line in ``DATA_DIR/audit.jsonl``, append-only.

Every event has ``time`` (UTC ISO 8601), ``unix`` (seconds), ``user``, ``event`` (view, edit,
resample, explain, approve, reject, store) and ``job``; approvals add what changed: ``dice``
between the proposal (the consensus) and the approved mask, ``edited_voxels`` (voxels that
differ), ``seconds_open`` (from the reviewer's latest view of the job to the approval) and
``start_from`` (consensus or a mode); K-class runs add ``dice_k`` per label and ``dice`` is their
mean (``label_change``); ``store`` follows the approval of a PACS job (the reviewed
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


def label_change(proposal: np.ndarray, approved: np.ndarray, n_labels: int = 2) -> dict:
    """``mask_change`` for label maps with labels 0..n_labels-1 (binary: ``mask_change``
    itself). K > 2: ``dice_k`` per foreground label k (both empty: 1), ``dice`` their mean over
    the labels present in either mask (none: 1), ``edited_voxels`` any label change,
    ``added_voxels`` / ``removed_voxels`` background to foreground and back, ``relabelled_voxels``
    one foreground label to another."""
    if n_labels <= 2:
        return mask_change(proposal, approved)
    p, a = np.asarray(proposal), np.asarray(approved)
    per_label, present = {}, []
    for k in range(1, n_labels):
        pk, ak = p == k, a == k
        total = int(pk.sum() + ak.sum())
        per_label[f"dice_{k}"] = 1.0 if total == 0 else 2.0 * int((pk & ak).sum()) / total
        if total:
            present.append(per_label[f"dice_{k}"])
    fg_p, fg_a = p > 0, a > 0
    return {"dice": float(np.mean(present)) if present else 1.0, **per_label,
            "edited_voxels": int((p != a).sum()), "added_voxels": int((fg_a & ~fg_p).sum()),
            "removed_voxels": int((fg_p & ~fg_a).sum()),
            "relabelled_voxels": int((fg_p & fg_a & (p != a)).sum())}

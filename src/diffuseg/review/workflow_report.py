"""The reader-study workflow metrics of the review audit trail (``diffuseg workflow-report
DATA_DIR``; the command is in ``diffuseg.cli.review``).

Per job the last decision counts (approve or reject). Reported: jobs viewed, approved, rejected;
the median (and quartiles) of the seconds from opening to approval; the share of approvals with
no edited voxel ("approved unchanged"); the edit size of the approvals (median edited voxels,
median Dice between proposal and approved mask); guided resamplings and edit events per job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from diffuseg.review.audit import read_events


def _quantiles(values: list[float]) -> dict | None:
    if not values:
        return None
    q = np.percentile(values, [25, 50, 75])
    return {"p25": float(q[0]), "median": float(q[1]), "p75": float(q[2]), "n": len(values)}


def workflow_report(data_dir: str | Path) -> dict:
    events = read_events(data_dir)
    decisions: dict[str, dict] = {}
    for e in events:
        if e.get("event") in ("approve", "reject"):
            decisions[e["job"]] = e
    approved = [e for e in decisions.values() if e["event"] == "approve"]
    viewed = {e["job"] for e in events if e.get("event") == "view"}
    edits = [e for e in events if e.get("event") == "edit"]
    n_approved = len(approved)
    return {
        "events": len(events),
        "jobs_viewed": len(viewed),
        "approved": n_approved,
        "rejected": sum(e["event"] == "reject" for e in decisions.values()),
        "seconds_to_approve": _quantiles([e["seconds_open"] for e in approved
                                          if e.get("seconds_open") is not None]),
        "share_approved_unchanged": (sum(e.get("edited_voxels", 0) == 0 for e in approved)
                                     / n_approved if n_approved else None),
        "edited_voxels": _quantiles([e.get("edited_voxels", 0) for e in approved]),
        "dice_proposal_vs_approved": _quantiles([e["dice"] for e in approved if "dice" in e]),
        "edit_events_per_job": len(edits) / len(viewed) if viewed else None,
        "guided_resamplings": sum(e.get("event") == "resample" for e in events),
        "reviewers": sorted({e["user"] for e in events if "user" in e}),
    }


def format_report(report: dict) -> str:
    def q(name: str, fmt: str) -> str:
        v = report[name]
        return "n/a" if v is None else (f"median {v['median']:{fmt}} "
                                        f"(IQR {v['p25']:{fmt}}-{v['p75']:{fmt}}, n={v['n']})")

    share = report["share_approved_unchanged"]
    return "\n".join([
        f"events                     {report['events']}",
        f"jobs viewed                {report['jobs_viewed']}",
        f"approved / rejected        {report['approved']} / {report['rejected']}",
        f"seconds to approve         {q('seconds_to_approve', '.1f')}",
        f"approved unchanged         {'n/a' if share is None else f'{share:.0%}'}",
        f"edited voxels (approved)   {q('edited_voxels', '.0f')}",
        f"Dice proposal vs approved  {q('dice_proposal_vs_approved', '.3f')}",
        f"guided resamplings         {report['guided_resamplings']}",
        f"reviewers                  {', '.join(report['reviewers']) or '-'}",
    ])


def write_report_json(report: dict, path: str | Path) -> None:
    """The report as JSON at ``path`` (written beside it, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)

"""Audit trail (append-only JSONL) and the workflow report computed from it."""

import json
import sys

import numpy as np
import pytest

from diffuseg.cli import main
from diffuseg.review.audit import append_event, last_view, mask_change, read_events
from diffuseg.review.workflow_report import workflow_report


def test_events_append_and_read_back(tmp_path):
    append_event(tmp_path, "view", "ann", "j1")
    append_event(tmp_path, "approve", "ann", "j1", dice=1.0, edited_voxels=0, seconds_open=3.0)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["event"] == "approve"
    with open(tmp_path / "audit.jsonl", "a") as f:
        f.write('{"torn": ')  # a crash mid-line is skipped, earlier lines kept
    assert [e["event"] for e in read_events(tmp_path)] == ["view", "approve"]
    assert last_view(tmp_path, "j1", "ann") == read_events(tmp_path)[0]["unix"]
    assert last_view(tmp_path, "j1", "bob") is None


def test_mask_change():
    a = np.zeros((4, 4), np.uint8)
    a[:2] = 1
    b = a.copy()
    b[0, 0] = 0
    b[3, 3] = 1
    change = mask_change(a, b)
    assert change["edited_voxels"] == 2 and change["added_voxels"] == 1
    assert change["dice"] == pytest.approx(2 * 7 / 16)
    assert mask_change(np.zeros(3), np.zeros(3))["dice"] == 1.0


def test_report_counts_the_last_decision_per_job(tmp_path, monkeypatch, capsys):
    for job, secs, edited in (("a", 10.0, 0), ("b", 20.0, 5), ("c", 40.0, 0)):
        append_event(tmp_path, "view", "ann", job)
        append_event(tmp_path, "approve", "ann", job, seconds_open=secs, edited_voxels=edited,
                     dice=1.0 if edited == 0 else 0.9)
    append_event(tmp_path, "view", "bob", "d")
    append_event(tmp_path, "approve", "bob", "d", seconds_open=5.0, edited_voxels=0, dice=1.0)
    append_event(tmp_path, "reject", "bob", "d", comment="wrong organ")
    report = workflow_report(tmp_path)
    assert report["approved"] == 3 and report["rejected"] == 1 and report["jobs_viewed"] == 4
    assert report["seconds_to_approve"]["median"] == 20.0
    assert report["share_approved_unchanged"] == pytest.approx(2 / 3)
    assert report["edited_voxels"]["median"] == 0
    monkeypatch.setattr(sys, "argv", ["diffuseg", "workflow-report", str(tmp_path)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0
    assert "approved unchanged         67%" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["diffuseg", "workflow-report", str(tmp_path / "none")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2

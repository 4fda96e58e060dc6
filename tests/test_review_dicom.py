"""Approval of a DICOM-series job: the approved mask in NIfTI on the series grid, plus a DICOM-SEG
through ``diffuseg.io.dicom_seg.binary_seg`` (issue 12) with the reviewer as content creator and
the reviewed flag; without that module the SEG is skipped with a logged note."""

from __future__ import annotations

import json
import logging
import sys
import types

import numpy as np
from test_io import make_series

from diffuseg.io import read_image, read_mask
from diffuseg.service import review_data as rd


def dicom_job(tmp_path):
    job = tmp_path / "jobs" / "pacs1"
    job.mkdir(parents=True)
    make_series(job / "input")
    (job / "job.json").write_text(json.dumps({"id": "pacs1", "status": "done",
                                              "source": "pacs", "study_uid": "1.2.3"}))
    image, geometry = read_image(job / "input")
    mask = np.zeros(image.shape[1:], np.uint8)
    mask[1:3, 1, :2] = 1
    case = rd.Case(image[0], geometry, mask * 0, mask[None] * 0, {}, ".nii.gz")
    return job, mask, case, geometry


def test_dicom_job_writes_nifti_and_a_reviewed_seg(tmp_path, monkeypatch):
    job, mask, case, geometry = dicom_job(tmp_path)
    calls = {}

    class FakeSeg:
        def save_as(self, path):
            path.write_bytes(b"DICM")

    def binary_seg(m, refs, **kw):
        calls.update(mask=m, n_refs=len(refs), **kw)
        return FakeSeg()

    fake = types.ModuleType("diffuseg.io.dicom_seg")
    fake.binary_seg = binary_seg
    monkeypatch.setitem(sys.modules, "diffuseg.io.dicom_seg", fake)
    assert rd.is_dicom(job)
    files = rd.write_approved(job, mask, case, {"user": "ann", "method": "ddpm"})
    assert files == ["approved_mask.nii.gz", "approved_seg.dcm"]
    saved, saved_geometry = read_mask(job / "approved" / "approved_mask.nii.gz")
    assert (saved == mask).all() and np.allclose(saved_geometry.affine, geometry.affine)
    assert calls["content_creator"] == "ann" and calls["reviewed"] is True
    assert calls["n_refs"] == 4 and (calls["mask"] == mask).all()
    review = json.loads((job / "approved" / "review.json").read_text())
    assert review["files"] == files


def test_without_dicom_seg_the_seg_is_skipped_with_a_note(tmp_path, monkeypatch, caplog):
    job, mask, case, _ = dicom_job(tmp_path)
    monkeypatch.setitem(sys.modules, "diffuseg.io.dicom_seg", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING):
        files = rd.write_approved(job, mask, case, {"user": "ann"})
    assert files == ["approved_mask.nii.gz"]
    assert "DICOM-SEG not written" in caplog.text

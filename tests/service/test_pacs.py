"""A PACS round trip against a real Orthanc: the shared brain-tumour study goes into Orthanc, the
service fetches the T1post series over DICOMweb, segments it and stores the SEGs, the Parametric
Map and the RT Structure Set back; read back from Orthanc they equal the direct ``predict``
outputs voxel for voxel (same run, seed, samples and steps), pass dciodvfy, and Orthanc files each
under its own series number and date. Then the review: a PACS job approved through the review API
goes back into Orthanc as a reviewed SEG naming the reviewer, in a series of its own number."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pydicom
import pytest
from dciodvfy import DCIODVFY, assert_conformant
from fastapi.testclient import TestClient
from helpers import shared_data
from orthanc import orthanc, upload
from review_helpers import wait, write_tokens
from tiny_runs import tiny_run

from diffuseg.inference.predictor import Predictor
from diffuseg.io import read_image
from diffuseg.io.dicom_seg import SERIES_NUMBERS, read_parametric_map, read_seg, reference_for
from diffuseg.io.rtstruct import read_rtstruct
from diffuseg.review.audit import read_events
from diffuseg.service.app import create_app
from diffuseg.service.pacs import DicomWeb
from diffuseg.service.settings import ServiceSettings

STUDY = "dicom_brain_tumor_progression/PGBM-001"
REVIEWER_TOKEN = "reviewer-token-0123456789"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with orthanc(tmp_path_factory.mktemp("orthanc")) as root:
        yield root




@pytest.mark.shared_data
def test_orthanc_round_trip_equals_direct_predict(tmp_path, pacs):
    study = shared_data(STUDY)
    t1 = next(study.glob("*T1post*"))
    upload(pacs, sorted(p for p in study.rglob("*.dcm")))
    _, geometry = read_image(t1)
    study_uid = geometry.extras["study_uid"]
    run = tiny_run(tmp_path / "run", 3)

    settings = ServiceSettings(run_dir=run, data_dir=tmp_path / "data", auth=False,
                               pacs_url=f"{pacs}/dicom-web", n_samples=2, steps=1, seed=3,
                               rtstruct=True)
    client = TestClient(create_app(settings))
    # two image series and a mask series (Mask_Tumor, skipped as the CLI skips it): the
    # service asks which one
    answer = client.post(f"/v1/pacs/studies/{study_uid}/segment")
    detail = answer.json()["detail"]
    assert answer.status_code == 400 and "2 image series" in detail, detail
    assert "skipped as masks: 'Mask_Tumor'" in detail
    assert client.post("/v1/pacs/studies/1.2.3/../../x/segment").status_code == 404
    assert client.post("/v1/pacs/studies/1.2.x/segment").status_code == 400
    answer = client.post(f"/v1/pacs/studies/{study_uid}/segment",
                         params={"series": geometry.extras["series_uid"]})
    assert answer.status_code == 202, answer.text
    job = wait(client, answer.json()["id"], deadline_s=600)
    assert job["status"] == "done", job
    assert (job["patient_name"], job["study_date"], job["series_description"]) == (
        "PGBM-001", "1991-11-19", "T1post")  # from the fetched series' headers
    stored = {s["name"]: s for s in job["pacs"]["stored"]}
    assert set(stored) == {"seg_consensus", "seg_probability", "pmap_uncertainty",
                           "rtstruct_consensus"}

    direct = Predictor.from_run(run).predict_file(t1, tmp_path / "direct", n_samples=2, steps=1,
                                                  seed=3, rtstruct=True)
    reference = reference_for(geometry)
    web = DicomWeb(f"{pacs}/dicom-web")
    fetched = {}
    for name, item in stored.items():
        files = web.fetch_series(study_uid, item["series_uid"], tmp_path / "back" / name,
                                 max_bytes=2**30, max_files=10)
        assert len(files) == 1
        fetched[name] = files[0]
    web.close()
    # the new series landed in the source study, next to the three source series
    series = {s["0020000E"]["Value"][0] for s in DicomWeb(f"{pacs}/dicom-web").series(study_uid)}
    assert {s["series_uid"] for s in stored.values()} <= series and len(series) == 7
    iods = {"seg_consensus": "Segmentation", "seg_probability": "Segmentation",
            "pmap_uncertainty": "ParametricMap", "rtstruct_consensus": "RTStructureSet"}
    for name, path in fetched.items():  # as Orthanc gives them back
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert int(ds.SeriesNumber) == SERIES_NUMBERS[name] and ds.SeriesDate and ds.SeriesTime
        if DCIODVFY:
            assert_conformant(path, iods[name])
    with httpx.Client(timeout=30) as http:  # Orthanc's own index: dated, numbered series
        for name, item in stored.items():
            found = http.post(f"{pacs}/tools/find", json={
                "Level": "Series", "Query": {"SeriesInstanceUID": item["series_uid"]},
                "Expand": True}).json()
            tags = found[0]["MainDicomTags"]
            assert tags.get("SeriesDate") and tags.get("SeriesNumber") == \
                str(SERIES_NUMBERS[name]), (name, tags)

    expected = read_seg(direct / "dicom" / "seg_consensus.dcm", reference)
    got = read_seg(fetched["seg_consensus"], reference)
    assert expected[1].any()  # a mask with content, so the comparison can fail
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(read_seg(fetched["seg_probability"], reference)[1],
                                  read_seg(direct / "dicom" / "seg_probability.dcm", reference)[1])
    got_maps = read_parametric_map(fetched["pmap_uncertainty"], reference)
    expected_maps = read_parametric_map(direct / "dicom" / "pmap_uncertainty.dcm", reference)
    for name in ("variance", "entropy", "mutual_information"):
        np.testing.assert_array_equal(got_maps[name], expected_maps[name])
    contours = read_rtstruct(fetched["rtstruct_consensus"], reference)
    np.testing.assert_array_equal(contours[1], expected[1])  # the RTSTRUCT from Orthanc


@pytest.mark.shared_data
def test_approved_review_of_a_pacs_job_is_stored_back_with_the_reviewer(tmp_path, pacs):
    """Segment from the PACS -> approve an edited mask through the review API -> the reviewed
    SEG is in Orthanc, in the source study, with the reviewer as ContentCreatorName and the
    approved voxels on the series grid."""
    study = shared_data(STUDY)
    t1 = next(study.glob("*T1post*"))
    upload(pacs, sorted(p for p in study.rglob("*.dcm")))  # stored once; again is a no-op
    _, geometry = read_image(t1)
    study_uid = geometry.extras["study_uid"]
    run = tiny_run(tmp_path / "run", 3)
    data_dir = tmp_path / "data"
    write_tokens(data_dir, {REVIEWER_TOKEN: "Reviewer^Ann"})
    settings = ServiceSettings(run_dir=run, data_dir=data_dir, pacs_url=f"{pacs}/dicom-web",
                               n_samples=2, steps=1, seed=3)
    client = TestClient(create_app(settings))
    client.headers.update({"Authorization": f"Bearer {REVIEWER_TOKEN}"})
    answer = client.post(f"/v1/pacs/studies/{study_uid}/segment",
                         params={"series": geometry.extras["series_uid"]})
    assert answer.status_code == 202, answer.text
    job = wait(client, answer.json()["id"], deadline_s=600)
    assert job["status"] == "done", job

    api = f"/review/api/jobs/{job['id']}"
    meta = client.get(api).json()
    assert meta["dicom"] and meta["job"]["source"] == "pacs"
    shape = tuple(meta["shape"])
    assert shape == geometry.shape  # the page's grid is the series' read_image grid
    consensus = np.frombuffer(client.get(f"{api}/array/consensus").content,
                              np.uint8).reshape(shape)
    client.post(f"{api}/view").raise_for_status()
    mask = consensus.copy()
    mask[100:130, 140:150, 12] = 1  # a brush stroke on one slice, off-centre on both axes
    mask[:, :, 3] = 0  # and one slice erased
    approved = client.post(f"{api}/approve", json={"mask": base64.b64encode(
        np.ascontiguousarray(mask).tobytes()).decode(), "comment": "edited"})
    assert approved.status_code == 200, approved.text
    record = approved.json()
    assert record["user"] == "Reviewer^Ann" and record["pacs"]["stored"] is True
    reviewed_uid = record["pacs"]["series_uid"]
    assert client.get(f"/v1/jobs/{job['id']}").json()["pacs"]["reviewed"]["series_uid"] == \
        reviewed_uid
    served = client.get(f"/v1/jobs/{job['id']}/result/approved")  # the same SEG, over HTTP
    assert served.status_code == 200 and served.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(served.content)).SeriesInstanceUID == reviewed_uid

    web = DicomWeb(f"{pacs}/dicom-web")
    series = {s["0020000E"]["Value"][0] for s in web.series(study_uid)}
    assert reviewed_uid in series  # in the source study
    files = web.fetch_series(study_uid, reviewed_uid, tmp_path / "reviewed", max_bytes=2**30,
                             max_files=10)
    web.close()
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "SEG" and str(ds.ContentCreatorName) == "Reviewer^Ann"
    assert int(ds.SeriesNumber) == SERIES_NUMBERS["seg_reviewed"] != SERIES_NUMBERS["seg_consensus"]
    assert "reviewed" in ds.SeriesDescription
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    stored = read_seg(files[0], reference_for(geometry))[1]
    assert stored[100:130, 140:150, 12].all() and not stored[:, :, 3].any()
    np.testing.assert_array_equal(stored, mask > 0)
    events = [e for e in read_events(data_dir) if e["job"] == job["id"]]
    assert [e["event"] for e in events][-3:] == ["view", "approve", "store"]
    assert events[-1]["stored"] is True and events[-1]["user"] == "Reviewer^Ann"

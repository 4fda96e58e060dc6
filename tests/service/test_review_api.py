"""The review router over HTTP (FastAPI TestClient): auth, arrays, modes, audit, approval in
the input's format, rejection, guided resampling."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from review_helpers import ANN, BOB, make_app, make_job, tiny_run  # noqa: E402

from diffuseg.inference.predictor import Predictor  # noqa: E402
from diffuseg.io import read_mask  # noqa: E402
from diffuseg.review.audit import read_events  # noqa: E402


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    run, data = tiny_run(root)
    predictor = Predictor.from_run(run)
    data_dir = root / "data"
    images = sorted((data / "imagesTr").iterdir())
    ids = {f"job{i}": make_job(data_dir, predictor, image) for i, image in enumerate(images[:2])}
    return TestClient(make_app(data_dir, run)), data_dir, ids


def b64(mask: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(mask, np.uint8).tobytes()).decode()


def test_pages_are_public_and_data_needs_a_token(service):
    client, _, ids = service
    assert "Worklist" in client.get("/review").text
    page = client.get(f"/review/{ids['job0']}")
    assert page.status_code == 200 and "Shortcuts" in page.text
    assert client.get("/review/static/review.js").status_code == 200
    assert client.get("/review/static/secret.py").status_code == 404
    assert client.get("/review/api/jobs").status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert client.get("/review/api/jobs", headers=bad).status_code == 401
    assert client.get("/review/api/me", headers=ANN).json() == {"user": "ann"}
    listed = {j["id"] for j in client.get("/review/api/jobs", headers=ANN).json()}
    assert listed == set(ids.values())
    assert client.get("/review/api/jobs/..%2Fetc", headers=ANN).status_code == 404
    assert client.get("/review/api/jobs/nojob", headers=ANN).status_code == 404
    assert client.get(f"/review/api/jobs/{'0' * 32}", headers=ANN).status_code == 404


def test_meta_and_arrays_match_the_job_files(service):
    client, data_dir, ids = service
    meta = client.get(f"/review/api/jobs/{ids['job0']}", headers=ANN).json()
    assert meta["shape"] == [32, 32] and meta["n_samples"] == 6
    assert sum(meta["modes"]["shares"]) == pytest.approx(1.0)
    assert meta["modes"]["description"].startswith(f"{meta['modes']['k']} plausible")
    res = client.get(f"/review/api/jobs/{ids['job0']}/array/samples", headers=ANN)
    assert res.headers["X-Shape"] == "6,32,32" and res.headers["X-Dtype"] == "uint8"
    samples = np.frombuffer(res.content, np.uint8).reshape(6, 32, 32)
    first, _ = read_mask(data_dir / "jobs" / ids["job0"] / "output/sample_00.png")
    assert (samples[0] == (first > 0)).all()
    image = client.get(f"/review/api/jobs/{ids['job0']}/array/image", headers=ANN)
    assert image.headers["X-Dtype"] == "float32" and len(image.content) == 32 * 32 * 4
    assert client.get(f"/review/api/jobs/{ids['job0']}/array/other", headers=ANN).status_code == 404


def test_view_edit_approve_writes_the_mask_and_the_audit(service):
    client, data_dir, ids = service
    assert client.post(f"/review/api/jobs/{ids['job0']}/view", headers=ANN).status_code == 200
    consensus, _ = read_mask(data_dir / "jobs" / ids["job0"] / "output/consensus.png")
    mask = (consensus > 0).astype(np.uint8)
    mask[2:5, 2:6] = 1  # a stroke far from the lesion
    assert client.post(f"/review/api/jobs/{ids['job0']}/edit", headers=ANN,
                       json={"tool": "brush", "voxels": 12}).status_code == 200
    res = client.post(f"/review/api/jobs/{ids['job0']}/approve", headers=ANN,
                      json={"mask": b64(mask), "comment": "ok", "start_from": "consensus"})
    assert res.status_code == 200, res.text
    record = res.json()
    edited = int(((consensus > 0) != mask).sum())
    assert record["edited_voxels"] == edited > 0 and record["user"] == "ann"
    assert record["seconds_open"] is not None and record["seconds_open"] >= 0
    saved, _ = read_mask(data_dir / "jobs" / ids["job0"] / "approved/approved_mask.png")
    assert (saved == mask).all()
    review = json.loads((data_dir / "jobs" / ids["job0"] / "approved/review.json").read_text())
    assert review["decision"] == "approved" and review["comment"] == "ok"
    events = [e for e in read_events(data_dir) if e["job"] == ids["job0"]]
    assert [e["event"] for e in events][-3:] == ["view", "edit", "approve"]
    assert events[-1]["edited_voxels"] == edited and events[-1]["user"] == "ann"
    bad = client.post(f"/review/api/jobs/{ids['job0']}/approve", headers=ANN,
                      json={"mask": b64(mask[:3])})
    assert bad.status_code == 400 and "holds" in bad.json()["detail"]


def test_reject(service):
    client, data_dir, ids = service
    res = client.post(f"/review/api/jobs/{ids['job1']}/reject", headers=BOB,
                      json={"comment": "artefact"})
    assert res.json()["decision"] == "rejected"
    assert read_events(data_dir)[-1] | {"event": "reject", "user": "bob"} == read_events(
        data_dir)[-1]
    jobs = {j["id"]: j for j in client.get("/review/api/jobs", headers=ANN).json()}
    assert jobs[ids["job1"]]["review"]["decision"] == "rejected"
    assert jobs[ids["job0"]]["review"]["decision"] == "approved"


def test_guided_resampling_honours_the_marks(service):
    client, data_dir, ids = service
    inside = np.zeros((32, 32), np.uint8)
    outside = np.zeros((32, 32), np.uint8)
    inside[16, 16] = inside[3, 3] = 1
    outside[10, 20] = 1
    res = client.post(f"/review/api/jobs/{ids['job1']}/resample", headers=ANN,
                      json={"inside": b64(inside), "outside": b64(outside), "n_samples": 4})
    assert res.status_code == 200, res.text
    meta = client.get(f"/review/api/jobs/{ids['job1']}?source=guided", headers=ANN).json()
    assert meta["n_samples"] == 4
    raw = client.get(f"/review/api/jobs/{ids['job1']}/array/samples?source=guided",
                     headers=ANN).content
    samples = np.frombuffer(raw, np.uint8).reshape(4, 32, 32)
    assert samples[:, 16, 16].all() and samples[:, 3, 3].all() and not samples[:, 10, 20].any()
    assert read_events(data_dir)[-1]["event"] == "resample"
    res = client.post(f"/review/api/jobs/{ids['job1']}/resample", headers=ANN,
                      json={"inside": b64(inside), "outside": b64(outside), "n_samples": 2,
                            "label": 2})  # a binary run has one class
    assert res.status_code == 400 and "label" in res.text
    res = client.post(f"/review/api/jobs/{ids['job1']}/resample", headers=ANN,
                      json={"inside": b64(inside), "outside": b64(outside), "n_samples": 2,
                            "guidance_scale": 2.0})  # ddpm holds marks by replacement
    assert res.status_code == 400 and "no step size" in res.text


def test_a_3d_job_round_trips_on_its_nifti_grid(tmp_path):
    run, data = tiny_run(tmp_path, size=16, spatial_dims=3,
                         extra=["data.patch_size=[16,16,16]"])
    predictor = Predictor.from_run(run)
    image = sorted((data / "imagesTr").iterdir())[0]
    vol = make_job(tmp_path / "data", predictor, image, n_samples=3)
    client = TestClient(make_app(tmp_path / "data", run))
    meta = client.get(f"/review/api/jobs/{vol}", headers=ANN).json()
    assert meta["shape"] == [16, 16, 16] and meta["n_samples"] == 3
    raw = client.get(f"/review/api/jobs/{vol}/array/samples", headers=ANN)
    assert raw.headers["X-Shape"] == "3,16,16,16"
    client.post(f"/review/api/jobs/{vol}/view", headers=ANN)
    mask = np.zeros((16, 16, 16), np.uint8)
    mask[4:8, 5:9, 7] = 1  # a stroke on one slice
    assert client.post(f"/review/api/jobs/{vol}/approve", headers=ANN,
                       json={"mask": b64(mask)}).status_code == 200
    saved, geometry = read_mask(tmp_path / "data" / "jobs" / vol / "approved/approved_mask.nii.gz")
    _, source_geometry = read_mask(tmp_path / "data" / "jobs" / vol / "output/consensus.nii.gz")
    assert (saved == mask).all() and np.allclose(geometry.affine, source_geometry.affine)
    inside = np.zeros_like(mask)
    inside[8, 8, 8] = 1
    res = client.post(f"/review/api/jobs/{vol}/resample", headers=ANN,
                      json={"inside": b64(inside), "outside": b64(np.zeros_like(mask)),
                            "n_samples": 2})
    assert res.status_code == 200, res.text
    raw = client.get(f"/review/api/jobs/{vol}/array/samples?source=guided", headers=ANN).content
    assert np.frombuffer(raw, np.uint8).reshape(2, 16, 16, 16)[:, 8, 8, 8].all()

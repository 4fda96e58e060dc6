"""The HTTP service: jobs from uploads, results, persistence, and each security default."""

from __future__ import annotations

import io
import json
import stat
import zipfile

import numpy as np
import pydicom
import pytest
from dicom_synth import write_series
from fastapi.testclient import TestClient
from PIL import Image
from review_helpers import wait
from tiny_runs import tiny_run

from diffuseg.inference.predictor import Predictor
from diffuseg.io import read_image, read_mask
from diffuseg.io.dicom_seg import read_seg, reference_for
from diffuseg.service.app import create_app
from diffuseg.service.settings import ServiceSettings


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run2d"), 2)


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run3d"), 3)


def make_client(run, data, **options):
    settings = ServiceSettings(run_dir=run, data_dir=data, n_samples=2, steps=1, **options)
    app = create_app(settings)
    client = TestClient(app)
    if settings.auth:
        token = next(iter(json.loads((data / "tokens.json").read_text())))
        client.headers["Authorization"] = f"Bearer {token}"
    return client


def png_bytes(seed=0, size=24):
    image = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()




def zip_bytes(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def series_zip(folder) -> bytes:
    return zip_bytes({f"series/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())})


def test_png_job_matches_direct_predict(tmp_path, run2d):
    client = make_client(run2d, tmp_path / "data")
    answer = client.post("/v1/jobs", files={"file": ("lesion.png", png_bytes(), "image/png")})
    assert answer.status_code == 202, answer.text
    job = wait(client, answer.json()["id"])
    assert job["status"] == "done" and job["progress"] == 1.0, job
    assert {"consensus", "probability", "entropy", "variance", "mutual_information",
            "sample_00", "sample_01", "result"} <= set(job["outputs"])
    assert [j["id"] for j in client.get("/v1/jobs").json()] == [job["id"]]
    (tmp_path / "in.png").write_bytes(png_bytes())
    direct = Predictor.from_run(run2d).predict_file(tmp_path / "in.png", tmp_path / "direct",
                                                    n_samples=2, steps=1, seed=0)
    got = client.get(f"/v1/jobs/{job['id']}/result/consensus")
    assert got.status_code == 200
    (tmp_path / "got.png").write_bytes(got.content)
    np.testing.assert_array_equal(read_mask(tmp_path / "got.png")[0],
                                  read_mask(direct / "consensus.png")[0])
    assert client.get(f"/v1/jobs/{job['id']}/result/nothing").status_code == 404
    assert client.get("/v1/jobs/../../etc/passwd").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    assert client.get("/openapi.json").status_code == 200


def test_token_is_required_and_stored_owner_only(tmp_path, run2d):
    client = make_client(run2d, tmp_path / "data")
    tokens = tmp_path / "data" / "tokens.json"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert list(json.loads(tokens.read_text()).values()) == ["admin"]
    assert client.get("/v1/jobs").status_code == 200
    anonymous = TestClient(client.app)
    assert anonymous.get("/v1/jobs").status_code == 401
    assert anonymous.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = anonymous.post("/v1/jobs", files={"file": ("a.png", png_bytes(), "image/png")})
    assert answer.status_code == 401
    assert anonymous.get("/healthz").status_code == 200
    tokens.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        make_client(run2d, tmp_path / "data")


def test_no_auth_only_on_localhost(tmp_path, run2d):
    with pytest.raises(ValueError, match="--no-auth"):
        ServiceSettings(run_dir=run2d, data_dir=tmp_path, host="0.0.0.0", auth=False).validate()
    client = make_client(run2d, tmp_path / "data", auth=False)
    assert client.get("/v1/jobs").status_code == 200
    assert not (tmp_path / "data" / "tokens.json").exists()


def test_oversized_upload_is_413(tmp_path, run2d):
    client = make_client(run2d, tmp_path / "data", max_upload_bytes=2000)
    answer = client.post("/v1/jobs", files={"file": ("big.png", png_bytes(size=64), "image/png")})
    assert answer.status_code == 413
    assert not any((tmp_path / "data" / "jobs").iterdir())

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        for _ in range(10):
            yield bytes(1000)

    answer = client.post("/v1/jobs", content=chunks(),
                         headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413
    assert not any((tmp_path / "data" / "jobs").iterdir())


def test_zip_with_parent_members_is_400_and_writes_nothing_outside(tmp_path, run2d):
    client = make_client(run2d, tmp_path / "data")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for bad in ({"../escape.dcm": b"x"}, {"series/../../escape.dcm": b"x"},
                {"/abs/escape.dcm": b"x"}):
        answer = client.post("/v1/jobs", files={"file": ("s.zip", zip_bytes(bad), "x")})
        assert answer.status_code == 400 and ("'..'" in answer.json()["detail"])
    answer = client.post("/v1/jobs", files={"file": ("s.zip", zip_bytes({}, ("link",)), "x")})
    assert answer.status_code == 400 and "link" in answer.json()["detail"]
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    jobs = str(tmp_path / "data" / "jobs")
    assert [p for p in after if p not in before and not p.startswith(jobs)] == []
    assert not list(tmp_path.rglob("escape*")) and not list(tmp_path.rglob("series"))


def test_decompression_bomb_is_400(tmp_path, run2d):
    client = make_client(run2d, tmp_path / "data")
    bomb = zip_bytes({"zeros.dcm": bytes(50 * 2**20)})
    assert len(bomb) < 2**20
    answer = client.post("/v1/jobs", files={"file": ("s.zip", bomb, "x")})
    assert answer.status_code == 400 and "bomb" in answer.json()["detail"]
    assert not list((tmp_path / "data").rglob("*.dcm"))


def test_corrupt_dicom_is_400_with_one_line(tmp_path, run3d):
    client = make_client(run3d, tmp_path / "data")
    folder, _ = write_series(tmp_path / "series", slices=4)
    first = sorted(folder.iterdir())[0]
    first.write_bytes(first.read_bytes()[:-300])  # truncated pixel data
    answer = client.post("/v1/jobs", files={"file": ("s.zip", series_zip(folder), "x")})
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert "\n" not in detail and "pixel" in detail.lower(), detail
    not_dicom = zip_bytes({"a.dcm": b"hello, not DICOM"})
    answer = client.post("/v1/jobs", files={"file": ("s.zip", not_dicom, "x")})
    assert answer.status_code == 400 and "not a readable DICOM" in answer.json()["detail"]


def test_absurd_dicom_dimensions_are_refused_before_reading(tmp_path, run3d):
    client = make_client(run3d, tmp_path / "data")
    folder, _ = write_series(tmp_path / "series", slices=2)
    file = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(file)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000  # 4e12 voxels, a few bytes
    ds.save_as(file)
    answer = client.post("/v1/jobs", files={"file": ("s.zip", series_zip(folder), "x")})
    assert answer.status_code == 400 and "refused before reading" in answer.json()["detail"]


def test_dicom_zip_job_gives_dicom_objects_and_survives_a_restart(tmp_path, run3d):
    data = tmp_path / "data"
    client = make_client(run3d, data)
    folder, _ = write_series(tmp_path / "series", rows=24, columns=28, slices=6)
    answer = client.post("/v1/jobs", files={"file": ("study.zip", series_zip(folder), "x")})
    assert answer.status_code == 202, answer.text
    job = wait(client, answer.json()["id"])
    assert job["status"] == "done", job
    assert {"seg_consensus", "seg_probability", "pmap_uncertainty"} <= set(job["outputs"])
    seg = client.get(f"/v1/jobs/{job['id']}/result/seg_consensus")
    assert seg.headers["content-type"] == "application/dicom"
    (tmp_path / "seg.dcm").write_bytes(seg.content)
    reference = reference_for(read_image(folder)[1])
    consensus = client.get(f"/v1/jobs/{job['id']}/result/consensus")
    (tmp_path / "consensus.nii.gz").write_bytes(consensus.content)
    np.testing.assert_array_equal(read_seg(tmp_path / "seg.dcm", reference)[1],
                                  read_mask(tmp_path / "consensus.nii.gz")[0] == 1)
    # a job left running by a stopped service, then a restart
    interrupted = data / "jobs" / ("0" * 32)
    interrupted.mkdir()
    record = dict(job, id="0" * 32, status="running", outputs=[])
    (interrupted / "job.json").write_text(json.dumps(record))
    client = make_client(run3d, data)
    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert again["status"] == "done" and again["outputs"] == job["outputs"]
    assert client.get(f"/v1/jobs/{job['id']}/result/seg_consensus").content == seg.content
    failed = client.get(f"/v1/jobs/{'0' * 32}").json()
    assert failed["status"] == "failed" and "restart" in failed["error"]


def test_anonymised_dicom_job_with_rtstruct_is_done_not_an_internal_error(tmp_path, run3d):
    """A series without PatientName or PatientID (an anonymised export) was an 'internal error'
    job: now its SEG carries them empty, and --rtstruct adds the structure set, downloadable."""
    from diffuseg.io.rtstruct import read_rtstruct

    client = make_client(run3d, tmp_path / "data", rtstruct=True)
    folder, _ = write_series(tmp_path / "series", rows=24, columns=28, slices=6,
                             omit=("PatientName", "PatientID"))
    answer = client.post("/v1/jobs", files={"file": ("study.zip", series_zip(folder), "x")})
    assert answer.status_code == 202, answer.text
    job = wait(client, answer.json()["id"])
    assert job["status"] == "done", job
    assert {"seg_consensus", "rtstruct_consensus"} <= set(job["outputs"])
    (tmp_path / "seg.dcm").write_bytes(
        client.get(f"/v1/jobs/{job['id']}/result/seg_consensus").content)
    (tmp_path / "rt.dcm").write_bytes(
        client.get(f"/v1/jobs/{job['id']}/result/rtstruct_consensus").content)
    seg = pydicom.dcmread(tmp_path / "seg.dcm", stop_before_pixels=True)
    assert seg.PatientName == "" and seg.PatientID == ""
    reference = reference_for(read_image(folder)[1])
    np.testing.assert_array_equal(read_rtstruct(tmp_path / "rt.dcm", reference)[1],
                                  read_seg(tmp_path / "seg.dcm", reference)[1])


def test_channel_mismatch_is_400(tmp_path, run3d):
    client = make_client(run3d, tmp_path / "data")
    answer = client.post("/v1/jobs", files={"file": ("a.png", png_bytes(), "image/png")})
    assert answer.status_code == 400 and "3D" in answer.json()["detail"]


def test_serve_cli_refuses_no_auth_on_a_public_host(tmp_path, monkeypatch, capsys, run2d):
    import sys

    from diffuseg.cli import main

    monkeypatch.setattr(sys, "argv", ["diffuseg", "serve", str(run2d), "--host", "0.0.0.0",
                                      "--no-auth", "--data", str(tmp_path / "data")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: --no-auth") and "\n" == err[-1]
    assert not (tmp_path / "data").exists()


def test_predict_format_dicom_without_reference_is_one_line(tmp_path, monkeypatch, capsys,
                                                            run2d):
    import sys

    from diffuseg.cli import main

    (tmp_path / "in.png").write_bytes(png_bytes())
    monkeypatch.setattr(sys, "argv", ["diffuseg", "predict", str(run2d), "-i",
                                      str(tmp_path / "in.png"), "-o", str(tmp_path / "out"),
                                      "--format", "dicom", "-n", "1", "--steps", "1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--reference" in err and err.count("\n") == 1


def test_pacs_endpoint_needs_a_pacs_and_a_valid_uid(tmp_path, run2d):
    client = make_client(run2d, tmp_path / "data")
    assert client.post("/v1/pacs/studies/1.2.3/segment").status_code == 409
    client = make_client(run2d, tmp_path / "data2", pacs_url="http://127.0.0.1:9/dicom-web")
    answer = client.post("/v1/pacs/studies/1.2.3;rm/segment")
    assert answer.status_code == 400 and "not a DICOM UID" in answer.json()["detail"]
    answer = client.post("/v1/pacs/studies/1.2.3/segment")  # nothing listens on port 9
    assert answer.status_code == 400 and "failed" in answer.json()["detail"]


def test_serve_warns_at_start_on_a_run_that_did_not_learn(tmp_path, run2d, monkeypatch, capsys):
    import sys

    import uvicorn

    from diffuseg.cli import main

    assert json.loads((run2d / "verdict.json").read_text())["learned"] is False  # a tiny run
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(sys, "argv", ["diffuseg", "serve", str(run2d), "--data",
                                      str(tmp_path / "data"), "--port", "8123"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "did not learn" in x]
    assert line.startswith(f"warning: run '{run2d}' did not learn (GED")

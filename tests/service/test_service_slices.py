"""The service with a 2D run: an uploaded volume is segmented slice by slice, in its geometry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from review_helpers import wait
from tiny_runs import tiny_run

from diffuseg.inference.predictor import Predictor
from diffuseg.service.app import create_app
from diffuseg.service.settings import ServiceSettings


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run2d"), 2)




def test_a_volume_uploaded_to_a_2d_run_is_segmented_slice_by_slice(tmp_path, run2d):
    affine = np.diag([0.8, 0.6, 3.0, 1.0])
    affine[:3, 3] = [5.0, -7.0, 12.0]
    volume = np.random.default_rng(4).normal(100, 20, size=(18, 16, 4)).astype(np.float32)
    path = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    data = tmp_path / "data"
    client = TestClient(create_app(ServiceSettings(run_dir=run2d, data_dir=data, n_samples=2,
                                                   steps=1)))
    token = next(iter(json.loads((data / "tokens.json").read_text())))
    client.headers["Authorization"] = f"Bearer {token}"
    answer = client.post("/v1/jobs", files={"file": ("volume.nii.gz", path.read_bytes(), "x")})
    assert answer.status_code == 202, answer.text
    job = wait(client, answer.json()["id"])
    assert job["status"] == "done", job
    got = tmp_path / "consensus.nii.gz"
    got.write_bytes(client.get(f"/v1/jobs/{job['id']}/result/consensus").content)
    image = nib.load(got)
    assert image.shape == volume.shape
    np.testing.assert_allclose(image.affine, affine, atol=1e-6)
    direct = Predictor.from_run(run2d).segment(volume[None], n_samples=2, steps=1, seed=0)
    np.testing.assert_array_equal(np.asarray(image.dataobj), direct.consensus[0].numpy())
    record = json.loads(client.get(f"/v1/jobs/{job['id']}/result/result").content)
    assert record["slice_by_slice"]["slices"] == 4
    two = np.zeros((18, 16, 4, 2), np.float32)  # two channels: refused at upload, in one line
    nib.save(nib.Nifti1Image(two, affine), tmp_path / "two.nii.gz")
    answer = client.post("/v1/jobs", files={"file": ("two.nii.gz",
                                                     (tmp_path / "two.nii.gz").read_bytes(), "x")})
    assert answer.status_code == 400
    assert "2D images (or 3D volumes, slice by slice) with 1 channel(s)" in answer.text

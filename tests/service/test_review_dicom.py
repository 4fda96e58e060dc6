"""Approval of a DICOM-series job through the review API writes a real reviewed DICOM-SEG
(``diffuseg.io.dicom_seg.binary_seg``): the approved mask on the output grid lands on the right
source slices, rows and columns of an oblique, anisotropic series stored in shuffled file order,
checked voxel by voxel in patient coordinates from the SEG's own frame positions; the reviewer is
the ContentCreatorName and the segment is marked as edited by a person (SEMIAUTOMATIC)."""

from __future__ import annotations

import base64

import numpy as np
import pydicom
import pytest

pytest.importorskip("fastapi")
from dciodvfy import DCIODVFY, assert_conformant  # noqa: E402
from dicom_synth import write_series  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from review_helpers import ANN, make_app, make_job, tiny_run  # noqa: E402

from diffuseg.inference.predictor import Predictor  # noqa: E402
from diffuseg.io import read_image, read_mask  # noqa: E402
from diffuseg.io.dicom_seg import SERIES_NUMBERS, read_seg, reference_for  # noqa: E402


def b64(mask: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(mask, np.uint8).tobytes()).decode()


def seg_voxels_lps(ds: pydicom.Dataset) -> np.ndarray:
    """Patient (LPS) positions of the SEG's foreground pixels, from each frame's own
    ImagePositionPatient and the shared orientation and pixel spacing (no diffuseg reader)."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_step, column_step = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    along_row, along_column = orientation[:3], orientation[3:]
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    points = []
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence, strict=True):
        origin = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        for r, c in np.argwhere(frame > 0):
            points.append(origin + c * column_step * along_row + r * row_step * along_column)
    return np.array(points)


def test_approving_a_dicom_job_writes_a_reviewed_seg_on_the_series_grid(tmp_path):
    series, _ = write_series(tmp_path / "series")  # oblique, 0.7 x 0.9 x 3 mm, shuffled files
    run, _ = tiny_run(tmp_path, size=16, spatial_dims=3, extra=["data.patch_size=[16,16,16]"])
    data_dir = tmp_path / "data"
    job = make_job(data_dir, Predictor.from_run(run), series, n_samples=2, source="pacs",
                   study_uid="1.2.3")
    client = TestClient(make_app(data_dir, run))
    meta = client.get(f"/review/api/jobs/{job}", headers=ANN).json()
    assert meta["dicom"] and meta["shape"] == [24, 20, 7]  # [columns, rows, slices]

    mask = np.zeros((24, 20, 7), np.uint8)  # an asymmetric mark: each axis is told apart
    mask[2:5, 3, 1] = 1
    mask[20, 15:18, 5] = 1
    answer = client.post(f"/review/api/jobs/{job}/approve", headers=ANN,
                         json={"mask": b64(mask), "comment": "checked"})
    assert answer.status_code == 200, answer.text
    record = answer.json()
    assert record["files"] == ["approved_mask.nii.gz", "approved_seg.dcm"]
    assert record["pacs"]["stored"] is False  # this service has no PACS: said so, not hidden
    folder = data_dir / "jobs" / job / "approved"
    saved, grid = read_mask(folder / "approved_mask.nii.gz")
    assert (saved == mask).all()

    ds = pydicom.dcmread(folder / "approved_seg.dcm")
    assert ds.Modality == "SEG" and str(ds.ContentCreatorName) == "ann"
    assert "reviewed" in ds.SeriesDescription
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert int(ds.SeriesNumber) == SERIES_NUMBERS["seg_reviewed"]  # not the consensus SEG's
    assert ds.SeriesDate and ds.SeriesTime
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    if DCIODVFY:
        assert_conformant(folder / "approved_seg.dcm", "Segmentation")
    _, source = read_image(series)
    reference = reference_for(source)
    np.testing.assert_array_equal(read_seg(folder / "approved_seg.dcm", reference)[1], mask > 0)
    # the same voxels in patient space: NIfTI affine (RAS) of the approved mask vs the SEG frames
    ijk = np.argwhere(mask > 0)
    ras = (grid.affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    expected = ras * [-1, -1, 1]  # RAS -> LPS
    got = seg_voxels_lps(ds)
    assert len(got) == len(expected) == 6
    distance = np.linalg.norm(got[:, None] - expected[None], axis=-1)
    assert distance.min(1).max() < 1e-3 and distance.min(0).max() < 1e-3
    # the SEG's frames reference the series' own instances, in the series' study
    assert ds.StudyInstanceUID == reference[0].StudyInstanceUID

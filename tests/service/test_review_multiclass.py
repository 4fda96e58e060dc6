"""The review API for a K-class run (K = 3, a tiny phantom model whose lesion is split into
'anterior' = 1 and 'posterior' = 2): the label list, label-map arrays, approval of a label map in
the input's format with per-label Dice in the audit, value checks, guided resampling of one
label, and the reviewed DICOM-SEG with one segment per label present."""

from __future__ import annotations

import base64

import numpy as np
import pydicom
import pytest

pytest.importorskip("fastapi")
from dicom_synth import write_series  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from review_helpers import ANN, make_app, make_job, tiny_multiclass_run  # noqa: E402

from diffuseg.inference.predictor import Predictor  # noqa: E402
from diffuseg.io import read_image, read_mask  # noqa: E402
from diffuseg.io.dicom_seg import read_seg, reference_for  # noqa: E402
from diffuseg.review.audit import label_change, read_events  # noqa: E402
from diffuseg.service import review_data as rd  # noqa: E402


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("review3")
    run, data = tiny_multiclass_run(root)
    predictor = Predictor.from_run(run)
    assert predictor.config.num_classes == 3
    data_dir = root / "data"
    images = sorted((data / "imagesTr").iterdir())
    ids = {f"job{i}": make_job(data_dir, predictor, image) for i, image in enumerate(images[:2])}
    return TestClient(make_app(data_dir, run)), data_dir, ids


def b64(mask: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(mask, np.uint8).tobytes()).decode()


def test_meta_lists_the_labels_and_arrays_are_label_maps(service):
    client, data_dir, ids = service
    meta = client.get(f"/review/api/jobs/{ids['job0']}", headers=ANN).json()
    assert meta["num_classes"] == 3
    assert meta["labels"] == [{"value": 1, "name": "anterior"}, {"value": 2, "name": "posterior"}]
    raw = client.get(f"/review/api/jobs/{ids['job0']}/array/samples", headers=ANN).content
    samples = np.frombuffer(raw, np.uint8).reshape(6, 32, 32)
    first, _ = read_mask(data_dir / "jobs" / ids["job0"] / "output/sample_00.png",
                         labels=range(3))
    assert (samples[0] == first).all()  # the labels themselves, not foreground 0/1
    assert samples.max() <= 2


def test_approve_a_label_map_round_trips_with_per_label_dice(service):
    client, data_dir, ids = service
    job = data_dir / "jobs" / ids["job0"]
    client.post(f"/review/api/jobs/{ids['job0']}/view", headers=ANN)
    consensus, _ = read_mask(job / "output/consensus.png", labels=range(3))
    mask = consensus.astype(np.uint8)
    mask[2:5, 2:6] = 1
    mask[26:29, 20:30] = 2
    res = client.post(f"/review/api/jobs/{ids['job0']}/approve", headers=ANN,
                      json={"mask": b64(mask), "comment": "split checked"})
    assert res.status_code == 200, res.text
    saved, _ = read_mask(job / "approved/approved_mask.png", labels=range(3))
    assert (saved == mask).all() and {1, 2} <= set(np.unique(saved).tolist())
    event = read_events(data_dir)[-1]
    expected = label_change(consensus, mask, 3)
    assert event["event"] == "approve" and event["edited_voxels"] == int((consensus != mask).sum())
    for key in ("dice", "dice_1", "dice_2"):
        assert event[key] == pytest.approx(expected[key])
    bad = mask.copy()
    bad[0, 0] = 3
    res = client.post(f"/review/api/jobs/{ids['job0']}/approve", headers=ANN,
                      json={"mask": b64(bad)})
    assert res.status_code == 400 and "label value 3" in res.json()["detail"]
    assert "\n" not in res.json()["detail"]


def test_label_change_against_a_hand_count():
    proposal = np.array([0, 1, 1, 2, 2, 0])
    approved = np.array([1, 1, 2, 2, 2, 0])
    change = label_change(proposal, approved, 3)
    assert change["dice_1"] == pytest.approx(2 * 1 / (2 + 2))
    assert change["dice_2"] == pytest.approx(2 * 2 / (2 + 3))
    assert change["dice"] == pytest.approx((0.5 + 0.8) / 2)
    assert (change["edited_voxels"], change["added_voxels"], change["removed_voxels"],
            change["relabelled_voxels"]) == (2, 1, 0, 1)
    assert label_change(np.zeros(4), np.zeros(4), 3)["dice"] == 1.0


def test_resample_one_label_holds_its_marks(service):
    client, data_dir, ids = service
    inside = np.zeros((32, 32), np.uint8)
    outside = np.zeros((32, 32), np.uint8)
    inside[16, 16] = inside[3, 3] = 1
    outside[10, 20] = outside[20, 10] = 1
    res = client.post(f"/review/api/jobs/{ids['job1']}/resample", headers=ANN,
                      json={"inside": b64(inside), "outside": b64(outside), "n_samples": 4,
                            "label": 2})
    assert res.status_code == 200, res.text
    raw = client.get(f"/review/api/jobs/{ids['job1']}/array/samples?source=guided",
                     headers=ANN).content
    samples = np.frombuffer(raw, np.uint8).reshape(4, 32, 32)
    assert (samples[:, 16, 16] == 2).all() and (samples[:, 3, 3] == 2).all()
    assert (samples[:, 10, 20] != 2).all() and (samples[:, 20, 10] != 2).all()
    assert read_events(data_dir)[-1] | {"event": "resample", "label": 2} == read_events(
        data_dir)[-1]
    res = client.post(f"/review/api/jobs/{ids['job1']}/resample", headers=ANN,
                      json={"inside": b64(inside), "outside": b64(outside), "n_samples": 2,
                            "label": 3})
    assert res.status_code == 400 and "label" in res.text


def test_reviewed_seg_has_one_segment_per_label_present(tmp_path):
    job = tmp_path / "job"
    series, _ = write_series(job / "input" / "series")
    _, geometry = read_image(series)
    mask = np.zeros((24, 20, 7), np.uint8)  # [columns, rows, slices]
    mask[2:5, 3, 1] = 1
    mask[20, 15:18, 5] = 2
    names = {1: "anterior", 2: "posterior"}
    assert rd.seg_labels(mask, 3, names) == names
    assert rd.seg_labels(mask * (mask == 2), 3, names) == {2: "posterior"}
    assert rd.seg_labels(mask > 0, 2, {1: "lesion"}) == {1: "lesion"}
    path = rd.reviewed_seg(job, mask, tmp_path / "seg.dcm", reviewer="ann", method="ddpm",
                           label_names=rd.seg_labels(mask, 3, names))
    ds = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["anterior", "posterior"]
    assert str(ds.ContentCreatorName) == "ann"
    segments = read_seg(path, reference_for(geometry))
    for k in (1, 2):
        np.testing.assert_array_equal(segments[k], mask == k)

"""DICOM outputs: every object read back (pydicom, highdicom) gives the arrays voxel for voxel on
the source grid, references its source series and keeps patient and study identity."""

from __future__ import annotations

import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_synth import write_series
from helpers import shared_data
from tiny_runs import tiny_run

import diffuseg
from diffuseg.core.ensemble import summarise
from diffuseg.inference.predictor import Predictor
from diffuseg.io import read_image, read_mask
from diffuseg.io.dicom_outputs import write_dicom_outputs
from diffuseg.io.dicom_seg import (
    load_reference,
    read_parametric_map,
    read_seg,
    reference_for,
)

T1POST = "dicom_brain_tumor_progression/PGBM-001/11-T1post-03326"


def random_result(shape, num_classes=1, n_samples=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((n_samples, 1, num_classes, *shape), generator=g) * 3
    probs = logits.sigmoid() if num_classes == 1 else logits.softmax(2)
    return summarise(probs)


def check_round_trip(result, reference, folder, num_classes=1):
    names = {k: f"structure {k}" for k in range(1, max(2, num_classes))}
    written = write_dicom_outputs(result, reference, folder, method="ddpm", samples=True,
                                  label_names=names)
    assert set(written) == {"seg_consensus", "seg_probability", "pmap_uncertainty",
                            "seg_samples"}
    consensus = result.consensus[0].numpy()
    seg = read_seg(written["seg_consensus"], reference)
    assert sorted(seg) == sorted(names)
    for k, mask in seg.items():
        np.testing.assert_array_equal(mask, consensus == k)
    labels = result.sample_labels()[:, 0].numpy()
    foreground = (labels > 0).mean(0)  # the share of samples marking the voxel
    probability = read_seg(written["seg_probability"], reference)[1]
    np.testing.assert_array_equal(probability, np.round(foreground * 255).astype(np.float32) / 255)
    maps = read_parametric_map(written["pmap_uncertainty"], reference)
    norm = np.log(max(2, num_classes))
    np.testing.assert_array_equal(maps["variance"], result.variance[0].numpy())
    for name in ("entropy", "mutual_information"):
        expected = np.clip(getattr(result, name)[0].numpy() / norm, 0, 1).astype(np.float32)
        np.testing.assert_array_equal(maps[name], expected)
    agree = (labels == labels[:1]).all(0)  # voxels where every sample gives one label
    assert agree.any() and not agree.all()
    for name, values in maps.items():
        assert (values[agree] == 0).all() and (values[~agree] > 0).any(), name
    samples = read_seg(written["seg_samples"], reference)
    per_sample = max(1, num_classes - 1)
    assert len(samples) == labels.shape[0] * per_sample
    for s, sample in enumerate(labels):
        for k in range(1, per_sample + 1):
            np.testing.assert_array_equal(samples[s * per_sample + k], sample == k)
    return written


def check_identity(path, reference):
    ds = pydicom.dcmread(path)
    source = reference[0]
    for tag in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert ds.get(tag) == source.get(tag), tag
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID not in {r.SOPInstanceUID for r in reference}
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == \
        {r.SOPInstanceUID for r in reference}
    # every frame lies at its slice's position
    positions = [r.ImagePositionPatient for r in reference]
    for item in ds.PerFrameFunctionalGroupsSequence:
        ipp = item.PlanePositionSequence[0].ImagePositionPatient
        assert min(np.abs(np.subtract(ipp, p)).max() for p in positions) < 1e-3
    return ds


@pytest.mark.shared_data
def test_brain_tumour_series_round_trip(tmp_path):
    _, geometry = read_image(shared_data(T1POST))
    reference = load_reference(geometry.extras["files"])
    result = random_result(geometry.shape)
    written = check_round_trip(result, reference, tmp_path)
    for path in written.values():
        check_identity(path, reference)
    seg = pydicom.dcmread(written["seg_consensus"])
    assert seg.SegmentationType == "BINARY"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "diffuseg"
    assert algorithm.AlgorithmVersion == diffuseg.__version__
    assert "method=ddpm" in algorithm.AlgorithmParameters
    probability = pydicom.dcmread(written["seg_probability"])
    assert probability.SegmentationFractionalType == "PROBABILITY"
    pmap = pydicom.dcmread(written["pmap_uncertainty"])
    assert "FloatPixelData" in pmap
    mapping = pmap.PerFrameFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"


def test_oblique_anisotropic_multiclass_round_trip(tmp_path):
    folder, _ = write_series(tmp_path / "series")
    _, geometry = read_image(folder)
    reference = load_reference(geometry.extras["files"])
    result = random_result(geometry.shape, num_classes=3)
    written = check_round_trip(result, reference, tmp_path / "out", num_classes=3)
    check_identity(written["seg_consensus"], reference)


def test_highdicom_reads_the_seg_on_the_source_instances(tmp_path):
    """An independent reader: highdicom's pixels per source instance give the same masks."""
    folder, _ = write_series(tmp_path / "series")
    _, geometry = read_image(folder)
    reference = load_reference(geometry.extras["files"])
    result = random_result(geometry.shape)
    written = write_dicom_outputs(result, reference, tmp_path / "out", method="ddpm")
    seg = hd.seg.segread(written["seg_consensus"])
    uids = [r.SOPInstanceUID for r in reference]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                               segment_numbers=[1])  # [slices, rows, cols, 1]
    np.testing.assert_array_equal(pixels[..., 0].transpose(2, 1, 0),
                                  result.consensus[0].numpy())


def test_wrong_grid_is_refused(tmp_path):
    folder, _ = write_series(tmp_path / "series")
    _, geometry = read_image(folder)
    reference = load_reference(geometry.extras["files"])
    with pytest.raises(ValueError, match="reference series"):
        write_dicom_outputs(random_result((5, 5, 5)), reference, tmp_path / "out", method="x")


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run3d"), 3)


def test_predict_writes_dicom_for_dicom_and_for_nifti_with_reference(tmp_path, run3d):
    """A DICOM series input gets DICOM objects; the same image as NIfTI with --reference gets the
    same consensus; a NIfTI off the reference grid is refused."""
    folder, _ = write_series(tmp_path / "series", rows=24, columns=28, slices=6)
    predictor = Predictor.from_run(run3d)
    case = predictor.predict_file(folder, tmp_path / "a", n_samples=2, steps=1)
    reference = reference_for(read_image(folder)[1])
    from_dicom = read_seg(case / "dicom" / "seg_consensus.dcm", reference)[1]
    consensus, _ = read_mask(case / "consensus.nii.gz")
    np.testing.assert_array_equal(from_dicom, consensus == 1)
    labels = json.loads((run3d / "dataset.json").read_text())["labels"]
    name = next(k for k, v in labels.items() if v == 1)
    segment = pydicom.dcmread(case / "dicom" / "seg_consensus.dcm").SegmentSequence[0]
    assert segment.SegmentLabel == name  # the run's label name
    image, geometry = read_image(folder)
    nifti = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(image[0], geometry.affine), nifti)
    case_b = predictor.predict_file(nifti, tmp_path / "b", n_samples=2, steps=1,
                                    reference=folder)
    np.testing.assert_array_equal(
        read_seg(case_b / "dicom" / "seg_consensus.dcm", reference)[1], from_dicom)
    shifted = geometry.affine.copy()
    shifted[:3, 3] += 5
    nib.save(nib.Nifti1Image(image[0], shifted), tmp_path / "off.nii.gz")
    with pytest.raises(ValueError, match="not on the grid"):
        predictor.predict_file(tmp_path / "off.nii.gz", tmp_path / "c", n_samples=1, steps=1,
                               reference=folder)


def test_reviewed_binary_seg_names_its_creator(tmp_path):
    """The review page's SEG: an edited mask, marked SEMIAUTOMATIC with its reviewer."""
    from diffuseg.io.dicom_seg import binary_seg

    folder, _ = write_series(tmp_path / "series")
    _, geometry = read_image(folder)
    reference = load_reference(geometry.extras["files"])
    mask = np.zeros(geometry.shape, np.uint8)
    mask[3:9, 4:12, 2:5] = 1
    seg = binary_seg(mask, reference, label_names={1: "tumour"}, method="ddpm",
                     content_creator="Doe^Jane", reviewed=True)
    seg.save_as(tmp_path / "reviewed.dcm")
    ds = pydicom.dcmread(tmp_path / "reviewed.dcm")
    assert ds.ContentCreatorName == "Doe^Jane" and "reviewed" in ds.SeriesDescription
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert ds.SegmentSequence[0].SegmentLabel == "tumour"
    np.testing.assert_array_equal(read_seg(tmp_path / "reviewed.dcm", reference)[1], mask == 1)

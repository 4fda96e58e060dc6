"""The consensus as an RT Structure Set: contours in patient coordinates on an oblique,
anisotropic series stored in shuffled file order, checked against the series geometry without
diffuseg's reader, rasterised back voxel for voxel (holes and islands by the even-odd rule), valid
for dciodvfy, and written by `diffuseg predict --rtstruct`."""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dciodvfy import assert_conformant
from dicom_synth import write_series
from test_dicom_seg import random_result
from tiny_runs import tiny_run

from diffuseg.cli import main
from diffuseg.errors import DataError
from diffuseg.io import read_image, read_mask
from diffuseg.io.dicom_outputs import write_dicom_outputs
from diffuseg.io.dicom_seg import reference_for
from diffuseg.io.rtstruct import plane_contours, read_rtstruct, rt_structure_set


def series(tmp_path, **options):
    folder, _ = write_series(tmp_path / "series", **options)
    _, geometry = read_image(folder)
    return folder, geometry, reference_for(geometry)


def test_ring_and_island_contours_hand_checked():
    """A 5 x 5 square with a 1-voxel hole and a lone voxel: three closed contours through the
    midpoints between inside and outside voxels (hand-computed bounds)."""
    mask = np.zeros((10, 8), bool)  # [columns, rows]
    mask[1:6, 1:6] = True
    mask[3, 3] = False
    mask[8, 6] = True
    contours = sorted(plane_contours(mask), key=lambda c: -len(c))
    assert len(contours) == 3
    bounds = [(c.min(0).tolist(), c.max(0).tolist()) for c in contours]
    assert ([0.5, 0.5], [5.5, 5.5]) in bounds  # the square's outline
    assert ([2.5, 2.5], [3.5, 3.5]) in bounds  # the hole
    assert ([7.5, 5.5], [8.5, 6.5]) in bounds  # the island
    for contour in contours:
        assert not np.allclose(contour[0], contour[-1])  # CLOSED_PLANAR: not repeated


def test_contour_points_lie_on_the_slice_planes_in_patient_coordinates(tmp_path):
    """A single voxel (i, j) on slice k: its contour's centre is that voxel's centre computed from
    the slice's own ImagePositionPatient, ImageOrientationPatient and PixelSpacing, and the points
    lie in the slice's plane (no diffuseg reader involved)."""
    _, geometry, reference = series(tmp_path)
    mask = np.zeros(geometry.shape, np.uint8)
    i, j, k = 17, 4, 5  # columns 24, rows 20, slices 7: every axis told apart
    mask[i, j, k] = 1
    rt = rt_structure_set(mask, reference, label_names={1: "lesion"}, method="ddpm")
    (contour,) = rt.ROIContourSequence[0].ContourSequence
    points = np.array(contour.ContourData, float).reshape(-1, 3)
    source = reference[k]
    assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    orientation = np.array(source.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    centre = np.array(source.ImagePositionPatient, float) + \
        i * column_spacing * orientation[:3] + j * row_spacing * orientation[3:]
    np.testing.assert_allclose(points.mean(0), centre, atol=1e-4)
    normal = np.cross(orientation[:3], orientation[3:])
    np.testing.assert_allclose((points - centre) @ normal, 0, atol=1e-4)
    assert contour.ContourGeometricType == "CLOSED_PLANAR"
    assert int(contour.NumberOfContourPoints) == len(points) == 4  # a diamond of midpoints


@pytest.mark.parametrize("num_classes", [1, 3])
def test_round_trip_equals_the_consensus_and_passes_dciodvfy(tmp_path, num_classes):
    """Random (fragmented) consensus maps, multi-class included: rasterised back exactly (each
    voxel centre is 0.35 voxel or more from every contour), so within one voxel a fortiori."""
    _, geometry, reference = series(tmp_path)
    result = random_result(geometry.shape, num_classes=num_classes)
    names = {1: "tumour", 2: "edema"} if num_classes == 3 else {1: "lesion"}
    written = write_dicom_outputs(result, reference, tmp_path / "out", method="ddpm",
                                  label_names=names, rtstruct=True)
    path = written["rtstruct_consensus"]
    consensus = result.consensus[0].numpy()
    back = read_rtstruct(path, reference)
    assert sorted(back) == sorted(names)
    for k, mask in back.items():
        assert (consensus == k).any()  # content, so the comparison can fail
        np.testing.assert_array_equal(mask, consensus == k)
    ds = pydicom.dcmread(path)
    assert [r.ROIName for r in ds.StructureSetROISequence] == list(names.values())
    assert ds.Modality == "RTSTRUCT" and ds.FrameOfReferenceUID == reference[0].FrameOfReferenceUID
    referenced = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == reference[0].SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence] == \
        [r.SOPInstanceUID for r in reference]
    assert_conformant(path, "RTStructureSet")  # last: skips, saying why, without dciodvfy


def test_holes_and_empty_labels(tmp_path):
    """A ring (a hole in it) comes back with its hole; a label with no voxel keeps its ROI with no
    contour and reads back empty; the result still passes dciodvfy."""
    _, geometry, reference = series(tmp_path)
    mask = np.zeros(geometry.shape, np.uint8)
    mask[4:16, 3:15, 1:4] = 1
    mask[8:11, 7:10, 1:4] = 0  # the hole
    mask[9, 8, 2] = 1  # an island inside the hole
    rt = rt_structure_set(mask, reference, label_names={1: "tumour", 2: "edema"}, method="x")
    rt.save_as(tmp_path / "rt.dcm", enforce_file_format=True)
    back = read_rtstruct(tmp_path / "rt.dcm", reference)
    np.testing.assert_array_equal(back[1], mask == 1)
    assert not back[2].any() and "ContourSequence" not in rt.ROIContourSequence[1]
    assert len(rt.ROIContourSequence[0].ContourSequence) == 3 + 3 + 1  # outline + hole per slice
    assert_conformant(tmp_path / "rt.dcm", "RTStructureSet")


def test_a_contour_off_the_series_is_refused(tmp_path):
    _, geometry, reference = series(tmp_path)
    mask = np.zeros(geometry.shape, np.uint8)
    mask[3:6, 3:6, 2] = 1
    rt = rt_structure_set(mask, reference, label_names={1: "lesion"}, method="x")
    contour = rt.ROIContourSequence[0].ContourSequence[0]
    del contour.ContourImageSequence
    contour.ContourData = [float(v) + 1.0 for v in contour.ContourData]  # 1 mm off every plane
    rt.save_as(tmp_path / "rt.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match="no slice of the reference series"):
        read_rtstruct(tmp_path / "rt.dcm", reference)


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run3d"), 3)


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["diffuseg", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def test_predict_rtstruct_on_a_dicom_series_and_on_nifti(tmp_path, monkeypatch, capsys, run3d):
    """`predict --rtstruct` on a DICOM series writes rtstruct_consensus.dcm equal to the consensus;
    on a NIfTI without --reference it is one line naming --reference."""
    folder, geometry, reference = series(tmp_path, rows=24, columns=28, slices=6)
    code, err = run_cli(monkeypatch, capsys, "predict", str(run3d), "-i", str(folder), "-o",
                        str(tmp_path / "out"), "-n", "2", "--steps", "1", "--rtstruct", "--quiet")
    assert code == 0, err
    case = tmp_path / "out" / "series"
    consensus, _ = read_mask(case / "consensus.nii.gz")
    back = read_rtstruct(case / "dicom" / "rtstruct_consensus.dcm", reference)
    np.testing.assert_array_equal(back[1], consensus == 1)
    assert pydicom.dcmread(case / "dicom" / "rtstruct_consensus.dcm").StructureSetROISequence[0] \
        .ROIName == "lesion"  # the run's label name
    image, _ = read_image(folder)
    nib.save(nib.Nifti1Image(image[0], geometry.affine), tmp_path / "image.nii.gz")
    code, err = run_cli(monkeypatch, capsys, "predict", str(run3d), "-i",
                        str(tmp_path / "image.nii.gz"), "-o", str(tmp_path / "out2"), "-n", "1",
                        "--steps", "1", "--rtstruct")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--reference" in lines[0], err

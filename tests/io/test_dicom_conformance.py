"""DICOM that validators and PACS accept: every object diffuseg writes (consensus, probability,
samples and reviewed SEGs, the Parametric Map, the RT Structure Set) passes dciodvfy with 0 errors,
on a complete source series and on an anonymised one; every derived series has SeriesDate,
SeriesTime and its own SeriesNumber; Type 2 patient and study attributes the source lacks are
written empty; segments are labelled and coded from the label names; frames run as documented."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pydicom
import pytest
from dciodvfy import assert_conformant, dciodvfy
from dicom_synth import write_series
from test_dicom_seg import random_result
from tiny_runs import tiny_run

from diffuseg.cli import main
from diffuseg.errors import DataError
from diffuseg.io import read_image, read_mask
from diffuseg.io.dicom_outputs import write_dicom_outputs
from diffuseg.io.dicom_seg import (
    SERIES_NUMBERS,
    TYPE2_PATIENT_STUDY,
    binary_seg,
    load_reference,
    read_seg,
    reference_for,
    save_atomic,
)
from diffuseg.io.segment_codes import ENV, parse_table, segment_code, user_table

IODS = {"seg_consensus": "Segmentation", "seg_probability": "Segmentation",
        "seg_samples": "Segmentation", "seg_reviewed": "Segmentation",
        "pmap_uncertainty": "ParametricMap", "rtstruct_consensus": "RTStructureSet"}
ANONYMISED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
              "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def every_object(folder, out, num_classes, names):
    """Write every object type for a random result on the series in ``folder``."""
    _, geometry = read_image(folder)
    reference = reference_for(geometry)
    result = random_result(geometry.shape, num_classes=num_classes)
    written = write_dicom_outputs(result, reference, out, method="ddpm", samples=True,
                                  rtstruct=True, label_names=names)
    mask = np.zeros(geometry.shape, np.uint8)
    mask[3:9, 4:12, 2:5] = 1
    reviewed = binary_seg(mask, reference, label_names={1: names[1]}, method="ddpm",
                          content_creator="Doe^Jane", reviewed=True)
    written["seg_reviewed"] = save_atomic(reviewed, out / "seg_reviewed.dcm")
    return written


@pytest.mark.parametrize("num_classes,omit", [(1, ()), (3, ()), (1, ANONYMISED)],
                         ids=["binary", "three-class", "anonymised"])
def test_every_object_passes_dciodvfy_with_dated_numbered_series(tmp_path, num_classes, omit):
    folder, _ = write_series(tmp_path / "series", omit=omit)
    names = {1: "tumour", 2: "edema"} if num_classes == 3 else {1: "lesion"}
    written = every_object(folder, tmp_path / "out", num_classes, names)
    assert set(written) == set(IODS)
    numbers = {}
    for name, path in written.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert len(ds.SeriesDate) == 8 and len(ds.SeriesTime) >= 6, name
        numbers[name] = int(ds.SeriesNumber)
        for tag in TYPE2_PATIENT_STUDY:  # present; empty where the source lacks it
            assert tag in ds, (name, tag)
            if tag in omit:
                assert str(ds[tag].value or "") == "", (name, tag)
    assert numbers == {name: SERIES_NUMBERS[name] for name in written}
    assert len(set(numbers.values())) == len(numbers)  # one number per derived series
    assert 3 not in numbers.values()  # nor the source's
    for name, path in written.items():  # last: skips, saying why, without dciodvfy
        assert_conformant(path, IODS[name])


def test_dciodvfy_reports_the_missing_laterality_of_a_parametric_map(tmp_path):
    """The check can fail: the Parametric Map without Laterality (as before the fix) has the
    error dciodvfy found in it; with the source's Laterality it is copied and passes."""
    folder, _ = write_series(tmp_path / "series")
    written = every_object(folder, tmp_path / "out", 1, {1: "lesion"})
    ds = pydicom.dcmread(written["pmap_uncertainty"])
    assert ds.Laterality == ""  # the source says nothing: unknown
    del ds.Laterality
    ds.save_as(tmp_path / "no_laterality.dcm")
    _, errors = dciodvfy(tmp_path / "no_laterality.dcm")
    assert any("Laterality" in e for e in errors), errors
    left, _ = write_series(tmp_path / "left", extra={"Laterality": "L"})
    written = every_object(left, tmp_path / "out_left", 1, {1: "lesion"})
    assert pydicom.dcmread(written["pmap_uncertainty"]).Laterality == "L"
    assert_conformant(written["pmap_uncertainty"], "ParametricMap")
    assert "Laterality" not in pydicom.dcmread(written["seg_consensus"])  # not in a SEG


def test_a_source_without_study_uid_is_one_clear_error(tmp_path):
    folder, _ = write_series(tmp_path / "series", omit=("StudyInstanceUID",))
    _, geometry = read_image(folder)
    with pytest.raises(DataError, match="lacks \\['StudyInstanceUID'\\]"):
        write_dicom_outputs(random_result(geometry.shape), reference_for(geometry),
                            tmp_path / "out", method="ddpm")


def test_a_patient_sex_outside_the_enumerated_values_is_written_unknown(tmp_path):
    """'U' (not a DICOM value; highdicom refused it with a traceback) becomes empty."""
    folder, _ = write_series(tmp_path / "series", extra={"PatientSex": "U"})
    written = every_object(folder, tmp_path / "out", 1, {1: "lesion"})
    for name, path in written.items():
        assert pydicom.dcmread(path, stop_before_pixels=True).PatientSex == "", name
    assert_conformant(written["rtstruct_consensus"], "RTStructureSet")


def test_frames_run_against_the_reader_order_as_documented(tmp_path):
    """Within a segment, frame j lies on source slice N - 1 - j of the reader's order (highdicom
    sorts along c x r, the reader along r x c); read_seg places frames by reference."""
    folder, _ = write_series(tmp_path / "series", slices=5)
    _, geometry = read_image(folder)
    reference = reference_for(geometry)
    uids = [r.SOPInstanceUID for r in reference]
    written = every_object(folder, tmp_path / "out", 3, {1: "tumour", 2: "edema"})
    for name in ("seg_consensus", "pmap_uncertainty"):
        ds = pydicom.dcmread(written[name])
        per_frame = [item.DerivationImageSequence[0].SourceImageSequence[0]
                     .ReferencedSOPInstanceUID for item in ds.PerFrameFunctionalGroupsSequence]
        channels = len(per_frame) // len(uids)
        assert per_frame == list(reversed(uids)) * channels, name


def copy_run_with(run, tmp_path, labels=None, codes=None):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    data = json.loads((copy / "dataset.json").read_text())
    if labels is not None:
        data["labels"] = labels
    if codes is not None:
        data["segment_codes"] = codes
    (copy / "dataset.json").write_text(json.dumps(data))
    return copy


def segment_codes_of(path):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return [(s.SegmentLabel, s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
             s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
             [r.CodeValue for r in s.get("AnatomicRegionSequence", [])])
            for s in ds.SegmentSequence]


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run3d"), 3)


def test_predict_without_patient_name_writes_valid_dicom_with_named_codes(
        tmp_path, monkeypatch, capsys, run3d):
    """An anonymised series (no PatientName, no PatientID) through `diffuseg predict`: exit 0,
    every object valid with the Type 2 attributes empty, the segment labelled with the run's
    label name ('lesion') and coded SNOMED CT 52988006 (Lesion)."""
    folder, _ = write_series(tmp_path / "series", rows=24, columns=28, slices=6,
                             omit=("PatientName", "PatientID"))
    monkeypatch.setattr(sys, "argv", ["diffuseg", "predict", str(run3d), "-i", str(folder),
                                      "-o", str(tmp_path / "out"), "-n", "2", "--steps", "1",
                                      "--rtstruct", "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    dicom = tmp_path / "out" / "series" / "dicom"
    objects = ("seg_consensus", "seg_probability", "pmap_uncertainty", "rtstruct_consensus")
    for name in objects:
        ds = pydicom.dcmread(dicom / f"{name}.dcm", stop_before_pixels=True)
        assert ds.PatientName == "" and ds.PatientID == ""
    lesion = ("SCT", "49755003", "52988006")
    assert [(label, *codes[:2]) for label, *codes in segment_codes_of(
        dicom / "seg_consensus.dcm")] == [("lesion", *lesion[1:])]
    assert segment_codes_of(dicom / "seg_probability.dcm")[0][:3] == \
        ("lesion probability", "49755003", "52988006")
    consensus, _ = read_mask(tmp_path / "out" / "series" / "consensus.nii.gz")
    reference = load_reference(read_image(folder)[1].extras["files"])
    np.testing.assert_array_equal(read_seg(dicom / "seg_consensus.dcm", reference)[1],
                                  consensus == 1)
    for name in objects:
        assert_conformant(dicom / f"{name}.dcm", IODS[name])


def test_label_names_and_user_codes_reach_the_segments(tmp_path, monkeypatch, run3d):
    """dataset.json names the label; the built-in table codes known names, the default codes
    unknown ones; the run's segment_codes and $DIFFUSEG_SEGMENT_CODES extend the table."""
    from diffuseg.inference.predictor import Predictor

    folder, _ = write_series(tmp_path / "series", rows=24, columns=28, slices=6)
    expected = {
        "Hippocampus": ("91723000", "5366008", []),
        "Lung_Nodule": ("49755003", "27925004", ["39607008"]),
        "brain tumour": ("49755003", "108369006", ["12738006"]),
        "Retinal vessels": ("91723000", "59820001", ["5665001"]),
        "skin lesion": ("49755003", "52988006", ["39937001"]),
        "Anterior": ("85756007", "85756007", []),  # unknown: the documented default (Tissue)
    }
    for i, (name, codes) in enumerate(expected.items()):
        run = copy_run_with(run3d, tmp_path / f"r{i}", labels={"background": 0, name: 1})
        case = Predictor.from_run(run).predict_file(folder, tmp_path / f"o{i}", n_samples=1,
                                                    steps=1)
        assert segment_codes_of(case / "dicom" / "seg_consensus.dcm") == [(name, *codes)]
    own = {"Anterior": {"category": ["SCT", "91723000", "Anatomical Structure"],
                        "type": {"scheme": "SCT", "value": "5366008", "meaning": "Hippocampus"}}}
    run = copy_run_with(run3d, tmp_path / "own", labels={"background": 0, "Anterior": 1},
                        codes=own)
    case = Predictor.from_run(run).predict_file(folder, tmp_path / "own_out", n_samples=1, steps=1)
    assert segment_codes_of(case / "dicom" / "seg_consensus.dcm") == \
        [("Anterior", "91723000", "5366008", [])]
    site = tmp_path / "site_codes.json"
    site.write_text(json.dumps({"lesion": {"category": ["SCT", "49755003", "Morphologically "
                                                        "Abnormal Structure"],
                                           "type": ["SCT", "4147007", "Mass"]}}))
    monkeypatch.setenv(ENV, str(site))
    assert segment_code("Lesion", user_table(run3d)).type[1] == "4147007"
    assert segment_code("Lesion", user_table(None)).type[1] == "4147007"
    monkeypatch.delenv(ENV)
    assert segment_code("Lesion", user_table(run3d)).type[1] == "52988006"


@pytest.mark.parametrize("table,needle", [
    ([1, 2], "must map label names to codes"),
    ({"x": {"type": ["SCT", "1", "a"]}}, "needs 'category' and 'type'"),
    ({"x": {"category": ["SCT", "1"], "type": ["SCT", "1", "a"]}}, "must be [scheme, value"),
    ({"x": {"category": ["SCT", "1", "a"], "type": ["SCT", "1", "a"], "colour": 1}},
     "unknown keys ['colour']"),
])
def test_a_bad_code_table_is_one_line_naming_it(table, needle):
    with pytest.raises(DataError) as info:
        parse_table(table, "'run/dataset.json' key segment_codes")
    message = str(info.value)
    assert needle in message and "dataset.json" in message and "\n" not in message

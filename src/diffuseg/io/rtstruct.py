"""The consensus as a DICOM RT Structure Set (RTSTRUCT) of planar contours on the source series,
for radiotherapy systems that read RTSTRUCT but not SEG, and a reader that rasterises it back.

Object (PS3.3 A.19, RT Structure Set IOD): Patient, General Study, RT Series (Modality
RTSTRUCT), General Equipment, Frame of Reference (the source's), Structure Set, ROI Contour, RT
ROI Observations and SOP Common modules, built on ``highdicom.SOPClass`` (file meta; patient and
study copied from the source like the SEGs of ``diffuseg.io.dicom_seg``, Type 2 attributes empty
where the source lacks them; SeriesNumber 9006, SeriesDate/SeriesTime = when it was written).
One ROI per foreground label: ROI Number = label value, ROI Name = the label's name, its code
(``diffuseg.io.segment_codes``) as the RT ROI Identification Code, ROI Generation Algorithm
AUTOMATIC (SEMIAUTOMATIC when reviewed), RT ROI Interpreted Type empty (Type 2: this tool cannot
tell a GTV from an organ at risk). A label with no voxel keeps its ROI with no contour.

Contours. On every source slice k (the reader's order, ``diffuseg.io.dicom``) each label's mask is
traced by marching squares at level 0.5 (``contourpy``) on the zero-padded slice, so every contour
is closed and passes through the midpoints between a voxel inside and one outside. Pixel (i, j) =
(column, row) lies at, in patient (LPS) millimetres, P = IPP_k + r * dc * i + c * dr * j, with
r, c the row and column direction cosines of ImageOrientationPatient, (dr, dc) = PixelSpacing and
IPP_k slice k's ImagePositionPatient (PS3.3 C.7.6.2.1.1). Each contour is CLOSED_PLANAR (the last
point joins the first and is not repeated) and references its slice's SOP instance. Holes and
islands are separate contours: a voxel is inside a ROI when its centre lies inside an odd number
of the ROI's contours on its slice (the even-odd rule that treatment planning systems apply).
Since no voxel centre lies on a contour, ``read_rtstruct`` gives back the consensus voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import contourpy
import highdicom as hd
import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

import diffuseg
from diffuseg.errors import DataError
from diffuseg.io.dicom_seg import (
    MANUFACTURER,
    SERIES_NUMBERS,
    _check_grid,
    _quiet,
    code_table_or_default,
    complete_reference,
    reference_shape,
    seg_label_names,
    series_date_time,
)
from diffuseg.io.segment_codes import SegmentCode, segment_code

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # the study's SOP class in RT Referenced Study items
COLOURS = ((255, 0, 0), (0, 200, 0), (0, 96, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220),
           (255, 128, 0), (128, 0, 255))
OFF_PLANE_MM = 0.01  # a contour point farther than this from its slice's plane is refused


# ---------------------------------------------------------------------------------------------
# geometry


def _plane(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(IPP, r, c, dr, dc) of one source slice."""
    orientation = np.array(ds.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return (np.array(ds.ImagePositionPatient, dtype=np.float64), orientation[:3],
            orientation[3:], row_spacing, column_spacing)


def plane_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours ``(n, 2)`` in pixel (i, j) = (column, row) units of a 2D mask
    ``[columns, rows]``, traced at level 0.5 on the zero-padded mask (module docstring)."""
    z = np.pad(mask.T.astype(np.float64), 1)  # [rows + 2, columns + 2]: z[y, x]
    generator = contourpy.contour_generator(z=z, line_type=contourpy.LineType.Separate)
    contours = []
    for line in generator.lines(0.5):
        points = np.asarray(line, dtype=np.float64) - 1.0  # undo the padding
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]  # CLOSED_PLANAR: the closing point is implied
        if len(points) >= 3:
            contours.append(points)
    return contours


def to_patient(points: np.ndarray, ds: Dataset) -> np.ndarray:
    """Pixel (i, j) points -> patient LPS millimetres on slice ``ds``."""
    origin, r, c, row_spacing, column_spacing = _plane(ds)
    return origin + np.outer(points[:, 0] * column_spacing, r) \
        + np.outer(points[:, 1] * row_spacing, c)


def to_pixels(points: np.ndarray, ds: Dataset, where: str) -> np.ndarray:
    """Patient points ``(n, 3)`` on slice ``ds`` -> pixel (i, j); a point off the slice's plane
    is a DataError."""
    origin, r, c, row_spacing, column_spacing = _plane(ds)
    offset = points - origin
    off_plane = np.abs(offset @ np.cross(r, c)).max(initial=0.0)
    if off_plane > OFF_PLANE_MM:
        raise DataError(f"'{where}': a contour lies {off_plane:.3g} mm off the plane of its "
                        "slice; give the series the structure set was drawn on")
    return np.stack([offset @ r / column_spacing, offset @ c / row_spacing], axis=1)


# ---------------------------------------------------------------------------------------------
# writing


def _code_item(triple: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = triple[1], triple[0], \
        triple[2]
    return item


def _contour_item(points: np.ndarray, ds: Dataset, number: int) -> Dataset:
    image = Dataset()
    image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = ds.SOPClassUID, \
        ds.SOPInstanceUID
    item = Dataset()
    item.ContourImageSequence = [image]
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    item.ContourNumber = number
    item.ContourData = [f"{v:.6g}" if abs(v) >= 1e5 else f"{v:.6f}".rstrip("0").rstrip(".")
                        for v in to_patient(points, ds).ravel()]
    return item


def _references(reference: Sequence[Dataset]) -> Dataset:
    """Referenced Frame of Reference Sequence item: frame of reference -> study -> series ->
    every source instance (Contour Image Sequence)."""
    first = reference[0]
    images = []
    for ds in reference:
        image = Dataset()
        image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = ds.SOPClassUID, \
            ds.SOPInstanceUID
        images.append(image)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = STUDY_COMPONENT, \
        first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def rt_structure_set(mask: np.ndarray, reference: Sequence[pydicom.Dataset], *,
                     label_names: dict[int, str] | None, method: str,
                     code_table: dict[str, SegmentCode] | None = None, reviewed: bool = False,
                     content_creator: str | None = None,
                     description: str = "diffuseg consensus") -> hd.SOPClass:
    """The RT Structure Set of label map ``mask`` ``[columns, rows, slices]`` on ``reference``
    (the source headers in the reader's slice order), one ROI per label of ``label_names``
    (default: the labels present, at least 1). Module docstring for the contours."""
    _check_grid(mask.shape, reference)
    reference = complete_reference(reference)
    names = seg_label_names(mask, label_names)
    table = code_table_or_default(code_table)
    first = reference[0]
    when = series_date_time()
    with _quiet():  # one-component patient names are common in anonymised data
        rt = _sop_class(first, reviewed, description, when)
    rt.copy_patient_and_study_information(first)
    rt.OperatorsName = content_creator or ""  # RT Series, Type 2
    rt.FrameOfReferenceUID = first.FrameOfReferenceUID  # Frame of Reference module
    rt.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    rt.StructureSetLabel = "diffuseg"
    rt.StructureSetName = description[:64]
    rt.StructureSetDate, rt.StructureSetTime = when["series_date"], when["series_time"]
    rt.ReferencedFrameOfReferenceSequence = [_references(reference)]
    rois, contours, observations = [], [], []
    for k, name in names.items():
        rois.append(_roi(k, name, first.FrameOfReferenceUID, method, reviewed))
        contours.append(_roi_contours(mask == k, reference, k))
        observations.append(_observation(k, segment_code(name, table)))
    rt.StructureSetROISequence = rois
    rt.ROIContourSequence = contours
    rt.RTROIObservationsSequence = observations
    return rt


def _sop_class(first: Dataset, reviewed: bool, description: str, when: dict[str, str]
               ) -> hd.SOPClass:
    """Patient, General Study, RT Series, General Equipment and SOP Common of the structure set
    (highdicom.SOPClass)."""
    return hd.SOPClass(
        study_instance_uid=first.StudyInstanceUID, series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["rtstruct_consensus"], sop_instance_uid=hd.UID(),
        sop_class_uid=RT_STRUCTURE_SET_STORAGE, instance_number=1, modality="RTSTRUCT",
        manufacturer=MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_id=first.PatientID, patient_name=first.PatientName,
        patient_birth_date=first.PatientBirthDate, patient_sex=first.PatientSex,
        accession_number=first.AccessionNumber, study_id=first.StudyID,
        study_date=first.StudyDate, study_time=first.StudyTime,
        referring_physician_name=first.ReferringPhysicianName,
        series_description=(f"{description} (reviewed)" if reviewed else description)[:64],
        manufacturer_model_name="diffuseg", software_versions=diffuseg.__version__,
        device_serial_number="0", specific_character_set=first.get("SpecificCharacterSet"),
        **when)


def _roi(number: int, name: str, frame_uid: str, method: str, reviewed: bool) -> Dataset:
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = name[:64]
    roi.ROIGenerationAlgorithm = "SEMIAUTOMATIC" if reviewed else "AUTOMATIC"
    roi.ROIGenerationDescription = f"diffuseg {diffuseg.__version__} {method} consensus"[:64]
    return roi


def _roi_contours(mask: np.ndarray, reference: Sequence[Dataset], number: int) -> Dataset:
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = list(COLOURS[(number - 1) % len(COLOURS)])
    contours = []
    for k, ds in enumerate(reference):
        if mask[:, :, k].any():
            contours += [_contour_item(points, ds, len(contours) + 1)
                         for points in plane_contours(mask[:, :, k])]
    if contours:
        item.ContourSequence = contours
    return item


def _observation(number: int, code: SegmentCode) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.RTROIIdentificationCodeSequence = [_code_item(code.type)]
    item.RTROIInterpretedType = ""
    item.ROIInterpreter = ""
    return item


# ---------------------------------------------------------------------------------------------
# reading back onto the source grid


def _slice_of(item: Dataset, points: np.ndarray, reference: Sequence[Dataset],
              uids: dict[str, int], where: str) -> int:
    """The source slice of one contour: its referenced instance, else the slice whose plane
    holds its first point."""
    for image in item.get("ContourImageSequence", []):
        uid = str(image.get("ReferencedSOPInstanceUID", ""))
        if uid in uids:
            return uids[uid]
    first = reference[0]
    origin, r, c, *_ = _plane(first)
    normal = np.cross(r, c)
    heights = np.array([np.array(ds.ImagePositionPatient, float) @ normal for ds in reference])
    gap = np.abs(heights - points[0] @ normal)
    if gap.min() > OFF_PLANE_MM:
        raise DataError(f"'{where}': a contour at {points[0].round(2).tolist()} lies on no slice "
                        "of the reference series; give the series it was drawn on")
    return int(gap.argmin())


def read_rtstruct(path: str | Path, reference: Sequence[pydicom.Dataset]
                  ) -> dict[int, np.ndarray]:
    """{ROI number: bool ``[columns, rows, slices]``} of an RT Structure Set on the reference
    grid: every CLOSED_PLANAR contour mapped onto its slice and filled by the even-odd rule
    (module docstring); a ROI without contours is all False."""
    ds = pydicom.dcmread(path)
    if ds.get("Modality") != "RTSTRUCT":
        raise DataError(f"'{path}' is not an RT Structure Set (Modality {ds.get('Modality')})")
    shape = reference_shape(reference)
    uids = {str(r.SOPInstanceUID): k for k, r in enumerate(reference)}
    columns, rows = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = np.stack([columns.ravel(), rows.ravel()], axis=1).astype(np.float64)
    out = {int(roi.ROINumber): np.zeros(shape, bool) for roi in ds.StructureSetROISequence}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        for contour in item.get("ContourSequence", []):
            if contour.ContourGeometricType != "CLOSED_PLANAR":
                continue  # points and open lines enclose nothing
            points = np.array(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            k = _slice_of(contour, points, reference, uids, str(path))
            polygon = PolygonPath(to_pixels(points, reference[k], str(path)), closed=False)
            inside = polygon.contains_points(centres).reshape(shape[:2])
            out.setdefault(number, np.zeros(shape, bool))[:, :, k] ^= inside
    return out

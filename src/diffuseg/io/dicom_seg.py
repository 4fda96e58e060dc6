"""DICOM outputs of a segmentation result, written with highdicom, and a reader for them.

For a result on the grid of a DICOM series (the source), ``write_dicom_outputs`` writes:

- ``seg_consensus.dcm``    BINARY Segmentation of the consensus, one segment per foreground label;
- ``seg_probability.dcm``  FRACTIONAL (PROBABILITY) Segmentation of the share of samples that mark
                           the voxel as foreground, stored as round(255 p) (MaximumFractionalValue
                           255);
- ``pmap_uncertainty.dcm`` one Parametric Map with three channels (frames): ``variance``,
                           ``entropy`` and ``mutual_information``, float32, each frame carrying a
                           Real World Value Mapping (identity, unit "no units", LUT label = the
                           map's name). The values are those of the NIfTI outputs
                           (``diffuseg.inference.prediction_folder``), all 0 where the samples agree
                           (``core.ensemble``): the variance of the samples' labels; entropy
                           and mutual information divided by log K (log 2 for binary), in [0, 1];
- ``seg_samples.dcm``      (optional) BINARY Segmentation with every sample as a segment.

- ``rtstruct_consensus.dcm`` (optional) the consensus as an RT Structure Set of planar contours
                           (``diffuseg.io.rtstruct``).

Every object is derived from the source series: it references its SOP instances, shares its
Frame of Reference, Patient and Study (so a PACS files it into the same study) and gets a new
Series (its own SeriesNumber, ``SERIES_NUMBERS``; SeriesDate/SeriesTime = when it was written) and
SOP Instance UID. Patient and study attributes of Type 2 that the source lacks (PatientName in an
anonymised export, say) are written empty; a source without StudyInstanceUID or
FrameOfReferenceUID is refused. Segments are labelled with the label names of the run's
dataset.json and coded by ``diffuseg.io.segment_codes``.

Frame order. Every source slice has one frame per segment (SEG) or per channel (Parametric Map),
empty frames kept. Segments (channels) are the outer loop, in segment number (channel) order.
Within one segment highdicom orders the frames along c x r (its volume convention: row index
first, right-handed), the reverse of ``diffuseg.io.dicom``'s sort along n = r x c: with N source
slices, frame j of a segment lies on source slice N - 1 - j of the reader's order. Each frame
references its source slice (DerivationImageSequence) and carries its ImagePositionPatient, and
the readers below place frames by those, never by their index.

Array axes: a volume read from a DICOM series is ``[columns, rows, slices]`` (``diffuseg.io``), so
the frame on slice k is ``volume[:, :, k].T`` (``[rows, columns]``).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

import diffuseg
from diffuseg.core.atomic import write_atomic
from diffuseg.errors import DataError
from diffuseg.io.dicom import read_dicom_series
from diffuseg.io.images import Geometry
from diffuseg.io.segment_codes import SegmentCode, segment_code, user_table

if TYPE_CHECKING:  # io sits below ensemble in the import order; only the type is needed
    pass

MANUFACTURER = "diffuseg"
UNCERTAINTY_MAPS = ("variance", "entropy", "mutual_information")
MAP_EXPLANATIONS = {
    "variance": "variance of the binarized samples' labels",
    "entropy": "entropy of the samples' label shares / log K, in [0, 1]",
    "mutual_information": "BALD where the samples disagree / log K, in [0, 1]",
}
LUT_LABELS = {"variance": "variance", "entropy": "entropy", "mutual_information": "mutual_info"}
SERIES_NUMBERS = {"seg_consensus": 9001, "seg_probability": 9002, "pmap_uncertainty": 9003,
                  "seg_samples": 9004, "seg_reviewed": 9005, "rtstruct_consensus": 9006}
# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1): present in
# every derived object, empty when the source lacks them
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                       "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
PATIENT_SEX = ("M", "F", "O", "")  # the enumerated values of PatientSex (PS3.3 C.7.1.1)
REQUIRED_UIDS = ("StudyInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID", "SOPClassUID")
FILES = {name: f"{name}.dcm" for name in SERIES_NUMBERS}
NAMES_OF_LABELS = {label: name for name, label in LUT_LABELS.items()}
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")


# ---------------------------------------------------------------------------------------------
# the source series


def reference_for(geometry: Geometry, reference: str | Path | None = None
                  ) -> list[pydicom.Dataset]:
    """The source series of a result on ``geometry``: the DICOM series it was read from, or the
    series folder ``reference`` (which must lie on the same grid, e.g. the series a NIfTI input
    was converted from)."""
    if reference is None:
        if geometry.kind != "dicom":
            raise DataError("DICOM outputs of a non-DICOM input need the series it was converted "
                            "from; pass --reference SERIES_FOLDER")
        return load_reference(geometry.extras["files"])
    series = read_dicom_series(reference)
    ref_geometry = Geometry.from_affine(series.affine, series.array.shape, "dicom")
    if not ref_geometry.same_grid(geometry):
        raise DataError(f"the input (shape {geometry.shape}) is not on the grid of reference "
                        f"'{reference}' (shape {ref_geometry.shape}); give the series the image "
                        "was converted from")
    return load_reference(series.extras["files"])


def run_label_names(run_dir: str | Path) -> dict[int, str] | None:
    """{label value: name} of the foreground labels in a run's ``dataset.json``, or None."""
    path = Path(run_dir) / "dataset.json"
    try:
        labels = json.loads(path.read_text()).get("labels", {})
        names = {int(v): str(k) for k, v in labels.items() if int(v) > 0}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return names or None


def load_reference(files: Sequence[str | Path]) -> list[pydicom.Dataset]:
    """The headers of the source series, in the given order (pixel data not loaded)."""
    datasets = []
    for file in files:
        try:
            datasets.append(pydicom.dcmread(file, stop_before_pixels=True))
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError) as err:
            raise DataError(f"reference '{file}' is not a readable DICOM file ({err}); check "
                            "the reference series") from None
    return datasets


def reference_shape(reference: Sequence[pydicom.Dataset]) -> tuple[int, int, int]:
    """(columns, rows, slices): the shape of the source volume in ``diffuseg.io`` axes."""
    first = reference[0]
    return int(first.Columns), int(first.Rows), len(reference)


def _frames(volume: np.ndarray) -> np.ndarray:
    """``[columns, rows, slices, ...]`` -> ``[slices, rows, columns, ...]`` (highdicom frames)."""
    return np.ascontiguousarray(np.swapaxes(np.moveaxis(volume, 2, 0), 1, 2))


def _check_grid(shape: tuple[int, ...], reference: Sequence[pydicom.Dataset]) -> None:
    expected = reference_shape(reference)
    if tuple(shape) != expected:
        raise DataError(f"the result has shape {tuple(shape)} but the reference series is "
                        f"{expected} (columns, rows, slices); give the series the image was "
                        "read from")


# ---------------------------------------------------------------------------------------------
# writing


def complete_reference(reference: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Copies of the source headers with every Type 2 patient and study attribute present (empty
    where the source lacks it, as anonymised exports often do; a PatientSex outside M, F, O
    becomes empty, unknown); a source without the UIDs a derived object needs is refused naming
    the file."""
    completed = []
    for ds in reference:
        missing = [tag for tag in REQUIRED_UIDS if not str(ds.get(tag, "") or "")]
        if missing:
            where = getattr(ds, "filename", None) or "the reference series"
            raise DataError(f"'{where}' lacks {missing}, which a derived DICOM object needs; "
                            "export the series with them, or use the NIfTI outputs")
        sex = str(ds.get("PatientSex", "") or "")
        if all(tag in ds for tag in TYPE2_PATIENT_STUDY) and sex in PATIENT_SEX:
            completed.append(ds)
            continue
        ds = copy.deepcopy(ds)
        for tag in TYPE2_PATIENT_STUDY:
            if tag not in ds:
                setattr(ds, tag, "")
        if sex not in PATIENT_SEX:  # e.g. 'U' or 'MALE', which highdicom refuses: unknown
            ds.PatientSex = ""
        completed.append(ds)
    return completed


def series_date_time() -> dict[str, str]:
    """SeriesDate/SeriesTime of a derived series: now (Orthanc and viewers file and sort series
    by them; highdicom leaves them out)."""
    now = datetime.now()
    return {"series_date": now.strftime("%Y%m%d"), "series_time": now.strftime("%H%M%S")}


def code_table_or_default(code_table: dict[str, SegmentCode] | None) -> dict[str, SegmentCode]:
    """The user's code table; None: the file of $DIFFUSEG_SEGMENT_CODES only (no run)."""
    return user_table(None) if code_table is None else code_table


def _coded(triple: tuple[str, str, str]) -> hd.sr.CodedConcept:
    scheme, value, meaning = triple
    return hd.sr.CodedConcept(value, scheme, meaning)


def _algorithm(method: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name="diffuseg", family=codes.cid7162.ArtificialIntelligence,
        version=diffuseg.__version__, parameters={"method": method})


def _segment(number: int, label: str, method: str, reviewed: bool, code: SegmentCode
             ) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label[:64],
        segmented_property_category=_coded(code.category),
        segmented_property_type=_coded(code.type),
        anatomic_regions=[_coded(code.region)] if code.region else None,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if reviewed
        else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(method))


@contextmanager
def _quiet() -> Iterator[None]:
    """highdicom warns about one-component patient names (common in anonymised data)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        yield


def _common(name: str, reference: Sequence[pydicom.Dataset]) -> dict:
    return dict(source_images=complete_reference(reference), series_instance_uid=hd.UID(),
                series_number=SERIES_NUMBERS.get(name, 9000), sop_instance_uid=hd.UID(),
                instance_number=1, manufacturer=MANUFACTURER,
                manufacturer_model_name="diffuseg", software_versions=diffuseg.__version__,
                device_serial_number="0", **series_date_time())


def _seg(name: str, pixels: np.ndarray, reference: Sequence[pydicom.Dataset],
         descriptions: list[hd.seg.SegmentDescription], description: str, *,
         fractional: bool = False, content_creator: str | None = None) -> hd.seg.Segmentation:
    kind = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional \
        else hd.seg.SegmentationTypeValues.BINARY
    with _quiet():
        seg = hd.seg.Segmentation(
            pixel_array=pixels, segmentation_type=kind, segment_descriptions=descriptions,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            omit_empty_frames=False, content_creator_name=content_creator,
            content_description=description[:64], **_common(name, reference))
    seg.SeriesDescription = description[:64]
    return seg


def seg_label_names(mask: np.ndarray, label_names: dict[int, str] | None) -> dict[int, str]:
    """{label: name} of a consensus SEG's segments: ``label_names`` (the run's), else the labels
    present (at least label 1) named 'label k'."""
    if label_names:
        if any(k < 1 for k in label_names):
            raise DataError(f"label_names {label_names} must use labels >= 1 (0 is background)")
        return dict(sorted(label_names.items()))
    present = sorted({int(v) for v in np.unique(mask) if v > 0} | {1})
    return {k: f"label {k}" for k in present}


def binary_seg(mask: np.ndarray, reference: Sequence[pydicom.Dataset], *,
               label_names: dict[int, str] | None, method: str,
               content_creator: str | None = None, reviewed: bool = False,
               series_description: str = "diffuseg consensus",
               code_table: dict[str, SegmentCode] | None = None) -> hd.seg.Segmentation:
    """A BINARY SEG of label map ``mask`` ``[columns, rows, slices]`` (0 = background), one segment
    per label in ``label_names`` (default: the labels present, at least label 1), segment number =
    label value, coded by name (``diffuseg.io.segment_codes``). ``reviewed`` marks the segments
    SEMIAUTOMATIC (an algorithm's output edited by a person, ``content_creator``) and gives the
    series its own number (``seg_reviewed``)."""
    _check_grid(mask.shape, reference)
    names = seg_label_names(mask, label_names)
    table = code_table_or_default(code_table)
    descriptions = [_segment(k, name, method, reviewed, segment_code(name, table))
                    for k, name in names.items()]
    pixels = np.stack([mask == k for k in names], axis=-1)  # [columns, rows, slices, segments]
    if reviewed:
        series_description = f"{series_description} (reviewed)"
    return _seg("seg_reviewed" if reviewed else "seg_consensus",
                _frames(pixels).astype(np.uint8), reference, descriptions,
                series_description, content_creator=content_creator)


def probability_seg(probability: np.ndarray, reference: Sequence[pydicom.Dataset], *,
                    method: str, label: str = "foreground",
                    code_table: dict[str, SegmentCode] | None = None) -> hd.seg.Segmentation:
    """A FRACTIONAL PROBABILITY SEG of ``probability`` in [0, 1] ``[columns, rows, slices]``: one
    segment '<label> probability', coded as ``label``."""
    _check_grid(probability.shape, reference)
    frames = _frames(np.clip(probability, 0.0, 1.0).astype(np.float32))
    code = segment_code(label, code_table_or_default(code_table))
    return _seg("seg_probability", frames, reference,
                [_segment(1, f"{label} probability", method, False, code)],
                "diffuseg probability", fractional=True)


def source_laterality(reference: Sequence[pydicom.Dataset]) -> str:
    """Laterality (R or L) for a Parametric Map: the source's Laterality, else its
    ImageLaterality when R or L, else '' (unknown; the attribute is Type 2C)."""
    first = reference[0]
    for tag in ("Laterality", "ImageLaterality"):
        value = str(first.get(tag, "") or "").strip().upper()
        if value in ("R", "L"):
            return value
    return ""


def uncertainty_map(maps: dict[str, np.ndarray], reference: Sequence[pydicom.Dataset], *,
                    method: str) -> hd.pm.ParametricMap:
    """One float Parametric Map holding each map of ``maps`` as a channel, with an identity
    real-world value mapping labelled with the map's name. Laterality (General Series, Type 2C,
    which dciodvfy requires of a Parametric Map without Frame Anatomy) is the source's, or empty
    (unknown)."""
    for values in maps.values():
        _check_grid(values.shape, reference)
    names = list(maps)
    pixels = _frames(np.stack([maps[n].astype(np.float32) for n in names], axis=-1))
    mappings = [[hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABELS.get(name, name[:16]),
        lut_explanation=MAP_EXPLANATIONS.get(name, name)[:64],
        unit=NO_UNITS, value_range=(float(maps[name].min()), float(maps[name].max())),
        slope=1.0, intercept=0.0)] for name in names]
    with _quiet():
        pm = hd.pm.ParametricMap(
            pixel_array=pixels, contains_recognizable_visual_features=False,
            real_world_value_mappings=mappings,
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5,
                                                             window_width=1.0)],
            content_description=f"diffuseg {method} uncertainty"[:64],
            content_label="UNCERTAINTY", **_common("pmap_uncertainty", reference))
    pm.SeriesDescription = "diffuseg uncertainty"
    pm.Laterality = source_laterality(reference)
    return pm


def samples_seg(labels: np.ndarray, reference: Sequence[pydicom.Dataset], *, method: str,
                num_classes: int, label_names: dict[int, str] | None = None,
                code_table: dict[str, SegmentCode] | None = None) -> hd.seg.Segmentation:
    """Every sample's every foreground label as one segment: segment (s * L + l), L = foreground
    labels (1 for binary), label 'sample s' or 'sample s <label name>', coded as the label."""
    foreground = list(range(1, max(2, num_classes)))
    names = label_names or {}
    table = code_table_or_default(code_table)
    masks, descriptions = [], []
    for s, sample in enumerate(labels):
        _check_grid(sample.shape, reference)
        for k in foreground:
            number = len(masks) + 1
            label = names.get(k, f"label {k}")
            name = f"sample {s}" if len(foreground) == 1 else f"sample {s} {label}"
            descriptions.append(_segment(number, name, method, False,
                                         segment_code(label, table)))
            masks.append(sample == k)
    pixels = _frames(np.stack(masks, axis=-1)).astype(np.uint8)
    return _seg("seg_samples", pixels, reference, descriptions, "diffuseg samples")


def save_atomic(dataset: pydicom.Dataset, path: Path) -> Path:
    """Write one DICOM object atomically (``core.atomic.write_atomic``)."""
    write_atomic(Path(path), lambda tmp: dataset.save_as(tmp, enforce_file_format=True))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# reading back onto the source grid


def _slice_index(frame_item: pydicom.Dataset, positions: np.ndarray, uids: dict[str, int],
                 where: str) -> int:
    """The source slice of one frame: its referenced source SOP instance, else its position."""
    for derivation in frame_item.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            uid = str(source.get("ReferencedSOPInstanceUID", ""))
            if uid in uids:
                return uids[uid]
    position = np.array(frame_item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
    distance = np.linalg.norm(positions - position, axis=1)
    if distance.min() > 1e-2:
        raise DataError(f"'{where}': a frame at {position.tolist()} lies on no slice of the "
                        "reference series; give the series the object was derived from")
    return int(distance.argmin())


def _frame_slices(ds: pydicom.Dataset, reference: Sequence[pydicom.Dataset], where: str
                  ) -> list[int]:
    positions = np.array([r.ImagePositionPatient for r in reference], dtype=float)
    uids = {str(r.SOPInstanceUID): k for k, r in enumerate(reference)}
    return [_slice_index(item, positions, uids, where)
            for item in ds.PerFrameFunctionalGroupsSequence]


def _volume(frame: np.ndarray) -> np.ndarray:
    return frame.T  # [rows, columns] -> [columns, rows]


def read_seg(path: str | Path, reference: Sequence[pydicom.Dataset]) -> dict[int, np.ndarray]:
    """{segment number: ``[columns, rows, slices]`` array} of a SEG on the reference grid: bool
    for BINARY, float in [0, 1] (stored value / MaximumFractionalValue) for FRACTIONAL. Frames
    are placed by their referenced source instance (or plane position); absent frames are 0."""
    ds = pydicom.dcmread(path)
    if ds.get("Modality") != "SEG":
        raise DataError(f"'{path}' is not a DICOM SEG (Modality {ds.get('Modality')})")
    pixels = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1)), ds.Rows, ds.Columns)
    fractional = ds.SegmentationType == "FRACTIONAL"
    scale = float(ds.MaximumFractionalValue) if fractional else 1.0
    shape = reference_shape(reference)
    out = {int(s.SegmentNumber): np.zeros(shape, np.float32 if fractional else bool)
           for s in ds.SegmentSequence}
    shared = ds.SharedFunctionalGroupsSequence[0]
    slices = _frame_slices(ds, reference, str(path))
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        identification = item.get("SegmentIdentificationSequence") \
            or shared.SegmentIdentificationSequence  # one segment: in the shared groups
        number = int(identification[0].ReferencedSegmentNumber)
        frame = pixels[i].astype(np.float32) / scale if fractional else pixels[i] > 0
        out[number][:, :, slices[i]] = _volume(frame)
    return out


def read_parametric_map(path: str | Path, reference: Sequence[pydicom.Dataset]
                        ) -> dict[str, np.ndarray]:
    """{LUT label: float32 ``[columns, rows, slices]``} of a Parametric Map on the reference grid,
    real-world values (slope and intercept of each frame's mapping applied)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1)), ds.Rows, ds.Columns)
    shared = ds.SharedFunctionalGroupsSequence[0]
    slices = _frame_slices(ds, reference, str(path))
    out: dict[str, np.ndarray] = {}
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        mapping = (item.get("RealWorldValueMappingSequence")
                   or shared.RealWorldValueMappingSequence)[0]
        name = NAMES_OF_LABELS.get(str(mapping.LUTLabel), str(mapping.LUTLabel))
        values = pixels[i].astype(np.float32) * float(mapping.RealWorldValueSlope) \
            + float(mapping.RealWorldValueIntercept)
        out.setdefault(name, np.zeros(reference_shape(reference), np.float32))
        out[name][:, :, slices[i]] = _volume(values)
    return out

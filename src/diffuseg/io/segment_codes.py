"""Codes of the segments and structures in the DICOM outputs, from the label names.

A DICOM-SEG segment carries a Segmented Property Category and Type (PS3.3 C.8.20.2, CID 7150 and
e.g. CID 7151 / 7159) and may carry an Anatomic Region; an RTSTRUCT ROI carries the same type as
its RT ROI Identification Code. They are looked up by the label's name in dataset.json
(``labels``), compared case-blind with ``_`` and ``-`` read as spaces, in this order:

1. the run's ``dataset.json`` key ``segment_codes`` (``{name: entry}``);
2. the JSON file named by the environment variable ``DIFFUSEG_SEGMENT_CODES`` (same form);
3. the built-in table ``BUILTIN`` below (SNOMED CT codes as DICOM PS3.16 lists them);
4. ``DEFAULT``: category and type "Tissue" (SCT 85756007), 3D Slicer's default terminology, for
   any other name ("foreground", "label 2", "Anterior" ...).

An entry is ``{"category": C, "type": C, "region": C}`` (region optional), each ``C`` either
``[scheme, value, meaning]`` or ``{"scheme": .., "value": .., "meaning": ..}``, e.g.
``{"category": ["SCT", "91723000", "Anatomical Structure"],
"type": ["SCT", "5366008", "Hippocampus"]}``; docs/deploying.md shows a dataset.json with one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffuseg.errors import DataError

ENV = "DIFFUSEG_SEGMENT_CODES"
KEY = "segment_codes"
Triple = tuple[str, str, str]  # (coding scheme designator, code value, code meaning)


@dataclass(frozen=True)
class SegmentCode:
    category: Triple
    type: Triple
    region: Triple | None = None


ABNORMAL: Triple = ("SCT", "49755003", "Morphologically Abnormal Structure")
ANATOMY: Triple = ("SCT", "91723000", "Anatomical Structure")
TISSUE: Triple = ("SCT", "85756007", "Tissue")
LUNG: Triple = ("SCT", "39607008", "Lung")
BRAIN: Triple = ("SCT", "12738006", "Brain")
SKIN: Triple = ("SCT", "39937001", "Skin")
RETINA: Triple = ("SCT", "5665001", "Retina")
LESION: Triple = ("SCT", "52988006", "Lesion")
NODULE: Triple = ("SCT", "27925004", "Nodule")
NEOPLASM: Triple = ("SCT", "108369006", "Neoplasm")
VESSEL: Triple = ("SCT", "59820001", "Blood Vessel")
HIPPOCAMPUS: Triple = ("SCT", "5366008", "Hippocampus")

DEFAULT = SegmentCode(TISSUE, TISSUE)


def _abnormal(kind: Triple, region: Triple | None = None) -> SegmentCode:
    return SegmentCode(ABNORMAL, kind, region)


def _organ(kind: Triple) -> SegmentCode:
    return SegmentCode(ANATOMY, kind)


BUILTIN: dict[str, SegmentCode] = {
    # lesions (CID 7159 Lesion Segmentation Types)
    "lesion": _abnormal(LESION),
    "skin lesion": _abnormal(LESION, SKIN),
    "nodule": _abnormal(NODULE),
    "lung nodule": _abnormal(NODULE, LUNG),
    "pulmonary nodule": _abnormal(NODULE, LUNG),
    "tumour": _abnormal(NEOPLASM),
    "tumor": _abnormal(NEOPLASM),
    "neoplasm": _abnormal(NEOPLASM),
    "brain tumour": _abnormal(NEOPLASM, BRAIN),
    "brain tumor": _abnormal(NEOPLASM, BRAIN),
    "brain neoplasm": _abnormal(NEOPLASM, BRAIN),
    "mass": _abnormal(("SCT", "4147007", "Mass")),
    "cyst": _abnormal(("SCT", "367643001", "Cyst")),
    "edema": _abnormal(("SCT", "79654002", "Edema")),
    "oedema": _abnormal(("SCT", "79654002", "Edema")),
    "necrosis": _abnormal(("SCT", "6574001", "Necrosis")),
    "enhancing tumour": _abnormal(("NCIt", "C113842", "Enhancing Lesion")),
    "enhancing tumor": _abnormal(("NCIt", "C113842", "Enhancing Lesion")),
    # anatomy (CID 7151 and its subsets)
    "hippocampus": _organ(HIPPOCAMPUS),
    "vessel": _organ(VESSEL),
    "vessels": _organ(VESSEL),
    "blood vessel": _organ(VESSEL),
    "retinal vessel": SegmentCode(ANATOMY, VESSEL, RETINA),
    "retinal vessels": SegmentCode(ANATOMY, VESSEL, RETINA),
    "brain": _organ(BRAIN),
    "lung": _organ(LUNG),
    "liver": _organ(("SCT", "10200004", "Liver")),
    "kidney": _organ(("SCT", "64033007", "Kidney")),
    "pancreas": _organ(("SCT", "15776009", "Pancreas")),
    "spleen": _organ(("SCT", "78961009", "Spleen")),
    "prostate": _organ(("SCT", "41216001", "Prostate")),
    "heart": _organ(("SCT", "80891009", "Heart")),
}


def normalise(name: str) -> str:
    """'Lung_Nodule ' -> 'lung nodule': the key a name is looked up by."""
    return " ".join(re.sub(r"[_\-]+", " ", str(name)).lower().split())


def segment_code(name: str, table: dict[str, SegmentCode] | None = None) -> SegmentCode:
    """The code of label ``name``: ``table`` (the user's), then the built-in table, then
    ``DEFAULT`` (module docstring)."""
    key = normalise(name)
    for source in (table or {}, BUILTIN):
        if key in source:
            return source[key]
    return DEFAULT


def user_table(run_dir: str | Path | None) -> dict[str, SegmentCode]:
    """The user's codes: the file of ``$DIFFUSEG_SEGMENT_CODES`` overlaid by the run's
    ``dataset.json`` key ``segment_codes``. A bad entry is a DataError naming its file."""
    table: dict[str, SegmentCode] = {}
    path = os.environ.get(ENV)
    if path:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{ENV}='{path}' is not a readable JSON file ({err}); fix it or unset "
                            f"{ENV}") from None
        table.update(parse_table(data, f"{ENV}='{path}'"))
    if run_dir is not None:
        dataset = Path(run_dir) / "dataset.json"
        try:
            data = json.loads(dataset.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}  # no dataset.json: no user codes from it (its readers say the rest)
        if isinstance(data, dict) and KEY in data:
            table.update(parse_table(data[KEY], f"'{dataset}' key {KEY}"))
    return table


def parse_table(data: Any, where: str) -> dict[str, SegmentCode]:
    """``{name: {"category": C, "type": C, "region": C}}`` -> ``{normalised name: SegmentCode}``."""
    if not isinstance(data, dict):
        raise DataError(f"{where} must map label names to codes, got {type(data).__name__}; "
                        'e.g. {"tumour": {"category": ["SCT", "49755003", "Morphologically '
                        'Abnormal Structure"], "type": ["SCT", "108369006", "Neoplasm"]}}')
    table = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not {"category", "type"} <= set(entry):
            raise DataError(f"{where}: entry '{name}' = {str(entry)[:80]} needs 'category' and "
                            "'type' (and optionally 'region'), each [scheme, value, meaning]")
        unknown = set(entry) - {"category", "type", "region"}
        if unknown:
            raise DataError(f"{where}: entry '{name}' has unknown keys {sorted(unknown)}; use "
                            "category, type and region")
        table[normalise(name)] = SegmentCode(
            _triple(entry["category"], where, name, "category"),
            _triple(entry["type"], where, name, "type"),
            _triple(entry["region"], where, name, "region") if entry.get("region") else None)
    return table


def _triple(value: Any, where: str, name: str, field: str) -> Triple:
    if isinstance(value, dict) and {"scheme", "value", "meaning"} <= set(value):
        value = [value["scheme"], value["value"], value["meaning"]]
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, str) and v.strip() for v in value)
    if not ok:
        raise DataError(f"{where}: '{name}'.{field} = {str(value)[:80]} must be [scheme, value, "
                        'meaning], e.g. ["SCT", "5366008", "Hippocampus"]')
    scheme, code, meaning = (v.strip() for v in value)
    if len(code) > 64 or len(meaning) > 64 or len(scheme) > 16:
        raise DataError(f"{where}: '{name}'.{field} = {value} is too long for DICOM (scheme <= 16, "
                        "value and meaning <= 64 characters)")
    return scheme, code, meaning

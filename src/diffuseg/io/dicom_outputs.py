"""All the DICOM objects of one result, written into a folder (the list and their contents:
``diffuseg.io.dicom_seg``'s module docstring; the RT Structure Set: ``diffuseg.io.rtstruct``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from diffuseg.core.ensemble import Result
from diffuseg.errors import DataError
from diffuseg.io.dicom_seg import (
    FILES,
    binary_seg,
    code_table_or_default,
    probability_seg,
    samples_seg,
    save_atomic,
    uncertainty_map,
)
from diffuseg.io.rtstruct import rt_structure_set
from diffuseg.io.segment_codes import SegmentCode


def write_dicom_outputs(result: Result, reference: Sequence[pydicom.Dataset], out_dir: Path, *,
                        method: str, label_names: dict[int, str] | None = None,
                        samples: bool = False, content_creator: str | None = None,
                        reviewed: bool = False, rtstruct: bool = False,
                        code_table: dict[str, SegmentCode] | None = None) -> dict[str, Path]:
    """Write the DICOM objects of ``result`` (module docstring) into ``out_dir``; returns
    {name: path} for seg_consensus, seg_probability, pmap_uncertainty (and seg_samples,
    rtstruct_consensus). ``code_table``: the user's segment codes (``segment_codes.user_table``
    of the run)."""
    if not reference:
        raise DataError("DICOM outputs need the source series; none was given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes = result.probability.shape[1]
    foreground = result.foreground()[0].numpy()
    probability_label = (label_names or {}).get(1, "foreground") if num_classes <= 2 \
        else "foreground"  # the foreground of a K-class run: the share of samples with a label
    if label_names is None:
        label_names = {k: f"label {k}" for k in range(1, max(2, num_classes))}
    table = code_table_or_default(code_table)
    norm = np.log(max(2, num_classes))
    maps = {"variance": result.variance[0].numpy(),
            "entropy": np.clip(result.entropy[0].numpy() / norm, 0.0, 1.0),
            "mutual_information": np.clip(result.mutual_information[0].numpy() / norm, 0.0, 1.0)}
    consensus = result.consensus[0].numpy()
    objects = {
        "seg_consensus": binary_seg(consensus, reference, label_names=label_names, method=method,
                                    content_creator=content_creator, reviewed=reviewed,
                                    code_table=table),
        "seg_probability": probability_seg(foreground, reference, method=method,
                                           label=probability_label, code_table=table),
        "pmap_uncertainty": uncertainty_map(maps, reference, method=method),
    }
    if samples:
        objects["seg_samples"] = samples_seg(result.sample_labels()[:, 0].numpy(), reference,
                                             method=method, num_classes=num_classes,
                                             label_names=label_names, code_table=table)
    if rtstruct:
        objects["rtstruct_consensus"] = rt_structure_set(
            consensus, reference, label_names=label_names, method=method, code_table=table)
    written = {}
    for name, dataset in objects.items():
        written[name] = save_atomic(dataset, out_dir / FILES[name])
    return written

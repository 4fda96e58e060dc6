"""Writing a segmentation result in the input's geometry.

For one input, ``<out>/<case>/`` receives:

- ``sample_XX.<ext>``   every sampled mask (label map);
- ``consensus.<ext>``   the consensus mask (mean probability > 0.5; majority vote for multi-class);
- ``probability.<ext>`` the mean foreground probability (binary) / 1 - P(background);
- ``variance``, ``entropy``, ``mutual_information`` uncertainty maps (float); entropy and mutual
  information are divided by their maximum, log K (log 2 for a binary mask), so that every map
  lies in [0, 1] and 1 means "uniform over the classes";
- ``result.json``       shapes, sample count, per-sample foreground volume, file list, settings.

2D inputs give PNG (masks as labels 0..K-1, preview-friendly 0/255 for binary masks; float maps
scaled as documented in ``diffuseg.io``); 3D inputs give NIfTI with the input's affine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffuseg.ensemble import Result
from diffuseg.io import Geometry, write_mask, write_probability

UNCERTAINTY_MAPS = ("variance", "entropy", "mutual_information")


def extension(geometry: Geometry) -> str:
    return ".png" if geometry.kind == "png" else ".nii.gz"


def write_result(result: Result, geometry: Geometry, case_dir: Path, *, source: Path,
                 extra: dict | None = None, image: np.ndarray | None = None) -> dict:
    """``image`` (the input, ``[C, *spatial]``) adds ``preview.png`` and
    ``uncertainty_preview.png`` (diffuseg.previews)."""
    case_dir.mkdir(parents=True, exist_ok=True)
    ext = extension(geometry)
    labels = result.sample_labels()[:, 0].numpy()  # [S, *spatial]
    files = []
    for s, mask in enumerate(labels):
        files.append(f"sample_{s:02d}{ext}")
        write_mask(case_dir / files[-1], mask.astype(np.uint8), geometry)
    write_mask(case_dir / f"consensus{ext}", result.consensus[0].numpy().astype(np.uint8),
               geometry)
    mean = result.mean[0].numpy()
    foreground = mean[0] if mean.shape[0] == 1 else 1.0 - mean[0]
    write_probability(case_dir / f"probability{ext}", foreground.astype(np.float32), geometry)
    for name in UNCERTAINTY_MAPS:
        values = getattr(result, name)[0].numpy().astype(np.float32)
        if name != "variance":
            values = np.clip(values / np.log(max(2, mean.shape[0])), 0.0, 1.0)
        write_probability(case_dir / f"{name}{ext}", values, geometry)
    previews = []
    if image is not None:
        from diffuseg.previews import write_previews

        entropy = np.clip(result.entropy[0].numpy() / np.log(max(2, mean.shape[0])), 0.0, 1.0)
        previews = write_previews(case_dir, image, labels, result.consensus[0].numpy(), entropy)
    voxel = float(np.prod(geometry.spacing))
    summary = {
        "source": str(source),
        "n_samples": int(labels.shape[0]),
        "shape": list(labels.shape[1:]),
        "spacing": [float(s) for s in geometry.spacing],
        "consensus_volume": float((result.consensus[0].numpy() > 0).sum() * voxel),
        "sample_volumes": [float((m > 0).sum() * voxel) for m in labels],
        "mean_uncertainty_nats": {n: float(getattr(result, n)[0].mean())
                                  for n in UNCERTAINTY_MAPS},
        "uncertainty_maps": "variance of the sample probabilities; entropy and mutual "
        "information divided by log K (log 2 for binary), in [0, 1]",
        "files": files + [f"consensus{ext}", f"probability{ext}"]
        + [f"{n}{ext}" for n in UNCERTAINTY_MAPS],
        "previews": previews,
        **(extra or {}),
    }
    (case_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

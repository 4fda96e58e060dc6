"""The model card (``MODEL.md``): the sections every model must have, and the draft that
``diffuseg models package`` writes when no card is given.

The sections follow Mitchell et al. 2019, "Model Cards for Model Reporting" (FAT* '19), cut to
what a segmentation model needs: the data with its licence and attribution, how it was trained
(command, CPU-hours, machine), its validation with 95 % intervals beside the trivial references,
its intended use, that it is not a medical device, and its known failure modes. A draft fills in
what the run folder knows and marks the rest ``TODO``; a shipped model has every section and no
``TODO`` (tests/pretrained/test_shipped.py).
"""

from __future__ import annotations

import re
from typing import Any

from diffuseg.pretrained.validation import short

# the required '## ' headings, each with what it must say
SECTIONS = {
    "Data": "the data set, its version, the cases trained on and validated on",
    "Licence and attribution": "the data's licence and the citations it asks for; the "
                               "weights' licence",
    "Training": "the training command, the CPU-hours and the machine",
    "Validation": "metrics with 95 % intervals, beside the trivial references",
    "Intended use": "what the model is for, and on which images",
    "Not a medical device": "that it is research software, not cleared for clinical use",
    "Known failure modes": "where it fails or was never tested",
}
TODO = "TODO"

# data licences we know, by a word of the dataset's name (docs/pretrained.md)
LICENCES = {
    "lidc": ("LIDC-IDRI, from The Cancer Imaging Archive (TCIA), licence CC BY 3.0. Cite: "
             "Armato SG III et al., The Lung Image Database Consortium (LIDC) and Image Database "
             "Resource Initiative (IDRI), Medical Physics 38(2):915-931, 2011, "
             "doi:10.1118/1.3528204; the data: doi:10.7937/K9/TCIA.2015.LO9QL9SX; TCIA: Clark K "
             "et al., J Digit Imaging 26(6):1045-1057, 2013, doi:10.1007/s10278-013-9622-7."),
    "hippocampus": ("Medical Segmentation Decathlon (MSD), licence CC BY-SA 4.0. Cite: "
                    "Antonelli M et al., The Medical Segmentation Decathlon, Nature "
                    "Communications 13:4128, 2022, doi:10.1038/s41467-022-30695-9."),
}
LICENCES["msd"] = LICENCES["decathlon"] = LICENCES["hippocampus"]

NOT_A_DEVICE = ("diffuseg and this model are research software. They are **not a medical "
                "device**: not cleared or approved (CE, FDA or otherwise) for diagnosis, "
                "treatment or any clinical decision. Every mask must be checked by a qualified "
                "reader.")


def missing_sections(text: str) -> list[str]:
    """The required sections (``SECTIONS``) that ``text`` has no ``## `` heading for."""
    headings = [h.strip().lower() for h in re.findall(r"^##\s+(.+)$", text, flags=re.M)]
    return [name for name in SECTIONS if not any(h.startswith(name.lower()) for h in headings)]


def unfinished(text: str) -> list[str]:
    """The required sections missing, then those still holding a ``TODO``."""
    missing = missing_sections(text)
    parts = re.split(r"^##\s+", text, flags=re.M)[1:]
    todo = [p.splitlines()[0].strip() for p in parts if TODO in p]
    return missing + [t for t in todo if t not in missing]


def licence_for(dataset_name: str) -> str | None:
    lower = dataset_name.lower()
    return next((text for word, text in LICENCES.items() if word in lower), None)


def draft_card(manifest: dict[str, Any], facts: dict[str, Any]) -> str:
    """A MODEL.md from what the run folder knows (``facts``: dataset name, case counts, steps,
    seconds, clock, hardware, config); the rest marked TODO."""
    name, labels = manifest["name"], manifest["labels"]
    licence = licence_for(facts.get("dataset_name", "")) or f"{TODO}: the data's licence and " \
                                                            "the citations it asks for."
    validation = manifest.get("validation")
    refs = (validation or {}).get("references") or {}
    ref_text = (", ".join(f"{k} {v:.3f}" for k, v in refs.items()) if refs else
                f"{TODO}: the same metrics for always empty and the raters' majority repeated")
    hardware = facts.get("hardware") or {}
    machine = (f"{hardware.get('cores')} {hardware.get('kind', 'cpu').upper()} cores "
               f"({hardware.get('vector')})" if hardware else f"{TODO}: the machine")
    seconds = facts.get("seconds")
    hours = (f"{seconds / 3600:.2f} h on the budget clock ({facts.get('clock', 'wall')})"
             if seconds is not None else f"{TODO}: the CPU-hours")
    return "\n".join([
        f"# {name}", "",
        f"{manifest.get('task') or TODO + ': the task in one line'} "
        f"({manifest['spatial_dims']}D, {manifest['method']}, labels "
        f"{', '.join(k for k, v in labels.items() if int(v) > 0)}, "
        f"{manifest['raters']} rater(s)).", "",
        "## Data", "",
        f"Dataset '{facts.get('dataset_name', '?')}': {facts.get('n_train', '?')} training and "
        f"{facts.get('n_val', '?')} validation cases (splits.json; split by patient).", "",
        "## Licence and attribution", "",
        licence, "",
        f"Weights: {TODO}: the licence of the weights.", "",
        "## Training", "",
        f"Command: {TODO}: the training command.", "",
        f"{facts.get('steps', '?')} optimiser steps, {hours}, on {machine}; weights: "
        f"{manifest['packaged']['weights']} (EMA) stored in fp16.", "",
        "## Validation", "",
        f"{short(validation, limit=8)} ({(validation or {}).get('source', 'no validation')}).",
        "",
        f"Trivial references: {ref_text}.", "",
        "## Intended use", "",
        f"{TODO}: what the model is for, and on which images.", "",
        "## Not a medical device", "",
        NOT_A_DEVICE, "",
        "## Known failure modes", "",
        f"{TODO}: where it fails or was never tested.", "",
    ])

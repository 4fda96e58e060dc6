"""Every model shipped in ``models/`` (installed with the package): it loads by name, its sha256
matches, its card is complete, its weights are fp16 safetensors, all models together stay
within 40 MB, and it predicts on a synthetic input of the right shape. (Until the first model is
added these tests are skipped, having no model to run on; the folder's rules are in
models/README.md.)"""

from __future__ import annotations

import pytest
import torch
from models_helpers import synthetic_image
from safetensors.torch import load_file

from diffuseg.inference.predictor import Predictor
from diffuseg.pretrained.card import unfinished
from diffuseg.pretrained.lookup import find_model, shipped_roots
from diffuseg.pretrained.manifest import CARD, WEIGHTS, is_model_folder, verify_weights
from diffuseg.pretrained.package import SIZE_LIMIT


def shipped() -> dict[str, object]:
    found = {}
    for root in shipped_roots():
        for child in sorted(root.iterdir()) if root.is_dir() else []:
            if child.is_dir() and is_model_folder(child):
                found.setdefault(child.name, child)
    return found


SHIPPED = shipped()


def test_every_model_folder_has_its_manifest_and_card():
    for root in shipped_roots():
        for child in root.iterdir() if root.is_dir() else []:
            if child.is_dir() and not child.name.startswith((".", "__")):
                assert is_model_folder(child) and (child / CARD).is_file(), child


def test_all_shipped_models_stay_within_40_mb():
    total = sum(p.stat().st_size for folder in SHIPPED.values() for p in folder.rglob("*")
                if p.is_file())
    assert total <= SIZE_LIMIT, f"shipped models take {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_loads_by_name_and_predicts(name, monkeypatch):
    monkeypatch.delenv("DIFFUSEG_MODELS", raising=False)
    folder = find_model(name)
    assert folder == SHIPPED[name]
    manifest = verify_weights(folder)  # the sha256 of every weight file
    assert manifest["name"] == name and list(manifest["sha256"]) == [WEIGHTS]
    assert unfinished((folder / CARD).read_text(encoding="utf-8")) == []
    assert all(v.dtype == torch.float16 for v in load_file(str(folder / WEIGHTS)).values()
               if v.is_floating_point())
    predictor = Predictor.from_pretrained(name, device="cpu")
    config = predictor.config
    shape = tuple(config.data.patch_size)
    result = predictor.segment(synthetic_image(config.in_channels, shape), n_samples=2)
    assert tuple(result.samples.shape)[:2] == (2, 1)
    assert tuple(result.consensus.shape) == (1, *shape)

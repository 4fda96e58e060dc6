"""What the tests of the pretrained models share besides the fixtures of conftest.py."""

from __future__ import annotations

import numpy as np
import torch
from helpers import tiny
from safetensors.torch import load_file, save_file

# the tiny network, trained long enough that its masks are no longer empty (the fine-tuning test
# compares its loss with a fresh start's)
TINY = tiny("sample.n_samples=2", "sample.steps=2", "train.val_every=1000",
            "train.checkpoint_every=1000", "train.warmup_steps=10", "train.lr=0.002",
            max_steps=150)


def one_line_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def randomise_weights(path, seed: int = 0, scale: float = 0.3) -> None:
    """Replace every floating tensor of a safetensors file by N(0, scale^2) values (fp32): a
    model whose samples are busy masks, so that comparisons of outputs are not of empty masks."""
    g = torch.Generator().manual_seed(seed)
    state = load_file(str(path))
    state = {k: (torch.randn(v.shape, generator=g) * scale if v.is_floating_point() else v)
             for k, v in state.items()}
    save_file(state, str(path))


def round_to_fp16(path) -> None:
    """Every floating tensor of a safetensors file rounded to fp16 and stored back as fp32."""
    state = load_file(str(path))
    save_file({k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()},
              str(path))


def synthetic_image(channels: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(channels, *shape)).astype(np.float32)

"""What the method and network tests share: tiny spatial sizes, seeded generators, random
weights, and the tiny config most method tests build on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffuseg.config import (
    DataConfig,
    MethodConfig,
    NetworkConfig,
    ProcessConfig,
    RunConfig,
    SampleConfig,
)

SIZE = {2: (16, 16), 3: (8, 8, 8)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """N(0, scale^2) weights: the output conv starts at zero, which hides everything behind it."""
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def tiny_config(name: str, spatial_dims: int = 2, num_classes: int = 1, *,
                process: ProcessConfig, steps: int, **options) -> RunConfig:
    """Method ``name`` on a two-level U-Net (widths 8/16, attention at the second level) over
    ``SIZE[spatial_dims]`` patches, sampled with ``steps`` steps."""
    return RunConfig(
        spatial_dims=spatial_dims, num_classes=num_classes,
        network=NetworkConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4,
                              num_heads=2),
        process=process, data=DataConfig(patch_size=SIZE[spatial_dims]),
        sample=SampleConfig(steps=steps), method=MethodConfig(name=name, options=options),
    ).validate()  # fmt: skip


def tiny(*extra: str, attention: bool = False, T: int = 50, max_steps: int | None = 1,
         val: int | None = 1, device: bool = True) -> list[str]:
    """The one tiny configuration of the tests, as ``--set`` overrides: a two-level U-Net of
    widths 8/16 (self-attention at the second level with ``attention``), ``process.T = T``, CPU,
    ``max_steps`` optimiser steps and ``val`` validation cases/samples/steps (None: the config's
    own), then ``extra`` overrides."""
    out = ["network.channels=[8,16]", f"network.attention_levels=[false,{str(attention).lower()}]",
           "network.norm_groups=4"]
    if device:
        out.append("train.device=cpu")
    out.append(f"process.T={T}")
    if max_steps is not None:
        out.append(f"train.max_steps={max_steps}")
    if val is not None:
        out += [f"train.val_cases={val}", f"train.val_samples={val}", f"train.val_steps={val}"]
    return out + list(extra)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or a skip naming what is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data '{path}' is absent (see ../shared/data/README.md)")
    return path


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (its folder on sys.path, as when run)."""
    import importlib.util
    import sys

    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_method(name: str, spatial_dims: int, process, sampler: str | None, steps: int = 4,
                  *, num_classes: int = 1, **options):
    """Method ``name`` on the tiny configuration (``tiny_config``) with ``sampler`` over
    ``steps`` steps, in eval mode, every network randomised (``randomise``): outputs that depend
    on the network, so that checks against them can fail."""
    import dataclasses

    from diffuseg.config import SampleConfig
    from diffuseg.methods import build_method

    config = tiny_config(name, spatial_dims, num_classes, process=process, steps=steps,
                         **options)
    config = dataclasses.replace(config, sample=SampleConfig(steps=steps, sampler=sampler))
    torch.manual_seed(0)
    method = build_method(config).eval()
    for net in method.networks().values():
        randomise(net)
    return method

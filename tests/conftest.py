"""Shared test settings: one torch thread per xdist worker (two workers share two cores; more
threads than cores slowed the suite several-fold), and the location of the real data."""

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or a skip naming what is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data '{path}' is absent (see ../shared/data/README.md)")
    return path

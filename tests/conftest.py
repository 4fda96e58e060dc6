"""Shared test settings: one torch thread per xdist worker (two workers share two cores; more
threads than cores slowed the suite several-fold), and the location of the real data."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


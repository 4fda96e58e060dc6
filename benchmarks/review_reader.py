"""The scripted reader of the review benchmarks (benchmarks/review_session.py through the HTTP API,
benchmarks/review_page.py through the page): what it reads from a job and what it decides."""

from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def read_arrays(client, api: str, shape: tuple[int, ...], source: str = "output"):
    """The job's consensus and samples as boolean arrays (GETs: nothing is logged)."""
    def array(name: str) -> np.ndarray:
        raw = client.get(f"{api}/array/{name}", params={"source": source}).content
        return np.frombuffer(raw, np.uint8).reshape(-1, *shape) > 0

    return array("consensus")[0], array("samples")


def plan(meta: dict, consensus: np.ndarray, samples: np.ndarray, truth: np.ndarray) -> dict:
    """The scripted reader's decision (module docstring): approve, reject or edit from a mode."""
    d = dice(consensus, truth)
    if d >= 0.9:
        return {"kind": "approve"}
    if d < 0.5:
        return {"kind": "reject"}
    medoids = meta["modes"]["medoids"]
    return {"kind": "edit",
            "best": max(range(len(medoids)), key=lambda j: dice(samples[medoids[j]], truth))}

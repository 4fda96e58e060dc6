"""dciodvfy, David Clunie's DICOM IOD validator (Debian package ``dicom3tools``; .ci/run installs
it), run on a written object: its "Error" lines are the object's conformance errors. Tests that
need it skip, saying so, where the binary is absent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy(path: str | Path) -> tuple[str, list[str]]:
    """(the IOD dciodvfy recognised, e.g. 'Segmentation'; its Error lines)."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools; .ci/run does)")
    done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    iods = [line for line in lines if not line.startswith(("Error", "Warning"))]
    return (iods[0] if iods else ""), [line for line in lines if line.startswith("Error")]


def assert_conformant(path: str | Path, iod: str) -> None:
    """dciodvfy recognises ``path`` as ``iod`` and reports 0 errors."""
    found, errors = dciodvfy(path)
    assert found == iod, f"{Path(path).name}: dciodvfy read it as {found!r}, not {iod!r}"
    assert not errors, f"{Path(path).name}: dciodvfy errors {errors}"

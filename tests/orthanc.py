"""A real Orthanc PACS with its DICOMweb plugin (Debian packages ``orthanc``, ``orthanc-dicomweb``),
started on free localhost ports with a temporary storage folder, for the PACS tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
           "/usr/lib/orthanc/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def orthanc(folder: Path) -> Iterator[str]:
    """Start Orthanc; yields its HTTP root (``http://127.0.0.1:PORT``); stops it after."""
    plugin = next((p for p in PLUGINS if Path(p).exists()), None)
    if not Path(ORTHANC).exists() or plugin is None:
        pytest.skip("Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc "
                    "orthanc-dicomweb)")
    http_port, dicom_port = free_port(), free_port()
    storage = folder / "storage"
    storage.mkdir(parents=True)
    config = {
        "Name": "diffuseg-test", "StorageDirectory": str(storage),
        "IndexDirectory": str(storage), "HttpPort": http_port, "DicomPort": dicom_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("w")
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log,
                               stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{root}/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not start: "
                                   + (folder / "orthanc.log").read_text()[-2000:])
            time.sleep(0.2)
        yield root
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def upload(root: str, files: list[Path]) -> None:
    """Store DICOM files through Orthanc's REST API (POST /instances)."""
    with httpx.Client(timeout=60) as client:
        for file in files:
            response = client.post(f"{root}/instances", content=file.read_bytes())
            response.raise_for_status()

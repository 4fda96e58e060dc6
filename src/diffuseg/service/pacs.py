"""A small DICOMweb client (QIDO-RS, WADO-RS, STOW-RS; DICOM PS3.18) over httpx.

Series selection for ``POST /v1/pacs/studies/{uid}/segment``: the study's series are listed with
QIDO-RS; series of non-image modalities (SEG, RTSTRUCT, SR, KO, PR, REG), series written by
diffuseg (description starting with 'diffuseg') and mask series by the rule of ``diffuseg
predict -i STUDY`` (``diffuseg.inference.batch.is_mask_series``: a description such as
'Mask_Tumor') are skipped. With one image series left it is segmented; with several, the caller
must name one (``?series=UID``).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import httpx

from diffuseg.errors import DiffusegError
from diffuseg.inference.batch import is_mask_series

UID = re.compile(r"^[0-9.]{1,64}$")
NON_IMAGE = {"SEG", "RTSTRUCT", "SR", "KO", "PR", "REG", "RWV", "DOC"}
DICOM_JSON = "application/dicom+json"


class PacsError(DiffusegError):
    """The PACS refused or failed a request, or holds nothing to segment."""


def check_uid(uid: str, what: str = "UID") -> str:
    if not UID.match(uid):
        raise PacsError(f"{what} '{uid[:80]}' is not a DICOM UID (digits and dots, at most 64)")
    return uid


def _value(item: dict, tag: str, default: str = "") -> str:
    values = item.get(tag, {}).get("Value") or [default]
    return str(values[0])


class DicomWeb:
    def __init__(self, root: str, timeout: float = 120.0):
        self.root = root.rstrip("/")
        self.client = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def _get(self, url: str, accept: str) -> httpx.Response:
        try:
            response = self.client.get(url, headers={"Accept": accept})
        except httpx.HTTPError as err:
            raise PacsError(f"PACS request {url} failed ({err})") from None
        if response.status_code == 404:
            raise PacsError(f"the PACS has no {url.removeprefix(self.root)}")
        if response.status_code >= 400:
            raise PacsError(f"PACS answered {response.status_code} to {url}")
        return response

    def series(self, study_uid: str) -> list[dict]:
        """QIDO-RS: the study's series as DICOM JSON items."""
        check_uid(study_uid, "StudyInstanceUID")
        response = self._get(f"{self.root}/studies/{study_uid}/series", DICOM_JSON)
        return response.json() if response.content else []

    def pick_series(self, study_uid: str, series_uid: str | None = None) -> dict:
        """{'series_uid', 'description', 'modality'} of the image series to segment."""
        items = self.series(study_uid)
        if not items:
            raise PacsError(f"the PACS has no series in study {study_uid}")
        found = [{"series_uid": _value(i, "0020000E"), "modality": _value(i, "00080060"),
                  "description": _value(i, "0008103E")} for i in items]
        if series_uid is not None:
            check_uid(series_uid, "series")
            chosen = [s for s in found if s["series_uid"] == series_uid]
            if not chosen:
                raise PacsError(f"series {series_uid} is not in study {study_uid}")
            return chosen[0]
        images = [s for s in found if s["modality"] not in NON_IMAGE
                  and not s["description"].lower().startswith("diffuseg")]
        masks = [s for s in images if is_mask_series(s["description"], s["modality"])]
        images = [s for s in images if s not in masks]
        if len(images) != 1:
            listing = ", ".join(f"{s['series_uid']} ({s['modality']} '{s['description']}')"
                                for s in images) or "none"
            skipped = "; skipped as masks: " + ", ".join(
                f"'{s['description']}'" for s in masks) if masks else ""
            raise PacsError(f"study {study_uid} holds {len(images)} image series ({listing})"
                            f"{skipped}; name one with ?series=UID")
        return images[0]

    def fetch_series(self, study_uid: str, series_uid: str, dest: Path, *, max_bytes: int,
                     max_files: int) -> list[Path]:
        """WADO-RS: every instance of the series, written as ``dest/00000.dcm``, ..."""
        check_uid(study_uid, "StudyInstanceUID")
        check_uid(series_uid, "SeriesInstanceUID")
        url = f"{self.root}/studies/{study_uid}/series/{series_uid}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        body = bytearray()
        try:
            with self.client.stream("GET", url, headers={"Accept": accept}) as response:
                if response.status_code >= 400:
                    raise PacsError(f"PACS answered {response.status_code} to WADO-RS {url}")
                content_type = response.headers.get("content-type", "")
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise PacsError(f"series {series_uid} is larger than {max_bytes} bytes")
        except httpx.HTTPError as err:
            raise PacsError(f"WADO-RS {url} failed ({err})") from None
        parts = split_multipart(bytes(body), content_type)
        if not parts or len(parts) > max_files:
            raise PacsError(f"WADO-RS returned {len(parts)} instances for series {series_uid}")
        dest.mkdir(parents=True, exist_ok=True)
        files = []
        for i, part in enumerate(parts):
            files.append(dest / f"{i:05d}.dcm")
            files[-1].write_bytes(part)
        return files

    def store(self, study_uid: str, files: list[Path]) -> dict:
        """STOW-RS of ``files`` into the study; raises when the PACS reports a failure."""
        check_uid(study_uid, "StudyInstanceUID")
        boundary = secrets.token_hex(16)
        body = bytearray()
        for file in files:
            body += (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode()
            body += file.read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                                   f"boundary={boundary}", "Accept": DICOM_JSON}
        url = f"{self.root}/studies/{study_uid}"
        try:
            response = self.client.post(url, content=bytes(body), headers=headers)
        except httpx.HTTPError as err:
            raise PacsError(f"STOW-RS {url} failed ({err})") from None
        answer = response.json() if response.content else {}
        if response.status_code >= 400 or answer.get("00081198", {}).get("Value"):
            raise PacsError(f"STOW-RS to {url} failed (HTTP {response.status_code}, "
                            f"{str(answer.get('00081198', ''))[:200]})")
        return answer


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The payloads of a multipart/related body (RFC 2046), headers of each part dropped."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise PacsError(f"WADO-RS answer is not multipart ({content_type[:80]})")
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts

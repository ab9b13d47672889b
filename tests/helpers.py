"""Test helpers: synthetic DICOM made with pydicom + numpy, and STOW/WADO multipart bodies over HTTP."""

from __future__ import annotations

import errno
import io
from collections.abc import Iterable
from typing import Any, BinaryIO

import httpx
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from radstack.dicomweb.multipart import parse_media_type
from radstack.security.crypto import EncryptedBlobStore
from radstack.store.blobs import BlobStore, LocalBlobStore
from tests import authed
from tests.conftest import RunningServer

BOUNDARY = "t3st-b0undary"
DICOM_MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def synthetic_ct(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    patient_name: str = "Synthetic^Patient",
    patient_id: str = "SYN-1",
    rows: int = 64,
    columns: int = 48,
    frames: int = 1,
    seed: int = 0,
) -> Dataset:
    """A 12-bit unsigned CT image (one or more frames) whose every frame has its own content."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.Modality, ds.StudyDate, ds.StudyTime, ds.InstanceNumber = "CT", "20240102", "101500", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = cube(rows, columns, frames, seed).tobytes()
    return ds


def cube(rows: int, columns: int, frames: int, seed: int = 0) -> NDArray[np.uint16]:
    """Smooth 12-bit content plus noise, different in every frame (so frame mix-ups show)."""
    yy, xx = np.mgrid[:rows, :columns]
    noise = np.random.default_rng(seed).integers(0, 64, (frames, rows, columns))
    planes = [(xx * (f + 3) + yy * (2 * f + 5) + 97 * f) % 3500 for f in range(frames)]
    return (np.stack(planes) + noise).astype(np.uint16)


def pixels_of(ds: Dataset) -> NDArray[np.uint16]:
    """The native pixel samples of a synthetic CT as (frames, rows, columns)."""
    return np.frombuffer(ds.PixelData, dtype="<u2").reshape(-1, ds.Rows, ds.Columns)


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(parts: Iterable[tuple[str, bytes]], *, close: bool = True, boundary: str = BOUNDARY) -> bytes:
    """A multipart/related body; ``close=False`` leaves out the closing delimiter."""
    out = b""
    for content_type, data in parts:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def dicom_body(*datasets: Dataset) -> bytes:
    return multipart(("application/dicom", part10(ds)) for ds in datasets)


def stow(
    server: RunningServer,
    payload: bytes,
    *,
    study: str | None = None,
    content_type: str = DICOM_MULTIPART,
) -> httpx.Response:
    """POST raw bytes as a STOW-RS request body."""
    url = f"{server.dicomweb}/studies" + (f"/{study}" if study else "")
    return authed.post(url, content=payload, headers={"Content-Type": content_type}, timeout=60)


def signed_in_browser(server: RunningServer) -> httpx.Client:
    """A client that asks for HTML, logged in as the first admin through the login form (it holds the
    session cookie), past the change of the initial password that the first login asks for."""
    text = (server.platform.settings.data_dir / "initial-admin-credential.txt").read_text()
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    browser = httpx.Client(base_url=server.url, headers={"Accept": "text/html"})
    done = browser.post("/login", data={"username": fields["username"], "password": fields["password"]})
    assert done.status_code == 303 and "radstack_session" in browser.cookies
    assert done.headers["location"] == "/account/password?next=/"
    new = "the worklist tester's own password"
    changed = browser.post(
        "/account/password",
        data={"current": fields["password"], "new": new, "confirm": new, "next": "/"},
        headers={"Origin": server.url},
    )
    assert changed.status_code == 303 and changed.headers["location"] == "/"
    return browser


def failure_reasons(response: httpx.Response) -> list[int]:
    """FailureReason (0008,1197) of every FailedSOPSequence item of a STOW-RS response."""
    failed = response.json().get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in failed]


def instance_url(server: RunningServer, ds: Dataset) -> str:
    return (
        f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def response_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """Split a multipart/related response into (Content-Type, body) pairs."""
    _media, params = parse_media_type(response.headers["content-type"])
    delimiter = b"--" + params["boundary"].encode()
    out = []
    for chunk in response.content.split(b"\r\n" + delimiter)[:-1]:
        head, _, data = chunk.removeprefix(delimiter).partition(b"\r\n\r\n")
        headers = {
            name.lower(): value
            for name, _, value in (line.partition(": ") for line in head.decode().strip().split("\r\n"))
        }
        out.append((headers["content-type"], data))
    return out


class FullDisk(LocalBlobStore):
    """The blob store of ``inner``'s directory on a disk that is full: every write of a new blob fails
    with ENOSPC, as the operating system reports it (existing blobs stay readable, through ``inner``,
    which decrypts them when it is the platform's encrypted store)."""

    def __init__(self, inner: BlobStore) -> None:
        local = inner.inner if isinstance(inner, EncryptedBlobStore) else inner
        assert isinstance(local, LocalBlobStore)
        super().__init__(local.root)
        self.healthy = inner
        self.refused = 0

    def get(self, key: str) -> bytes:
        return self.healthy.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.healthy.get_range(key, start, length)

    def _write(self, handle: BinaryIO, data: bytes) -> None:
        self.refused += 1
        raise OSError(errno.ENOSPC, "No space left on device")


class Caller:
    """API calls as one new user of ``role`` (``name``: their user name, as the server knows it)."""

    def __init__(self, server: RunningServer, role: str) -> None:
        self.server = server
        self.headers = {"Authorization": f"Bearer {server.token_for(role)}"}
        self.name: str = self.get("/api/v1/me").json()["user"]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._send("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._send("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._send("PUT", path, **kwargs)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.server.url}{path}", headers=headers, timeout=60, **kwargs)

    def page(self, path: str = "/labeling") -> httpx.Response:
        """A page, as a browser asks for it."""
        return self.get(path, headers={"Accept": "text/html"})

    def ok(self, response: httpx.Response) -> Any:
        """The JSON of a 200 or 201 answer."""
        assert response.status_code in (200, 201), response.text
        return response.json()


def problem_detail(response: httpx.Response, status: int) -> str:
    """The detail of an RFC 9457 problem answer with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    detail: str = response.json()["detail"]
    return detail

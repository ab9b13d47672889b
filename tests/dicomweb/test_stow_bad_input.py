"""STOW-RS on bad input: the exact status, a message that names the problem, and stored data untouched.

Every test stores a study first (:func:`stored`) and checks after the bad request that its instances,
pixels and metadata document are exactly as before (PS3.18 §10.5, PS3.4 Annex B.2.3 status codes).
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, generate_uid

from radstack.config import Settings
from tests import authed
from tests.conftest import RunningServer, start_server
from tests.helpers import (
    BOUNDARY,
    DICOM_MULTIPART,
    dicom_body,
    failure_reasons,
    instance_url,
    multipart,
    part10,
    pixels_of,
    response_parts,
    stow,
    synthetic_ct,
)


@dataclass
class Stored:
    """A study stored before the bad input; :meth:`check` proves it is untouched."""

    server: RunningServer
    datasets: list[Dataset]
    document: bytes

    @property
    def study(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    def check(self) -> None:
        store = self.server.platform.store
        assert sorted(r.sop_uid for r in store.list_instances(self.study)) == sorted(
            str(ds.SOPInstanceUID) for ds in self.datasets
        ), "the stored study has exactly its instances"
        assert store.metadata_document(self.study) == self.document, "its metadata document is unchanged"
        for ds in self.datasets:
            response = authed.get(
                instance_url(self.server, ds),
                headers={"Accept": 'multipart/related; type="application/dicom"'},
            )
            assert response.status_code == 200
            [(_type, data)] = response_parts(response)
            assert np.array_equal(
                pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).pixel_array, ds.pixel_array
            )
        assert authed.get(f"{self.server.url}/healthz").status_code == 200


@pytest.fixture
def stored(server: RunningServer) -> Stored:
    study = generate_uid()
    datasets = [synthetic_ct(study=study, seed=n) for n in range(2)]
    assert stow(server, dicom_body(*datasets)).status_code == 200
    return Stored(server, datasets, server.platform.store.metadata_document(study))


def warning(response: httpx.Response) -> str:
    text: str = response.headers.get("Warning", "")
    return text


def problem(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    detail: str = response.json()["detail"]
    return detail


def count(server: RunningServer, ds: Dataset) -> int:
    return len(server.platform.store.list_instances(str(ds.StudyInstanceUID)))


# ----------------------------------------------------------------------------- broken parts
def value_offset(data: bytes, keyword: str) -> int:
    """Where the value of ``keyword`` starts in a Part-10 file."""
    element = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))._dict[Tag(keyword)]
    assert isinstance(element, RawDataElement) and element.value_tell is not None
    return element.value_tell


@pytest.mark.parametrize(
    ("where", "reason", "words"),
    [
        (
            "half",
            0xA900,
            "PixelData holds",
        ),  # inside the pixel data: it is shorter than the pixel module says
        ("PatientName", 0xC000, "truncated"),  # inside a header value: pydicom would read it short
    ],
)
def test_truncated_file(stored: Stored, where: str, reason: int, words: str) -> None:
    ds = synthetic_ct(patient_name="Cut^Here")
    data = part10(ds)
    cut = len(data) // 2 if where == "half" else value_offset(data, where) + 3
    response = stow(stored.server, multipart([("application/dicom", data[:cut])]))
    assert response.status_code == 409
    assert failure_reasons(response) == [reason]
    assert words in warning(response)
    assert count(stored.server, ds) == 0
    stored.check()


def test_truncated_resend_never_replaces_the_stored_instance(stored: Stored) -> None:
    data = part10(stored.datasets[0])
    cut = data[: value_offset(data, "RescaleSlope") + 1]  # the header is whole up to there
    response = stow(stored.server, multipart([("application/dicom", cut)]))
    assert response.status_code == 409 and failure_reasons(response) == [0xC000]
    stored.check()


def test_file_cut_at_the_pixel_data_element_is_refused(stored: Stored) -> None:
    ds = synthetic_ct()
    data = part10(ds)
    cut = value_offset(data, "PixelData") - 12  # explicit VR OW header: tag 4, VR 2, reserved 2, length 4
    response = stow(stored.server, multipart([("application/dicom", data[:cut])]))
    assert response.status_code == 409
    assert count(stored.server, ds) == 0


def test_garbage_bytes(stored: Stored) -> None:
    response = stow(stored.server, multipart([("application/dicom", bytes(range(256)) * 8)]))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xC000]
    assert "not a DICOM Part-10 file" in warning(response)
    stored.check()


def test_non_dicom_part_fails_and_the_valid_one_is_stored(stored: Stored) -> None:
    good = synthetic_ct()
    response = stow(stored.server, multipart([("text/plain", b"hello"), ("application/dicom", part10(good))]))
    assert response.status_code == 202
    assert failure_reasons(response) == [0xC000]
    assert "'text/plain'" in warning(response)
    [referenced] = response.json()["00081199"]["Value"]
    assert referenced["00081155"]["Value"] == [good.SOPInstanceUID]
    assert count(stored.server, good) == 1
    stored.check()


def test_body_ending_before_the_closing_boundary(stored: Stored) -> None:
    complete, cut = synthetic_ct(), synthetic_ct()
    payload = multipart([("application/dicom", part10(complete))], close=False)
    payload += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part10(cut)[:3000]
    response = stow(stored.server, payload)
    assert response.status_code == 202
    assert failure_reasons(response) == [0xC000]
    assert "part 2 ends before the closing multipart boundary" in warning(response)
    assert count(stored.server, complete) == 1, "the complete part is stored"
    assert count(stored.server, cut) == 0, "the cut part is not"
    stored.check()


# ----------------------------------------------------------------------------- broken requests
@pytest.mark.parametrize(
    ("content_type", "payload", "status", "words"),
    [
        ('multipart/related; type="application/dicom"', None, 400, "no boundary parameter"),
        (DICOM_MULTIPART, b"no delimiter anywhere in this body", 400, f"--{BOUNDARY}"),
        ("application/json", None, 415, "'application/json'"),
        (
            f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
            None,
            415,
            "'application/dicom+json'",
        ),
    ],
    ids=["missing-boundary", "no-delimiter", "json", "dicom+json"],
)
def test_malformed_requests(
    stored: Stored, content_type: str, payload: bytes | None, status: int, words: str
) -> None:
    ds = synthetic_ct()
    response = stow(stored.server, payload or dicom_body(ds), content_type=content_type)
    assert response.status_code == status
    assert words in problem(response)
    assert count(stored.server, ds) == 0
    stored.check()


def test_study_in_url_differs_from_the_instance(stored: Stored) -> None:
    other = synthetic_ct()
    response = stow(stored.server, dicom_body(other), study=stored.study)
    assert response.status_code == 409
    assert failure_reasons(response) == [0xA900]
    assert str(other.StudyInstanceUID) in warning(response) and stored.study in warning(response)
    assert count(stored.server, other) == 0
    stored.check()


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"])
def test_invalid_uids_in_the_instance(stored: Stored, keyword: str) -> None:
    for bad in ["1.2.abc", "1..2", "1.02", "1.2.", "9" * 65]:
        ds = synthetic_ct()
        setattr(ds, keyword, bad)
        response = stow(stored.server, dicom_body(ds))
        assert response.status_code == 409, bad
        assert failure_reasons(response) == [0xA900], bad
        assert f"{keyword} '{bad[:60]}" in warning(response)
    stored.check()


def test_pixel_data_shorter_than_rows_columns_frames(stored: Stored) -> None:
    ds = synthetic_ct(rows=32, columns=32, frames=3)  # 3 × 32 × 32 × 2 = 6144 bytes expected
    ds.PixelData = ds.PixelData[:4000]
    response = stow(stored.server, dicom_body(ds))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xA900]
    assert "4000" in warning(response) and "6144" in warning(response)
    stored.check()


def test_unknown_transfer_syntax(stored: Stored) -> None:
    ds = synthetic_ct()
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5")
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    response = stow(stored.server, multipart([("application/dicom", buffer.getvalue())]))
    assert response.status_code == 409
    assert failure_reasons(response) in ([0xC122], [0xC000])
    assert "1.2.3.4.5" in warning(response)
    assert count(stored.server, ds) == 0
    stored.check()


def test_duplicates_in_one_request_and_across_requests(stored: Stored) -> None:
    ds = synthetic_ct()
    data = part10(ds)
    first = stow(stored.server, multipart([("application/dicom", data)] * 2))
    again = stow(stored.server, multipart([("application/dicom", data)]))
    assert (first.status_code, again.status_code) == (200, 200)
    assert len(first.json()["00081199"]["Value"]) == 2 and "00081198" not in first.json()
    assert count(stored.server, ds) == 1, "stored once"
    assert len(stored.server.platform.store.list_versions(str(ds.StudyInstanceUID))) == 1
    stored.check()


# ----------------------------------------------------------------------------- path traversal
ROUTES = [
    ("GET", "/dicomweb/studies/{study}"),
    ("GET", "/dicomweb/studies/{study}/metadata"),
    ("GET", "/dicomweb/studies/{study}/rendered"),
    ("GET", "/dicomweb/studies/{study}/thumbnail"),
    ("GET", "/dicomweb/studies/{study}/series/{series}"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/metadata"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/rendered"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/1"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/1/rendered"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/bulkdata/7FE00010"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/thumbnail"),
    ("GET", "/api/v1/studies/{study}/versions"),
    ("GET", "/api/v1/studies/{study}/versions/1/metadata"),
    ("GET", "/api/v1/studies/{study}/series/{series}/instances/{instance}/frames/1/levels"),
    ("GET", "/api/v1/studies/{study}/series/{series}/instances/{instance}/frames/1?level=0"),
    ("POST", "/dicomweb/studies/{study}"),
    ("POST", "/api/v1/studies/{study}/versions/1/revert"),
    ("PATCH", "/api/v1/studies/{study}"),
    ("DELETE", "/dicomweb/studies/{study}/series/{series}/instances/{instance}"),
    ("DELETE", "/dicomweb/studies/{study}/series/{series}"),
    ("DELETE", "/dicomweb/studies/{study}"),
]
TRAVERSALS = ["..", "1.2/../3", "%2e%2e", "%2F", "1.2.3..", "..%2F..%2F..%2Fetc%2Fpasswd", "1.2%2F..%2F3"]


def raw_request(
    server: RunningServer, method: str, path: str, payload: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send ``path`` byte for byte (httpx would resolve dot segments and re-encode first)."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    try:
        connection.request(method, path, body=payload or None, headers={**server.auth, **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_path_traversal_in_every_uid_position(stored: Stored, tmp_path: Path, bad: str) -> None:
    sentinel = tmp_path / "outside.txt"
    sentinel.write_bytes(b"secret outside the data dir")
    ds = stored.datasets[0]
    uids = {"study": stored.study, "series": str(ds.SeriesInstanceUID), "instance": str(ds.SOPInstanceUID)}
    payloads = {
        "POST": dicom_body(synthetic_ct(study=stored.study)),
        "PATCH": b'{"attributes": {"PatientName": "X"}}',
    }
    content_types = {"POST": DICOM_MULTIPART, "PATCH": "application/json"}
    for method, template in ROUTES:
        for position in [name for name in uids if "{" + name + "}" in template]:
            path = template.format(**{**uids, position: bad})
            status, data = raw_request(
                stored.server,
                method,
                path,
                payloads.get(method, b""),
                {"Content-Type": content_types[method]} if method in content_types else None,
            )
            allowed = (400, 404, 405)
            assert status in allowed, f"{method} {path} answered {status}"
            assert b"secret" not in data
            if status == 400:
                assert b"not a valid UID" in data, f"{method} {path}: {data[:200]!r}"
    assert sentinel.read_bytes() == b"secret outside the data dir"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "outside.txt"], "nothing written outside"
    stored.check()


# ----------------------------------------------------------------------------- size limit
@pytest.fixture
def small_server(settings: Settings) -> Iterator[RunningServer]:
    yield from start_server(settings.model_copy(update={"max_request_bytes": 20_000}))


def test_body_over_the_limit_is_refused_before_it_is_read(small_server: RunningServer) -> None:
    # Only the headers are sent: a server that waited for the announced gigabyte would time out.
    host, port = small_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                "POST /dicomweb/studies HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                f"Authorization: Bearer {small_server.token}\r\n"
                f"Content-Type: {DICOM_MULTIPART}\r\nContent-Length: 1000000000\r\n\r\n"
            ).encode()
        )
        received = b""
        while chunk := sock.recv(65536):  # to the server's close: the head and body may come apart
            received += chunk
        head = received.decode("latin-1")
    assert head.startswith("HTTP/1.1 413")
    assert "exceeds the limit of 20000 bytes" in head
    assert authed.get(f"{small_server.url}/healthz").status_code == 200


def test_chunked_body_growing_past_the_limit(small_server: RunningServer) -> None:
    big = synthetic_ct(rows=256, columns=256)  # about 130 kB, no Content-Length: the stream is counted

    def chunks() -> Iterator[bytes]:
        payload = dicom_body(big)
        for start in range(0, len(payload), 4096):
            yield payload[start : start + 4096]

    response = authed.post(
        f"{small_server.dicomweb}/studies", content=chunks(), headers={"Content-Type": DICOM_MULTIPART}
    )
    assert response.status_code == 413
    assert "20000" in problem(response)
    assert count(small_server, big) == 0
    small_ds = synthetic_ct(rows=16, columns=16)
    assert stow(small_server, dicom_body(small_ds)).status_code == 200, "a body under the limit still works"
    assert np.array_equal(
        pixels_of(small_ds)[0],
        pydicom.dcmread(
            pydicom.filebase.DicomBytesIO(
                response_parts(authed.get(instance_url(small_server, small_ds)))[0][1]
            )
        ).pixel_array,
    )
    assert authed.get(f"{small_server.url}/healthz").status_code == 200

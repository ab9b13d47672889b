"""STOW-RS: bad input gets a clear answer, and what was already stored stays untouched (PS3.18 §10.5)."""

from __future__ import annotations

import copy
import http.client
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from radstack.config import Settings
from radstack.errors import OutOfResources
from radstack.store.blobs import LocalBlobStore
from radstack.store.studies import StudyStore
from tests.conftest import RunningServer, start_server

DICOM_MULTIPART = 'multipart/related; type="application/dicom"; boundary=b0undary'


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct(**changes: object) -> Dataset:
    """CT_small with fresh UIDs (deep copy: pydicom's copy() shares elements)."""
    ds = copy.deepcopy(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def body(*parts: tuple[str, bytes], close: bool = True) -> bytes:
    out = b""
    for content_type, data in parts:
        out += f"--b0undary\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    return out + (b"--b0undary--\r\n" if close else b"")


def stow(
    server: RunningServer, payload: bytes, *, study: str | None = None, content_type: str = DICOM_MULTIPART
) -> httpx.Response:
    url = f"{server.dicomweb}/studies" + (f"/{study}" if study else "")
    return httpx.post(url, content=payload, headers={"Content-Type": content_type}, timeout=60)


def failure_reasons(response: httpx.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


@pytest.fixture
def stored(server: RunningServer) -> Iterator[Dataset]:
    """A study stored before the bad input arrives; the test checks it is untouched afterwards."""
    ds = ct()
    assert stow(server, body(("application/dicom", part10(ds)))).status_code == 200
    yield ds
    back = httpx.get(
        f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert back.status_code == 200, "the study stored before the bad input must still be retrievable"
    payload = back.content
    start = payload.index(b"\r\n\r\n") + 4
    rebuilt = pydicom.dcmread(io.BytesIO(payload[start:]))
    assert np.array_equal(rebuilt.pixel_array, ds.pixel_array)
    sops = [r.sop_uid for r in server.platform.store.list_instances(str(ds.StudyInstanceUID))]
    assert ds.SOPInstanceUID in sops
    assert httpx.get(f"{server.url}/healthz").text == "ok"


def test_truncated_file_is_refused_with_reason(server: RunningServer, stored: Dataset) -> None:
    data = part10(ct())
    response = stow(server, body(("application/dicom", data[: len(data) // 2])))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xA900]
    assert "PixelData holds" in response.headers["Warning"]


def test_garbage_is_cannot_understand(server: RunningServer, stored: Dataset) -> None:
    response = stow(server, body(("application/dicom", b"this is not DICOM at all" * 20)))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xC000]
    assert "not a DICOM Part-10 file" in response.headers["Warning"]


def test_non_dicom_part_fails_alone(server: RunningServer, stored: Dataset) -> None:
    good = ct()
    response = stow(server, body(("text/plain", b"hello"), ("application/dicom", part10(good))))
    assert response.status_code == 202
    assert failure_reasons(response) == [0xC000]
    assert "text/plain" in response.headers["Warning"]
    referenced = response.json()["00081199"]["Value"]
    assert referenced[0]["00081155"]["Value"] == [good.SOPInstanceUID]


@pytest.mark.parametrize(
    ("content_type", "status", "words"),
    [
        ('multipart/related; type="application/dicom"', 400, "no boundary"),
        ("application/json", 415, "application/json"),
        (
            'multipart/related; type="application/dicom+json"; boundary=b0undary',
            415,
            "application/dicom+json",
        ),
    ],
)
def test_wrong_media_types(
    server: RunningServer, stored: Dataset, content_type: str, status: int, words: str
) -> None:
    response = stow(server, body(("application/dicom", part10(ct()))), content_type=content_type)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"]


def test_body_without_delimiter_is_bad_request(server: RunningServer, stored: Dataset) -> None:
    response = stow(server, b"no multipart here at all")
    assert response.status_code == 400
    assert "--b0undary" in response.json()["detail"]


def test_body_cut_before_closing_boundary(server: RunningServer, stored: Dataset) -> None:
    complete, cut = ct(), ct()
    payload = body(("application/dicom", part10(complete)))[: -len(b"--b0undary--\r\n")]
    payload += b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + part10(cut)[:5000]
    response = stow(server, payload)
    assert response.status_code == 202
    assert failure_reasons(response) == [0xC000]
    assert "closing multipart boundary" in response.headers["Warning"]
    store = server.platform.store
    assert store.list_instances(str(complete.StudyInstanceUID)), "the complete part is stored"
    assert not store.list_instances(str(cut.StudyInstanceUID)), "the cut part is not"


def test_study_in_url_must_match(server: RunningServer, stored: Dataset) -> None:
    other = ct()
    response = stow(server, body(("application/dicom", part10(other))), study=str(stored.StudyInstanceUID))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xA900]
    assert "named in the request URL" in response.headers["Warning"]
    assert not server.platform.store.list_instances(str(other.StudyInstanceUID))


@pytest.mark.parametrize("bad", ["1.2.abc", "1..2", "1.02.3", "1.2.", "1" * 65])
def test_invalid_uids_in_the_instance(server: RunningServer, stored: Dataset, bad: str) -> None:
    ds = ct()
    ds.SOPInstanceUID = bad
    ds.file_meta.MediaStorageSOPInstanceUID = bad
    response = stow(server, body(("application/dicom", part10(ds))))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xA900]
    assert bad[:60] in response.headers["Warning"]


@pytest.mark.parametrize("bad", ["..", "1.2/../3", "%2e%2e", "1.2.3..", "..%2F..%2Fetc", "1.2%2F3"])
def test_path_traversal_in_every_uid_position(server: RunningServer, stored: Dataset, bad: str) -> None:
    study, series, sop = stored.StudyInstanceUID, stored.SeriesInstanceUID, stored.SOPInstanceUID
    urls = [
        f"/studies/{bad}",
        f"/studies/{bad}/metadata",
        f"/studies/{study}/series/{bad}",
        f"/studies/{study}/series/{bad}/metadata",
        f"/studies/{study}/series/{series}/instances/{bad}",
        f"/studies/{study}/series/{series}/instances/{bad}/frames/1",
        f"/studies/{study}/series/{series}/instances/{sop}/bulkdata/{bad}",
        f"/studies/{bad}/series",
        f"/studies/{bad}/rendered",
    ]
    for url in urls:
        status, content_type = raw_request(server, "GET", f"/dicomweb{url}")
        assert status in (400, 404), f"{url} answered {status}"
        assert content_type == "application/problem+json"
    payload = body(("application/dicom", part10(ct())))
    status, _ = raw_request(
        server, "POST", f"/dicomweb/studies/{bad}", payload, {"Content-Type": DICOM_MULTIPART}
    )
    assert status in (400, 404)
    status, _ = raw_request(server, "DELETE", f"/dicomweb/studies/{bad}")
    assert status in (400, 404, 405)


def raw_request(
    server: RunningServer,
    method: str,
    path: str,
    payload: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str | None]:
    """Send ``path`` exactly as written (httpx would resolve dot segments before sending)."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=10)
    try:
        connection.request(method, path, body=payload, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("content-type")
    finally:
        connection.close()


def test_pixel_data_shorter_than_the_pixel_module(server: RunningServer, stored: Dataset) -> None:
    ds = ct()
    ds.PixelData = ds.PixelData[:1000]
    response = stow(server, body(("application/dicom", part10(ds))))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xA900]
    warning = response.headers["Warning"]
    assert "1000 bytes" in warning and "32768" in warning


def test_unknown_transfer_syntax(server: RunningServer, stored: Dataset) -> None:
    ds = ct()
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    response = stow(server, body(("application/dicom", buffer.getvalue())))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xC122]
    assert "1.2.3.4.5" in response.headers["Warning"]


def test_duplicates_are_stored_once(server: RunningServer, stored: Dataset) -> None:
    ds = ct()
    data = part10(ds)
    first = stow(server, body(("application/dicom", data), ("application/dicom", data)))
    second = stow(server, body(("application/dicom", data)))
    assert first.status_code == 200 and second.status_code == 200
    assert len(first.json()["00081199"]["Value"]) == 2
    store = server.platform.store
    assert len(store.list_instances(str(ds.StudyInstanceUID))) == 1
    assert [v.version for v in store.list_versions(str(ds.StudyInstanceUID))] == [1], (
        "a duplicate makes no version"
    )


def test_body_over_the_limit_is_refused_early(settings: Settings) -> None:
    for server in start_server(settings.model_copy(update={"max_request_bytes": 20_000})):
        response = stow(server, body(("application/dicom", part10(ct()))))
        assert response.status_code == 413
        assert "20000" in response.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the stream passes the limit
            payload = body(("application/dicom", part10(ct())))
            for start in range(0, len(payload), 4096):
                yield payload[start : start + 4096]

        response = httpx.post(
            f"{server.dicomweb}/studies", content=chunks(), headers={"Content-Type": DICOM_MULTIPART}
        )
        assert response.status_code == 413
        assert httpx.get(f"{server.url}/healthz").text == "ok"


class _FailingJsonPuts(LocalBlobStore):
    """A blob store that fails after the frames and the header are written: a crash mid-ingest."""

    def __init__(self, inner: LocalBlobStore, error: Exception) -> None:
        super().__init__(inner.root)
        self.error = error

    def put(self, key: str, data: bytes) -> None:
        if key.startswith("j/"):
            raise self.error
        super().put(key, data)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError("simulated crash between blob write and index commit"), 0x0110),
        (OutOfResources("disk full"), 0xA700),
    ],
)
def test_failure_between_blob_write_and_commit_leaves_nothing_visible(
    server: RunningServer, stored: Dataset, error: Exception, reason: int
) -> None:
    store: StudyStore = server.platform.store
    healthy = store.blobs
    assert isinstance(healthy, LocalBlobStore)
    ds = ct(StudyInstanceUID=stored.StudyInstanceUID)
    before = store.metadata_document(str(stored.StudyInstanceUID))
    store.blobs = _FailingJsonPuts(healthy, error)
    try:
        response = stow(server, body(("application/dicom", part10(ds))))
    finally:
        store.blobs = healthy
    assert response.status_code == 409
    assert failure_reasons(response) == [reason]
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert (
        httpx.get(f"{server.dicomweb}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}").status_code
        == 404
    )
    assert [r.sop_uid for r in store.list_instances(str(ds.StudyInstanceUID))] == [stored.SOPInstanceUID]
    assert store.metadata_document(str(stored.StudyInstanceUID)) == before
    # The same file sent again once the store is healthy is stored and reads back intact.
    assert stow(server, body(("application/dicom", part10(ds)))).status_code == 200
    assert len(store.list_instances(str(ds.StudyInstanceUID))) == 2

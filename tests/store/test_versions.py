"""Study versions through the native API: update, delete, revert, replace; on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from radstack.config import Settings
from radstack.ingest.pipeline import ingest_dataset
from radstack.platform import Platform
from radstack.store import versions
from radstack.store.models import InstanceRow
from radstack.store.studies import BatchReason
from tests import authed
from tests.conftest import RunningServer

BOUNDARY = "v3rsions"


def make_study(count: int = 3) -> list[Dataset]:
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    study, series = generate_uid(), generate_uid()
    out: list[Dataset] = []
    for number in range(1, count + 1):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.PatientName = "Original^Name"
        pixels = ds.pixel_array.copy()
        pixels[0, :number] = 1000 + number  # every instance has its own pixels
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out


def stow(server: RunningServer, datasets: list[Dataset]) -> httpx.Response:
    payload = b""
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        payload += (
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue() + b"\r\n"
        )
    payload += f"--{BOUNDARY}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    return authed.post(f"{server.dicomweb}/studies", content=payload, headers={"Content-Type": content_type})


def names(document: list[dict[str, Any]]) -> set[str]:
    return {item["00100010"]["Value"][0]["Alphabetic"] for item in document}


def version_metadata(server: RunningServer, study: str, version: int) -> list[dict[str, Any]]:
    response = authed.get(f"{server.url}/api/v1/studies/{study}/versions/{version}/metadata")
    assert response.status_code == 200
    result: list[dict[str, Any]] = response.json()
    return result


def current_metadata(server: RunningServer, study: str) -> httpx.Response:
    return authed.get(f"{server.dicomweb}/studies/{study}/metadata")


def frame(server: RunningServer, ds: Dataset) -> np.ndarray:
    url = (
        f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    response = authed.get(url, headers={"Accept": "application/octet-stream"})
    assert response.status_code == 200
    return np.frombuffer(response.content, dtype="<i2").reshape(ds.Rows, ds.Columns)


def test_update_delete_revert(backend_server: RunningServer) -> None:
    server = backend_server
    datasets = make_study()
    study = str(datasets[0].StudyInstanceUID)
    assert stow(server, datasets).status_code == 200

    update = authed.patch(
        f"{server.url}/api/v1/studies/{study}", json={"attributes": {"PatientName": "Renamed^Patient"}}
    )
    assert update.status_code == 200 and update.json()["version"] == 2
    listed = authed.get(f"{server.url}/api/v1/studies/{study}/versions").json()
    assert [v["version"] for v in listed] == [1, 2]
    assert names(current_metadata(server, study).json()) == {"Renamed^Patient"}
    assert names(version_metadata(server, study, 1)) == {"Original^Name"}, "version 1 keeps the old name"
    assert np.array_equal(frame(server, datasets[1]), datasets[1].pixel_array), "updates never touch pixels"

    revert = authed.post(f"{server.url}/api/v1/studies/{study}/versions/1/revert")
    assert revert.json()["version"] == 3
    assert names(current_metadata(server, study).json()) == {"Original^Name"}
    for ds in datasets:
        assert np.array_equal(frame(server, ds), ds.pixel_array), "a revert keeps every instance's pixels"

    gone = datasets[2]
    url = f"{server.dicomweb}/studies/{study}/series/{gone.SeriesInstanceUID}/instances/{gone.SOPInstanceUID}"
    deleted = authed.delete(url)
    assert deleted.status_code == 204 and deleted.headers["X-Radstack-Study-Version"] == "4"
    assert authed.get(f"{url}/metadata").status_code == 404
    assert len(current_metadata(server, study).json()) == 2
    assert len(version_metadata(server, study, 3)) == 3, "the deleted instance is still in version 3"

    assert authed.delete(f"{server.dicomweb}/studies/{study}").status_code == 204
    assert current_metadata(server, study).status_code == 404
    assert authed.get(f"{server.dicomweb}/studies/{study}").status_code == 404
    assert authed.get(f"{server.dicomweb}/studies", params={"StudyInstanceUID": study}).json() == []

    assert authed.post(f"{server.url}/api/v1/studies/{study}/versions/3/revert").json()["version"] == 6
    assert len(current_metadata(server, study).json()) == 3
    for ds in datasets:
        assert np.array_equal(frame(server, ds), ds.pixel_array)

    reasons = [v["reason"] for v in authed.get(f"{server.url}/api/v1/studies/{study}/versions").json()]
    assert reasons == ["stow", "update", "revert", "delete", "delete", "revert"]


def test_update_refuses_uids_and_unknown_attributes(backend_server: RunningServer) -> None:
    server = backend_server
    datasets = make_study(1)
    study = str(datasets[0].StudyInstanceUID)
    stow(server, datasets)
    for attributes, words in [
        ({"StudyInstanceUID": "1.2.3"}, "0020000D"),
        ({"Rows": 4}, "00280010"),
        ({"NotAKeyword": "x"}, "NotAKeyword"),
    ]:
        response = authed.patch(f"{server.url}/api/v1/studies/{study}", json={"attributes": attributes})
        assert response.status_code == 400
        assert words in response.json()["detail"]
    assert authed.get(f"{server.url}/api/v1/studies/{study}/versions/9/metadata").status_code == 404
    assert [v["version"] for v in authed.get(f"{server.url}/api/v1/studies/{study}/versions").json()] == [1]


def test_same_uid_new_content_is_a_new_version(backend_server: RunningServer) -> None:
    server = backend_server
    original = make_study(1)[0]
    study = str(original.StudyInstanceUID)
    assert stow(server, [original]).status_code == 200
    assert stow(server, [original]).status_code == 200, "the same content again: success"
    changed = copy.deepcopy(original)
    pixels = original.pixel_array.copy()
    pixels[10:20, 10:20] = 2000
    changed.PixelData = pixels.tobytes()
    changed.ImageComments = "re-acquired"  # content attributes change with the pixels
    response = stow(server, [changed])
    assert response.status_code == 200
    assert "stays readable in the previous study version" in response.headers["Warning"]
    assert np.array_equal(frame(server, changed), pixels)
    versions = authed.get(f"{server.url}/api/v1/studies/{study}/versions").json()
    assert [v["version"] for v in versions] == [1, 2]
    document = authed.get(
        f"{server.url}/api/v1/studies/{study}/versions/1/metadata", headers={"Accept-Encoding": "gzip"}
    )
    assert document.headers["content-encoding"] == "gzip", "served as precompressed"
    assert len(document.json()) == 1  # httpx undoes the gzip
    assert document.json()[0]["00204000"]["Value"] == ["Uncompressed"], "version 1 keeps the old attributes"
    assert current_metadata(server, study).json()[0]["00204000"]["Value"] == ["re-acquired"]
    assert len(server.platform.store.list_instances(study, version=1)) == 1
    old = server.platform.store.list_instances(study, version=1)[0]
    new = server.platform.store.list_instances(study)[0]
    assert old.frames != new.frames, "the old content keeps its own frames"


def test_a_revert_restores_each_instance_as_it_was(tmp_path: Path) -> None:
    """A reverted instance is its old record again (frames, header, hash, pixel module, render
    defaults, instance number), in a new row that a de-identified view still finds by pseudonym."""
    platform = Platform.open(Settings(data_dir=tmp_path, ingest_processes=0))
    store = platform.store
    try:
        datasets = make_study(2)
        study = str(datasets[0].StudyInstanceUID)
        with store.batch(BatchReason.STOW) as batch:
            assert all(ingest_dataset(store, ds, batch).ok for ds in datasets)
        before = store.list_instances(study)
        assert [r.instance_number for r in before] == [1, 2]

        versions.update_attributes(store, study, {"PatientName": "Renamed^Patient"})
        renamed = store.list_instances(study)
        assert {r.header_key for r in renamed}.isdisjoint(r.header_key for r in before)
        assert [r.frames for r in renamed] == [r.frames for r in before], "an update shares the frames"

        assert versions.revert(store, study, 1) == 3
        after = store.list_instances(study)
        assert [replace(r, id=None, version_added=None) for r in after] == [
            replace(r, id=None, version_added=None) for r in before
        ]
        assert [r.version_added for r in after] == [3, 3]
        assert {r.id for r in after}.isdisjoint(r.id for r in before), "new rows; old ones stay in version 1"
        assert store.pseudonym is not None
        with store.engine.connect() as connection:
            current = connection.execute(
                select(InstanceRow.sop_uid, InstanceRow.pseudo_uid).where(
                    InstanceRow.version_removed.is_(None)
                )
            ).all()
        assert sorted(current) == sorted((r.sop_uid, store.pseudonym(r.sop_uid)) for r in after)
    finally:
        platform.close()

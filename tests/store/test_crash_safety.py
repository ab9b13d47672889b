"""Write order: blobs first, the index row last, so a failure in between leaves nothing visible.

The failures are injected into the real STOW → ingest pipeline → store path, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from radstack.store.studies import AlsoCommit, Batch, CommitOutcome, InstanceRecord, StudyStore
from tests import authed
from tests.conftest import RunningServer
from tests.helpers import (
    FullDisk,
    dicom_body,
    failure_reasons,
    instance_url,
    response_parts,
    stow,
    synthetic_ct,
)


@pytest.fixture
def server(backend_server: RunningServer) -> RunningServer:
    return backend_server


@pytest.fixture
def existing(server: RunningServer) -> Dataset:
    """A study already stored; the failed instance is sent into the same study."""
    ds = synthetic_ct(seed=1)
    assert stow(server, dicom_body(ds)).status_code == 200
    return ds


@dataclass
class CommitCrash:
    """Makes ``commit_instance`` raise after the pipeline has written every blob, until healed."""

    store: StudyStore
    attempted: list[InstanceRecord] = field(default_factory=list)
    active: bool = True

    def commit_instance(
        self, new: InstanceRecord, batch: Batch, also: AlsoCommit | None = None
    ) -> CommitOutcome:
        if not self.active:
            return StudyStore.commit_instance(self.store, new, batch, also)
        self.attempted.append(new)
        for key in [*new.frames, new.header_key, new.json_key]:
            assert self.store.blobs.exists(key), f"blob {key} is written before the commit"
        raise RuntimeError("simulated crash between blob write and index commit")


@pytest.fixture
def crash(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> CommitCrash:
    injected = CommitCrash(server.platform.store)
    monkeypatch.setattr(server.platform.store, "commit_instance", injected.commit_instance)
    return injected


def retrieve(server: RunningServer, ds: Dataset) -> httpx.Response:
    return authed.get(
        instance_url(server, ds), headers={"Accept": 'multipart/related; type="application/dicom"'}
    )


def assert_invisible(server: RunningServer, existing: Dataset, failed: Dataset, document: bytes) -> None:
    store: StudyStore = server.platform.store
    study = str(existing.StudyInstanceUID)
    assert [r.sop_uid for r in store.list_instances(study)] == [existing.SOPInstanceUID], "no index row"
    assert retrieve(server, failed).status_code == 404
    assert authed.get(f"{instance_url(server, failed)}/metadata").status_code == 404
    assert store.metadata_document(study) == document, "the study's metadata document is unchanged"
    assert [v.version for v in store.list_versions(study)] == [1], "no new study version"
    assert retrieve(server, existing).status_code == 200


def assert_reads_back(server: RunningServer, ds: Dataset) -> None:
    response = retrieve(server, ds)
    assert response.status_code == 200
    [(_type, data)] = response_parts(response)
    back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    assert np.array_equal(back.pixel_array, ds.pixel_array)
    assert back.PatientName == ds.PatientName


def test_crash_before_the_index_commit(server: RunningServer, existing: Dataset, crash: CommitCrash) -> None:
    failed = synthetic_ct(study=str(existing.StudyInstanceUID), seed=2)
    document = server.platform.store.metadata_document(str(existing.StudyInstanceUID))
    response = stow(server, dicom_body(failed))
    assert [new.sop_uid for new in crash.attempted] == [failed.SOPInstanceUID], (
        "the pipeline reached the commit"
    )
    assert response.status_code == 409
    assert failure_reasons(response) == [0x0110]
    assert "internal error while storing" in response.headers["Warning"]
    assert_invisible(server, existing, failed, document)

    # Once the store is healthy, the same file is stored and reads back (its orphaned blobs reused).
    crash.active = False
    assert stow(server, dicom_body(failed)).status_code == 200
    assert_reads_back(server, failed)
    assert len(server.platform.store.list_instances(str(existing.StudyInstanceUID))) == 2


def test_full_disk_is_out_of_resources(server: RunningServer, existing: Dataset) -> None:
    store: StudyStore = server.platform.store
    failed = synthetic_ct(study=str(existing.StudyInstanceUID), seed=3)
    other_study = synthetic_ct(seed=4)
    document = store.metadata_document(str(existing.StudyInstanceUID))
    healthy, full = store.blobs, FullDisk(store.blobs)
    store.blobs = full
    try:
        response = stow(server, dicom_body(failed, other_study))
    finally:
        store.blobs = healthy
    assert full.refused, "the pipeline tried to write blobs"
    assert response.status_code == 409
    assert failure_reasons(response) == [0xA700, 0xA700]
    assert "full" in response.headers["Warning"]
    assert_invisible(server, existing, failed, document)
    assert store.list_instances(str(other_study.StudyInstanceUID)) == []
    assert authed.get(f"{server.dicomweb}/studies/{other_study.StudyInstanceUID}/metadata").status_code == 404

    assert stow(server, dicom_body(failed)).status_code == 200
    assert_reads_back(server, failed)


def test_failed_replacement_keeps_the_old_content(
    server: RunningServer, existing: Dataset, crash: CommitCrash
) -> None:
    """A crash while replacing an instance's content leaves the old content current."""
    changed = synthetic_ct(
        study=str(existing.StudyInstanceUID),
        series=str(existing.SeriesInstanceUID),
        sop=str(existing.SOPInstanceUID),
        seed=9,
    )
    assert not np.array_equal(changed.pixel_array, existing.pixel_array)
    response = stow(server, dicom_body(changed))
    assert failure_reasons(response) == [0x0110]
    assert_reads_back(server, existing)
    assert [v.version for v in server.platform.store.list_versions(str(existing.StudyInstanceUID))] == [1]


def test_unrelated_study_is_not_created_by_a_crash(server: RunningServer, crash: CommitCrash) -> None:
    ds = synthetic_ct(study=generate_uid())
    assert failure_reasons(stow(server, dicom_body(ds))) == [0x0110]
    assert authed.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/metadata").status_code == 404
    assert authed.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}").status_code == 404
    assert authed.get(f"{server.url}/api/v1/studies/{ds.StudyInstanceUID}/versions").status_code == 404

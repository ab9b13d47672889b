"""The drop folder: settled files are ingested and moved; a file is never removed unless stored."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from radstack.config import Settings
from radstack.security.crypto import EncryptedBlobStore
from radstack.store.blobs import LocalBlobStore
from tests import authed
from tests.conftest import RunningServer, free_port, start_server
from tests.helpers import FullDisk, part10, synthetic_ct


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(
        data_dir=tmp_path / "data",
        http_port=free_port(),
        dicom_port=0,
        ingest_processes=0,
        inbox_dir=tmp_path / "inbox",
        inbox_settle_seconds=1.5,
    )
    yield from start_server(settings)


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def test_dropped_files_are_stored_or_set_aside_with_a_reason(
    watched: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="radstack.ingest.watch")
    inbox = tmp_path / "inbox"
    (inbox / "incoming" / "modality-1").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm") or "", inbox / "incoming" / "modality-1" / "ct.dcm")
    (inbox / "incoming" / "garbage.dcm").write_bytes(b"\x00" * 300)

    # A file still being copied: half of it now, the rest after a pause shorter than the settle time.
    slow = part10(synthetic_ct(seed=3, study="1.2.826.0.1.3680043.8.498.44"))
    growing = inbox / "incoming" / "slow.dcm"
    growing.write_bytes(slow[: len(slow) // 2])
    time.sleep(1.0)
    with growing.open("ab") as handle:
        handle.write(slow[len(slow) // 2 :])

    wait_for(inbox / "processed" / "modality-1" / "ct.dcm")
    wait_for(inbox / "processed" / "slow.dcm")
    wait_for(inbox / "failed" / "garbage.dcm.reason.json")
    assert (inbox / "failed" / "garbage.dcm").read_bytes() == b"\x00" * 300, (
        "a refused file is kept as it was"
    )
    reason = json.loads((inbox / "failed" / "garbage.dcm.reason.json").read_text())
    assert reason["status"] == 0xC000 and "not a DICOM Part-10 file" in reason["reason"]
    assert "force=True" not in reason["reason"], "no advice about pydicom's options"
    assert not any((inbox / "incoming").rglob("*.dcm"))

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm") or "")
    for study in (ct.StudyInstanceUID, "1.2.826.0.1.3680043.8.498.44"):
        assert authed.get(f"{watched.dicomweb}/studies/{study}/instances").status_code == 200
    deadline = time.monotonic() + 30
    while True:  # the file is moved before its job is recorded as finished
        jobs = authed.get(f"{watched.url}/api/v1/jobs", params={"kind": "inbox-file"}).json()
        if all(j["finished_at"] for j in jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    states = {j["params"]["path"]: j["state"] for j in jobs}
    assert states == {
        "modality-1/ct.dcm": "SUCCEEDED",
        "slow.dcm": "SUCCEEDED",
        "garbage.dcm": "DONE_WITH_ERRORS",
    }
    refused = next(j for j in jobs if j["params"]["path"] == "garbage.dcm")
    assert "not a DICOM Part-10 file" in refused["last_error"]
    assert (
        refused["progress"]["outcome"] == "refused"
        and refused["progress"]["moved_to"] == "failed/garbage.dcm"
    )

    # The refusal is logged (the path and the reason), and the Jobs page lists it.
    logged = [r.getMessage() for r in caplog.records if r.name == "radstack.ingest.watch"]
    assert any(
        "refused garbage.dcm (moved to failed/): not a DICOM Part-10 file" in line for line in logged
    ), logged
    page = authed.get(f"{watched.url}/jobs", headers={"Accept": "text/html"})
    assert page.status_code == 200
    section = page.text[page.text.index('id="inbox"') : page.text.index('id="dead"')]
    assert "<code>failed/garbage.dcm</code>" in section and "not a DICOM Part-10 file" in section
    assert "ct.dcm" not in section and "slow.dcm" not in section


def test_a_file_stays_in_the_inbox_until_it_is_stored(
    watched: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = watched.platform.store
    healthy = store.blobs
    assert isinstance(healthy, EncryptedBlobStore) and isinstance(healthy.inner, LocalBlobStore)
    monkeypatch.setattr(store, "blobs", FullDisk(healthy))
    watched.platform.jobs.backoff_seconds = 0.1
    inbox = tmp_path / "inbox"
    dropped = inbox / "incoming" / "ct.dcm"
    dropped.write_bytes(part10(synthetic_ct(seed=9)))

    deadline = time.monotonic() + 30
    while (
        not (jobs := authed.get(f"{watched.url}/api/v1/jobs", params={"kind": "inbox-file"}).json())
        or jobs[0]["attempts"] < 2
    ):
        assert time.monotonic() < deadline, "the job was not retried"
        time.sleep(0.1)
    assert "is full" in jobs[0]["last_error"]
    assert dropped.exists(), "nothing is moved or removed while it cannot be stored"
    assert not any((inbox / "processed").iterdir()) and not any((inbox / "failed").iterdir())

    monkeypatch.setattr(store, "blobs", healthy)  # space is freed: the next retry stores it
    wait_for(inbox / "processed" / "ct.dcm")
    assert not dropped.exists()


def test_a_bucket_inbox_is_polled_like_the_directory(tmp_path: Path, s3_bucket: str) -> None:
    from radstack.store.blobs import S3BlobStore

    settings = Settings(
        data_dir=tmp_path / "data",
        http_port=free_port(),
        dicom_port=0,
        ingest_processes=0,
        watch_inbox=False,
        inbox_url=f"s3://{s3_bucket}/dropbox",
        inbox_settle_seconds=0.5,
    )
    bucket = S3BlobStore(s3_bucket, "dropbox")
    good = synthetic_ct(seed=21, study="1.2.826.0.1.3680043.8.498.45")
    bucket.put("incoming/scanner-2/good.dcm", part10(good))
    bucket.put("incoming/bad.dcm", b"DICM? no")
    for server in start_server(settings):
        deadline = time.monotonic() + 30
        while not (
            bucket.exists("processed/scanner-2/good.dcm") and bucket.exists("failed/bad.dcm.reason.json")
        ):
            assert time.monotonic() < deadline, [info.key for info in bucket.list("incoming")]
            time.sleep(0.1)
        assert [info.key for info in bucket.list("incoming")] == []
        assert bucket.get("failed/bad.dcm") == b"DICM? no"
        assert json.loads(bucket.get("failed/bad.dcm.reason.json"))["status"] == 0xC000
        assert authed.get(f"{server.dicomweb}/studies/{good.StudyInstanceUID}/instances").status_code == 200
        assert not (tmp_path / "data" / "inbox").exists(), "the directory inbox is off"

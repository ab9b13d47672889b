"""Garbage collection removes what a crash leaves behind and nothing that any version still uses."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from radstack.config import Settings
from radstack.ingest.pipeline import ingest_file
from radstack.platform import Platform
from radstack.store import retrieve, versions
from radstack.store.blobs import content_key
from radstack.store.gc import collect_garbage
from radstack.store.studies import Batch, BatchReason


@pytest.fixture(params=["file", "s3"])
def blob_url(request: pytest.FixtureRequest) -> str:
    """The default blob store in the data dir, or a bucket on a real S3-protocol server."""
    return "" if request.param == "file" else f"s3://{request.getfixturevalue('s3_bucket')}/gc"


def test_gc_removes_orphans_and_keeps_every_version(tmp_path: Path, blob_url: str) -> None:
    platform = Platform.open(Settings(data_dir=tmp_path, blob_url=blob_url, ingest_processes=0))
    store = platform.store
    try:
        path = Path(get_testdata_file("CT_small.dcm") or "")
        original = pydicom.dcmread(path)
        assert ingest_file(store, path, Batch(BatchReason.STOW)).ok
        study = str(original.StudyInstanceUID)
        versions.update_attributes(store, study, {"PatientName": "Renamed^Patient"})
        store.metadata_document(study)  # builds the current documents
        orphan = b"left behind by a crash between blob write and index commit"
        orphan_key = content_key("f", orphan)
        store.blobs.put(orphan_key, orphan)

        kept = collect_garbage(store, grace_seconds=3600)
        assert kept.removed == 0 and store.blobs.exists(orphan_key), "young blobs are in-flight ingests"

        report = collect_garbage(store, grace_seconds=0)
        assert not store.blobs.exists(orphan_key)
        assert report.removed >= 1
        # Version 1 (before the rename) and version 2 both still read back with their pixels.
        for version in (1, 2):
            assert store.version_document(study, version)
        record = store.get_instance(study, None, str(original.SOPInstanceUID))
        rebuilt = pydicom.dcmread(io.BytesIO(retrieve.part10(store, record, "1.2.840.10008.1.2.1")))
        assert np.array_equal(rebuilt.pixel_array, original.pixel_array)
        assert str(rebuilt.PatientName) == "Renamed^Patient"
        first = store.list_instances(study, version=1)[0]
        assert str(pydicom.dcmread(io.BytesIO(retrieve.part10(store, first, None))).PatientName) == str(
            original.PatientName
        )
    finally:
        platform.close()

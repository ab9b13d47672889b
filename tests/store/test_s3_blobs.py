"""The S3 blob store against a real S3-protocol server (moto in server mode, its own process).

boto3 finds the server only through ``AWS_ENDPOINT_URL_S3`` (see the ``s3_bucket`` fixture), the
variable every process of a deployment reads, spawned ingest workers included.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pydicom
import pytest
from botocore.awsrequest import AWSResponse
from PIL import Image

from radstack.config import Settings
from radstack.errors import NotFound
from radstack.store.blobs import S3BlobStore, open_blob_store
from tests import authed
from tests.conftest import free_port, start_server
from tests.helpers import dicom_body, instance_url, pixels_of, response_parts, stow, synthetic_ct


@pytest.fixture
def store(s3_bucket: str) -> S3BlobStore:
    opened = open_blob_store(f"s3://{s3_bucket}/radstack/blobs")
    assert isinstance(opened, S3BlobStore)
    return opened


def _bucket_keys(bucket: str) -> list[str]:
    """Every key in ``bucket``, looked up beside the store."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", ())]


def test_put_get_range_exists_delete(store: S3BlobStore) -> None:
    data = bytes(range(256)) * 40
    store.put("f/ab/blob", data)
    assert store.exists("f/ab/blob") and not store.exists("f/ab/other")
    assert store.get("f/ab/blob") == data
    assert store.get_range("f/ab/blob", 100, 50) == data[100:150]
    assert store.get_range("f/ab/blob", len(data) - 10, 50) == data[-10:], "fewer at the end"
    assert store.get_range("f/ab/blob", len(data), 50) == b"", "nothing past the end, like a file"
    assert store.get_range("f/ab/blob", 0, 0) == b""
    assert "radstack/blobs/f/ab/blob" in _bucket_keys(store.bucket), "under the URL's prefix"

    store.put("f/ab/empty", b"")
    assert store.get("f/ab/empty") == b"" and store.get_range("f/ab/empty", 0, 10) == b""

    store.delete("f/ab/blob")
    assert not store.exists("f/ab/blob")
    store.delete("f/ab/blob")  # deleting what is gone is not an error, as for files
    reads: list[Callable[[], bytes]] = [
        lambda: store.get("f/ab/blob"),
        lambda: store.get_range("f/ab/blob", 0, 10),
    ]
    for read in reads:
        with pytest.raises(NotFound, match="'f/ab/blob'"):
            read()
    with pytest.raises(ValueError, match="not a relative key"):
        store.put("../escape", b"x")


def test_put_of_an_existing_key_leaves_the_first_content(store: S3BlobStore) -> None:
    store.put("docs/1.2.3/7/study", b"first")
    store.put("docs/1.2.3/7/study", b"second")
    assert store.get("docs/1.2.3/7/study") == b"first"


def test_list_pages_through_a_prefix_and_nothing_else(s3_bucket: str, store: S3BlobStore) -> None:
    before = time.time()
    keys = {f"f/{i:02x}/{i:064x}" for i in range(7)}
    for key in keys:
        store.put(key, key.encode())
    store.put("fx/not-under-f", b"x")
    store.put("h/aa/header", b"x")
    S3BlobStore(s3_bucket, "another/prefix").put("f/00/elsewhere", b"x")
    paged = S3BlobStore(s3_bucket, "radstack/blobs", page_size=2)
    pages = []
    paged.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **kw: pages.append(1))

    listed = {info.key: info.written for info in paged.list("f")}

    assert set(listed) == keys
    assert len(pages) == 4, "seven keys, two per page"
    assert all(before - 2 <= written <= time.time() + 2 for written in listed.values())
    assert [info.key for info in store.list("h")] == ["h/aa/header"]
    assert list(store.list("j")) == []


def test_throttling_is_retried(store: S3BlobStore) -> None:
    """A 503 SlowDown is retried by botocore's standard retry mode; the blob is stored once."""
    attempts: list[str] = []

    class _SlowDown:
        def stream(self, **_: object) -> Iterator[bytes]:
            yield b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"

    def throttle_first(request: Any, **_: object) -> AWSResponse | None:
        attempts.append(request.url)
        return AWSResponse(request.url, 503, {}, _SlowDown()) if len(attempts) == 1 else None

    store.client.meta.events.register("before-send.s3.PutObject", throttle_first)
    store.put("f/cd/throttled", b"payload")
    assert len(attempts) == 2
    assert store.get("f/cd/throttled") == b"payload"


def test_missing_bucket_is_named_at_open(s3_bucket: str) -> None:
    with pytest.raises(NotFound, match="'no-such-radstack-bucket'"):
        open_blob_store("s3://no-such-radstack-bucket/prefix")


def test_blob_urls() -> None:
    with pytest.raises(ValueError, match="must not carry credentials") as caught:
        open_blob_store("s3://AKIAEXAMPLE:hunter2@bucket/prefix")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="s3://bucket"):
        open_blob_store("s3:///prefix")
    with pytest.raises(ValueError, match="file:// or s3://"):
        open_blob_store("gs://bucket/prefix")


@pytest.mark.parametrize("ingest_processes", [0, 1], ids=["in-thread", "worker-process"])
def test_stow_and_wado_through_a_bucket(s3_bucket: str, tmp_path: Path, ingest_processes: int) -> None:
    """A server whose blobs all live in the bucket: what STOW stores, WADO serves back pixel for pixel."""
    settings = Settings(
        data_dir=tmp_path / "data",
        http_port=free_port(),
        blob_url=f"s3://{s3_bucket}/site-a",
        ingest_processes=ingest_processes,
    )
    study = synthetic_ct().StudyInstanceUID
    datasets = [
        synthetic_ct(study=study, seed=1),
        synthetic_ct(study=study, frames=3, seed=2),
        synthetic_ct(study=study, rows=256, columns=192, seed=3),
    ]
    served = start_server(settings)
    server = next(served)
    try:
        assert stow(server, dicom_body(*datasets)).status_code == 200
        for ds in datasets:
            response = authed.get(
                instance_url(server, ds),
                headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            )
            assert response.status_code == 200
            [(_, part)] = response_parts(response)
            back = pydicom.dcmread(io.BytesIO(part))
            assert np.array_equal(back.pixel_array.reshape(-1, ds.Rows, ds.Columns), pixels_of(ds))
        # A reduced-resolution rendering reads a prefix of the frame blob (HTTP Range on S3).
        rendered = authed.get(
            f"{instance_url(server, datasets[2])}/rendered",
            params={"viewport": "48,64"},
            headers={"Accept": "image/png"},
        )
        assert rendered.status_code == 200
        assert Image.open(io.BytesIO(rendered.content)).size == (48, 64)
        metadata = authed.get(f"{server.dicomweb}/studies/{study}/metadata")
        assert metadata.status_code == 200 and len(metadata.json()) == 3
    finally:
        served.close()

    keys = _bucket_keys(s3_bucket)
    families = {key.split("/")[1] for key in keys}
    assert all(key.startswith("site-a/") for key in keys)
    assert {"f", "h", "j", "docs"} <= families
    assert sum(key.startswith("site-a/f/") for key in keys) == 5, "one blob per frame"
    assert not (settings.data_dir / "blobs").exists()
    local = [p.name for p in settings.data_dir.rglob("*") if p.is_file()]
    assert not [name for name in local if re.fullmatch("[0-9a-f]{64}", name)], "no blob on local disk"

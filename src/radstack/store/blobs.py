"""Blob stores: immutable byte objects under string keys.

Frames, instance headers and metadata documents are content-addressed (their key is the SHA-256 of
their bytes), so a blob is written once, never changed, and shared by every version that refers to
it. A write is atomic: the local store writes a temporary file that is flushed to disk and renamed
into place, and an S3 PUT is atomic by itself, so a crash leaves either the whole blob or nothing
under its key.

Two stores, selected by ``RADSTACK_BLOB_URL``: files under a directory (``file:///path``, the
default; on a shared filesystem it also serves many nodes) and an S3-compatible bucket
(``s3://bucket/prefix``: AWS S3, MinIO, Ceph RGW, …). The platform never uses them bare: it wraps
them in :class:`radstack.security.crypto.EncryptedBlobStore`, so every blob is encrypted at rest.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from radstack.errors import NotFound, OutOfResources

__all__ = ["BlobInfo", "BlobStore", "LocalBlobStore", "S3BlobStore", "content_key", "open_blob_store"]


class BlobInfo(NamedTuple):
    """A listed blob: its key, when it was written (seconds since the epoch) and its size in bytes."""

    key: str
    written: float
    size: int


def _check_key(key: str) -> str:
    """``key`` itself, once checked to be a relative ``/``-separated key without ``..``.

    Raises
    ------
    ValueError
        When it is not (a caller's bug: keys are made here, never taken from a client).
    """
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"blob key {key!r} is not a relative key")
    return key


def content_key(prefix: str, data: bytes) -> str:
    """Content address of ``data``: ``{prefix}/{aa}/{sha256}``."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{prefix}/{digest[:2]}/{digest}"


class BlobStore(Protocol):
    """What the store needs from a place that keeps bytes."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically; a key that exists is left as it is.

        Raises
        ------
        OutOfResources
            When the store is full, refuses the write or cannot be reached.
        """

    def replace(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing what is there (key rotation's header rewrite).

        Raises
        ------
        OutOfResources
            When the store refuses the write or cannot be reached (an S3 bucket; a full disk for files).
        """

    def get(self, key: str) -> bytes:
        """The bytes under ``key``.

        Raises
        ------
        NotFound
            When no blob is stored under ``key``.
        """

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes of the blob from offset ``start`` (fewer at its end).

        Raises
        ------
        NotFound
            When no blob is stored under ``key``.
        """

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Every blob under ``prefix`` (``""``: every blob): its key, when it was written and its size."""


class LocalBlobStore:
    """Blobs as files under one directory (the embedded default, or a shared filesystem)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)
        self._tmp = root / ".tmp"
        self._tmp.mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            return
        self._store(path, data)

    def replace(self, key: str, data: bytes) -> None:
        self._store(self._path(key), data)

    def _store(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                self._write(handle, data)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # The meaning first: a DIMSE Error Comment keeps 64 characters and drops parentheses.
                raise OutOfResources(f"the blob store is full ({exc.strerror}: {self.root})") from exc
            raise

    def _write(self, handle: BinaryIO, data: bytes) -> None:
        handle.write(data)
        if self.fsync:
            handle.flush()
            os.fsync(handle.fileno())

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {key!r} is missing from the blob store") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with self._path(key).open("rb") as handle:
                handle.seek(start)
                return handle.read(length)
        except FileNotFoundError:
            raise NotFound(f"blob {key!r} is missing from the blob store") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        stripped = prefix.strip("/")
        base = self._path(stripped) if stripped else self.root
        if not base.exists():
            return
        for path in base.rglob("*"):
            if path.is_file() and (stripped or path.relative_to(self.root).parts[0] != self._tmp.name):
                stat = path.stat()
                yield BlobInfo(path.relative_to(self.root).as_posix(), stat.st_mtime, stat.st_size)


#: Concurrent requests one S3 client may have open: the ingest threads of a busy server and the
#: WADO reads beside them share one client (botocore's default of 10 would queue them).
_S3_POOL_CONNECTIONS = 32
#: Attempts per request (first try included) under botocore's standard retry mode, which retries
#: throttling, 5xx answers and dropped connections with jittered exponential backoff; ``AWS_MAX_ATTEMPTS``
#: or ``max_attempts`` in the AWS config overrides it.
_S3_MAX_ATTEMPTS = 5
#: A conditional PUT that races another one on the same key gets 409 ConditionalRequestConflict,
#: which AWS asks clients to retry; botocore does not, so :meth:`S3BlobStore.put` does.
_S3_CONFLICT_ATTEMPTS = 4


def _status(exc: ClientError) -> int:
    status: int = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status


def _code(exc: ClientError) -> str:
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code


class S3BlobStore:
    """Blobs as objects in an S3-compatible bucket, under an optional key prefix.

    Every radstack process (server, ingest workers, ``radstack worker`` on other machines) opens its
    own store from the URL alone; a store holds one boto3 client, which is thread-safe, with a
    connection pool sized for concurrent ingest threads.

    Endpoint, region and credentials come from boto3's standard chain: environment
    (``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, …), ``~/.aws/config`` and ``credentials``, container
    and instance roles. An S3-compatible server (MinIO, Ceph RGW, moto) is named the same way,
    by ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in the profile's
    ``services`` section), which boto3 ≥ 1.28 resolves itself. That is deliberate, rather than a
    ``RADSTACK_BLOB_ENDPOINT_URL`` setting: the ingest pool hands worker processes the blob URL and
    nothing else, while the environment reaches every process, and ``aws s3`` and every other AWS
    tool read the same variables, so one configuration serves them all. botocore addresses a
    configured endpoint path-style (``http://host:9000/bucket/key``) unless the AWS config says
    ``addressing_style = virtual``, so bucket names need not resolve as DNS subdomains.

    Parameters
    ----------
    bucket
        An existing bucket; it is checked once here, so a wrong name fails at start-up.
    prefix
        Key prefix inside the bucket (``""`` for the bucket's root), without slashes at its ends.
    client
        A boto3 S3 client to use instead of one built from the standard chain.
    page_size
        Keys per ``ListObjectsV2`` page (S3 returns at most 1000).

    Raises
    ------
    NotFound
        The bucket does not exist.
    OutOfResources
        The bucket cannot be reached or read with these credentials.
    """

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None, page_size: int = 1000) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.page_size = page_size
        self._root = f"{self.prefix}/" if self.prefix else ""
        self.client: Any = client if client is not None else _s3_client()
        self._check_bucket()

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _name(self, key: str) -> str:
        return self._root + _check_key(key)

    def _check_bucket(self) -> None:
        endpoint = self.client.meta.endpoint_url
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _status(exc) == 404:
                raise NotFound(
                    f"blob bucket {self.bucket!r} does not exist at {endpoint}; create it or name an "
                    "existing bucket in RADSTACK_BLOB_URL (s3://bucket/prefix)"
                ) from None
            raise OutOfResources(
                f"blob bucket {self.bucket!r} at {endpoint} refused access ({_status(exc)} {_code(exc)}); "
                "check the AWS credentials and the bucket's policy"
            ) from exc
        except BotoCoreError as exc:
            raise OutOfResources(f"blob bucket {self.bucket!r} at {endpoint} cannot be used: {exc}") from exc

    def _missing(self, key: str) -> NotFound:
        return NotFound(f"blob {key!r} is missing from the blob store {self.url}")

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` unless the key exists, in one conditional PUT.

        ``If-None-Match: *`` makes the server refuse (412) to replace an existing object, so the
        first content stays even when two processes race; a PUT retried after a lost answer gets
        412 too. It costs one round trip for a new blob, where a HEAD first would cost two; a
        duplicate blob is uploaded and refused. A server that ignores the header replaces the
        object with the same bytes, since keys name their content.

        Raises
        ------
        OutOfResources
            The bucket refused the write or could not be reached after botocore's retries.
        """
        name = self._name(key)
        for attempt in range(_S3_CONFLICT_ATTEMPTS):
            try:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*")
                return
            except ClientError as exc:
                if _status(exc) == 412:
                    return
                if _status(exc) == 409 and attempt + 1 < _S3_CONFLICT_ATTEMPTS:
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise OutOfResources(
                    f"blob store {self.url} refused blob {key!r}: {_status(exc)} {_code(exc)}"
                ) from exc
            except BotoCoreError as exc:
                raise OutOfResources(f"blob store {self.url} is unavailable: {exc}") from exc

    def replace(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` by an unconditional PUT (atomic: readers see the old or the new).

        Raises
        ------
        OutOfResources
            The bucket refused the write or could not be reached after botocore's retries.
        """
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        except ClientError as exc:
            raise OutOfResources(
                f"blob store {self.url} refused blob {key!r}: {_status(exc)} {_code(exc)}"
            ) from exc
        except BotoCoreError as exc:
            raise OutOfResources(f"blob store {self.url} is unavailable: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _status(exc) == 404:
                raise self._missing(key) from None
            raise
        data: bytes = response["Body"].read()
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes ``start`` to ``start + length - 1`` by an HTTP Range request (RFC 9110 §14.2).

        Raises
        ------
        NotFound
            No object is stored under ``key``.
        botocore.exceptions.ClientError
            Any other error answer but 416 (a range past the end reads as ``b""``), after botocore's retries.
        """
        if length <= 0:
            return b""
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self._name(key), Range=f"bytes={start}-{start + length - 1}"
            )
        except ClientError as exc:
            if _status(exc) == 404:
                raise self._missing(key) from None
            if _status(exc) == 416:  # starts at or past the end: nothing there, as a file read gives
                return b""
            raise
        data: bytes = response["Body"].read()
        return data

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Every key under ``prefix/``, page by page (``ListObjectsV2`` continuation tokens).

        The times are the server's Last-Modified, to the second.
        """
        stripped = prefix.strip("/")
        base = self._root + (_check_key(stripped) + "/" if stripped else "")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=base, PaginationConfig={"PageSize": self.page_size}
        )
        for page in pages:
            for item in page.get("Contents", ()):
                yield BlobInfo(item["Key"][len(self._root) :], item["LastModified"].timestamp(), item["Size"])


def _s3_client() -> Any:
    """An S3 client from boto3's standard chain, with standard retries and a pool for ingest threads."""
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.get_session()
    session = boto3.session.Session(botocore_session=core)
    attempts = core.get_config_variable("max_attempts") or _S3_MAX_ATTEMPTS
    config = Config(
        retries={"mode": "standard", "total_max_attempts": int(attempts)},
        max_pool_connections=_S3_POOL_CONNECTIONS,
    )
    return session.client("s3", config=config)


def open_blob_store(url: str) -> BlobStore:
    """Open the blob store named by ``RADSTACK_BLOB_URL``.

    Parameters
    ----------
    url
        ``file:///path`` for files under a directory, or ``s3://bucket`` / ``s3://bucket/prefix`` for
        objects in an S3-compatible bucket (see :class:`S3BlobStore` for endpoint and credentials).

    Raises
    ------
    ValueError
        The URL has another scheme, no bucket, or credentials in it.
    NotFound
        The bucket of an ``s3://`` URL does not exist.
    OutOfResources
        The bucket of an ``s3://`` URL cannot be reached or read with the credentials at hand.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBlobStore(Path(parsed.path))
    if parsed.scheme == "s3":
        if "@" in parsed.netloc:  # never echo it: the part before '@' would be a secret
            raise ValueError(
                "an s3:// blob URL must not carry credentials; give them by the AWS credential chain"
            )
        if not parsed.hostname or parsed.query or parsed.fragment:
            raise ValueError(f"blob URL {url!r} is not s3://bucket or s3://bucket/prefix")
        return S3BlobStore(parsed.netloc, parsed.path)
    raise ValueError(f"blob URL {url!r} has an unsupported scheme; expected file:// or s3://")

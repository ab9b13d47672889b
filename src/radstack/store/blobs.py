"""Blob stores: immutable byte objects under string keys.

Frames, instance headers and metadata documents are content-addressed (their key is the SHA-256 of
their bytes), so a blob is written once, never changed, and shared by every version that refers to
it. A write is atomic: the bytes go to a temporary file that is flushed to disk and renamed into
place, so a crash leaves either the whole blob or nothing under its key.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from radstack.errors import NotFound, OutOfResources

__all__ = ["BlobStore", "LocalBlobStore", "content_key", "open_blob_store"]


def content_key(prefix: str, data: bytes) -> str:
    """Content address of ``data``: ``{prefix}/{aa}/{sha256}``."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{prefix}/{digest[:2]}/{digest}"


class BlobStore(Protocol):
    """What the store needs from a place that keeps bytes."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically; a key that exists is left as it is."""

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`NotFound` when absent."""

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes of the blob from offset ``start`` (fewer at its end)."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Every key under ``prefix`` with the time it was written (seconds since the epoch)."""


class LocalBlobStore:
    """Blobs as files under one directory (the embedded default, or a shared filesystem)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)
        self._tmp = root / ".tmp"
        self._tmp.mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"blob key {key!r} is not a relative key")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfResources(f"blob store {self.root} is full: {exc.strerror}") from exc
            raise

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

    def list(self, prefix: str) -> Iterator[tuple[str, float]]:
        base = self._path(prefix)
        if not base.exists():
            return
        for path in base.rglob("*"):
            if path.is_file():
                yield path.relative_to(self.root).as_posix(), path.stat().st_mtime


def open_blob_store(url: str) -> BlobStore:
    """Open the blob store named by ``RADSTACK_BLOB_URL`` (``file:///path``)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBlobStore(Path(parsed.path))
    raise ValueError(f"blob URL {url!r} has an unsupported scheme; expected file://")

"""The encrypted blob store: every blob sealed in :mod:`.blob_format` on its way to a blob store.

:class:`EncryptedBlobStore` wraps any :class:`~radstack.store.blobs.BlobStore`. Each process makes a
random wrapping key when it first writes, has the key provider wrap it (so one KEK call per wrapping
key, not per blob), and renews it every hour, every 2^20 blobs and whenever the provider's current
KEK changes; every blob gets its own data key under it. Readers cache opened blobs and unwrapped
wrapping keys, so a read after the first costs one read of the wanted chunks and their decryption.
For key rotation the store reads a blob's KEK id (:meth:`EncryptedBlobStore.kek_of`) and rewrites
its header only (:meth:`EncryptedBlobStore.rewrap`); :mod:`.rotation` drives both over every blob.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radstack.errors import NotFound
from radstack.security.crypto.blob_format import (
    CHUNK_SIZE,
    KEY_LENGTH,
    MAGIC,
    PROBE,
    TAG_LENGTH,
    Header,
    SealedBlob,
    ShortHeader,
    open_blob,
    parse_header,
    seal_blob,
)
from radstack.security.crypto.providers import (
    BlobIntegrityError,
    KeyProvider,
    WrappedKey,
    open_key_provider,
)
from radstack.store.blobs import BlobInfo, BlobStore, open_blob_store

__all__ = ["EncryptedBlobStore", "KeyConfig", "RewrapOutcome", "open_encrypted_blob_store"]

#: A wrapping key is renewed after this many blobs or seconds (and when the KEK changes).
_WRAPPING_KEY_USES = 1 << 20
_WRAPPING_KEY_SECONDS = 3600.0


K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A bounded, thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)


@dataclass
class _WritingKey:
    kek_id: str
    wrapped: WrappedKey
    aead: AESGCM
    created: float
    uses: int = 0


class RewrapOutcome(StrEnum):
    """What key rotation did to one blob."""

    REWRAPPED = "rewrapped"
    ENCRYPTED = "encrypted"
    CURRENT = "current"
    MISSING = "missing"
    FAILED = "failed"


class EncryptedBlobStore:
    """A :class:`~radstack.store.blobs.BlobStore` that encrypts what it puts and authenticates what it gets.

    Unwrapped keys are cached, so a read after the first costs one read of the wanted chunks and
    their decryption: blob key → opened header (offset, lengths, the data key's AEAD), and wrapped
    wrapping key → its AEAD (one KEK call per wrapping key, not per blob).

    Parameters
    ----------
    inner
        The store that holds the encrypted bytes.
    provider
        Where the KEK is.
    allow_plaintext
        Return blobs without the encryption magic as they are (written before encryption existed);
        otherwise they fail with :class:`BlobIntegrityError`.
    cache_size
        Opened blobs kept in the cache (a few hundred bytes each).
    """

    def __init__(
        self,
        inner: BlobStore,
        provider: KeyProvider,
        *,
        allow_plaintext: bool = False,
        cache_size: int = 8192,
    ) -> None:
        self.inner = inner
        self.provider = provider
        self.allow_plaintext = allow_plaintext
        self._objects: _Lru[str, SealedBlob] = _Lru(cache_size)
        self._wrapping_keys: _Lru[tuple[str, bytes], AESGCM] = _Lru(1024)
        self._writer: _WritingKey | None = None
        self._writer_lock = threading.Lock()

    # ------------------------------------------------------------------ writing
    def put(self, key: str, data: bytes) -> None:
        """Encrypt ``data`` and store it under ``key`` unless the key exists.

        Raises
        ------
        KeyProviderError
            When a new wrapping key is due and the KEK cannot wrap it.
        OutOfResources
            When the inner store is full, refuses the write or cannot be reached.
        """
        self.inner.put(key, self.seal(key, data))

    def replace(self, key: str, data: bytes) -> None:
        """Encrypt ``data`` and store it under ``key``, replacing what is there.

        Raises
        ------
        KeyProviderError
            When a new wrapping key is due and the KEK cannot wrap it.
        OutOfResources
            When the inner store refuses the write or cannot be reached.
        """
        self._objects.pop(key)
        self.inner.replace(key, self.seal(key, data))

    def seal(self, key: str, data: bytes) -> bytes:
        """``data`` encrypted for storage under ``key`` (a new data key, the current wrapping key).

        Raises
        ------
        KeyProviderError
            When a new wrapping key is due and the KEK cannot wrap it.
        """
        writer = self._writing_key()
        return seal_blob(key, data, writer.wrapped, writer.aead)

    def _writing_key(self) -> _WritingKey:
        kek_id = self.provider.current_id()
        with self._writer_lock:
            writer = self._writer
            if (
                writer is None
                or writer.kek_id != kek_id
                or writer.uses >= _WRAPPING_KEY_USES
                or time.monotonic() - writer.created > _WRAPPING_KEY_SECONDS
            ):
                plaintext = os.urandom(KEY_LENGTH)
                wrapped = self.provider.wrap(plaintext)
                writer = _WritingKey(wrapped.kek_id, wrapped, AESGCM(plaintext), time.monotonic())
                self._wrapping_keys.put((wrapped.kek_id, wrapped.blob), writer.aead)
                self._writer = writer
            writer.uses += 1
            return writer

    # ------------------------------------------------------------------ reading
    def get(self, key: str) -> bytes:
        """The plaintext of blob ``key``, every chunk authenticated.

        Raises
        ------
        NotFound
            When no blob is stored under ``key``.
        BlobIntegrityError
            When the blob was changed, cut short or extended, belongs to another key, or is not
            encrypted (and ``allow_plaintext`` is off).
        KeyProviderError
            When the KEK that wrapped the blob's keys is not available.
        """
        raw = self.inner.get(key)
        if not raw.startswith(MAGIC):
            return self._plaintext(key, raw)
        try:
            header = parse_header(key, raw)
        except ShortHeader:
            raise BlobIntegrityError(f"blob {key!r} is cut short inside its encryption header") from None
        if len(raw) != header.total_length:
            raise BlobIntegrityError(
                f"blob {key!r} is {len(raw)} bytes where its header says {header.total_length}: "
                "it was cut short or extended"
            )
        sealed = self._objects.get(key)
        if sealed is None or sealed.raw_header != raw[: header.length]:
            sealed = self._open(key, header, raw[: header.length])
        return sealed.decrypt(0, memoryview(raw)[header.length :])

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` plaintext bytes from ``start``: only the chunks that hold them are read.

        Raises
        ------
        NotFound
            When no blob is stored under ``key``.
        BlobIntegrityError
            When the chunks read, or the header, fail authentication or are cut short, or the blob
            is not encrypted (and ``allow_plaintext`` is off).
        KeyProviderError
            When the KEK that wrapped the blob's keys is not available.
        """
        if length <= 0:
            return b""
        sealed = self._objects.get(key)
        if sealed is not None:
            try:
                return self._read(sealed, start, length, b"")
            except BlobIntegrityError:
                # Rotation may have rewritten the header at another length: open the blob afresh once.
                self._objects.pop(key)
        first = start // CHUNK_SIZE
        last = (start + min(length, 4 * CHUNK_SIZE) - 1) // CHUNK_SIZE
        # The first read of a blob takes its header and, for a read near its start, the wanted chunks too.
        probe = PROBE + (last + 1) * (CHUNK_SIZE + TAG_LENGTH) if first < 4 else PROBE
        head = self.inner.get_range(key, 0, probe)
        if not head.startswith(MAGIC):
            if len(head) >= start + length or len(head) < probe:
                return self._plaintext(key, head)[start : start + length]
            return self._plaintext(key, self.inner.get_range(key, start, length))
        sealed = self._open_head(key, head, len(head) < probe)
        return self._read(sealed, start, length, head)

    def _read(self, sealed: SealedBlob, start: int, length: int, have: bytes) -> bytes:
        header = sealed.header
        end = min(start + length, header.plaintext_length)
        if start >= end:
            return b""
        size = header.chunk_size
        first, last = start // size, (end - 1) // size
        low, high = sealed.span(first, last)
        if len(have) >= high:
            data = memoryview(have)[low:high]
        else:
            data = memoryview(self.inner.get_range(sealed.key, low, high - low))
        if len(data) != high - low:
            raise BlobIntegrityError(
                f"blob {sealed.key!r} is cut short: chunks {first}..{last} are incomplete"
            )
        plaintext = sealed.decrypt(first, data)
        offset = first * size
        return plaintext[start - offset : end - offset]

    def _open_head(self, key: str, head: bytes, whole: bool) -> SealedBlob:
        """The opened blob whose first bytes are ``head`` (``whole``: that is all of it).

        Raises
        ------
        BlobIntegrityError
            When the header is cut short or damaged, or the data key fails authentication.
        KeyProviderError
            When the KEK that wrapped the blob's keys is not available.
        """
        try:
            header = parse_header(key, head)
        except ShortHeader as short:
            if whole:
                raise BlobIntegrityError(f"blob {key!r} is cut short inside its encryption header") from None
            head = self.inner.get_range(key, 0, short.length)
            try:
                header = parse_header(key, head)
            except ShortHeader:
                raise BlobIntegrityError(f"blob {key!r} is cut short inside its encryption header") from None
        raw_header = head[: header.length]
        sealed = self._objects.get(key)
        if sealed is not None and sealed.raw_header == raw_header:
            return sealed
        return self._open(key, header, raw_header)

    def _open(self, key: str, header: Header, raw_header: bytes) -> SealedBlob:
        wrapping = self._wrapping_aead(WrappedKey(header.kek_id, header.wrapped_key))
        sealed = open_blob(key, header, raw_header, wrapping)
        self._objects.put(key, sealed)
        return sealed

    def _wrapping_aead(self, wrapped: WrappedKey) -> AESGCM:
        cache_key = (wrapped.kek_id, wrapped.blob)
        aead = self._wrapping_keys.get(cache_key)
        if aead is None:
            key = self.provider.unwrap(wrapped)
            if len(key) != KEY_LENGTH:
                raise BlobIntegrityError(f"a wrapping key wrapped by {wrapped.kek_id} is {len(key)} bytes")
            aead = AESGCM(key)
            self._wrapping_keys.put(cache_key, aead)
        return aead

    def _plaintext(self, key: str, data: bytes) -> bytes:
        if self.allow_plaintext:
            return data
        raise BlobIntegrityError(
            f"blob {key!r} is not encrypted: it was written before encryption at rest, or replaced on disk. "
            "To read blobs from before encryption set RADSTACK_ALLOW_PLAINTEXT_BLOBS=true, and run "
            "'radstack keys rotate' to encrypt them"
        )

    # ------------------------------------------------------------------ passed through
    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self._objects.pop(key)
        self.inner.delete(key)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """The stored blobs (sizes are the encrypted sizes)."""
        return self.inner.list(prefix)

    # ------------------------------------------------------------------ rotation
    def kek_of(self, key: str) -> str | None:
        """The KEK id named in the blob's header; None for a blob without encryption.

        Raises
        ------
        NotFound
            When no blob is stored under ``key``.
        BlobIntegrityError
            When the header is cut short or damaged.
        """
        head = self.inner.get_range(key, 0, PROBE)
        if not head.startswith(MAGIC):
            return None
        try:
            return parse_header(key, head).kek_id
        except ShortHeader as short:
            if len(head) < PROBE:
                raise BlobIntegrityError(f"blob {key!r} is cut short inside its encryption header") from None
            head = self.inner.get_range(key, 0, short.length)
        try:
            return parse_header(key, head).kek_id
        except ShortHeader:
            raise BlobIntegrityError(f"blob {key!r} is cut short inside its encryption header") from None

    def rewrap(self, key: str, target: str, rewrapped: Callable[[WrappedKey], WrappedKey]) -> RewrapOutcome:
        """Rewrite the header of blob ``key`` so that KEK ``target`` wraps its wrapping key.

        The chunks are copied as they are; a blob without encryption is encrypted. ``rewrapped``
        maps an old wrapped wrapping key to its new wrapped form (memoised by the caller). A blob
        that is gone meanwhile is MISSING, not an error.

        Raises
        ------
        BlobIntegrityError
            When the header is cut short or damaged, the blob's length is not the header's, or its
            data key or first chunk fails authentication: a damaged blob never gets a fresh header.
        KeyProviderError
            When the old KEK cannot unwrap or the target cannot wrap.
        OutOfResources
            When the inner store refuses the rewritten blob.
        """
        try:
            kek = self.kek_of(key)
            if kek == target:
                return RewrapOutcome.CURRENT
            raw = self.inner.get(key)
        except NotFound:
            return RewrapOutcome.MISSING
        if not raw.startswith(MAGIC):
            self.inner.replace(key, self.seal(key, raw))
            return RewrapOutcome.ENCRYPTED
        header = parse_header(key, raw)
        if len(raw) != header.total_length:
            raise BlobIntegrityError(
                f"blob {key!r} is {len(raw)} bytes where its header says {header.total_length}"
            )
        # The data key must open this blob's first chunk: never give a damaged blob a fresh header.
        sealed = self._open(key, header, raw[: header.length])
        low, high = sealed.span(0, 0)
        sealed.decrypt(0, memoryview(raw)[low:high])
        new_header = header.with_key(rewrapped(WrappedKey(header.kek_id, header.wrapped_key)))
        self._objects.pop(key)
        self.inner.replace(key, new_header + raw[header.length :])
        return RewrapOutcome.REWRAPPED


# ----------------------------------------------------------------------------- opening one
@dataclass(frozen=True)
class KeyConfig:
    """What a process needs to open the encrypted blob store; picklable for the ingest processes."""

    key_url: str
    allow_plaintext: bool = False

    def open_provider(self, *, create: bool = True) -> KeyProvider:
        """The key provider of :attr:`key_url` (see :func:`open_key_provider`).

        Raises
        ------
        ValueError
            When the key URL has an unsupported form.
        KeyProviderError
            When the keys cannot be used.
        """
        return open_key_provider(self.key_url, create=create)


def open_encrypted_blob_store(blob_url: str, keys: KeyConfig) -> EncryptedBlobStore:
    """The blob store of ``blob_url`` (see :func:`~radstack.store.blobs.open_blob_store`), encrypted.

    Raises
    ------
    ValueError
        When the blob URL or the key URL has an unsupported form.
    NotFound
        When the bucket of an ``s3://`` blob URL does not exist.
    OutOfResources
        When that bucket cannot be reached or read.
    KeyProviderError
        When the keys cannot be used (a key file readable by others, KMS refusing the key).
    """
    return EncryptedBlobStore(
        open_blob_store(blob_url), keys.open_provider(), allow_plaintext=keys.allow_plaintext
    )

"""The encrypted blob format: a header, then the plaintext in chunks sealed by AES-256-GCM.

A blob is a header and then its plaintext in chunks of 64 KiB, each sealed by AES-256-GCM on its own
so that a byte range is read and authenticated without decrypting the whole object (frames are read
by prefix for reduced resolutions). Chunk ``i`` uses the nonce ``nonce_prefix || i`` (a random
8-byte prefix per blob, a 4-byte big-endian counter) and binds, as associated data, the blob's key,
its plaintext length, the chunk size, ``i`` and whether it is the last chunk: a changed byte, a cut
or extended file, reordered chunks and a file moved to another key all fail with
:class:`~radstack.security.crypto.providers.BlobIntegrityError`. Header layout (big-endian), ``H``
bytes in all::

    0   8  magic b"\\x89RSE\\r\\n\\x1a\\n"
    8   1  format version (1)
    9   1  flags (0)
    10  2  H: header length; the chunks start at offset H
    12  4  chunk size (plaintext bytes per chunk)
    16  8  plaintext length
    24  8  nonce prefix
    32  2  n, then n bytes: the KEK id (UTF-8) that wrapped the wrapping key
        2  m, then m bytes: the wrapped wrapping key (provider-specific)
        1  d, then d bytes: the wrapped data key (nonce 12 || AES-256-GCM of the key 32 || tag 16)
        zero bytes up to H (room for a longer KEK id after rotation; checked to be zero)
    H      chunks: ciphertext || 16-byte tag, chunk-size + 16 bytes each, the last shorter

Rotation rewrites the header only (:meth:`Header.with_key`); the chunks stay as they are. This module
holds no keys and no caches: :mod:`.store` gives it the wrapping key to use or to open with.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radstack.security.crypto.providers import BlobIntegrityError, WrappedKey

__all__ = [
    "CHUNK_SIZE",
    "FORMAT_VERSION",
    "KEY_LENGTH",
    "MAGIC",
    "PROBE",
    "TAG_LENGTH",
    "Header",
    "SealedBlob",
    "ShortHeader",
    "open_blob",
    "parse_header",
    "seal_blob",
]

MAGIC = b"\x89RSE\r\n\x1a\n"
FORMAT_VERSION = 1
#: Plaintext bytes per chunk: a range read decrypts at most one extra chunk at each end.
CHUNK_SIZE = 64 * 1024
#: Bytes of an AES-GCM tag, and of every key (AES-256).
TAG_LENGTH = 16
KEY_LENGTH = 32
_FIXED = struct.Struct(">8sBBHIQ8s")  # magic, version, flags, H, chunk size, plaintext length, nonce prefix
#: Bytes read to find a header before its length is known (a KMS header is about 400 bytes).
PROBE = 1024
#: Chunk sizes a header may declare (a damaged one must not make a reader allocate gigabytes).
_MIN_CHUNK, _MAX_CHUNK = 1024, 16 * 1024 * 1024
_DEK_AAD = b"radstack data key v1"


@dataclass(frozen=True)
class Header:
    """The fields of a blob's header (the layout above); ``length`` is H."""

    length: int
    chunk_size: int
    plaintext_length: int
    nonce_prefix: bytes
    kek_id: str
    wrapped_key: bytes
    wrapped_data_key: bytes

    @property
    def chunks(self) -> int:
        return max(1, -(-self.plaintext_length // self.chunk_size))

    @property
    def total_length(self) -> int:
        """Length of the whole stored blob."""
        return self.length + self.plaintext_length + TAG_LENGTH * self.chunks

    def encode(self, length: int | None = None) -> bytes:
        """The header bytes, padded to ``length`` (default: the needed size, 32 spare bytes, to 64).

        Raises
        ------
        ValueError
            When the fields need more than ``length`` bytes, or more than 65535.
        """
        kek_id = self.kek_id.encode()
        body = (
            struct.pack(">H", len(kek_id))
            + kek_id
            + struct.pack(">H", len(self.wrapped_key))
            + self.wrapped_key
            + struct.pack(">B", len(self.wrapped_data_key))
            + self.wrapped_data_key
        )
        needed = _FIXED.size + len(body)
        if length is None:
            length = -(-(needed + 32) // 64) * 64
        if needed > length or length > 0xFFFF:
            raise ValueError(f"an encryption header of {needed} bytes does not fit in {length}")
        fixed = _FIXED.pack(
            MAGIC, FORMAT_VERSION, 0, length, self.chunk_size, self.plaintext_length, self.nonce_prefix
        )
        return fixed + body + bytes(length - needed)

    def with_key(self, wrapped: WrappedKey) -> bytes:
        """This header with another wrapped wrapping key: the same length when it fits."""
        changed = Header(
            self.length,
            self.chunk_size,
            self.plaintext_length,
            self.nonce_prefix,
            wrapped.kek_id,
            wrapped.blob,
            self.wrapped_data_key,
        )
        try:
            return changed.encode(self.length)
        except ValueError:
            return changed.encode()


class ShortHeader(Exception):
    """``data`` ends before the header does; ``length`` bytes are needed to read on."""

    def __init__(self, length: int) -> None:
        self.length = length


def parse_header(key: str, data: bytes) -> Header:
    """The header at the start of ``data`` (which starts with :data:`MAGIC`).

    Raises
    ------
    ShortHeader
        When ``data`` ends before the header does; its ``length`` says how many bytes to read.
    BlobIntegrityError
        When a field is impossible: the header is damaged.
    """  # noqa: DOC501 (ruff takes ``raise damaged(...)`` for an exception named damaged)

    def damaged(what: str) -> BlobIntegrityError:
        return BlobIntegrityError(f"blob {key!r} has a damaged encryption header: {what}")

    if len(data) < _FIXED.size:
        raise ShortHeader(_FIXED.size)
    _magic, version, flags, length, chunk_size, plaintext_length, nonce_prefix = _FIXED.unpack_from(data)
    if version != FORMAT_VERSION:
        raise damaged(f"format version {version}; this radstack reads version {FORMAT_VERSION}")
    if flags:
        raise damaged(f"flags {flags:#04x} are not zero")
    if not _MIN_CHUNK <= chunk_size <= _MAX_CHUNK:
        raise damaged(f"chunk size {chunk_size} is outside {_MIN_CHUNK}..{_MAX_CHUNK}")
    if length < _FIXED.size + 5:
        raise damaged(f"header length {length} is too small")
    if len(data) < length:
        raise ShortHeader(length)
    header = memoryview(data)[:length]
    pos = _FIXED.size
    fields: list[bytes] = []
    for size_format in (">H", ">H", ">B"):
        width = struct.calcsize(size_format)
        if pos + width > length:
            raise damaged("a key field runs past the header's end")
        (size,) = struct.unpack_from(size_format, header, pos)
        pos += width
        if pos + size > length:
            raise damaged("a key field runs past the header's end")
        fields.append(bytes(header[pos : pos + size]))
        pos += size
    if header[pos:length].tobytes() != bytes(length - pos):
        raise damaged("the padding after the keys is not zero")
    kek_id, wrapped_key, wrapped_data_key = fields
    if len(wrapped_data_key) != 12 + KEY_LENGTH + TAG_LENGTH:
        raise damaged(
            f"the wrapped data key is {len(wrapped_data_key)} bytes, not {12 + KEY_LENGTH + TAG_LENGTH}"
        )
    try:
        kek = kek_id.decode()
    except UnicodeDecodeError:
        raise damaged("the KEK id is not UTF-8") from None
    return Header(
        length, chunk_size, plaintext_length, bytes(nonce_prefix), kek, wrapped_key, wrapped_data_key
    )


@dataclass(frozen=True)
class SealedBlob:
    """An opened blob: its header and the AEAD of its data key (what the store's cache holds)."""

    key: str
    header: Header
    raw_header: bytes
    aead: AESGCM
    aad_prefix: bytes

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Offsets in the stored blob of chunks ``first`` to ``last`` (inclusive)."""
        header = self.header
        stride = header.chunk_size + TAG_LENGTH
        end = header.total_length if last == header.chunks - 1 else header.length + (last + 1) * stride
        return header.length + first * stride, end

    def decrypt(self, first: int, data: memoryview) -> bytes:
        """Plaintext of the chunks from ``first`` whose stored bytes are ``data``.

        Raises
        ------
        BlobIntegrityError
            When a chunk fails authentication: its bytes were changed, cut short, or belong to another blob.
        """
        header = self.header
        stride = header.chunk_size + TAG_LENGTH
        out: list[bytes] = []
        index, pos = first, 0
        while pos < len(data) or index == first:
            last = index == header.chunks - 1
            piece = data[pos : pos + stride]
            nonce = header.nonce_prefix + index.to_bytes(4, "big")
            aad = self.aad_prefix + struct.pack(">IB", index, last)
            try:
                out.append(self.aead.decrypt(nonce, piece, aad))
            except InvalidTag:
                raise BlobIntegrityError(
                    f"blob {self.key!r} failed its integrity check at chunk {index + 1} of {header.chunks}: "
                    "its bytes were changed, cut short, or belong to another blob"
                ) from None
            pos += len(piece)
            index += 1
            if last:
                break
        return out[0] if len(out) == 1 else b"".join(out)


def aad_prefix(key: str, plaintext_length: int, chunk_size: int) -> bytes:
    """What every chunk of blob ``key`` binds: the key, its plaintext length and its chunk size."""
    return b"radstack blob v1\x00" + key.encode() + b"\x00" + struct.pack(">QI", plaintext_length, chunk_size)


def seal_blob(key: str, data: bytes, wrapped: WrappedKey, wrapping: AESGCM) -> bytes:
    """``data`` encrypted for storage under ``key``: a new data key, wrapped by ``wrapping``.

    ``wrapped`` is the wrapping key as its KEK wrapped it (copied into the header) and ``wrapping``
    its AEAD.
    """
    data_key = os.urandom(KEY_LENGTH)
    nonce = os.urandom(12)
    header = Header(
        0,
        CHUNK_SIZE,
        len(data),
        os.urandom(8),
        wrapped.kek_id,
        wrapped.blob,
        nonce + wrapping.encrypt(nonce, data_key, _DEK_AAD),
    )
    aead = AESGCM(data_key)
    prefix = aad_prefix(key, len(data), CHUNK_SIZE)
    view = memoryview(data)
    parts = [header.encode()]
    chunks = header.chunks
    for index in range(chunks):
        nonce = header.nonce_prefix + index.to_bytes(4, "big")
        aad = prefix + struct.pack(">IB", index, index == chunks - 1)
        parts.append(aead.encrypt(nonce, view[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE], aad))
    return b"".join(parts)


def open_blob(key: str, header: Header, raw_header: bytes, wrapping: AESGCM) -> SealedBlob:
    """Blob ``key`` opened: its data key unwrapped by ``wrapping``, the AEAD of its wrapping key.

    Raises
    ------
    BlobIntegrityError
        The data key fails authentication: the header was changed.
    """
    wrapped = header.wrapped_data_key
    try:
        data_key = wrapping.decrypt(wrapped[:12], wrapped[12:], _DEK_AAD)
    except InvalidTag:
        raise BlobIntegrityError(
            f"blob {key!r}: its data key fails authentication: the encryption header was changed"
        ) from None
    return SealedBlob(
        key, header, raw_header, AESGCM(data_key), aad_prefix(key, header.plaintext_length, header.chunk_size)
    )

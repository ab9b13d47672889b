"""Encryption at rest: envelope encryption (AES-256-GCM) of every blob.

Every blob the platform writes (frames, instance headers, DICOM JSON, metadata documents) goes
through :class:`EncryptedBlobStore`, which wraps any :class:`~radstack.store.blobs.BlobStore`. Keys
form three levels:

* the **key-encryption key** (KEK) lives in a :class:`KeyProvider`: a 32-byte key file under
  ``<data_dir>/keys/`` (:class:`LocalKeyProvider`, the default) or a key in AWS KMS
  (:class:`AwsKmsKeyProvider`). Rotation makes a new KEK version;
* a **wrapping key**, random, made by each process when it first writes and renewed every hour, every
  2^20 blobs and whenever the provider's current KEK changes, is wrapped by the KEK; a copy of its
  wrapped form is in every header, so each blob is self-contained. It is what keeps the KEK off the
  hot path: a KMS call per wrapping key, not per blob (as S3 Bucket Keys do);
* a **data key**, random for every blob, wrapped by the wrapping key, encrypts the blob's bytes.

A blob is a header and then its plaintext in chunks of 64 KiB, each sealed by AES-256-GCM on its own
so that a byte range is read and authenticated without decrypting the whole object (frames are read
by prefix for reduced resolutions). Chunk ``i`` uses the nonce ``nonce_prefix || i`` (a random
8-byte prefix per blob, a 4-byte big-endian counter) and binds, as associated data, the blob's key,
its plaintext length, the chunk size, ``i`` and whether it is the last chunk: a changed byte, a cut
or extended file, reordered chunks and a file moved to another key all fail with
:class:`BlobIntegrityError`. Header layout (big-endian), ``H`` bytes in all::

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

Rotation (:func:`rotate_keys`) re-wraps each blob's wrapping key under the new KEK and rewrites the
header only; the chunks are copied unchanged. Blobs without the magic were written before encryption
existed; they are read only when ``allow_plaintext`` is set, and rotation encrypts them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radstack.errors import NotFound, OutOfResources, ProcessingFailure
from radstack.security.keyfile import check_private, create_secret, read_secret
from radstack.store.blobs import BlobInfo, BlobStore, open_blob_store

__all__ = [
    "AwsKmsKeyProvider",
    "BlobIntegrityError",
    "EncryptedBlobStore",
    "KeyConfig",
    "KeyProvider",
    "KeyProviderError",
    "KeyUsage",
    "LocalKeyProvider",
    "RewrapOutcome",
    "RotationReport",
    "WrappedKey",
    "key_usage",
    "open_encrypted_blob_store",
    "open_key_provider",
    "rotate_keys",
]

_log = logging.getLogger(__name__)

MAGIC = b"\x89RSE\r\n\x1a\n"
FORMAT_VERSION = 1
#: Plaintext bytes per chunk: a range read decrypts at most one extra chunk at each end.
CHUNK_SIZE = 64 * 1024
_TAG = 16
_KEY = 32
_FIXED = struct.Struct(">8sBBHIQ8s")  # magic, version, flags, H, chunk size, plaintext length, nonce prefix
#: Bytes read to find a header before its length is known (a KMS header is about 400 bytes).
_PROBE = 1024
#: Chunk sizes a header may declare (a damaged one must not make a reader allocate gigabytes).
_MIN_CHUNK, _MAX_CHUNK = 1024, 16 * 1024 * 1024
_DEK_AAD = b"radstack data key v1"
_WK_AAD = b"radstack wrapping key v1\x00"
#: A wrapping key is renewed after this many blobs or seconds (and when the KEK changes).
_WRAPPING_KEY_USES = 1 << 20
_WRAPPING_KEY_SECONDS = 3600.0


class BlobIntegrityError(ProcessingFailure):
    """A stored blob failed authentication: changed, cut short, moved to another key, or not encrypted."""

    title = "Stored data failed its integrity check"


class KeyProviderError(OutOfResources):
    """The key-encryption key cannot be used: a key file is missing or readable by others, KMS refuses."""

    title = "Encryption key unavailable"
    http_status = 503


@dataclass(frozen=True)
class WrappedKey:
    """A key wrapped by a KEK: the KEK's id (with its version) and the provider's ciphertext."""

    kek_id: str
    blob: bytes


class KeyProvider(Protocol):
    """Where the key-encryption keys live; wraps and unwraps the keys below them."""

    def describe(self) -> str:
        """Where the keys are, for messages (never key material)."""

    def current_id(self) -> str:
        """Id of the KEK version that :meth:`wrap` uses now."""

    def wrap(self, key: bytes) -> WrappedKey:
        """``key`` wrapped by the current KEK."""

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        """The key inside ``wrapped``; :class:`KeyProviderError` when its KEK is not available."""

    def begin_rotation(self) -> str:
        """Make (or find) the KEK version a rotation re-wraps to and return its id."""

    def finish_rotation(self, kek_id: str) -> None:
        """Record that every blob is wrapped by ``kek_id``."""


# ----------------------------------------------------------------------------- local key files
_KEY_FILE = re.compile(r"kek-(\d{6})\.key")
_ROTATION_FILE = "rotation.json"


class LocalKeyProvider:
    """KEK versions as key files ``kek-000001.key``, ``kek-000002.key``, … in one directory.

    Each file holds 32 random bytes, mode 0600, and is created exclusively (``O_EXCL`` on a temporary
    file, published by ``link``, so a concurrent reader never sees a partial key). The newest
    version is current. A key id is ``local:<version>:<fingerprint>``; the fingerprint (an HMAC of a
    fixed label under the key) tells a node with another key file under the same name from one with
    the right key. Every node that shares a blob store must share this directory (``RADSTACK_KEY_URL``).

    Parameters
    ----------
    directory
        Where the key files are (made, mode 0700, when missing).
    create
        Make version 1 when the directory has no key (the first start).

    Raises
    ------
    KeyProviderError
        A key file can be read by group or others, or is not 32 bytes.
    """

    #: Seconds between looks at the directory for a new version (other processes' rotations).
    refresh_seconds = 1.0

    def __init__(self, directory: Path, *, create: bool = True) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._keys: dict[int, bytes] = {}
        self._ids: dict[int, str] = {}
        self._current: int | None = None
        self._scanned = 0.0
        if create:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in self._files().values():
            check_private(path, path.stat().st_mode, "key file", KeyProviderError)
        if create and not self._files():
            self._create(1)
        self._scan()

    def describe(self) -> str:
        return f"key files in {self.directory}"

    def _files(self) -> dict[int, Path]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return {}
        return {
            int(match.group(1)): self.directory / name
            for name in names
            if (match := _KEY_FILE.fullmatch(name)) is not None
        }

    def _scan(self) -> None:
        versions = self._files()
        with self._lock:
            self._current = max(versions) if versions else None
            self._scanned = time.monotonic()

    def _create(self, version: int) -> bool:
        """Make key file ``version`` unless it exists; False when another process made it first."""
        if not create_secret(self.directory / f"kek-{version:06d}.key"):
            return False
        _fsync_directory(self.directory)
        return True

    def _key(self, version: int) -> bytes:
        with self._lock:
            key = self._keys.get(version)
        if key is not None:
            return key
        path = self.directory / f"kek-{version:06d}.key"
        try:
            key = read_secret(path, "key file", KeyProviderError)
        except FileNotFoundError:
            raise KeyProviderError(
                f"key file {path} is missing: blobs wrapped by KEK version {version} cannot be read; "
                "restore it from the key backup, or point RADSTACK_KEY_URL at the directory that holds it"
            ) from None
        with self._lock:
            self._keys[version] = key
        return key

    def _id(self, version: int) -> str:
        kek_id = self._ids.get(version)
        if kek_id is None:
            key = self._key(version)
            fingerprint = hmac.new(key, b"radstack KEK fingerprint", hashlib.sha256).hexdigest()
            kek_id = self._ids[version] = f"local:{version}:{fingerprint[:8]}"
        return kek_id

    def _version(self) -> int:
        if time.monotonic() - self._scanned > self.refresh_seconds:
            self._scan()
        if self._current is None:
            raise KeyProviderError(
                f"there is no key file in {self.directory}; start the server once to make one"
            )
        return self._current

    def current_id(self) -> str:
        return self._id(self._version())

    def wrap(self, key: bytes) -> WrappedKey:
        version = self._version()
        kek_id = self._id(version)
        nonce = os.urandom(12)
        sealed = AESGCM(self._key(version)).encrypt(nonce, key, _WK_AAD + kek_id.encode())
        return WrappedKey(kek_id, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        scheme, _, rest = wrapped.kek_id.partition(":")
        version_text, _, fingerprint = rest.partition(":")
        if scheme != "local" or not version_text.isdigit():
            raise KeyProviderError(
                f"a blob names KEK {wrapped.kek_id!r}, which is not a local key file: set RADSTACK_KEY_URL "
                f"to the provider that wrapped it (now: {self.describe()})"
            )
        version = int(version_text)
        expected = self._id(version)
        if expected != wrapped.kek_id:
            raise KeyProviderError(
                f"key file kek-{version:06d}.key in {self.directory} is not the key that wrapped this blob "
                f"(fingerprint {expected.rsplit(':', 1)[1]}, the blob wants {fingerprint}): every node "
                "sharing a blob store must share one keys directory (RADSTACK_KEY_URL)"
            )
        blob = wrapped.blob
        try:
            return AESGCM(self._key(version)).decrypt(blob[:12], blob[12:], _WK_AAD + wrapped.kek_id.encode())
        except InvalidTag:
            raise BlobIntegrityError(
                f"a wrapping key wrapped by {wrapped.kek_id} fails authentication: the header was changed"
            ) from None

    def begin_rotation(self) -> str:
        """Resume an unfinished rotation, or make the next KEK version and record a rotation to it."""
        self._scan()
        state = self._state()
        if state is not None and state.get("finished") is None and self._current is not None:
            return self.current_id()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        version = (self._current or 0) + 1
        while not self._create(version):
            version += 1
        self._scan()
        target = self._id(version)
        self._write_state({"target": target, "started": _now(), "finished": None})
        return target

    def finish_rotation(self, kek_id: str) -> None:
        state = self._state() or {"target": kek_id, "started": None}
        self._write_state({**state, "target": kek_id, "finished": _now()})

    def _state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads((self.directory / _ROTATION_FILE).read_text())
        except FileNotFoundError:
            return None
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        temporary = self.directory / f".{_ROTATION_FILE}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(temporary, self.directory / _ROTATION_FILE)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- AWS KMS
#: Bound to every KMS Encrypt/Decrypt (and shown in CloudTrail): a ciphertext made for something
#: else under the same key does not decrypt here.
_KMS_CONTEXT = {"radstack": "blob wrapping key"}
#: Seconds between looks at the key's rotations (KMS rotates its key material on its own schedule).
_KMS_VERSION_SECONDS = 60.0


class AwsKmsKeyProvider:
    """The KEK is a symmetric AWS KMS key; wrapping keys are wrapped by KMS Encrypt and Decrypt.

    Endpoint, region and credentials come from boto3's standard chain, as for the S3 blob store:
    ``AWS_ENDPOINT_URL_KMS`` (or ``AWS_ENDPOINT_URL``), ``AWS_DEFAULT_REGION`` (a key ARN names its
    own region), the credentials files and instance or container roles. KMS rotates the key material behind one key id itself (yearly, or on
    demand); the KEK id recorded in headers is ``awskms:<key ARN>@<rotations so far>``, from
    ``ListKeyRotations``, so ``radstack keys rotate`` re-wraps what was wrapped before the latest
    rotation. Pointing an alias at a new key changes the ARN, and rotation moves blobs to it; the old
    key must stay enabled until it has.

    Parameters
    ----------
    key
        Key id, key ARN, ``alias/name`` or alias ARN.
    client
        A boto3 KMS client to use instead of one from the standard chain.

    Raises
    ------
    KeyProviderError
        The key does not exist, is not enabled, is not a symmetric encryption key, or KMS cannot be reached.
    """

    def __init__(self, key: str, *, client: Any = None) -> None:
        self.key = key
        # A key ARN names its region; an id or alias is in the region of the AWS configuration.
        region = key.split(":")[3] if key.startswith("arn:") and key.count(":") >= 5 else None
        self.client: Any = client if client is not None else _kms_client(region)
        self._lock = threading.Lock()
        self._version: tuple[float, int] | None = None
        self._version_warned = False
        metadata = self._call("DescribeKey", self.client.describe_key, KeyId=key)["KeyMetadata"]
        self.arn: str = metadata["Arn"]
        if metadata.get("KeyState", "Enabled") != "Enabled":
            raise KeyProviderError(f"KMS key {key!r} ({self.arn}) is {metadata.get('KeyState')}, not Enabled")
        if metadata.get("KeyUsage") != "ENCRYPT_DECRYPT" or metadata.get("KeySpec") != "SYMMETRIC_DEFAULT":
            raise KeyProviderError(
                f"KMS key {key!r} is {metadata.get('KeySpec')} for {metadata.get('KeyUsage')}; a symmetric "
                "ENCRYPT_DECRYPT key (SYMMETRIC_DEFAULT) is needed"
            )

    def describe(self) -> str:
        return f"AWS KMS key {self.arn}"

    def _call(self, operation: str, method: Callable[..., Any], **params: Any) -> Any:
        endpoint = self.client.meta.endpoint_url
        try:
            return method(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise BlobIntegrityError(
                    f"KMS refused to unwrap a wrapping key ({code}): the header was changed or names another key"
                ) from None
            raise KeyProviderError(
                f"KMS {operation} of key {params.get('KeyId', self.key)!r} at {endpoint} failed: "
                f"{code} {error.get('Message', '')}".rstrip()
            ) from exc
        except BotoCoreError as exc:
            raise KeyProviderError(f"KMS at {endpoint} cannot be used for key {self.key!r}: {exc}") from exc

    def _rotations(self, *, fresh: bool = False) -> int:
        with self._lock:
            cached = self._version
        if cached is not None and not fresh and time.monotonic() - cached[0] < _KMS_VERSION_SECONDS:
            return cached[1]
        count = 0
        try:
            params: dict[str, Any] = {"KeyId": self.arn}
            while True:
                page = self.client.list_key_rotations(**params)
                count += len(page.get("Rotations", ()))
                if not page.get("Truncated"):
                    break
                params["Marker"] = page["NextMarker"]
        except ClientError as exc:  # no kms:ListKeyRotations permission: versions follow the key ARN only
            if not self._version_warned:
                _log.warning("KMS ListKeyRotations failed (%s); rotation follows the key ARN only", exc)
                self._version_warned = True
            count = 0
        except BotoCoreError as exc:
            raise KeyProviderError(f"KMS cannot be reached for key {self.arn}: {exc}") from exc
        with self._lock:
            self._version = (time.monotonic(), count)
        return count

    def current_id(self) -> str:
        return f"awskms:{self.arn}@{self._rotations()}"

    def wrap(self, key: bytes) -> WrappedKey:
        kek_id = self.current_id()
        response = self._call(
            "Encrypt", self.client.encrypt, KeyId=self.arn, Plaintext=key, EncryptionContext=_KMS_CONTEXT
        )
        return WrappedKey(kek_id, response["CiphertextBlob"])

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        scheme, _, rest = wrapped.kek_id.partition(":")
        arn = rest.rpartition("@")[0]
        if scheme != "awskms" or not arn:
            raise KeyProviderError(
                f"a blob names KEK {wrapped.kek_id!r}, which is not an AWS KMS key: set RADSTACK_KEY_URL "
                f"to the provider that wrapped it (now: {self.describe()})"
            )
        response = self._call(
            "Decrypt",
            self.client.decrypt,
            KeyId=arn,
            CiphertextBlob=wrapped.blob,
            EncryptionContext=_KMS_CONTEXT,
        )
        plaintext: bytes = response["Plaintext"]
        return plaintext

    def begin_rotation(self) -> str:
        """The key's current version: rotation itself happens in KMS (automatic or on demand)."""
        self._rotations(fresh=True)
        return self.current_id()

    def finish_rotation(self, kek_id: str) -> None:
        """Nothing to record: KMS keeps its versions."""


def _kms_client(region: str | None) -> Any:
    """A KMS client from boto3's standard chain, with standard retries and a pool for ingest threads."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "total_max_attempts": 5}, max_pool_connections=32)
    return boto3.session.Session().client("kms", region_name=region, config=config)


# ----------------------------------------------------------------------------- configuration
def open_key_provider(key_url: str, *, create: bool = True) -> KeyProvider:
    """The key provider named by a resolved ``RADSTACK_KEY_URL``.

    Parameters
    ----------
    key_url
        ``file:///dir`` for key files in a directory (the default is ``<data_dir>/keys``), or
        ``awskms:///<key id, key ARN or alias/name>`` for a key in AWS KMS.
    create
        Make the first local key when there is none (server start); off for read-only commands.

    Raises
    ------
    ValueError
        The URL has another form.
    KeyProviderError
        The keys cannot be used (see the providers).
    """
    if key_url.startswith("awskms:"):
        key = key_url.removeprefix("awskms:").lstrip("/")
        if not key:
            raise ValueError(
                f"key URL {key_url!r} names no key; expected awskms:///<key id, ARN or alias/name>"
            )
        return AwsKmsKeyProvider(key)
    parsed = urlparse(key_url)
    if parsed.scheme == "file" and parsed.path and not parsed.netloc:
        return LocalKeyProvider(Path(parsed.path), create=create)
    raise ValueError(
        f"key URL {key_url!r} is not supported; expected file:///<directory> or awskms:///<key id or alias/name>"
    )


@dataclass(frozen=True)
class KeyConfig:
    """What a process needs to open the encrypted blob store; picklable for the ingest processes."""

    key_url: str
    allow_plaintext: bool = False

    def open_provider(self, *, create: bool = True) -> KeyProvider:
        return open_key_provider(self.key_url, create=create)


def open_encrypted_blob_store(blob_url: str, keys: KeyConfig) -> EncryptedBlobStore:
    """The blob store of ``blob_url`` (see :func:`~radstack.store.blobs.open_blob_store`), encrypted."""
    return EncryptedBlobStore(
        open_blob_store(blob_url), keys.open_provider(), allow_plaintext=keys.allow_plaintext
    )


# ----------------------------------------------------------------------------- the format
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


@dataclass(frozen=True)
class _Header:
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
        return self.length + self.plaintext_length + _TAG * self.chunks

    def encode(self, length: int | None = None) -> bytes:
        """The header bytes, padded to ``length`` (default: the needed size, 32 spare bytes, to 64)."""
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
        changed = _Header(
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


class _ShortHeader(Exception):
    def __init__(self, length: int) -> None:
        self.length = length


def _parse_header(key: str, data: bytes) -> _Header:
    """The header at the start of ``data`` (which starts with :data:`MAGIC`).

    Raises ``_ShortHeader`` when ``data`` ends before the header does, :class:`BlobIntegrityError`
    when a field is impossible.
    """

    def damaged(what: str) -> BlobIntegrityError:
        return BlobIntegrityError(f"blob {key!r} has a damaged encryption header: {what}")

    if len(data) < _FIXED.size:
        raise _ShortHeader(_FIXED.size)
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
        raise _ShortHeader(length)
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
    if len(wrapped_data_key) != 12 + _KEY + _TAG:
        raise damaged(f"the wrapped data key is {len(wrapped_data_key)} bytes, not {12 + _KEY + _TAG}")
    try:
        kek = kek_id.decode()
    except UnicodeDecodeError:
        raise damaged("the KEK id is not UTF-8") from None
    return _Header(
        length, chunk_size, plaintext_length, bytes(nonce_prefix), kek, wrapped_key, wrapped_data_key
    )


@dataclass(frozen=True)
class _Sealed:
    """An opened blob: its header and the AEAD of its data key (what the object cache holds)."""

    key: str
    header: _Header
    raw_header: bytes
    aead: AESGCM
    aad_prefix: bytes

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Offsets in the stored blob of chunks ``first`` to ``last`` (inclusive)."""
        header = self.header
        stride = header.chunk_size + _TAG
        end = header.total_length if last == header.chunks - 1 else header.length + (last + 1) * stride
        return header.length + first * stride, end

    def decrypt(self, first: int, data: memoryview) -> bytes:
        """Plaintext of the chunks from ``first`` whose stored bytes are ``data``."""
        header = self.header
        stride = header.chunk_size + _TAG
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


def _aad_prefix(key: str, plaintext_length: int, chunk_size: int) -> bytes:
    return b"radstack blob v1\x00" + key.encode() + b"\x00" + struct.pack(">QI", plaintext_length, chunk_size)


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
        self._objects: _Lru[str, _Sealed] = _Lru(cache_size)
        self._wrapping_keys: _Lru[tuple[str, bytes], AESGCM] = _Lru(1024)
        self._writer: _WritingKey | None = None
        self._writer_lock = threading.Lock()

    # ------------------------------------------------------------------ writing
    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, self.seal(key, data))

    def replace(self, key: str, data: bytes) -> None:
        self._objects.pop(key)
        self.inner.replace(key, self.seal(key, data))

    def seal(self, key: str, data: bytes) -> bytes:
        """``data`` encrypted for storage under ``key`` (a new data key, the current wrapping key)."""
        writer = self._writing_key()
        data_key = os.urandom(_KEY)
        nonce = os.urandom(12)
        header = _Header(
            0,
            CHUNK_SIZE,
            len(data),
            os.urandom(8),
            writer.wrapped.kek_id,
            writer.wrapped.blob,
            nonce + writer.aead.encrypt(nonce, data_key, _DEK_AAD),
        )
        aead = AESGCM(data_key)
        aad_prefix = _aad_prefix(key, len(data), CHUNK_SIZE)
        view = memoryview(data)
        parts = [header.encode()]
        chunks = header.chunks
        for index in range(chunks):
            nonce = header.nonce_prefix + index.to_bytes(4, "big")
            aad = aad_prefix + struct.pack(">IB", index, index == chunks - 1)
            parts.append(aead.encrypt(nonce, view[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE], aad))
        return b"".join(parts)

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
                plaintext = os.urandom(_KEY)
                wrapped = self.provider.wrap(plaintext)
                writer = _WritingKey(wrapped.kek_id, wrapped, AESGCM(plaintext), time.monotonic())
                self._wrapping_keys.put((wrapped.kek_id, wrapped.blob), writer.aead)
                self._writer = writer
            writer.uses += 1
            return writer

    # ------------------------------------------------------------------ reading
    def get(self, key: str) -> bytes:
        raw = self.inner.get(key)
        if not raw.startswith(MAGIC):
            return self._plaintext(key, raw)
        try:
            header = _parse_header(key, raw)
        except _ShortHeader:
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
        """Up to ``length`` plaintext bytes from ``start``: only the chunks that hold them are read."""
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
        probe = _PROBE + (last + 1) * (CHUNK_SIZE + _TAG) if first < 4 else _PROBE
        head = self.inner.get_range(key, 0, probe)
        if not head.startswith(MAGIC):
            if len(head) >= start + length or len(head) < probe:
                return self._plaintext(key, head)[start : start + length]
            return self._plaintext(key, self.inner.get_range(key, start, length))
        sealed = self._open_head(key, head, len(head) < probe)
        return self._read(sealed, start, length, head)

    def _read(self, sealed: _Sealed, start: int, length: int, have: bytes) -> bytes:
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

    def _open_head(self, key: str, head: bytes, whole: bool) -> _Sealed:
        """The opened blob whose first bytes are ``head`` (``whole``: that is all of it)."""
        try:
            header = _parse_header(key, head)
        except _ShortHeader as short:
            if whole:
                raise BlobIntegrityError(f"blob {key!r} is cut short inside its encryption header") from None
            head = self.inner.get_range(key, 0, short.length)
            try:
                header = _parse_header(key, head)
            except _ShortHeader:
                raise BlobIntegrityError(f"blob {key!r} is cut short inside its encryption header") from None
        raw_header = head[: header.length]
        sealed = self._objects.get(key)
        if sealed is not None and sealed.raw_header == raw_header:
            return sealed
        return self._open(key, header, raw_header)

    def _open(self, key: str, header: _Header, raw_header: bytes) -> _Sealed:
        wrapping = self._wrapping_aead(WrappedKey(header.kek_id, header.wrapped_key))
        wrapped = header.wrapped_data_key
        try:
            data_key = wrapping.decrypt(wrapped[:12], wrapped[12:], _DEK_AAD)
        except InvalidTag:
            raise BlobIntegrityError(
                f"blob {key!r}: its data key fails authentication: the encryption header was changed"
            ) from None
        sealed = _Sealed(
            key,
            header,
            raw_header,
            AESGCM(data_key),
            _aad_prefix(key, header.plaintext_length, header.chunk_size),
        )
        self._objects.put(key, sealed)
        return sealed

    def _wrapping_aead(self, wrapped: WrappedKey) -> AESGCM:
        cache_key = (wrapped.kek_id, wrapped.blob)
        aead = self._wrapping_keys.get(cache_key)
        if aead is None:
            key = self.provider.unwrap(wrapped)
            if len(key) != _KEY:
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
        """The KEK id named in the blob's header; None for a blob without encryption."""
        head = self.inner.get_range(key, 0, _PROBE)
        if not head.startswith(MAGIC):
            return None
        try:
            return _parse_header(key, head).kek_id
        except _ShortHeader as short:
            if len(head) < _PROBE:
                raise BlobIntegrityError(f"blob {key!r} is cut short inside its encryption header") from None
            head = self.inner.get_range(key, 0, short.length)
        try:
            return _parse_header(key, head).kek_id
        except _ShortHeader:
            raise BlobIntegrityError(f"blob {key!r} is cut short inside its encryption header") from None

    def rewrap(self, key: str, target: str, rewrapped: Callable[[WrappedKey], WrappedKey]) -> RewrapOutcome:
        """Rewrite the header of blob ``key`` so that KEK ``target`` wraps its wrapping key.

        The chunks are copied as they are; a blob without encryption is encrypted. ``rewrapped``
        maps an old wrapped wrapping key to its new wrapped form (memoised by the caller).
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
        header = _parse_header(key, raw)
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


# ----------------------------------------------------------------------------- rotation and status
@dataclass
class RotationReport:
    """The outcome of :func:`rotate_keys`."""

    target: str
    total: int = 0
    outcomes: dict[RewrapOutcome, int] = field(default_factory=lambda: dict.fromkeys(RewrapOutcome, 0))
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())

    @property
    def ok(self) -> bool:
        return not self.failures


def rotate_keys(
    store: EncryptedBlobStore,
    *,
    grace_seconds: float = 5.0,
    workers: int = 8,
    on_progress: Callable[[RotationReport], None] | None = None,
) -> RotationReport:
    """Re-wrap every blob's keys under a new KEK version (local) or the KMS key's current version.

    Only headers are rewritten (a temporary file renamed into place locally, a PUT on S3); the
    encrypted chunks are copied unchanged. Blobs already wrapped by the target are skipped, so a
    rotation that was interrupted resumes where it stopped when run again, and blobs without
    encryption are encrypted. Old KEK versions are kept; a rotation that failed for some blobs
    stays unfinished, and the next run resumes it instead of making another version.

    Parameters
    ----------
    store
        The encrypted store over the blobs.
    grace_seconds
        Wait this long after making a new version, so that running processes, which look for a new
        version every second, stop wrapping with the old one before the blobs are listed.
    workers
        Blobs re-wrapped at once (S3 round trips overlap).
    on_progress
        Called with the report as blobs are done.
    """
    target = store.provider.begin_rotation()
    if grace_seconds > 0:
        time.sleep(grace_seconds)
    keys = [info.key for info in store.inner.list("")]
    report = RotationReport(target=target, total=len(keys))
    memo: dict[WrappedKey, WrappedKey] = {}
    memo_lock = threading.Lock()

    def rewrapped(old: WrappedKey) -> WrappedKey:
        with memo_lock:
            new = memo.get(old)
            if new is None:
                new = memo[old] = store.provider.wrap(store.provider.unwrap(old))
            return new

    def one(key: str) -> tuple[str, RewrapOutcome, str]:
        try:
            return key, store.rewrap(key, target, rewrapped), ""
        except (BlobIntegrityError, KeyProviderError) as exc:
            return key, RewrapOutcome.FAILED, exc.message

    if on_progress is not None:
        on_progress(report)
    with ThreadPoolExecutor(max(1, workers)) as executor:
        for key, outcome, message in executor.map(one, keys):
            report.outcomes[outcome] += 1
            if message:
                report.failures.append((key, message))
            if on_progress is not None:
                on_progress(report)
    if report.ok:
        store.provider.finish_rotation(target)
    return report


@dataclass
class KeyUsage:
    """Which KEK wraps how many blobs (:func:`key_usage`)."""

    current: str
    by_kek: dict[str, int] = field(default_factory=dict)
    plaintext: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)


def key_usage(store: EncryptedBlobStore) -> KeyUsage:
    """Count the blobs per KEK id, the blobs without encryption and those with a damaged header."""
    usage = KeyUsage(current=store.provider.current_id())
    for info in store.inner.list(""):
        try:
            kek = store.kek_of(info.key)
        except NotFound:
            continue
        except BlobIntegrityError as exc:
            usage.damaged.append((info.key, exc.message))
            continue
        if kek is None:
            usage.plaintext += 1
        else:
            usage.by_kek[kek] = usage.by_kek.get(kek, 0) + 1
    return usage

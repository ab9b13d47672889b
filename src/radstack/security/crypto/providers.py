"""Key providers: where the key-encryption keys (KEKs) live, and how keys are wrapped by them.

A :class:`KeyProvider` wraps and unwraps the wrapping keys that :mod:`.store` puts in every blob
header, and makes a new KEK version when keys rotate (:mod:`.rotation`). Two providers:
:class:`LocalKeyProvider` (key files in a directory, the default) and
:class:`~radstack.security.crypto.kms.AwsKmsKeyProvider` (a key in AWS KMS; its module is the only
one here that imports botocore, and it is imported only when a key URL names KMS).
:func:`open_key_provider` picks one from ``RADSTACK_KEY_URL``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radstack.errors import OutOfResources, ProcessingFailure
from radstack.security.keyfile import check_private, create_secret, read_secret

__all__ = [
    "BlobIntegrityError",
    "KeyProvider",
    "KeyProviderError",
    "LocalKeyProvider",
    "WrappedKey",
    "open_key_provider",
]

_WK_AAD = b"radstack wrapping key v1\x00"


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
        """Id of the KEK version that :meth:`wrap` uses now.

        Raises
        ------
        KeyProviderError
            When there is no usable KEK (no key file, or KMS cannot be reached).
        """

    def wrap(self, key: bytes) -> WrappedKey:
        """``key`` wrapped by the current KEK.

        Raises
        ------
        KeyProviderError
            When the current KEK cannot be used (a missing key file, KMS refusing or unreachable).
        """

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        """The key inside ``wrapped``.

        Raises
        ------
        KeyProviderError
            When its KEK is not available here (another provider's, a missing or different key
            file, KMS refusing or unreachable).
        BlobIntegrityError
            When ``wrapped`` fails authentication: the header that holds it was changed.
        """

    def begin_rotation(self) -> str:
        """Make (or find) the KEK version a rotation re-wraps to and return its id.

        Raises
        ------
        KeyProviderError
            When the new version cannot be made or read (local key files) or KMS cannot be reached.
        """

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


# ----------------------------------------------------------------------------- choosing one
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
        # Imported here: botocore is loaded only by a deployment whose keys are in KMS.
        from radstack.security.crypto.kms import AwsKmsKeyProvider

        return AwsKmsKeyProvider(key)
    parsed = urlparse(key_url)
    if parsed.scheme == "file" and parsed.path and not parsed.netloc:
        return LocalKeyProvider(Path(parsed.path), create=create)
    raise ValueError(
        f"key URL {key_url!r} is not supported; expected file:///<directory> or awskms:///<key id or alias/name>"
    )

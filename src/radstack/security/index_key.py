"""Encryption of the embedded index database: SQLCipher pages under a data key wrapped by the KEK.

Why this design. The index must answer QIDO-RS and C-FIND with SQL: wildcard and fuzzy person-name
matching, date ranges, sorting, counts. Column-level encryption would turn every such query into a
scan that decrypts rows in Python and still leave table and index statistics readable. SQLCipher
(SQLite with AES-256 page encryption and an HMAC per page; cipher suite 4) encrypts everything SQLite
writes, main file, WAL and journal alike, below the SQL layer, so the queries and the plans do
not change. The database key is 32 random bytes, used as a raw key (no passphrase derivation on each
connection), wrapped by the same key-encryption key as the blobs (a key file or AWS KMS,
:mod:`radstack.security.crypto`) and kept wrapped in ``<data dir>/index.key``; ``radstack keys rotate``
re-wraps it without touching the database.

PostgreSQL (the many-node deployment) is protected by the database server's storage encryption
(an encrypted volume or the managed service's encryption at rest) and TLS to it: there, radstack's
own files hold no PHI, and doing the same in the application would cost the SQL matching.

An index written before encryption existed is converted once, in place, when radstack opens it
(``sqlcipher_export`` into a new file that replaces the old one).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from radstack.config import Settings
from radstack.security.crypto.providers import KeyProvider, WrappedKey, open_key_provider
from radstack.store.index import create_index_engine

__all__ = ["INDEX_KEY_FILE", "index_key", "is_plaintext_sqlite", "open_index_engine", "rewrap_index_key"]

log = logging.getLogger(__name__)

INDEX_KEY_FILE = "index.key"
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _read(path: Path) -> WrappedKey:
    document: dict[str, Any] = json.loads(path.read_text())
    return WrappedKey(document["kek_id"], base64.b64decode(document["wrapped"]))


def _write(path: Path, wrapped: WrappedKey) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"kek_id": wrapped.kek_id, "wrapped": base64.b64encode(wrapped.blob).decode()}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def index_key(data_dir: Path, provider: KeyProvider) -> bytes:
    """The database key of the data dir's index, made and wrapped by ``provider`` on first use.

    Raises
    ------
    KeyProviderError
        When the KEK that wraps the key is not available.
    BlobIntegrityError
        When the wrapped key fails authentication: ``index.key`` was changed.
    """
    path = data_dir / INDEX_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        _write(path, provider.wrap(secrets.token_bytes(32)))
    return provider.unwrap(_read(path))


def rewrap_index_key(data_dir: Path, provider: KeyProvider) -> bool:
    """Wrap the index key by ``provider``'s current KEK (key rotation); False when there is none.

    Raises
    ------
    KeyProviderError
        When the old KEK cannot unwrap the key or the current one cannot wrap it.
    BlobIntegrityError
        When the wrapped key fails authentication: ``index.key`` was changed.
    """
    path = data_dir / INDEX_KEY_FILE
    if not path.exists():
        return False
    wrapped = _read(path)
    if wrapped.kek_id != provider.current_id():
        _write(path, provider.wrap(provider.unwrap(wrapped)))
    return True


def is_plaintext_sqlite(path: Path) -> bool:
    """Whether ``path`` is an unencrypted SQLite database (its header is readable)."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except FileNotFoundError:
        return False


def encrypt_in_place(path: Path, key: bytes) -> None:
    """Convert the plaintext SQLite database ``path`` (and its WAL) to SQLCipher under ``key``."""
    import sqlcipher3

    encrypted = path.with_name(f".{path.name}.encrypting")
    encrypted.unlink(missing_ok=True)
    connection = sqlcipher3.connect(str(path))
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute(f"ATTACH DATABASE '{encrypted}' AS encrypted KEY \"x'{key.hex()}'\"")
        connection.execute("SELECT sqlcipher_export('encrypted')")
        connection.execute("DETACH DATABASE encrypted")
    finally:
        connection.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(encrypted, path)
    log.warning("encrypted the index database %s (it was written before index encryption)", path)


def open_index_engine(settings: Settings, provider: KeyProvider | None = None) -> Engine:
    """The index of ``settings``: a SQLite one encrypted (converted first if it was not), or PostgreSQL.

    Raises
    ------
    ValueError
        When the key URL has an unsupported form (SQLite only).
    KeyProviderError
        When the KEK that wraps the index key is not available (SQLite only).
    BlobIntegrityError
        When the wrapped index key fails authentication: ``index.key`` was changed.
    """
    url = settings.resolved_database_url
    if not url.startswith("sqlite"):
        return create_index_engine(url)
    key = index_key(settings.data_dir, provider or open_key_provider(settings.resolved_key_url))
    database = make_url(url).database
    if database and is_plaintext_sqlite(Path(database)):
        encrypt_in_place(Path(database), key)
    return create_index_engine(url, key)

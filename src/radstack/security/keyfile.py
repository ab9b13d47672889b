"""Secrets kept in files: the local key-encryption keys, the audit HMAC key, the de-identification key.

Each is 32 random bytes in a file of mode 0600, created exclusively (``O_EXCL`` on a temporary file,
published by ``link``, so a concurrent reader never sees a partial key) and refused when group or
others may read it. Every node of a deployment must read the same files.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from radstack.errors import RadstackError

__all__ = ["SECRET_BYTES", "check_private", "create_secret", "load_secret", "read_secret"]

SECRET_BYTES = 32


def check_private(path: Path, mode: int, what: str, error: type[RadstackError] = RadstackError) -> None:
    """Refuse a key file that group or others can read; the message says how to fix it.

    Raises
    ------
    RadstackError
        ``error`` (a RadstackError by default) when group or others can read it.
    """
    if stat.S_IMODE(mode) & 0o077:
        raise error(
            f"{what} {path} has mode {stat.S_IMODE(mode):04o} and can be read by other users; "
            f"radstack refuses to use it until it is private: chmod 600 {path}"
        )


def create_secret(path: Path) -> bool:
    """Write 32 random bytes to ``path`` unless it exists; False when another process made it first.

    Raises
    ------
    OSError
        When the directory cannot be written.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(SECRET_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
    finally:
        temporary.unlink(missing_ok=True)
    return True


def read_secret(path: Path, what: str, error: type[RadstackError] = RadstackError) -> bytes:
    """The 32 bytes of the key file ``path``, checked to be private and whole.

    Raises
    ------
    RadstackError
        ``error`` (a RadstackError by default) when group or others can read the file, or it does
        not hold 32 bytes.
    OSError
        When the file cannot be opened (``FileNotFoundError`` when it is missing).
    """
    with path.open("rb") as handle:
        check_private(path, os.fstat(handle.fileno()).st_mode, what, error)
        key = handle.read()
    if len(key) != SECRET_BYTES:
        raise error(f"{what} {path} holds {len(key)} bytes; a key is {SECRET_BYTES} random bytes")
    return key


def load_secret(path: Path, what: str, *, create: bool = True) -> bytes | None:
    """The key in ``path``, made first when missing and ``create``; None when missing otherwise.

    Raises
    ------
    RadstackError
        When group or others can read the file, or it does not hold 32 bytes.
    OSError
        When the file cannot be made or read.
    """
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        create_secret(path)
    if not path.exists():
        return None
    return read_secret(path, what)

"""Key rotation: every blob's wrapping key re-wrapped under a new KEK version, headers only.

:func:`rotate_keys` asks the provider for the target KEK (a new key file version, or the KMS key's
current version), then has :meth:`~radstack.security.crypto.store.EncryptedBlobStore.rewrap`
rewrite each blob's header; the chunks are copied unchanged. Blobs without the encryption magic were
written before encryption existed: rotation encrypts them. :func:`key_usage` counts the blobs per KEK,
for ``radstack keys status``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from radstack.errors import NotFound
from radstack.security.crypto.providers import BlobIntegrityError, KeyProviderError, WrappedKey
from radstack.security.crypto.store import EncryptedBlobStore, RewrapOutcome

__all__ = ["KeyUsage", "RotationReport", "key_usage", "rotate_keys"]


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

    Returns
    -------
    RotationReport
        The outcome per blob; blobs that failed (damaged, or their old KEK unavailable) are listed
        in its ``failures`` rather than raised.

    Raises
    ------
    KeyProviderError
        When the target KEK version cannot be made or read, or KMS cannot be reached.
    OutOfResources
        When the blob store refuses a rewritten blob; the rotation stops, and running it again
        resumes it.
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
    """Count the blobs per KEK id, the blobs without encryption and those with a damaged header.

    Raises
    ------
    KeyProviderError
        When the current KEK cannot be named (no key file, or KMS cannot be reached).
    """
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

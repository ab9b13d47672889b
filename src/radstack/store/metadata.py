"""Metadata documents: the gzipped DICOM JSON array of a study's (or a series') current instances.

They answer study and series metadata requests (PS3.18 §10.4) and what routing reads of a study.
Each is precomputed after every change, in one background thread, and cached in the blob store
under the study's change sequence, so a read is one blob fetch; the documents of earlier change
sequences are left for :mod:`radstack.store.gc` to collect.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from radstack.errors import NotFound
from radstack.store.blobs import BlobStore
from radstack.store.models import StudyRow
from radstack.store.records import InstanceRecord

__all__ = ["MetadataDocuments", "StudyReader", "document_prefix"]

log = logging.getLogger(__name__)

#: How long a scheduled rebuild waits for the next requests of a bulk send to join it.
_SETTLE_SECONDS = 0.2


class StudyReader(Protocol):
    """The reads the documents are built from (a :class:`~radstack.store.studies.StudyStore`)."""

    def require_study(self, study_uid: str, *, include_deleted: bool = False) -> StudyRow: ...

    def require_series(self, study_uid: str, series_uid: str) -> None: ...

    def list_instances(
        self, study_uid: str, series_uid: str | None = None, *, version: int | None = None
    ) -> list[InstanceRecord]: ...


def document_prefix(study_uid: str, change_seq: int) -> str:
    """The blob key prefix of a study's documents at one change sequence."""
    return f"docs/{study_uid}/{change_seq}"


def _document_key(study_uid: str, change_seq: int, series_uid: str | None) -> str:
    return f"{document_prefix(study_uid, change_seq)}/{series_uid or 'study'}.json.gz"


class MetadataDocuments:
    """The metadata documents of one store: read, built on demand, rebuilt after changes."""

    def __init__(self, reader: StudyReader, engine: Engine, blobs: BlobStore) -> None:
        self.reader = reader
        self.engine = engine
        self.blobs = blobs
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._pending: set[str] = set()
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docs")

    def close(self) -> None:
        """Stop the builder; rebuilds not yet run are dropped (a read builds what it needs)."""
        self._builder.shutdown(wait=True, cancel_futures=True)

    def current(self, study_uid: str, series_uid: str | None = None) -> bytes:
        """The document of a study's (or series') current instances.

        Raises
        ------
        NotFound
            When the study or series is not stored.
        """
        study = self.reader.require_study(study_uid)
        if series_uid is not None:
            self.reader.require_series(study_uid, series_uid)
        key = _document_key(study_uid, study.change_seq, series_uid)
        if not self.blobs.exists(key):
            self._build(study_uid)
            study = self.reader.require_study(study_uid)
            key = _document_key(study_uid, study.change_seq, series_uid)
            if not self.blobs.exists(key):  # changed again meanwhile: build for the latest
                self._build(study_uid)
        try:
            return self.blobs.get(key)
        except NotFound:
            return self._assemble(self.reader.list_instances(study_uid, series_uid))

    def of_version(self, study_uid: str, version: int) -> bytes:
        """The document of a past (or the current) study version, built when asked.

        Raises
        ------
        NotFound
            When the study was never stored or has no such version.
        """
        study = self.reader.require_study(study_uid, include_deleted=True)
        if not 0 < version <= study.version:
            raise NotFound(f"study {study_uid} has no version {version} (latest is {study.version})")
        return self._assemble(self.reader.list_instances(study_uid, version=version))

    def schedule(self, study_uids: set[str]) -> None:
        """Rebuild the documents of changed studies in the background.

        A rebuild reads the newest state when it starts, so one that is queued and not yet running
        already covers later changes: during a bulk ingest the work stays linear, not quadratic.
        """
        with self._locks_guard:
            fresh = sorted(study_uids - self._pending)
            self._pending.update(fresh)
        for study_uid in fresh:
            self._builder.submit(self._build_pending, study_uid)

    def _assemble(self, records: Sequence[InstanceRecord]) -> bytes:
        body = b"[" + b",".join(self.blobs.get(r.json_key) for r in records) + b"]"
        return gzip.compress(body, compresslevel=5)

    def _lock(self, study_uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(study_uid, threading.Lock())

    def _build(self, study_uid: str) -> None:
        with self._lock(study_uid):
            with Session(self.engine) as session:
                change_seq = session.scalar(
                    select(StudyRow.change_seq).where(StudyRow.study_uid == study_uid)
                )
            if change_seq is None or self.blobs.exists(_document_key(study_uid, change_seq, None)):
                return
            records = self.reader.list_instances(study_uid)
            by_series: dict[str, list[InstanceRecord]] = {}
            for record in records:
                by_series.setdefault(record.series_uid, []).append(record)
            for series_uid, members in by_series.items():
                self.blobs.put(_document_key(study_uid, change_seq, series_uid), self._assemble(members))
            # The study document last: its presence marks the set complete.
            self.blobs.put(_document_key(study_uid, change_seq, None), self._assemble(records))

    def _build_pending(self, study_uid: str) -> None:
        # A short pause lets the next requests of a bulk send join this rebuild instead of queueing
        # their own; a read that comes first builds the document itself.
        time.sleep(_SETTLE_SECONDS)
        with self._locks_guard:
            self._pending.discard(study_uid)
        try:
            self._build(study_uid)
        except Exception:  # a failed rebuild is retried by the next read; never kill the builder
            log.exception("metadata document rebuild failed for a study")

"""Collect orphaned blobs: the other half of "blobs first, index row last".

A crash between writing an instance's blobs and committing its index row leaves blobs that no row
refers to, and every change leaves the metadata documents of earlier change sequences behind.
Neither is ever visible; this pass removes them. Blobs younger than a grace period are kept,
since an ingest in flight has written them but not yet committed its row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import select

from radstack.store.metadata import document_prefix
from radstack.store.models import InstanceRow, StudyRow
from radstack.store.studies import StudyStore

__all__ = ["GcReport", "collect_garbage"]

#: Content-addressed blob families referenced by instance rows.
_CONTENT_PREFIXES = ("f", "h", "j")


@dataclass(frozen=True, slots=True)
class GcReport:
    examined: int
    removed: int


def collect_garbage(store: StudyStore, *, grace_seconds: float = 3600.0) -> GcReport:
    """Delete blobs no index row refers to (any version) and stale metadata documents."""
    cutoff = time.time() - grace_seconds
    referenced: set[str] = set()
    with store.engine.connect() as connection:
        for frames, header_key, json_key in connection.execute(
            select(InstanceRow.frames, InstanceRow.header_key, InstanceRow.json_key)
        ):
            referenced.update(json.loads(frames))
            referenced.add(header_key)
            referenced.add(json_key)
        current_docs = {
            document_prefix(study_uid, change_seq)
            for study_uid, change_seq in connection.execute(select(StudyRow.study_uid, StudyRow.change_seq))
        }
    examined = removed = 0
    for prefix in _CONTENT_PREFIXES:
        for key, written, _size in list(store.blobs.list(prefix)):
            examined += 1
            if key not in referenced and written < cutoff:
                store.blobs.delete(key)
                removed += 1
    for key, written, _size in list(store.blobs.list("docs")):
        examined += 1
        if key.rsplit("/", 1)[0] not in current_docs and written < cutoff:
            store.blobs.delete(key)
            removed += 1
    return GcReport(examined=examined, removed=removed)

"""The drop folder: files put into ``<inbox>/incoming/`` are ingested, then moved out of the way.

A file is taken once it is complete, meaning its size and modification time have not changed for
``settle_seconds`` (a copy in progress keeps growing). Each file becomes an ``inbox-file`` job whose
client token names the file and its size and mtime, so several servers watching one shared inbox
enqueue it once. The job ingests the file and moves it to ``processed/`` when it was stored (or was
already stored), or to ``failed/`` with ``<name>.reason.json`` beside it when it was refused. A
file is never removed unless it was stored; a failure that may pass (a full disk, the database
away) leaves it in place and the job retries.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radstack.errors import BadRequest
from radstack.ingest.pipeline import Analyser, ingest_file
from radstack.jobs.periodic import Periodic
from radstack.jobs.queue import JobContext, JobQueue
from radstack.store.studies import Batch, StudyStore

__all__ = ["INBOX_KIND", "InboxRunner", "InboxWatcher"]

INBOX_KIND = "inbox-file"
INCOMING, PROCESSED, FAILED = "incoming", "processed", "failed"

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Seen:
    size: int
    mtime_ns: int
    since: float


class InboxWatcher:
    """Polls ``<inbox>/incoming`` and submits one job per settled file."""

    def __init__(
        self, inbox: Path, jobs: JobQueue, *, settle_seconds: float = 2.0, poll_seconds: float = 1.0
    ) -> None:
        self.inbox = inbox
        self.jobs = jobs
        self.settle_seconds = settle_seconds
        self.poll_seconds = poll_seconds
        for name in (INCOMING, PROCESSED, FAILED):
            (inbox / name).mkdir(parents=True, exist_ok=True)
        self._seen: dict[str, _Seen] = {}
        self._submitted: set[str] = set()
        self.thread = Periodic("inbox-watcher", poll_seconds, self.poll)

    def poll(self) -> int:
        """Look at the incoming folder once; returns how many files were submitted."""
        now = time.monotonic()
        incoming = self.inbox / INCOMING
        present: dict[str, os.stat_result] = {}
        for directory, _subdirs, files in os.walk(incoming):
            for name in files:
                path = Path(directory, name)
                try:
                    present[path.relative_to(incoming).as_posix()] = path.stat()
                except OSError:
                    continue  # moved away between listing and stat
        submitted = 0
        for relative, stat in present.items():
            seen = self._seen.get(relative)
            if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                self._seen[relative] = _Seen(stat.st_size, stat.st_mtime_ns, now)
                continue
            token = f"{relative}:{stat.st_size}:{stat.st_mtime_ns}"
            if now - seen.since < self.settle_seconds or token in self._submitted:
                continue
            self.jobs.submit(INBOX_KIND, {"path": relative}, client_token=token[-128:])
            self._submitted.add(token)
            submitted += 1
        for relative in set(self._seen) - set(present):
            del self._seen[relative]
        self._submitted = {t for t in self._submitted if t.rsplit(":", 2)[0] in present}
        return submitted


class InboxRunner:
    """The job handler for one inbox file: ingest it, then move it to processed/ or failed/."""

    def __init__(self, inbox: Path, store: StudyStore, analyser: Analyser | None) -> None:
        self.inbox = inbox
        self.store = store
        self.analyser = analyser

    def __call__(self, context: JobContext) -> JsonDict:
        relative = str(context.job.params["path"])
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise BadRequest(f"inbox path {relative!r} must be relative to the incoming folder")
        source = self.inbox / INCOMING / relative
        if not source.exists():
            if (self.inbox / PROCESSED / relative).exists():
                return {"path": relative, "outcome": "stored"}  # a run before this one finished the work
            raise BadRequest(f"inbox file {relative!r} vanished before it was ingested")
        batch = Batch(reason="inbox", detail=relative)
        result = ingest_file(self.store, source, batch, analyser=self.analyser)
        self.store.schedule_documents(batch.touched)
        error = result.error
        if error is not None and error.http_status >= 500:
            raise error  # may pass (full disk, database away): the file stays, the job retries
        target = self.inbox / (FAILED if error is not None else PROCESSED) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if error is not None:
            reason = {
                "path": relative,
                "status": error.dicom_status,
                "reason": error.message,
                "sop_instance_uid": result.sop_uid,
            }
            target.with_name(target.name + ".reason.json").write_text(json.dumps(reason, indent=2) + "\n")
        os.replace(source, target)
        outcome = "failed" if error is not None else (result.outcome.value if result.outcome else "stored")
        return {"path": relative, "outcome": outcome, "sop_instance_uid": result.sop_uid}

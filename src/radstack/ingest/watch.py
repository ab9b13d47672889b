"""Drop folders: files put into ``incoming/`` of an inbox are ingested, then moved out of the way.

An inbox is a directory (``RADSTACK_INBOX_DIR``, default ``<data>/inbox``) or a bucket prefix
(``RADSTACK_INBOX_URL=s3://bucket/prefix``, polled: the bucket-event path without a cloud). Each
holds ``incoming/``, ``processed/`` and ``failed/``.

A file is taken once it is complete, meaning its size and modification time have not changed for
``settle_seconds`` (a copy in progress keeps growing; an S3 object is whole once listed, so this
only delays it). Each file becomes an ``inbox-file`` job whose client token names the inbox, the
file, its size and its mtime, so several servers watching one shared inbox enqueue it once. The job
ingests the file and moves it to ``processed/`` when it was stored (or was already stored), or to
``failed/`` with ``<name>.reason.json`` beside it when it was refused. A file is never removed
unless it was stored; a failure that may pass (a full disk, the database away) leaves it in place
and the job retries.

A refused file is logged (its path in the inbox and the reason; never its content) and its job ends
DONE_WITH_ERRORS with the reason as its ``last_error``: the Jobs page lists those jobs as the inbox's
refusals, so no table of their own is needed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from radstack.errors import BadRequest, NotFound
from radstack.ingest.options import IngestOptions
from radstack.ingest.pipeline import Analyser, ingest_file
from radstack.jobs.kinds import INGEST_QUEUE, JobParams, declare
from radstack.jobs.periodic import Periodic
from radstack.jobs.queue import JobContext, JobQueue
from radstack.store.blobs import S3BlobStore
from radstack.store.studies import BatchReason, StudyStore

__all__ = ["INBOX", "INBOX_KIND", "Inbox", "InboxParams", "InboxRunner", "InboxWatcher", "open_inbox"]

INCOMING, PROCESSED, FAILED = "incoming", "processed", "failed"

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]


class InboxParams(JobParams):
    """An ``inbox-file`` job: the inbox (its name, a directory or ``s3://…``) and the file's path
    relative to its ``incoming/``."""

    inbox: str
    path: str


INBOX = declare("inbox-file", InboxParams, queue=INGEST_QUEUE)
INBOX_KIND = INBOX.name


class Inbox(Protocol):
    """Where dropped files wait: paths are relative to ``incoming/``."""

    name: str

    def incoming(self) -> dict[str, tuple[int, int]]:
        """Every waiting file with its size and modification stamp."""

    def read(self, relative: str) -> Path | bytes:
        """The file; :class:`NotFound` when it is not (or no longer) in ``incoming/``."""

    def processed(self, relative: str) -> bool:
        """Whether the file was already moved to ``processed/`` (a job that runs twice)."""

    def finish(self, relative: str, folder: str, reason: JsonDict | None) -> None:
        """Move the file to ``folder`` (``processed`` or ``failed``), the reason beside it."""


class DirectoryInbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = str(root)
        for folder in (INCOMING, PROCESSED, FAILED):
            (root / folder).mkdir(parents=True, exist_ok=True)

    def incoming(self) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        base = self.root / INCOMING
        for directory, _subdirs, files in os.walk(base):
            for name in files:
                path = Path(directory, name)
                try:
                    stat = path.stat()
                except OSError:
                    continue  # moved away between listing and stat
                found[path.relative_to(base).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return found

    def read(self, relative: str) -> Path:
        path = self.root / INCOMING / relative
        if not path.exists():
            raise NotFound(f"inbox file {relative!r} is not in {INCOMING}/")
        return path

    def processed(self, relative: str) -> bool:
        return (self.root / PROCESSED / relative).exists()

    def finish(self, relative: str, folder: str, reason: JsonDict | None) -> None:
        target = self.root / folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if reason is not None:
            target.with_name(target.name + ".reason.json").write_text(json.dumps(reason, indent=2) + "\n")
        os.replace(self.root / INCOMING / relative, target)


class BucketInbox:
    """An inbox under an S3 prefix; "moving" an object is a copy under the new prefix, then a delete."""

    def __init__(self, url: str) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.store = S3BlobStore(bucket, prefix)
        self.name = url.rstrip("/")

    def incoming(self) -> dict[str, tuple[int, int]]:
        start = len(INCOMING) + 1
        return {info.key[start:]: (info.size, int(info.written)) for info in self.store.list(INCOMING)}

    def read(self, relative: str) -> bytes:
        return self.store.get(f"{INCOMING}/{relative}")

    def processed(self, relative: str) -> bool:
        return self.store.exists(f"{PROCESSED}/{relative}")

    def finish(self, relative: str, folder: str, reason: JsonDict | None) -> None:
        if reason is not None:
            self.store.put(f"{folder}/{relative}.reason.json", (json.dumps(reason, indent=2) + "\n").encode())
        self.store.put(f"{folder}/{relative}", self.read(relative))
        self.store.delete(f"{INCOMING}/{relative}")


def open_inbox(location: str) -> Inbox:
    """The inbox at ``location``: ``s3://bucket/prefix`` or a directory path."""
    return BucketInbox(location) if location.startswith("s3://") else DirectoryInbox(Path(location))


@dataclass(frozen=True, slots=True)
class _Seen:
    size: int
    stamp: int
    since: float


class InboxWatcher:
    """Polls an inbox's ``incoming/`` and submits one job per settled file."""

    def __init__(
        self, inbox: Inbox, jobs: JobQueue, *, settle_seconds: float = 2.0, poll_seconds: float = 1.0
    ) -> None:
        self.inbox = inbox
        self.jobs = jobs
        self.settle_seconds = settle_seconds
        self._seen: dict[str, _Seen] = {}
        self._submitted: dict[str, str] = {}  # relative path → token of the version submitted
        self.thread = Periodic(f"inbox-watcher {inbox.name}", poll_seconds, self.poll)

    def poll(self) -> int:
        """Look at the incoming files once; returns how many were submitted."""
        now = time.monotonic()
        present = self.inbox.incoming()
        submitted = 0
        for relative, (size, stamp) in present.items():
            seen = self._seen.get(relative)
            if seen is None or (seen.size, seen.stamp) != (size, stamp):
                self._seen[relative] = _Seen(size, stamp, now)
                continue
            token = f"{self.inbox.name}:{relative}:{size}:{stamp}"
            if now - seen.since < self.settle_seconds or self._submitted.get(relative) == token:
                continue
            params = InboxParams(inbox=self.inbox.name, path=relative)
            self.jobs.submit(INBOX, params, client_token=token[-128:])
            self._submitted[relative] = token
            submitted += 1
        for relative in set(self._seen) - set(present):
            del self._seen[relative]
            self._submitted.pop(relative, None)
        return submitted


class InboxRunner:
    """The job handler for one inbox file: ingest it, then move it to processed/ or failed/."""

    def __init__(
        self,
        inboxes: Mapping[str, Inbox],
        store: StudyStore,
        analyser: Analyser | None,
        options: IngestOptions,
    ) -> None:
        self.inboxes = inboxes
        self.store = store
        self.analyser = analyser
        self.options = options

    def __call__(self, context: JobContext[InboxParams]) -> JsonDict:
        relative = context.params.path
        inbox = self.inboxes.get(context.params.inbox)
        if inbox is None:
            raise BadRequest(f"inbox {context.params.inbox!r} is not configured on this node")
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise BadRequest(f"inbox path {relative!r} must be relative to the incoming folder")
        try:
            data = inbox.read(relative)
        except NotFound:
            if inbox.processed(relative):
                return {"path": relative, "outcome": "stored"}  # a run before this one finished the work
            raise BadRequest(f"inbox file {relative!r} vanished before it was ingested") from None
        with self.store.batch(BatchReason.INBOX, relative) as batch:
            result = ingest_file(self.store, data, batch, encode=self.options.encode, analyser=self.analyser)
        error = result.error
        if error is not None and error.http_status >= 500:
            raise error  # may pass (full disk, database away): the file stays, the job retries
        if error is None:
            inbox.finish(relative, PROCESSED, None)
            outcome = result.outcome.value if result.outcome else "stored"
            return {"path": relative, "outcome": outcome, "sop_instance_uid": result.sop_uid}
        reason = {
            "path": relative,
            "status": error.dicom_status,
            "reason": error.message,
            "sop_instance_uid": result.sop_uid,
        }
        inbox.finish(relative, FAILED, reason)
        log.warning("inbox %s refused %s (moved to %s/): %s", inbox.name, relative, FAILED, error.message)
        context.refused(error.message)
        return {
            "path": relative,
            "outcome": "refused",
            "moved_to": f"{FAILED}/{relative}",
            "status": error.dicom_status,
            "sop_instance_uid": result.sop_uid,
        }

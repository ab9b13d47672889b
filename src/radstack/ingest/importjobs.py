"""Import jobs: bulk-load a directory tree or a bucket prefix through the ingest pipeline.

The equivalent of HealthImaging's StartDICOMImportJob. A job scans its source (a directory tree, or
every object under an ``s3://bucket/prefix``) recursively, ingests
the files in parallel chunks, and records each file's outcome in the database together with the
job's progress, in one transaction per chunk. Those records are the success and failure manifests
and make the job resumable: after a crash or a restart it skips the files it has recorded and
carries on. Files it stored but had not yet recorded when the process died are ingested again and
found to be duplicates, so nothing is lost and nothing doubled (the store dedupes by content).

A job whose every file was stored (or was already stored) SUCCEEDS; one that refused some files
ends DONE_WITH_ERRORS, its progress counting ``stored``, ``duplicate``, ``replaced`` and
``refused`` files, and its failure manifest giving each refused file's reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from radstack.errors import BadRequest, CannotUnderstand, NotFound, RadstackError
from radstack.ingest.items import ImportItems
from radstack.ingest.options import IngestOptions
from radstack.ingest.pipeline import Analyser, IngestResult, ingest_file
from radstack.jobs.kinds import INGEST_QUEUE, JobParams, Submitter, declare
from radstack.jobs.queue import JobContext
from radstack.security.policy import ActionValues, Policy, Principal
from radstack.store.blobs import S3BlobStore
from radstack.store.studies import Batch, BatchReason, StudyStore

__all__ = ["IMPORT", "IMPORT_KIND", "ImportParams", "ImportRunner", "check_source"]

#: Files per recorded chunk: one transaction (outcomes + progress) per chunk.
_CHUNK = 32
#: A DICOMDIR indexes removable media (PS3.10 §8); it is not an instance to store.
_DICOMDIR = "DICOMDIR"

JsonDict = dict[str, Any]


class ImportParams(JobParams):
    """An ``import`` job: the source (as :func:`check_source` normalised it) and its submitter
    (none when the command line, acting for the platform, made the job)."""

    source: str
    submitted_by: Submitter | None = None


IMPORT = declare("import", ImportParams, queue=INGEST_QUEUE)
IMPORT_KIND = IMPORT.name


def check_source(source: str) -> str:
    """The normalised source of an import job; :class:`BadRequest` naming what is wrong otherwise.

    A source is an absolute directory on the server, or ``s3://bucket/prefix`` read with the same
    credentials and endpoint as an S3 blob store.

    Raises
    ------
    BadRequest
        A path that is not absolute or not a directory this server can read, or an ``s3://``
        source that names no bucket or a bucket that does not exist.
    OutOfResources
        The bucket cannot be reached or read with the S3 credentials.
    """
    if source.startswith("s3://"):
        _open_bucket(source)
        return source.rstrip("/")
    path = Path(source)
    if not path.is_absolute():
        raise BadRequest(f"import source {source!r} must be an absolute directory path or s3://bucket/prefix")
    if not path.is_dir():
        raise BadRequest(f"import source {source!r} is not a directory this server can read")
    return str(path.resolve())


@dataclass(frozen=True, slots=True)
class _File:
    #: Path relative to the source (the manifests' ``path``).
    relative: str
    size: int


class _Source(Protocol):
    def scan(self) -> Iterator[_File]:
        """Every file of the source, in a stable order, with its size at scan time."""

    def read(self, file: _File) -> Path | bytes:
        """The file (its path, or its bytes); :class:`CannotUnderstand` when it vanished."""


class _Directory:
    def __init__(self, root: Path) -> None:
        self.root = root

    def scan(self) -> Iterator[_File]:
        for directory, subdirs, files in os.walk(self.root):
            subdirs.sort()
            for name in sorted(files):
                path = Path(directory, name)
                try:
                    size = path.stat().st_size
                except OSError:
                    continue  # vanished between listing and stat: not part of this import
                yield _File(path.relative_to(self.root).as_posix(), size)

    def read(self, file: _File) -> Path:
        path = self.root / file.relative
        if not path.exists():
            raise CannotUnderstand("the file vanished before it was read")
        return path


class _Bucket:
    def __init__(self, source: str) -> None:
        self.store = _open_bucket(source)

    def scan(self) -> Iterator[_File]:
        for info in sorted(self.store.list("")):
            yield _File(info.key, info.size)

    def read(self, file: _File) -> bytes:
        try:
            return self.store.get(file.relative)
        except NotFound:
            raise CannotUnderstand("the object vanished before it was read") from None
        except ValueError as exc:  # a key radstack cannot address (``..``, a leading ``/``)
            raise CannotUnderstand(str(exc)) from None


def _open_bucket(source: str) -> S3BlobStore:
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    if not bucket:
        raise BadRequest(f"import source {source!r} names no bucket; expected s3://bucket/prefix")
    try:
        return S3BlobStore(bucket, prefix)
    except NotFound as exc:
        raise BadRequest(f"import source {source!r}: {exc.message}") from None


def _open_source(source: str) -> _Source:
    return _Bucket(source) if source.startswith("s3://") else _Directory(Path(source))


class ImportRunner:
    """The job handler for ``import`` jobs (registered with the queue by the platform)."""

    def __init__(
        self,
        store: StudyStore,
        items: ImportItems,
        analyser: Analyser | None,
        parallel: int,
        policy: Policy,
        options: IngestOptions,
    ) -> None:
        self.store = store
        self.items = items
        self.policy = policy
        self.analyser = analyser
        self.parallel = max(1, parallel)
        self.options = options

    def __call__(self, context: JobContext[ImportParams]) -> JsonDict:
        job = context.job
        # The worker acts for whoever submitted the job (an API caller), or the platform (CLI).
        submitter = context.params.submitted_by
        if submitter is not None:
            principal = Principal(submitter.subject, submitter.role, "job")
            self.policy.require(principal, ActionValues.INGEST)
        source = _open_source(check_source(context.params.source))
        files = list(source.scan())
        done = self.items.paths_done(job.id)
        progress = _progress(files, self.items.counts(job.id))
        context.report(progress)
        todo = [f for f in files if f.relative not in done]
        with (
            self.store.batch(BatchReason.IMPORT, job.id) as batch,
            ThreadPoolExecutor(self.parallel, thread_name_prefix=f"import-{job.id[:8]}") as pool,
        ):
            for start in range(0, len(todo), _CHUNK):
                chunk = todo[start : start + _CHUNK]
                items = list(pool.map(partial(self._ingest, source=source, batch=batch), chunk))
                # What is stored so far is readable as the import goes on.
                self.store.schedule_documents(batch.touched)
                for item in items:
                    progress["files_done"] += 1
                    progress["bytes_done"] += item["size"]
                    progress[_COUNTER[item["outcome"]]] += 1
                # Outcomes and progress in one transaction, recorded only while the job is this run's.
                with context.transaction(progress) as connection:
                    self.items.add(connection, job.id, items)
                context.report(progress, save=False)
        if progress["refused"]:
            context.refused(
                f"{progress['refused']} of {progress['files_total']} files were refused "
                f"(reasons: /api/v1/import-jobs/{job.id}/failure.ndjson)"
            )
        return progress

    def _ingest(self, file: _File, source: _Source, batch: Batch) -> JsonDict:
        if file.relative.rsplit("/", 1)[-1] == _DICOMDIR:
            return _item(
                file, _failed(CannotUnderstand("a DICOMDIR (PS3.10 §8) indexes media; not imported"))
            )
        try:
            data = source.read(file)
        except CannotUnderstand as exc:
            return _item(file, _failed(exc))
        result = ingest_file(self.store, data, batch, encode=self.options.encode, analyser=self.analyser)
        return _item(file, result)


def _failed(error: RadstackError) -> IngestResult:
    return IngestResult(error=error)


#: The progress counter of each recorded outcome (a refused file's outcome is recorded as ``failed``).
_COUNTER = {"stored": "stored", "duplicate": "duplicate", "replaced": "replaced", "failed": "refused"}


def _progress(files: list[_File], recorded: dict[str, tuple[int, int]]) -> JsonDict:
    """Totals from the scan, and what the job's records say is done (a resumed job starts there)."""
    progress: JsonDict = {
        "files_total": len(files),
        "bytes_total": sum(f.size for f in files),
        "files_done": sum(count for count, _size in recorded.values()),
        "bytes_done": sum(size for _count, size in recorded.values()),
    }
    for outcome, counter in _COUNTER.items():
        progress[counter] = recorded.get(outcome, (0, 0))[0]
    return progress


def _item(file: _File, result: IngestResult) -> JsonDict:
    """One manifest line: the file, its UIDs, and its outcome or the reason it was not stored."""
    error = result.error
    return {
        "path": file.relative,
        "size": file.size,
        "failed": error is not None,
        "outcome": "failed" if error is not None or result.outcome is None else result.outcome.value,
        "sop_class_uid": result.sop_class_uid,
        "sop_uid": result.sop_uid,
        "study_uid": result.study_uid,
        "series_uid": result.series_uid,
        "status": error.dicom_status if error is not None else None,
        "reason": error.message if error is not None else None,
    }

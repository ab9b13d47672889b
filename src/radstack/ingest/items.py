"""An import job's file outcomes (:class:`radstack.ingest.models.ImportItemRow`): its success and
failure manifests, and what a resumed job skips.

Ingest's own rows, kept by ingest: the job system (``jobs/``) knows nothing of them. A running import
writes each chunk's outcomes in the job's fenced transaction
(:meth:`radstack.jobs.queue.JobContext.transaction`), so a run that lost its lease records nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, Row, func, insert, select

from radstack.ingest.models import ImportItemRow

__all__ = ["ImportItems"]

JsonDict = dict[str, Any]

_ITEMS = ImportItemRow.__table__.c


class ImportItems:
    """Read and write the file outcomes of import jobs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, connection: Connection, job_id: str, items: list[JsonDict]) -> None:
        """Record the outcome of a chunk of files, in ``connection``'s transaction."""
        if items:
            connection.execute(insert(ImportItemRow), [{"job_id": job_id, **item} for item in items])

    def paths_done(self, job_id: str) -> set[str]:
        """The files (relative paths) the job has recorded: a resumed run skips them."""
        with self.engine.connect() as connection:
            return set(connection.execute(select(_ITEMS.path).where(_ITEMS.job_id == job_id)).scalars())

    def counts(self, job_id: str) -> dict[str, tuple[int, int]]:
        """Files and bytes recorded so far for the job, by outcome."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(_ITEMS.outcome, func.count(), func.coalesce(func.sum(_ITEMS.size), 0))
                .where(_ITEMS.job_id == job_id)
                .group_by(_ITEMS.outcome)
            ).all()
        return {outcome: (int(count), int(size)) for outcome, count, size in rows}

    def items(self, job_id: str, *, failed: bool, limit: int | None = None) -> list[Row[Any]]:
        """The job's files that were stored (``failed=False``) or refused, in the order recorded."""
        query = (
            select(ImportItemRow).where(_ITEMS.job_id == job_id, _ITEMS.failed == failed).order_by(_ITEMS.id)
        )
        with self.engine.connect() as connection:
            return list(connection.execute(query.limit(limit) if limit is not None else query).all())

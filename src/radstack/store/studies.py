"""Studies, series and instances in the index: the store's façade, which every other package uses.

Write order makes crashes safe: the ingest pipeline writes every blob first, then
:meth:`StudyStore.commit_instance` makes the instance visible in one index transaction. A crash
before the commit leaves only unreferenced blobs (collected later), never a half-stored instance.

The writes themselves are in :mod:`radstack.store._writes`, the metadata documents in
:mod:`radstack.store.metadata`, and the records in :mod:`radstack.store.records` (exported here too).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, bindparam, func, select
from sqlalchemy.orm import Session

from radstack.errors import NotFound
from radstack.store._writes import IndexWriter
from radstack.store.blobs import BlobStore
from radstack.store.index import write_transaction
from radstack.store.metadata import MetadataDocuments
from radstack.store.models import InstanceRow, SeriesRow, StudyRow, StudyVersionRow
from radstack.store.records import Batch, BatchReason, CommitOutcome, InstanceRecord, StoreOutcomeValues

__all__ = [
    "AlsoCommit",
    "Batch",
    "BatchReason",
    "CommitOutcome",
    "InstanceRecord",
    "StoreOutcomeValues",
    "StudyStore",
]

T = TypeVar("T")
#: Work that commits with an instance's row, in its transaction (see :meth:`StudyStore.commit_instance`).
AlsoCommit = Callable[[Session, CommitOutcome], None]
_INSTANCES: Table = InstanceRow.__table__  # type: ignore[assignment]
_CURRENT_INSTANCE = select(_INSTANCES).where(
    _INSTANCES.c.sop_uid == bindparam("sop"),
    _INSTANCES.c.study_uid == bindparam("study"),
    _INSTANCES.c.version_removed.is_(None),
)
_CURRENT_INSTANCE_IN_SERIES = _CURRENT_INSTANCE.where(_INSTANCES.c.series_uid == bindparam("series"))


@dataclass(slots=True)
class _PendingCommit:
    """One instance waiting for a group commit, and what became of it."""

    record: InstanceRecord
    batch: Batch
    also: AlsoCommit | None = None
    outcome: CommitOutcome | None = None
    error: Exception | None = None


class StudyStore:
    """The index and blob store together: the one place that changes or reads stored instances."""

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        #: The de-identified view's UID for a real one (set by the platform); stored with each row.
        self.pseudonym: Callable[[str], str] | None = None
        self._sqlite = engine.dialect.name == "sqlite"
        self._committer = threading.Lock()
        self._group_guard = threading.Lock()
        self._group: list[_PendingCommit] = []
        self._writer = IndexWriter(blobs, self._pseudo, lock_rows=not self._sqlite)
        self._documents = MetadataDocuments(self, engine, blobs)

    def close(self) -> None:
        self._documents.close()
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def _write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction (:func:`radstack.store.index.write_transaction`)."""
        return write_transaction(self.engine, work, expire_on_commit=False)

    @contextmanager
    def batch(self, reason: BatchReason, detail: str = "") -> Iterator[Batch]:
        """One change: the :class:`Batch` its writes share, and, when it ends (also by an error),
        the rebuild of the metadata documents of every study it touched.

        Parameters
        ----------
        reason
            Why the studies change; recorded with each new study version.
        detail
            What the version list shows beside the reason (a job id, a calling AE title, tags).
        """
        batch = Batch(reason, detail)
        try:
            yield batch
        finally:
            self.schedule_documents(batch.touched)

    # ------------------------------------------------------------------ writes
    def commit_instance(
        self, record: InstanceRecord, batch: Batch, also: AlsoCommit | None = None
    ) -> CommitOutcome:
        """Make ``record`` visible: the last step of ingest, one transaction.

        Same SOP instance and content as the current one: nothing changes (DUPLICATE). Same SOP
        Instance UID with other content: the new content becomes current in a new study version and
        the old content stays readable in the earlier versions (REPLACED).

        ``also`` runs in the same transaction once the row is written, with its outcome (the rows
        another package keeps about the instance, such as a reader's labels from an SR): both
        commit, or neither. What it raises refuses the instance as the store's own refusals do. It
        may run more than once (a group rolled back, a retry), each time in a new transaction.

        Group commit: instances committed by several threads at once share one transaction (the
        caller that finds the committer free commits everything waiting), which halves the index
        cost per instance under load. A group with an instance that is refused is rolled back and
        committed one by one, so one bad instance never takes others down with it.

        Raises
        ------
        DataSetMismatch
            When the instance or its series is stored in another study, or the study belongs to
            another patient.
        """
        pending = _PendingCommit(record, batch, also)
        with self._group_guard:
            self._group.append(pending)
        with self._committer:
            if pending.outcome is None and pending.error is None:
                with self._group_guard:
                    group, self._group = self._group, []
                self._commit_group(group)
        if pending.error is not None:
            raise pending.error
        assert pending.outcome is not None
        if pending.outcome.outcome is not StoreOutcomeValues.DUPLICATE:
            batch.touched.add(record.study_uid)
        return pending.outcome

    def _commit_one(self, session: Session, item: _PendingCommit) -> CommitOutcome:
        outcome = self._writer.commit(session, item.record, item.batch)
        if item.also is not None:
            item.also(session, outcome)
        return outcome

    def _commit_group(self, group: list[_PendingCommit]) -> None:
        commit = self._commit_one
        if len(group) > 1:
            # Rows lock in study order on PostgreSQL, so two nodes' groups never deadlock.
            group.sort(key=lambda item: item.record.study_uid)
            versions = {id(item.batch): dict(item.batch.versions) for item in group}
            try:
                outcomes = self._write(lambda session: [commit(session, item) for item in group])
            except Exception:
                for item in group:  # the versions the rolled-back transaction handed out are void
                    item.batch.versions = dict(versions[id(item.batch)])
            else:
                for item, outcome in zip(group, outcomes, strict=True):
                    item.outcome = outcome
                return
        for item in group:
            handed_out = dict(item.batch.versions)
            try:
                item.outcome = self._write(partial(commit, item=item))
            except Exception as exc:
                # A refusal after the row was written (``also``) rolled back a version it handed out.
                item.batch.versions = handed_out
                item.error = exc

    def replace_instances(
        self,
        study_uid: str,
        batch: Batch,
        *,
        remove: Sequence[InstanceRecord],
        add: Sequence[InstanceRecord],
    ) -> int:
        """Make a new study version that drops ``remove`` and adds ``add`` (update, delete, revert).

        Returns the new version number.

        Raises
        ------
        NotFound
            When the study was never stored.
        """
        version = self._write(
            partial(self._writer.replace, study_uid=study_uid, batch=batch, remove=remove, add=add)
        )
        batch.touched.add(study_uid)
        return version

    # ------------------------------------------------------------------ reads
    def get_instance(self, study_uid: str, series_uid: str | None, sop_uid: str) -> InstanceRecord:
        """The current instance ``sop_uid`` of the given study (and series).

        Raises
        ------
        NotFound
            When no current instance ``sop_uid`` is stored in that study (and series).
        """
        # A plain connection, a statement built once and a row, not an ORM session: this is on every
        # frame request's path (building the query each time cost more than running it).
        query, parameters = _CURRENT_INSTANCE, {"sop": sop_uid, "study": study_uid}
        if series_uid is not None:
            query, parameters = _CURRENT_INSTANCE_IN_SERIES, {**parameters, "series": series_uid}
        with self.engine.connect() as connection:
            row = connection.execute(query, parameters).first()
        if row is None:
            raise NotFound(f"instance {sop_uid} is not stored in study {study_uid}")
        return InstanceRecord.from_row(row)

    def list_instances(
        self, study_uid: str, series_uid: str | None = None, *, version: int | None = None
    ) -> list[InstanceRecord]:
        """Instances of a study (or series), current or as of ``version``, in series/instance order."""
        query = select(_INSTANCES).where(InstanceRow.study_uid == study_uid)
        if series_uid is not None:
            query = query.where(InstanceRow.series_uid == series_uid)
        if version is None:
            query = query.where(InstanceRow.version_removed.is_(None))
        else:
            query = query.where(
                InstanceRow.version_added <= version,
                (InstanceRow.version_removed.is_(None)) | (InstanceRow.version_removed > version),
            )
        query = query.order_by(InstanceRow.series_uid, InstanceRow.instance_number, InstanceRow.sop_uid)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [InstanceRecord.from_row(r) for r in rows]

    def current_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRecord]:
        """The current instances a DICOMweb path names (study, series or one instance).

        Raises
        ------
        NotFound
            When the study, series or instance is not stored, or holds no instance.
        """
        if sop_uid is not None:
            return [self.get_instance(study_uid, series_uid, sop_uid)]
        if series_uid is not None:
            self.require_series(study_uid, series_uid)
        else:
            self.require_study(study_uid)
        records = self.list_instances(study_uid, series_uid)
        if not records:
            raise NotFound(
                f"{'series ' + series_uid if series_uid else 'study ' + study_uid} holds no instances"
            )
        return records

    def require_study(self, study_uid: str, *, include_deleted: bool = False) -> StudyRow:
        """The study row.

        Raises
        ------
        NotFound
            When the study was never stored, or (unless ``include_deleted``) every instance of it is
            deleted in its current version.
        """
        with self._session() as session:
            study = session.scalar(select(StudyRow).where(StudyRow.study_uid == study_uid))
        if study is None or study.version == 0 or (study.num_instances == 0 and not include_deleted):
            raise NotFound(f"study {study_uid} is not stored")
        return study

    def _pseudo(self, uid: str) -> str | None:
        return self.pseudonym(uid) if self.pseudonym is not None else None

    def fill_pseudonyms(self, batch: int = 1000) -> int:
        """Give rows stored without a pseudonymous UID (before there was one) theirs; returns how many."""
        if self.pseudonym is None:
            return 0
        done = 0
        for table, column in (
            (StudyRow, StudyRow.study_uid),
            (SeriesRow, SeriesRow.series_uid),
            (InstanceRow, InstanceRow.sop_uid),
        ):
            while True:
                filled = self._write(partial(self._fill_pseudonyms, table, column.key, batch))
                done += filled
                if filled < batch:
                    break
        return done

    def _fill_pseudonyms(self, table: Any, uid_column: str, batch: int, session: Session) -> int:
        assert self.pseudonym is not None
        rows = session.scalars(select(table).where(table.pseudo_uid.is_(None)).limit(batch)).all()
        for row in rows:
            row.pseudo_uid = self.pseudonym(getattr(row, uid_column))
        return len(rows)

    def real_uid(self, level: str, pseudo_uid: str) -> str | None:
        """The real UID behind a de-identified view's ``pseudo_uid`` at ``level`` (study, series,
        instance), or None when no stored row has it."""
        column, pseudo = {
            "study": (StudyRow.study_uid, StudyRow.pseudo_uid),
            "series": (SeriesRow.series_uid, SeriesRow.pseudo_uid),
            "instance": (InstanceRow.sop_uid, InstanceRow.pseudo_uid),
        }[level]
        with self.engine.connect() as connection:
            return connection.execute(select(column).where(pseudo == pseudo_uid).limit(1)).scalar()

    def patient_key(self, study_uid: str) -> str:
        """What a de-identified view keys a patient's pseudonyms and date shift on: the study's
        PatientID (the study UID when it has none)."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(StudyRow.patient_id).where(StudyRow.study_uid == study_uid)
            ).scalar()
        return found or study_uid

    def study_count(self) -> int:
        """How many studies hold at least one instance."""
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count()).select_from(StudyRow).where(StudyRow.num_instances > 0)
                ).scalar()
                or 0
            )

    def study_scope(self, study_uid: str) -> tuple[str | None, str | None] | None:
        """``(ReferringPhysicianName, InstitutionName)`` of a stored study (what scoping compares),
        or None when it was never stored."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(StudyRow.referring_physician_name, StudyRow.institution_name).where(
                    StudyRow.study_uid == study_uid
                )
            ).one_or_none()
        return None if row is None else (row[0], row[1])

    def require_series(self, study_uid: str, series_uid: str) -> None:
        """Check that the series is stored in the study and holds a current instance.

        Raises
        ------
        NotFound
            When it is not.
        """
        with self._session() as session:
            found = session.scalar(
                select(SeriesRow.id).where(
                    SeriesRow.series_uid == series_uid,
                    SeriesRow.study_uid == study_uid,
                    SeriesRow.num_instances > 0,
                )
            )
        if found is None:
            raise NotFound(f"series {series_uid} is not stored in study {study_uid}")

    # ------------------------------------------------------------------ metadata documents
    def instance_json(self, record: InstanceRecord) -> bytes:
        """The stored DICOM JSON of one instance.

        Raises
        ------
        NotFound
            When its blob is missing from the blob store.
        """
        return self.blobs.get(record.json_key)

    def metadata_document(self, study_uid: str, series_uid: str | None = None) -> bytes:
        """The gzipped DICOM JSON array of a study's (or series') current instances.

        Documents are precomputed after every change (see :meth:`schedule_documents`) and cached
        in the blob store under the study's change sequence, so a read is one blob fetch.

        Raises
        ------
        NotFound
            When the study or series is not stored.
        """
        return self._documents.current(study_uid, series_uid)

    def version_document(self, study_uid: str, version: int) -> bytes:
        """The gzipped metadata document of a past (or the current) study version.

        Raises
        ------
        NotFound
            When the study was never stored or has no such version.
        """
        return self._documents.of_version(study_uid, version)

    def schedule_documents(self, study_uids: set[str]) -> None:
        """Rebuild the metadata documents of changed studies in the background."""
        self._documents.schedule(study_uids)

    # ------------------------------------------------------------------ versions
    def list_versions(self, study_uid: str) -> list[StudyVersionRow]:
        """Every version of a study, oldest first (a deleted study's too).

        Raises
        ------
        NotFound
            When the study was never stored.
        """
        self.require_study(study_uid, include_deleted=True)
        with self._session() as session:
            return list(
                session.scalars(
                    select(StudyVersionRow)
                    .where(StudyVersionRow.study_uid == study_uid)
                    .order_by(StudyVersionRow.version)
                ).all()
            )

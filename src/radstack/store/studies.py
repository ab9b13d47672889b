"""Studies, series and instances in the index: committing ingested instances and reading them back.

Write order makes crashes safe: the ingest pipeline writes every blob first, then
:meth:`StudyStore.commit_instance` makes the instance visible in one index transaction. A crash
before the commit leaves only unreferenced blobs (collected later), never a half-stored instance.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, bindparam, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from radstack.dicom.json_model import SERIES_LEVEL_TAGS, STUDY_LEVEL_TAGS, first_int, first_text, pick
from radstack.errors import DataSetMismatch, NotFound
from radstack.store.blobs import BlobStore
from radstack.store.models import InstanceRow, SeriesRow, StudyRow, StudyVersionRow
from radstack.store.records import Batch, BatchReason, CommitOutcome, InstanceRecord, StoreOutcomeValues

__all__ = [
    "Batch",
    "BatchReason",
    "CommitOutcome",
    "InstanceRecord",
    "StoreOutcomeValues",
    "StudyStore",
]

T = TypeVar("T")
_DOCUMENT_SETTLE_SECONDS = 0.2
_INSTANCES: Table = InstanceRow.__table__  # type: ignore[assignment]
_CURRENT_INSTANCE = select(_INSTANCES).where(
    _INSTANCES.c.sop_uid == bindparam("sop"),
    _INSTANCES.c.study_uid == bindparam("study"),
    _INSTANCES.c.version_removed.is_(None),
)
_CURRENT_INSTANCE_IN_SERIES = _CURRENT_INSTANCE.where(_INSTANCES.c.series_uid == bindparam("series"))
log = logging.getLogger(__name__)
JsonDict = dict[str, Any]


@dataclass(slots=True)
class _PendingCommit:
    """One instance waiting for a group commit, and what became of it."""

    record: InstanceRecord
    batch: Batch
    outcome: CommitOutcome | None = None
    error: Exception | None = None


def study_columns(attrs: JsonDict) -> dict[str, Any]:
    """Study row columns derived from an instance's DICOM JSON."""
    return {
        "patient_id": first_text(attrs, "00100020"),
        "patient_name": first_text(attrs, "00100010"),
        "patient_birth_date": first_text(attrs, "00100030"),
        "patient_sex": first_text(attrs, "00100040"),
        "study_date": first_text(attrs, "00080020"),
        "study_time": first_text(attrs, "00080030"),
        "accession_number": first_text(attrs, "00080050"),
        "study_id": first_text(attrs, "00200010"),
        "study_description": first_text(attrs, "00081030"),
        "referring_physician_name": first_text(attrs, "00080090"),
        "institution_name": first_text(attrs, "00080080"),
        "attrs": json.dumps(pick(attrs, STUDY_LEVEL_TAGS)),
    }


def series_columns(attrs: JsonDict) -> dict[str, Any]:
    """Series row columns derived from an instance's DICOM JSON."""
    return {
        "modality": first_text(attrs, "00080060"),
        "series_number": first_int(attrs, "00200011"),
        "series_description": first_text(attrs, "0008103E"),
        "body_part": first_text(attrs, "00180015"),
        "series_date": first_text(attrs, "00080021"),
        "series_time": first_text(attrs, "00080031"),
        "pps_start_date": first_text(attrs, "00400244"),
        "pps_start_time": first_text(attrs, "00400245"),
        "attrs": json.dumps(pick(attrs, SERIES_LEVEL_TAGS)),
    }


def _now() -> datetime:
    return datetime.now(UTC)


class StudyStore:
    """The index and blob store together: the one place that changes or reads stored instances."""

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        #: The de-identified view's UID for a real one (set by the platform); stored with each row.
        self.pseudonym: Callable[[str], str] | None = None
        self._sqlite = engine.dialect.name == "sqlite"
        # SQLite has one writer; serialising writers in-process avoids lock-upgrade deadlocks.
        self._write_lock = threading.Lock()
        self._committer = threading.Lock()
        self._group_guard = threading.Lock()
        self._group: list[_PendingCommit] = []
        self._doc_locks: dict[str, threading.Lock] = {}
        self._doc_locks_guard = threading.Lock()
        self._doc_pending: set[str] = set()
        self._doc_builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docs")

    def close(self) -> None:
        self._doc_builder.shutdown(wait=True, cancel_futures=True)  # documents rebuild on demand
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def _write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction, retrying on a unique-key race or a busy database."""
        for attempt in range(5):
            try:
                if self._sqlite:
                    with self._write_lock, self._session() as session, session.begin():
                        return work(session)
                with self._session() as session, session.begin():
                    return work(session)
            except (IntegrityError, OperationalError):
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ ingest
    def commit_instance(self, record: InstanceRecord, batch: Batch) -> CommitOutcome:
        """Make ``record`` visible: the last step of ingest, one transaction.

        Same SOP instance and content as the current one: nothing changes (DUPLICATE). Same SOP
        Instance UID with other content: the new content becomes current in a new study version and
        the old content stays readable in the earlier versions (REPLACED).

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
        pending = _PendingCommit(record, batch)
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

    def _commit_group(self, group: list[_PendingCommit]) -> None:
        commit = self._commit_one
        if len(group) > 1:
            # Rows lock in study order on PostgreSQL, so two nodes' groups never deadlock.
            group.sort(key=lambda item: item.record.study_uid)
            versions = {id(item.batch): dict(item.batch.versions) for item in group}
            try:
                outcomes = self._write(
                    lambda session: [commit(session, item.record, item.batch) for item in group]
                )
            except Exception:
                for item in group:  # the versions the rolled-back transaction handed out are void
                    item.batch.versions = dict(versions[id(item.batch)])
            else:
                for item, outcome in zip(group, outcomes, strict=True):
                    item.outcome = outcome
                return
        for item in group:
            try:
                item.outcome = self._write(partial(commit, record=item.record, batch=item.batch))
            except Exception as exc:
                item.error = exc

    def _commit_one(self, session: Session, record: InstanceRecord, batch: Batch) -> CommitOutcome:
        current = session.scalar(
            select(InstanceRow).where(
                InstanceRow.sop_uid == record.sop_uid, InstanceRow.version_removed.is_(None)
            )
        )
        if current is not None and current.study_uid != record.study_uid:
            raise DataSetMismatch(
                f"SOPInstanceUID {record.sop_uid} is already stored in study {current.study_uid}, "
                f"not in StudyInstanceUID {record.study_uid}"
            )
        if current is not None and current.content_hash == record.content_hash:
            return CommitOutcome(StoreOutcomeValues.DUPLICATE, current.version_added)
        series = session.scalar(select(SeriesRow).where(SeriesRow.series_uid == record.series_uid))
        if series is not None and series.study_uid != record.study_uid:
            raise DataSetMismatch(
                f"SeriesInstanceUID {record.series_uid} already belongs to study {series.study_uid}, "
                f"not to StudyInstanceUID {record.study_uid}"
            )
        attrs: JsonDict = (
            record.attrs if record.attrs is not None else json.loads(self.blobs.get(record.json_key))
        )
        study = self._study_for_update(session, record.study_uid, attrs)
        patient_id = first_text(attrs, "00100020")
        if study.num_instances > 0 and study.patient_id and patient_id and study.patient_id != patient_id:
            raise DataSetMismatch(
                f"study {record.study_uid} belongs to another patient: PatientID differs from the stored one"
            )
        version = self._version_for(session, study, batch)
        if current is not None:
            current.version_removed = version
        session.add(record.to_row(version, self._pseudo(record.sop_uid)))
        if series is None:
            series = self._series_for_update(session, study, record.series_uid, attrs)
        if current is not None and current.series_uid != record.series_uid:
            session.flush()
            self._rebuild_series(session, study)  # the instance moved between series: recount
        elif current is None:
            if series.num_instances == 0:
                study.num_series += 1
                modality = first_text(attrs, "00080060")
                modalities = set(filter(None, study.modalities.split("\\")))
                if modality and modality not in modalities:
                    study.modalities = "\\".join(sorted({*modalities, modality}))
            series.num_instances += 1
            study.num_instances += 1
        study.change_seq += 1
        study.updated_at = _now()
        return CommitOutcome(
            StoreOutcomeValues.REPLACED if current is not None else StoreOutcomeValues.STORED, version
        )

    def _study_for_update(self, session: Session, study_uid: str, attrs: JsonDict) -> StudyRow:
        query = select(StudyRow).where(StudyRow.study_uid == study_uid)
        if not self._sqlite:
            query = query.with_for_update()
        study = session.scalar(query)
        if study is None:
            study = StudyRow(
                study_uid=study_uid,
                pseudo_uid=self._pseudo(study_uid),
                version=0,
                change_seq=0,
                num_series=0,
                num_instances=0,
            )
            study.updated_at = _now()
            for key, value in study_columns(attrs).items():
                setattr(study, key, value)
            session.add(study)
            session.flush()
        elif study.num_instances == 0:
            for key, value in study_columns(attrs).items():
                setattr(study, key, value)
        return study

    def _version_for(self, session: Session, study: StudyRow, batch: Batch) -> int:
        version = batch.versions.get(study.study_uid)
        if version is not None and study.version == version:
            return version
        study.version += 1
        session.add(
            StudyVersionRow(
                study_uid=study.study_uid,
                version=study.version,
                reason=batch.reason,
                detail=batch.detail,
                created_at=_now(),
            )
        )
        batch.versions[study.study_uid] = study.version
        return study.version

    def _series_for_update(
        self, session: Session, study: StudyRow, series_uid: str, attrs: JsonDict
    ) -> SeriesRow:
        series = session.scalar(select(SeriesRow).where(SeriesRow.series_uid == series_uid))
        if series is None:
            series = SeriesRow(
                study_pk=study.id,
                series_uid=series_uid,
                pseudo_uid=self._pseudo(series_uid),
                study_uid=study.study_uid,
                num_instances=0,
            )
            for key, value in series_columns(attrs).items():
                setattr(series, key, value)
            session.add(series)
            session.flush()
        return series

    def _refresh_study_aggregates(self, session: Session, study: StudyRow) -> None:
        rows = session.execute(
            select(SeriesRow.modality, SeriesRow.num_instances).where(
                SeriesRow.study_pk == study.id, SeriesRow.num_instances > 0
            )
        ).all()
        study.num_series = len(rows)
        study.num_instances = sum(n for _m, n in rows)
        study.modalities = "\\".join(sorted({m for m, _n in rows if m}))

    # ------------------------------------------------------------------ reads
    def get_instance(self, study_uid: str, series_uid: str | None, sop_uid: str) -> InstanceRecord:
        """The current instance ``sop_uid`` of the given study (and series); :class:`NotFound` otherwise."""
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
        """The study row; :class:`NotFound` if it was never stored, or (unless ``include_deleted``)
        if every instance of it is deleted in its current version."""
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
        return self.blobs.get(record.json_key)

    def metadata_document(self, study_uid: str, series_uid: str | None = None) -> bytes:
        """The gzipped DICOM JSON array of a study's (or series') current instances.

        Documents are precomputed after every change (see :meth:`schedule_documents`) and cached
        in the blob store under the study's change sequence, so a read is one blob fetch.
        """
        study = self.require_study(study_uid)
        if series_uid is not None:
            self.require_series(study_uid, series_uid)
        key = self._document_key(study_uid, study.change_seq, series_uid)
        if not self.blobs.exists(key):
            self._build_documents(study_uid)
            study = self.require_study(study_uid)
            key = self._document_key(study_uid, study.change_seq, series_uid)
            if not self.blobs.exists(key):  # changed again meanwhile: build for the latest
                self._build_documents(study_uid)
        try:
            return self.blobs.get(key)
        except NotFound:
            return self._document(self.list_instances(study_uid, series_uid))

    def version_document(self, study_uid: str, version: int) -> bytes:
        """The gzipped metadata document of a past (or the current) study version."""
        study = self.require_study(study_uid, include_deleted=True)
        if not 0 < version <= study.version:
            raise NotFound(f"study {study_uid} has no version {version} (latest is {study.version})")
        return self._document(self.list_instances(study_uid, version=version))

    @staticmethod
    def _document_key(study_uid: str, change_seq: int, series_uid: str | None) -> str:
        return f"docs/{study_uid}/{change_seq}/{series_uid or 'study'}.json.gz"

    def _document(self, records: Sequence[InstanceRecord]) -> bytes:
        body = b"[" + b",".join(self.blobs.get(r.json_key) for r in records) + b"]"
        return gzip.compress(body, compresslevel=5)

    def _doc_lock(self, study_uid: str) -> threading.Lock:
        with self._doc_locks_guard:
            return self._doc_locks.setdefault(study_uid, threading.Lock())

    def _build_documents(self, study_uid: str) -> None:
        with self._doc_lock(study_uid):
            with self._session() as session:
                change_seq = session.scalar(
                    select(StudyRow.change_seq).where(StudyRow.study_uid == study_uid)
                )
            if change_seq is None or self.blobs.exists(self._document_key(study_uid, change_seq, None)):
                return
            records = self.list_instances(study_uid)
            by_series: dict[str, list[InstanceRecord]] = {}
            for record in records:
                by_series.setdefault(record.series_uid, []).append(record)
            for series_uid, members in by_series.items():
                self.blobs.put(self._document_key(study_uid, change_seq, series_uid), self._document(members))
            # The study document last: its presence marks the set complete.
            self.blobs.put(self._document_key(study_uid, change_seq, None), self._document(records))

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

    def schedule_documents(self, study_uids: set[str]) -> None:
        """Rebuild the metadata documents of changed studies in the background.

        A rebuild reads the newest state when it starts, so one that is queued and not yet running
        already covers later changes: during a bulk ingest the work stays linear, not quadratic.
        """
        with self._doc_locks_guard:
            fresh = sorted(study_uids - self._doc_pending)
            self._doc_pending.update(fresh)
        for study_uid in fresh:
            self._doc_builder.submit(self._build_pending, study_uid)

    def _build_pending(self, study_uid: str) -> None:
        # A short pause lets the next requests of a bulk send join this rebuild instead of queueing
        # their own; a read that comes first builds the document itself.
        time.sleep(_DOCUMENT_SETTLE_SECONDS)
        with self._doc_locks_guard:
            self._doc_pending.discard(study_uid)
        try:
            self._build_documents(study_uid)
        except Exception:  # a failed rebuild is retried by the next read; never kill the builder
            log.exception("metadata document rebuild failed for a study")

    # ------------------------------------------------------------------ versions
    def list_versions(self, study_uid: str) -> list[StudyVersionRow]:
        self.require_study(study_uid, include_deleted=True)
        with self._session() as session:
            return list(
                session.scalars(
                    select(StudyVersionRow)
                    .where(StudyVersionRow.study_uid == study_uid)
                    .order_by(StudyVersionRow.version)
                ).all()
            )

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
        """

        def work(session: Session) -> int:
            study = session.scalar(select(StudyRow).where(StudyRow.study_uid == study_uid))
            if study is None:
                raise NotFound(f"study {study_uid} is not stored")
            version = self._version_for(session, study, batch)
            removed_ids = [r.id for r in remove]
            for row in session.scalars(select(InstanceRow).where(InstanceRow.id.in_(removed_ids))):
                if row.version_removed is None:
                    row.version_removed = version
            session.flush()
            for record in add:
                session.add(record.to_row(version, self._pseudo(record.sop_uid)))
            session.flush()
            self._rebuild_series(session, study)
            study.change_seq += 1
            study.updated_at = _now()
            return version

        version = self._write(work)
        batch.touched.add(study_uid)
        return version

    def _rebuild_series(self, session: Session, study: StudyRow) -> None:
        """Recompute the series rows and study aggregates of ``study`` from its current instances."""
        counts = dict(
            session.execute(
                select(InstanceRow.series_uid, func.count())
                .where(InstanceRow.study_uid == study.study_uid, InstanceRow.version_removed.is_(None))
                .group_by(InstanceRow.series_uid)
            ).all()
        )
        existing = {
            s.series_uid: s for s in session.scalars(select(SeriesRow).where(SeriesRow.study_pk == study.id))
        }
        first_attrs: JsonDict | None = None
        for series_uid, count in counts.items():
            first = session.scalar(
                select(InstanceRow)
                .where(InstanceRow.series_uid == series_uid, InstanceRow.version_removed.is_(None))
                .order_by(InstanceRow.instance_number)
                .limit(1)
            )
            assert first is not None
            attrs: JsonDict = json.loads(self.blobs.get(first.json_key))
            first_attrs = first_attrs or attrs
            series = existing.pop(series_uid, None) or self._series_for_update(
                session, study, series_uid, attrs
            )
            for key, value in series_columns(attrs).items():
                setattr(series, key, value)
            series.num_instances = count
        for stale in existing.values():
            session.delete(stale)
        if first_attrs is not None:
            for key, value in study_columns(first_attrs).items():
                setattr(study, key, value)
        session.flush()
        self._refresh_study_aggregates(session, study)

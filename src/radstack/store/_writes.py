"""Version writes: every change to a study's instances, made inside one index transaction.

:class:`~radstack.store.studies.StudyStore` opens the transaction (and retries it on a race); the
:class:`IndexWriter` does the work inside it: close the rows that stop being current, add the new
ones, give the study its new version (one per study and :class:`~radstack.store.records.Batch`),
and keep the study and series rows that QIDO searches in step with the current instances.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from radstack.dicom.json_model import SERIES_LEVEL_TAGS, STUDY_LEVEL_TAGS, first_int, first_text, pick
from radstack.errors import DataSetMismatch, NotFound
from radstack.store.blobs import BlobStore
from radstack.store.models import InstanceRow, SeriesRow, StudyRow, StudyVersionRow
from radstack.store.records import Batch, CommitOutcome, InstanceRecord, StoreOutcomeValues

__all__ = ["IndexWriter"]

JsonDict = dict[str, Any]


def _study_columns(attrs: JsonDict) -> dict[str, Any]:
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


def _series_columns(attrs: JsonDict) -> dict[str, Any]:
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


class IndexWriter:
    """The index writes of one store; each method runs inside a transaction its caller opened.

    Parameters
    ----------
    blobs
        Where the instances' DICOM JSON is read back when series rows are recomputed.
    pseudo
        The de-identified view's UID for a real one (None while the platform has set none).
    lock_rows
        Lock the study row for the transaction (``SELECT … FOR UPDATE``); SQLite, with one writer,
        needs no lock.
    """

    def __init__(self, blobs: BlobStore, pseudo: Callable[[str], str | None], *, lock_rows: bool) -> None:
        self.blobs = blobs
        self.pseudo = pseudo
        self.lock_rows = lock_rows

    def commit(self, session: Session, record: InstanceRecord, batch: Batch) -> CommitOutcome:
        """Make an ingested ``record`` current (see :meth:`StudyStore.commit_instance`).

        Raises
        ------
        DataSetMismatch
            When the SOP instance or its series is stored in another study, or the study belongs
            to another patient.
        """
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
        session.add(record.to_row(version, self.pseudo(record.sop_uid)))
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

    def replace(
        self,
        session: Session,
        study_uid: str,
        batch: Batch,
        remove: Sequence[InstanceRecord],
        add: Sequence[InstanceRecord],
    ) -> int:
        """Close the rows of ``remove`` and add rows for ``add`` in a new study version; its number.

        Raises
        ------
        NotFound
            When the study was never stored.
        """
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
            session.add(record.to_row(version, self.pseudo(record.sop_uid)))
        session.flush()
        self._rebuild_series(session, study)
        study.change_seq += 1
        study.updated_at = _now()
        return version

    def _study_for_update(self, session: Session, study_uid: str, attrs: JsonDict) -> StudyRow:
        query = select(StudyRow).where(StudyRow.study_uid == study_uid)
        if self.lock_rows:
            query = query.with_for_update()
        study = session.scalar(query)
        if study is None:
            study = StudyRow(
                study_uid=study_uid,
                pseudo_uid=self.pseudo(study_uid),
                version=0,
                change_seq=0,
                num_series=0,
                num_instances=0,
            )
            study.updated_at = _now()
            for key, value in _study_columns(attrs).items():
                setattr(study, key, value)
            session.add(study)
            session.flush()
        elif study.num_instances == 0:
            for key, value in _study_columns(attrs).items():
                setattr(study, key, value)
        return study

    def _version_for(self, session: Session, study: StudyRow, batch: Batch) -> int:
        """The study's version in ``batch``: a new one the first time the batch changes the study."""
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
                pseudo_uid=self.pseudo(series_uid),
                study_uid=study.study_uid,
                num_instances=0,
            )
            for key, value in _series_columns(attrs).items():
                setattr(series, key, value)
            session.add(series)
            session.flush()
        return series

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
            for key, value in _series_columns(attrs).items():
                setattr(series, key, value)
            series.num_instances = count
        for stale in existing.values():
            session.delete(stale)
        if first_attrs is not None:
            for key, value in _study_columns(first_attrs).items():
                setattr(study, key, value)
        session.flush()
        self._refresh_study_aggregates(session, study)

    def _refresh_study_aggregates(self, session: Session, study: StudyRow) -> None:
        rows = session.execute(
            select(SeriesRow.modality, SeriesRow.num_instances).where(
                SeriesRow.study_pk == study.id, SeriesRow.num_instances > 0
            )
        ).all()
        study.num_series = len(rows)
        study.num_instances = sum(n for _m, n in rows)
        study.modalities = "\\".join(sorted({m for m, _n in rows if m}))

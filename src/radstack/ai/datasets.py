"""Data sets: immutable, versioned snapshots of labeled images, split by patient.

A data set has a name and versions. A version is a list of items, each a stored instance (its
study, series and SOP Instance UIDs, pinned by the instance's content hash so a later replace
does not change what the version reads), its patient, its split (``train``, ``validation`` or
``test``) and its label (``{"fracture": bool, "type": str | None, "boxes": [[x0, y0, x1, y1], …]}``,
boxes in pixels of the stored image, edges, ``x1`` and ``y1`` exclusive). A version is never
changed once written; its content hash is the SHA-256 of its items, so the same content is the
same version and any change makes a new one while the old stays readable.

The split is by patient, never by image, stratified by whether a patient has a fracture, and the
same for the same seed, ratios and patients (:mod:`radstack.ai.splits`, with the label rules). A
data set with one class, or a split that would be empty or lack a class, is refused with the
counts, and nothing is written.

Patients are kept under the pseudonym the de-identified view gives them (the ``ANON-…`` Patient
ID of PS3.15 Annex E as :class:`radstack.dicom.deid.Deidentifier` makes it), never the real ID.

Versions are made from

* a folder written by ``radstack demo-data fractures --out DIR`` (DICOM files and ``DIR/truth.json``):
  the files are ingested through the one ingest pipeline first, as ``radstack import`` does
  (:func:`radstack.ingest.pipeline.ingest_file` in a :meth:`StudyStore.batch`), then snapshot;
* instances already in the store with their labels (what a labeling project's export gives).

:class:`DatasetReader` reads a version's split for training: each item's pixels are decoded from
the stored frames only when it is asked for, and its header and UIDs as the reader's role sees
them (the data scientist's view is de-identified; de-identification changes the header, never the
pixels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, overload

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from radstack.ai.models import DatasetItemRow, DatasetRow, DatasetVersionRow
from radstack.ai.splits import (
    DEFAULT_RATIOS,
    SplitValues,
    assign_splits,
    check_counts,
    check_label,
    parse_ratios,
    split_counts,
)
from radstack.dicom.deid import Deidentifier
from radstack.errors import BadRequest, NotFound
from radstack.ingest.options import IngestOptions
from radstack.ingest.pipeline import Analyser, ingest_file
from radstack.jobs.kinds import INGEST_QUEUE, JobParams, Submitter, declare
from radstack.jobs.queue import JobContext
from radstack.security.audit import AuditActionValues, AuditEntry
from radstack.security.policy import ActionValues, Policy, Principal
from radstack.security.views import View
from radstack.store.models import InstanceRow
from radstack.store.records import BatchReason, InstanceRecord
from radstack.store.retrieve import decoded_frame
from radstack.store.studies import StudyStore

__all__ = [
    "DATASET",
    "DATASET_KIND",
    "DEFAULT_RATIOS",
    "DatasetItem",
    "DatasetJobParams",
    "DatasetReader",
    "DatasetRunner",
    "DatasetSample",
    "DatasetService",
    "DatasetSummary",
    "DatasetVersion",
    "LabeledInstance",
    "SplitValues",
    "check_folder",
    "folder_job_params",
    "parse_ratios",
]

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]

#: The ground-truth file of a demo-data folder.
TRUTH_FILE = "truth.json"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_DICOMDIR = "DICOMDIR"
#: Files ingested at once (and between two saved progress reports of a job).
_CHUNK = 32
_HEADER_TAGS = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Rows", "Columns"]


# ---------------------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class LabeledInstance:
    """A stored instance and its label: what a data set is made of when it comes from the store.

    ``study_uid``, ``series_uid`` and ``sop_uid`` may be the pseudonymous UIDs a de-identified
    caller sees; they are mapped back through the caller's view.
    """

    study_uid: str
    sop_uid: str
    label: JsonDict
    series_uid: str | None = None


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """A data set and its newest version."""

    name: str
    description: str
    created_by: str
    created_at: datetime
    latest_version: int
    versions: int


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """One version: how it was made and what it holds (counts per split and class)."""

    name: str
    version: int
    content_hash: str
    seed: int
    ratios: tuple[float, float, float]
    counts: JsonDict
    source: JsonDict
    item_count: int
    created_by: str
    created_at: datetime
    #: False when the content was already a version (creating it again changes nothing).
    created: bool = True


@dataclass(frozen=True, slots=True)
class DatasetItem:
    """One item of a version, with the stored (real) UIDs: shape them by a view before showing them."""

    position: int
    split: SplitValues
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_hash: str
    patient_key: str
    label: JsonDict

    @property
    def fracture(self) -> bool:
        return bool(self.label["fracture"])

    def shown(self, view: View) -> DatasetItem:
        """This item with its UIDs as ``view`` shows them (pseudonyms in a de-identified view)."""
        deid = view.deid
        if deid is None:
            return self
        return DatasetItem(
            position=self.position,
            split=self.split,
            study_uid=deid.uid(self.study_uid),
            series_uid=deid.uid(self.series_uid),
            sop_uid=deid.uid(self.sop_uid),
            instance_hash=self.instance_hash,
            patient_key=self.patient_key,
            label=self.label,
        )


@dataclass(frozen=True, slots=True, eq=False)
class DatasetSample:
    """One image for training or evaluation, as the reader's role sees it.

    Attributes
    ----------
    image
        Stored pixel values, rows × columns, uint16 (decoded from the stored frame, lossless).
    boxes
        Fracture boxes ``(N, 4)`` float32 ``[x0, y0, x1, y1]`` in the image's pixels; empty if none.
    label
        Whether the image shows a fracture.
    patient_id
        The patient's pseudonymous key (splits are by patient).
    fracture_type
        The kind of fracture, ``None`` if none or unknown.
    photometric
        ``MONOCHROME1`` or ``MONOCHROME2``: a MONOCHROME1 image is inverted in preprocessing.
    key
        The SOP Instance UID as the reader's role sees it.
    split
        Which split the item is in.
    labels
        The whole label document (``anatomy``, ``view``, … when known).
    """

    image: NDArray[np.uint16]
    boxes: NDArray[np.float32]
    label: bool
    patient_id: str
    fracture_type: str | None
    photometric: str
    key: str
    split: SplitValues
    labels: JsonDict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- input
def check_name(name: str) -> str:
    """A data set name: lower-case letters, digits, ``.``, ``_``, ``-``; up to 64 characters.

    Raises
    ------
    BadRequest
        ``name`` is not 1 to 64 of those characters starting with a letter or digit.
    """
    if not _NAME.fullmatch(name):
        raise BadRequest(
            f"data set name {name!r} is not valid: use 1 to 64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_folder(folder: str | Path) -> Path:
    """The folder of a demo data set: an absolute directory on this machine holding ``truth.json``.

    Raises
    ------
    BadRequest
        ``folder`` is not absolute, not a directory this server can read, or has no ``truth.json``.
    """
    path = Path(folder)
    if not path.is_absolute():
        raise BadRequest(f"folder {str(folder)!r} must be an absolute directory path on the server")
    if not path.is_dir():
        raise BadRequest(f"folder {str(folder)!r} is not a directory this server can read")
    if not (path / TRUTH_FILE).is_file():
        raise BadRequest(
            f"folder {str(folder)!r} has no {TRUTH_FILE}; a data set folder is what "
            "'radstack demo-data fractures --out DIR' writes"
        )
    return path.resolve()


# ---------------------------------------------------------------------------------------- split
# ---------------------------------------------------------------------------------------- service
@dataclass(frozen=True, slots=True)
class _Planned:
    """An item before it is written: the stored references, the real patient key, the label."""

    study_uid: str
    series_uid: str
    sop_uid: str
    patient: str
    label: JsonDict
    #: The file to ingest (folder data sets) or None (already stored).
    path: Path | None = None


class DatasetService:
    """Make, list and read data sets: the one place their rows are written and read.

    Parameters
    ----------
    store
        Where the images are (and go, for a folder); the data set tables are in its index.
    deidentifier
        Gives each patient the pseudonym a de-identified view shows, the key items are kept under.
    policy
        Every call names its principal and is checked here (``manage-datasets``, ``read-datasets``,
        ``read-pixels`` for the studies, ``ingest`` for a folder).
    audit
        Receives one record per version created (also for the CLI and jobs, which no HTTP
        request audits).
    """

    def __init__(
        self,
        store: StudyStore,
        deidentifier: Deidentifier,
        policy: Policy,
        audit: Callable[[AuditEntry], None] | None = None,
    ) -> None:
        self.store = store
        self.deidentifier = deidentifier
        self.policy = policy
        self.audit = audit

    # ------------------------------------------------------------------ making
    def plan_folder(self, folder: str | Path) -> list[_Planned]:
        """Read a demo-data folder's truth and DICOM headers (no pixels) into items; writes nothing.

        Raises
        ------
        BadRequest
            No ``truth.json``, one that is not in the documented form, a truth entry without its
            DICOM file, or a label that is not valid.
        """
        root = check_folder(folder)
        labels = _read_truth(root / TRUTH_FILE)
        headers: dict[str, tuple[Path, str, str, str, int | None, int | None]] = {}
        for path in _files(root):
            ds = _header(path)
            if ds is None:
                continue
            sop = str(ds.get("SOPInstanceUID", "") or "")
            if sop in labels:
                patient = str(ds.get("PatientID", "") or "") or str(ds.get("StudyInstanceUID", ""))
                rows, columns = ds.get("Rows"), ds.get("Columns")
                headers[sop] = (
                    path,
                    str(ds.get("StudyInstanceUID", "")),
                    str(ds.get("SeriesInstanceUID", "")),
                    patient,
                    int(rows) if rows is not None else None,
                    int(columns) if columns is not None else None,
                )
        missing = sorted(set(labels) - set(headers))
        if missing:
            raise BadRequest(
                f"{TRUTH_FILE} names {len(missing)} SOP instance(s) with no DICOM file in the folder: "
                f"{', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}"
            )
        planned = []
        for sop, label in labels.items():
            path, study, series, patient, rows, columns = headers[sop]
            where = f"{TRUTH_FILE} entry {sop}"
            planned.append(
                _Planned(study, series, sop, patient, check_label(label, where, rows, columns), path)
            )
        return planned

    def create_from_folder(
        self,
        name: str,
        folder: str | Path,
        principal: Principal,
        *,
        seed: int = 0,
        ratios: tuple[float, float, float] = DEFAULT_RATIOS,
        description: str = "",
        options: IngestOptions | None = None,
        analyser: Analyser | None = None,
        parallel: int = 2,
        on_progress: Callable[[JsonDict], None] | None = None,
    ) -> DatasetVersion:
        """Ingest a demo-data folder's DICOM files (as ``radstack import`` does), then snapshot them
        with the labels of its ``truth.json``.

        The folder is checked and split first: a refused data set ingests nothing.

        Parameters
        ----------
        on_progress
            Called with ``files_total``, ``files_done``, ``bytes_total``, ``bytes_done``,
            ``stored``, ``duplicate``, ``replaced`` and ``refused`` as the ingest goes on.

        Raises
        ------
        BadRequest
            The folder, its truth or the split is refused (see :meth:`plan_folder` and the module
            docstring), or some of its files were refused by ingest (named, with their reasons).
        Forbidden
            The principal may not manage data sets or ingest.
        """
        planned, splits, counts = self._prepare_folder(name, folder, principal, seed, ratios)
        self._ingest(planned, name, options or IngestOptions(), analyser, parallel, on_progress)
        source = {"kind": "folder", "path": str(check_folder(folder))}
        return self._write(name, description, planned, splits, counts, seed, ratios, source, principal)

    def preview_from_folder(
        self,
        name: str,
        folder: str | Path,
        principal: Principal,
        *,
        seed: int = 0,
        ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    ) -> JsonDict:
        """The counts per split and class :meth:`create_from_folder` would make, or its refusal
        (the same errors); reads the folder's headers only and writes nothing."""
        return self._prepare_folder(name, folder, principal, seed, ratios)[2]

    def _prepare_folder(
        self,
        name: str,
        folder: str | Path,
        principal: Principal,
        seed: int,
        ratios: tuple[float, float, float],
    ) -> tuple[list[_Planned], dict[str, SplitValues], JsonDict]:
        check_name(name)
        self.policy.require(principal, ActionValues.MANAGE_DATASETS)
        self.policy.require(principal, ActionValues.INGEST)
        planned = self.plan_folder(folder)
        splits, counts = self._split(planned, seed, ratios)
        return planned, splits, counts

    def create_from_instances(
        self,
        name: str,
        instances: Sequence[LabeledInstance],
        principal: Principal,
        *,
        seed: int = 0,
        ratios: tuple[float, float, float] = DEFAULT_RATIOS,
        description: str = "",
    ) -> DatasetVersion:
        """Snapshot stored instances with their labels (a labeling project's export).

        UIDs are mapped back through the principal's view, so a de-identified caller names
        instances by the pseudonyms it sees.

        Raises
        ------
        BadRequest
            An instance named twice, a label that is not valid, or the split is refused.
        NotFound
            An instance is not stored (or is outside the principal's scope).
        Forbidden
            The principal may not manage data sets or read the studies' pixels.
        """
        check_name(name)
        role = self.policy.require(principal, ActionValues.MANAGE_DATASETS)
        if not instances:
            raise BadRequest("a data set needs instances; none were given")
        view = View(role, self.store, self.deidentifier)
        planned: list[_Planned] = []
        seen: set[str] = set()
        for number, given in enumerate(instances, 1):
            where = f"instance {number} ({given.sop_uid})"
            study = view.real_uid("study", given.study_uid)
            self.policy.require(principal, ActionValues.READ_PIXELS, study)
            sop = view.real_uid("instance", given.sop_uid)
            series = view.real_uid("series", given.series_uid) if given.series_uid else None
            if sop in seen:
                raise BadRequest(f"{where} is named twice; an image is in a data set once")
            seen.add(sop)
            record = self.store.get_instance(study, series, sop)
            pixel = _check_image(record, where)
            label = check_label(given.label, where, pixel[0], pixel[1])
            planned.append(_Planned(study, record.series_uid, sop, self.store.patient_key(study), label))
        splits, counts = self._split(planned, seed, ratios)
        source = {"kind": "instances"}
        return self._write(name, description, planned, splits, counts, seed, ratios, source, principal)

    def _split(
        self, planned: Sequence[_Planned], seed: int, ratios: tuple[float, float, float]
    ) -> tuple[dict[str, SplitValues], JsonDict]:
        patients: dict[str, bool] = {}
        for item in planned:
            patients[item.patient] = patients.get(item.patient, False) or bool(item.label["fracture"])
        splits = assign_splits(patients, seed, ratios)
        counts = split_counts(((item.patient, item.label) for item in planned), splits)
        check_counts(counts)
        return splits, counts

    def _ingest(
        self,
        planned: Sequence[_Planned],
        name: str,
        options: IngestOptions,
        analyser: Analyser | None,
        parallel: int,
        on_progress: Callable[[JsonDict], None] | None,
    ) -> None:
        paths = [item.path for item in planned if item.path is not None]
        sizes = {path: path.stat().st_size for path in paths}
        progress: JsonDict = {
            "files_total": len(paths),
            "files_done": 0,
            "bytes_total": sum(sizes.values()),
            "bytes_done": 0,
            "stored": 0,
            "duplicate": 0,
            "replaced": 0,
            "refused": 0,
        }
        if on_progress is not None:
            on_progress(dict(progress))
        refused: list[str] = []
        with (
            self.store.batch(BatchReason.IMPORT, f"data set {name}") as batch,
            ThreadPoolExecutor(max(1, parallel), thread_name_prefix="dataset-ingest") as pool,
        ):
            ingest = partial(ingest_file, self.store, batch=batch, encode=options.encode, analyser=analyser)
            # A chunk at a time, so a job told to stop stops after the chunk, not after every file.
            for start in range(0, len(paths), _CHUNK):
                chunk = paths[start : start + _CHUNK]
                for path, result in zip(chunk, pool.map(ingest, chunk), strict=True):
                    progress["files_done"] += 1
                    progress["bytes_done"] += sizes[path]
                    if result.error is not None or result.outcome is None:
                        progress["refused"] += 1
                        reason = result.error.message if result.error is not None else "not stored"
                        refused.append(f"{path.name}: {reason}")
                    else:
                        progress[result.outcome.value] += 1
                    if on_progress is not None:
                        on_progress(dict(progress))
        if refused:
            raise BadRequest(
                f"{len(refused)} of {len(paths)} files of the folder were refused, so no data set was made: "
                + "; ".join(refused[:5])
                + ("; …" if len(refused) > 5 else "")
            )

    def _write(
        self,
        name: str,
        description: str,
        planned: Sequence[_Planned],
        splits: dict[str, SplitValues],
        counts: JsonDict,
        seed: int,
        ratios: tuple[float, float, float],
        source: JsonDict,
        principal: Principal,
    ) -> DatasetVersion:
        """Pin each item to its stored content, hash, and write the version (or find it).

        Raises
        ------
        NotFound
            A planned instance is no longer stored in its study.
        BadRequest
            A planned instance is not a single-frame grayscale image of unsigned 8 or 16 bits.
        sqlalchemy.exc.IntegrityError
            The third attempt still races a concurrent writer for the version number or the name.
        sqlalchemy.exc.OperationalError
            The third attempt still finds the database busy or unreachable.
        """
        order = sorted(
            planned,
            key=lambda p: (
                list(SplitValues).index(splits[p.patient]),
                self._patient_key(p.patient),
                p.sop_uid,
            ),
        )
        stored = _current_instances(self.store, order)
        items = [
            DatasetItem(
                position=position,
                split=splits[item.patient],
                study_uid=item.study_uid,
                series_uid=stored[item.sop_uid].series_uid,
                sop_uid=item.sop_uid,
                instance_hash=stored[item.sop_uid].content_hash,
                patient_key=self._patient_key(item.patient),
                label=item.label,
            )
            for position, item in enumerate(order)
        ]
        content_hash = _content_hash(items)
        for attempt in range(3):
            try:
                version, created = self._insert(
                    name, description, items, content_hash, seed, ratios, counts, source, principal
                )
                break
            # A concurrent writer took the version number or the name, or held SQLite's write lock.
            except (IntegrityError, OperationalError):
                if attempt == 2:
                    raise
        if created and self.audit is not None:
            self.audit(
                AuditEntry(
                    principal.subject,
                    principal.role,
                    principal.source,
                    AuditActionValues.WRITE,
                    {"dataset": name, "version": version.version, "content_hash": content_hash},
                )
            )
        if created:
            log.info("data set %s version %d made: %d items", name, version.version, len(items))
        return version

    def _patient_key(self, real: str) -> str:
        return self.deidentifier.pseudonym(real, "id")

    def _insert(
        self,
        name: str,
        description: str,
        items: Sequence[DatasetItem],
        content_hash: str,
        seed: int,
        ratios: tuple[float, float, float],
        counts: JsonDict,
        source: JsonDict,
        principal: Principal,
    ) -> tuple[DatasetVersion, bool]:
        now = datetime.now(UTC)
        with Session(self.store.engine, expire_on_commit=False) as session, session.begin():
            dataset = session.scalar(select(DatasetRow).where(DatasetRow.name == name))
            if dataset is None:
                dataset = DatasetRow(
                    name=name, description=description, created_by=principal.subject, created_at=now
                )
                session.add(dataset)
                session.flush()
            same = session.scalar(
                select(DatasetVersionRow).where(
                    DatasetVersionRow.dataset_id == dataset.id, DatasetVersionRow.content_hash == content_hash
                )
            )
            if same is not None:
                return _version(name, same, created=False), False
            latest = session.scalar(
                select(func.max(DatasetVersionRow.version)).where(DatasetVersionRow.dataset_id == dataset.id)
            )
            row = DatasetVersionRow(
                dataset_id=dataset.id,
                version=(latest or 0) + 1,
                content_hash=content_hash,
                seed=seed,
                ratios=json.dumps(list(ratios)),
                counts=json.dumps(counts, sort_keys=True),
                source=json.dumps(source, sort_keys=True),
                item_count=len(items),
                created_by=principal.subject,
                created_at=now,
            )
            session.add(row)
            session.flush()
            session.add_all(
                DatasetItemRow(
                    version_id=row.id,
                    position=item.position,
                    split=str(item.split),
                    study_uid=item.study_uid,
                    series_uid=item.series_uid,
                    sop_uid=item.sop_uid,
                    instance_hash=item.instance_hash,
                    patient_key=item.patient_key,
                    fracture=item.fracture,
                    label=json.dumps(item.label, sort_keys=True),
                )
                for item in items
            )
            return _version(name, row), True

    # ------------------------------------------------------------------ reading
    def list_datasets(self, principal: Principal) -> list[DatasetSummary]:
        """Every data set with its newest version, by name."""
        self.policy.require(principal, ActionValues.READ_DATASETS)
        query = (
            select(DatasetRow, func.max(DatasetVersionRow.version), func.count(DatasetVersionRow.id))
            .join(DatasetVersionRow, DatasetVersionRow.dataset_id == DatasetRow.id)
            .group_by(DatasetRow.id)
            .order_by(DatasetRow.name)
        )
        with Session(self.store.engine) as session:
            return [
                DatasetSummary(
                    name=row.name,
                    description=row.description,
                    created_by=row.created_by,
                    created_at=_utc(row.created_at),
                    latest_version=latest,
                    versions=count,
                )
                for row, latest, count in session.execute(query).all()
            ]

    def version(self, principal: Principal, name: str, version: int | None = None) -> DatasetVersion:
        """Version ``version`` of data set ``name`` (its newest when None).

        Raises
        ------
        NotFound
            There is no such data set or version (the message names the versions there are).
        """
        self.policy.require(principal, ActionValues.READ_DATASETS)
        with Session(self.store.engine) as session:
            return _version(name, self._version_row(session, name, version))

    def _version_row(self, session: Session, name: str, version: int | None) -> DatasetVersionRow:
        dataset = session.scalar(select(DatasetRow).where(DatasetRow.name == name))
        if dataset is None:
            raise NotFound(f"data set {name!r} does not exist")
        versions = list(
            session.scalars(
                select(DatasetVersionRow)
                .where(DatasetVersionRow.dataset_id == dataset.id)
                .order_by(DatasetVersionRow.version)
            )
        )
        if version is None and versions:
            return versions[-1]
        for row in versions:
            if row.version == version:
                return row
        raise NotFound(
            f"data set {name!r} has no version {version}; its versions are "
            f"{', '.join(str(r.version) for r in versions) or 'none'}"
        )

    def items(
        self,
        principal: Principal,
        name: str,
        version: int | None = None,
        *,
        split: SplitValues | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[DatasetItem]:
        """Items of a version (of one split), in order, with their UIDs as the principal's view shows them."""
        role = self.policy.require(principal, ActionValues.READ_DATASETS)
        view = View(role, self.store, self.deidentifier)
        return [item.shown(view) for item in self._items(name, version, split, offset, limit)]

    def _items(
        self, name: str, version: int | None, split: SplitValues | None, offset: int, limit: int | None
    ) -> list[DatasetItem]:
        with Session(self.store.engine) as session:
            row = self._version_row(session, name, version)
            query = select(DatasetItemRow).where(DatasetItemRow.version_id == row.id)
            if split is not None:
                query = query.where(DatasetItemRow.split == str(split))
            query = query.order_by(DatasetItemRow.position).offset(max(0, offset)).limit(limit)
            return [
                DatasetItem(
                    position=r.position,
                    split=SplitValues(r.split),
                    study_uid=r.study_uid,
                    series_uid=r.series_uid,
                    sop_uid=r.sop_uid,
                    instance_hash=r.instance_hash,
                    patient_key=r.patient_key,
                    label=json.loads(r.label),
                )
                for r in session.scalars(query)
            ]

    def reader(
        self, principal: Principal, name: str, version: int | None, split: SplitValues | None
    ) -> DatasetReader:
        """A lazy sequence of the version's split (all splits when None), read in the principal's view.

        Raises
        ------
        Forbidden
            The principal may not read data sets or pixels.
        """
        role = self.policy.require(principal, ActionValues.READ_DATASETS)
        self.policy.require(principal, ActionValues.READ_PIXELS)
        items = self._items(name, version, split, 0, None)
        return DatasetReader(self.store, items, View(role, self.store, self.deidentifier))


class DatasetReader(Sequence[DatasetSample]):
    """The images of a data set version's split, decoded when asked for (never all at once).

    ``reader[i]`` reads item ``i``'s stored frame (the exact instance content the version pinned)
    and decodes it; a slice is another reader. Headers and UIDs are as ``view`` shows them.

    Parameters
    ----------
    store
        Where the frames are.
    items
        The version's items, in order (:meth:`DatasetService.reader` gives them).
    view
        The reader's role's view (de-identified for a data scientist).
    """

    def __init__(self, store: StudyStore, items: Sequence[DatasetItem], view: View) -> None:
        self.store = store
        self._items = list(items)
        self.view = view

    @property
    def items(self) -> list[DatasetItem]:
        """The items (references, split, patient, label), UIDs as the view shows them; no pixels."""
        return [item.shown(self.view) for item in self._items]

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> DatasetSample: ...

    @overload
    def __getitem__(self, index: slice) -> DatasetReader: ...

    def __getitem__(self, index: int | slice) -> DatasetSample | DatasetReader:
        if isinstance(index, slice):
            return DatasetReader(self.store, self._items[index], self.view)
        item = self._items[index]
        record = self._record(item)
        pixel = record.pixel
        assert pixel is not None  # checked when the version was made
        image = decoded_frame(self.store, record, 1).reshape(pixel.rows, pixel.columns)
        label = item.label
        boxes = np.asarray(label.get("boxes") or [], dtype=np.float32).reshape(-1, 4)
        return DatasetSample(
            image=image.astype(np.uint16, copy=False),
            boxes=boxes,
            label=bool(label["fracture"]),
            patient_id=item.patient_key,
            fracture_type=label.get("type"),
            photometric=pixel.photometric_interpretation,
            key=item.shown(self.view).sop_uid,
            split=item.split,
            labels=label,
        )

    def __iter__(self) -> Iterator[DatasetSample]:
        for index in range(len(self._items)):
            yield self[index]

    def header(self, index: int) -> JsonDict:
        """Item ``index``'s DICOM JSON as the view shows it (de-identified for a data scientist)."""
        item = self._items[index]
        record = self._record(item)
        attrs: JsonDict = json.loads(self.store.instance_json(record))
        return self.view.json(attrs, record.study_uid)

    def _record(self, item: DatasetItem) -> InstanceRecord:
        """The stored instance with the pinned content, current or in an earlier study version.

        Raises
        ------
        NotFound
            No stored version of the instance has the pinned content (retention removed it).
        """
        with self.store.engine.connect() as connection:
            row = connection.execute(
                select(InstanceRow.__table__)
                .where(InstanceRow.sop_uid == item.sop_uid, InstanceRow.content_hash == item.instance_hash)
                .order_by(InstanceRow.id.desc())
                .limit(1)
            ).first()
        if row is None:
            raise NotFound(
                f"instance {item.shown(self.view).sop_uid} of the data set is no longer stored "
                "(removed by retention); make a new version without it"
            )
        return InstanceRecord.from_row(row)


# ---------------------------------------------------------------------------------------- jobs
class DatasetJobParams(JobParams):
    """A ``dataset`` job: a version of data set ``name`` from a demo-data ``folder``, for its submitter."""

    name: str
    folder: str
    submitted_by: Submitter
    description: str = ""
    seed: int = 0
    ratios: tuple[float, float, float] = DEFAULT_RATIOS


#: The job kind that makes a data set version from a folder (ingest, then snapshot).
DATASET = declare("dataset", DatasetJobParams, queue=INGEST_QUEUE)
DATASET_KIND = DATASET.name


def folder_job_params(
    name: str,
    folder: str | Path,
    principal: Principal,
    *,
    seed: int = 0,
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    description: str = "",
) -> JsonDict:
    """The parameters of a ``dataset`` job that makes a version from ``folder`` for ``principal``."""
    return {
        "name": name,
        "description": description,
        "folder": str(folder),
        "seed": seed,
        "ratios": list(ratios),
        "submitted_by": {"subject": principal.subject, "role": principal.role},
    }


class DatasetRunner:
    """The job handler of ``dataset`` jobs: a data set version from a folder, with progress.

    Safe to run twice: the files are stored once (the second ingest finds duplicates) and the same
    content is the same version.
    """

    def __init__(
        self,
        service: DatasetService,
        analyser: Analyser | None,
        parallel: int,
        options: IngestOptions,
    ) -> None:
        self.service = service
        self.analyser = analyser
        self.parallel = max(1, parallel)
        self.options = options

    def __call__(self, context: JobContext[DatasetJobParams]) -> JsonDict:
        params = context.params
        principal = Principal(params.submitted_by.subject, params.submitted_by.role, "job")
        progress: JsonDict = {}

        def report(update: JsonDict) -> None:
            progress.update(update)
            done = int(update["files_done"])
            # Saved (the lease renewed) every few files and at both ends, not on every file.
            context.report(dict(progress), save=done % _CHUNK == 0 or done == update["files_total"])

        version = self.service.create_from_folder(
            params.name,
            params.folder,
            principal,
            seed=params.seed,
            ratios=parse_ratios(params.ratios),
            description=params.description,
            options=self.options,
            analyser=self.analyser,
            parallel=self.parallel,
            on_progress=report,
        )
        return {**progress, "dataset": version.name, "version": version.version, "created": version.created}


# ---------------------------------------------------------------------------------------- helpers
def _read_truth(path: Path) -> dict[str, Any]:
    """SOP Instance UID → label from a truth file: ``{"images": {uid: {...}}, …}`` as
    ``radstack demo-data fractures`` writes it, or a bare ``{uid: {...}}`` mapping.

    Raises
    ------
    BadRequest
        The file cannot be read or is not JSON, or it maps no SOP Instance UIDs to labels.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadRequest(f"{TRUTH_FILE} cannot be read as JSON: {exc}") from None
    if isinstance(document, dict) and isinstance(document.get("images"), dict):
        document = document["images"]
    if not isinstance(document, dict) or not document:
        raise BadRequest(
            f"{TRUTH_FILE} must map SOP Instance UIDs to labels ({{'fracture': bool, 'type': ..., "
            "'boxes': [[x0, y0, x1, y1], ...]}), directly or under 'images'; it holds none"
        )
    return document


def _files(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            if name not in (TRUTH_FILE, _DICOMDIR):
                yield Path(directory, name)


def _header(path: Path) -> Dataset | None:
    """The UIDs, Patient ID and size of a DICOM file, or None when it is not one (ignored)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None


def _check_image(record: InstanceRecord, where: str) -> tuple[int, int]:
    """(rows, columns) of a single-frame grayscale image of at most 16 unsigned bits; refused otherwise.

    Raises
    ------
    BadRequest
        The instance has no pixel data, several frames or samples per pixel, or signed samples or
        samples of other than 8 or 16 bits allocated.
    """
    pixel = record.pixel
    if pixel is None:
        raise BadRequest(f"{where} has no pixel data; a data set holds images")
    if pixel.number_of_frames != 1 or pixel.samples_per_pixel != 1:
        raise BadRequest(
            f"{where} has {pixel.number_of_frames} frame(s) of {pixel.samples_per_pixel} sample(s) per "
            "pixel; a data set holds single-frame grayscale images"
        )
    if pixel.pixel_representation or pixel.bits_allocated not in (8, 16):
        raise BadRequest(
            f"{where} has {'signed ' if pixel.pixel_representation else ''}{pixel.bits_allocated}-bit "
            "samples; a data set holds unsigned 8- or 16-bit images"
        )
    return pixel.rows, pixel.columns


def _current_instances(store: StudyStore, planned: Sequence[_Planned]) -> dict[str, InstanceRecord]:
    """SOP Instance UID → current stored instance, checked to be images of the planned studies;
    :class:`NotFound` naming one that is not stored.

    Raises
    ------
    NotFound
        A planned instance is not stored (as current) in its planned study.
    BadRequest
        A planned instance is not a single-frame grayscale image of unsigned 8 or 16 bits.
    """
    sops = [item.sop_uid for item in planned]
    found: dict[str, InstanceRecord] = {}
    with store.engine.connect() as connection:
        for start in range(0, len(sops), 500):
            rows = connection.execute(
                select(InstanceRow.__table__).where(
                    InstanceRow.sop_uid.in_(sops[start : start + 500]), InstanceRow.version_removed.is_(None)
                )
            ).all()
            for row in rows:
                found[row.sop_uid] = InstanceRecord.from_row(row)
    for item in planned:
        record = found.get(item.sop_uid)
        if record is None or record.study_uid != item.study_uid:
            raise NotFound(f"instance {item.sop_uid} is not stored in study {item.study_uid}")
        _check_image(record, f"instance {item.sop_uid}")
    return found


def _content_hash(items: Sequence[DatasetItem]) -> str:
    """SHA-256 of the items' canonical JSON, in SOP Instance UID order (positions follow from it)."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.sop_uid):
        line = [
            item.study_uid,
            item.series_uid,
            item.sop_uid,
            item.instance_hash,
            item.patient_key,
            str(item.split),
            item.label,
        ]
        digest.update(json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _version(name: str, row: DatasetVersionRow, *, created: bool = True) -> DatasetVersion:
    train, validation, test = json.loads(row.ratios)
    return DatasetVersion(
        name=name,
        version=row.version,
        content_hash=row.content_hash,
        seed=row.seed,
        ratios=(train, validation, test),
        counts=json.loads(row.counts),
        source=json.loads(row.source),
        item_count=row.item_count,
        created_by=row.created_by,
        created_at=_utc(row.created_at),
        created=created,
    )

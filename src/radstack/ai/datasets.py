"""Data sets: immutable, versioned snapshots of labeled images, split by patient.

A data set has a name and versions. A version is a list of items, each a stored instance (its
study, series and SOP Instance UIDs, pinned by the instance's content hash so a later replace
does not change what the version reads), its patient, its split (``train``, ``validation`` or
``test``) and its label (``{"fracture": bool, "type": str | None, "boxes": [[x0, y0, x1, y1], …]}``,
boxes in pixels of the stored image, edges, ``x1`` and ``y1`` exclusive). A version is never
changed once written; its content hash is the SHA-256 of its items, so the same content is the
same version and any change makes a new one while the old stays readable.

The split is by patient, never by image: patients are put in order by a keyed hash of the seed
and their key, separately for those with a fracture on any image and those without (so each
split gets its share of both), and cut by the ratios. The same seed, ratios and patients give the
same split. A data set with one class, or a split that would be empty or lack a class, is refused
with the counts, and nothing is written.

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
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
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
from radstack.dicom.deid import Deidentifier
from radstack.dicomweb.wado import decoded_frame
from radstack.errors import BadRequest, NotFound
from radstack.ingest.options import IngestOptions
from radstack.ingest.pipeline import Analyser, IngestResult, ingest_file
from radstack.jobs.queue import JobContext
from radstack.security.audit import AuditActionValues, AuditEntry
from radstack.security.policy import ActionValues, Policy, Principal
from radstack.security.views import View
from radstack.store.models import InstanceRow
from radstack.store.studies import Batch, BatchReason, InstanceRecord, StudyStore

__all__ = [
    "DATASET_KIND",
    "DEFAULT_RATIOS",
    "DatasetItem",
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

#: The job kind that makes a data set version from a folder (ingest, then snapshot).
DATASET_KIND = "dataset"
#: Train, validation and test shares when none are given.
DEFAULT_RATIOS: tuple[float, float, float] = (0.70, 0.15, 0.15)
#: The ground-truth file of a demo-data folder.
TRUTH_FILE = "truth.json"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: Label fields kept beside fracture, type and boxes when a truth file has them (for breakdowns).
_LABEL_EXTRAS = ("anatomy", "view", "displaced", "composited", "source")
_DICOMDIR = "DICOMDIR"
#: Files ingested at once (and between two saved progress reports of a job).
_CHUNK = 32
_HEADER_TAGS = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Rows", "Columns"]


class SplitValues(StrEnum):
    """The three splits, in their order."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


_SPLITS = tuple(SplitValues)


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
def parse_ratios(value: str | Sequence[float]) -> tuple[float, float, float]:
    """Train/validation/test shares from ``"70/15/15"`` or ``[0.7, 0.15, 0.15]``, as fractions.

    Raises
    ------
    BadRequest
        Not three positive numbers (they are scaled to sum to one).
    """
    parts: list[Any] = value.split("/") if isinstance(value, str) else list(value)
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 3 or not all(math.isfinite(n) and n > 0 for n in numbers):
        raise BadRequest(
            f"split {value!r} is not three positive shares train/validation/test, e.g. 70/15/15; "
            "every split needs a share (an empty split is refused)"
        )
    total = sum(numbers)
    train, validation, test = (n / total for n in numbers)
    return train, validation, test


def check_name(name: str) -> str:
    """A data set name: lower-case letters, digits, ``.``, ``_``, ``-``; up to 64 characters."""
    if not _NAME.fullmatch(name):
        raise BadRequest(
            f"data set name {name!r} is not valid: use 1 to 64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_folder(folder: str | Path) -> Path:
    """The folder of a demo data set: an absolute directory on this machine holding ``truth.json``."""
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


def check_label(label: Any, where: str, rows: int | None = None, columns: int | None = None) -> JsonDict:
    """A label in the data set's form; :class:`BadRequest` naming ``where`` and the bad value.

    ``{"fracture": bool, "type": str | None, "boxes": [[x0, y0, x1, y1], …]}`` with ``x0 < x1``
    and ``y0 < y1``, inside the image when its size is known; an image without a fracture has no
    boxes. The extra fields of a truth file (``anatomy``, ``view``, …) are kept.
    """
    if not isinstance(label, dict):
        raise BadRequest(f"{where}: the label must be a JSON object with 'fracture', 'type' and 'boxes'")
    fracture = label.get("fracture")
    if not isinstance(fracture, bool):
        raise BadRequest(f"{where}: 'fracture' must be true or false, not {fracture!r}")
    kind = label.get("type")
    if kind is not None and not isinstance(kind, str):
        raise BadRequest(f"{where}: 'type' must be a string or null, not {kind!r}")
    boxes = label.get("boxes") or []
    if not isinstance(boxes, list):
        raise BadRequest(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1]")
    if boxes and not fracture:
        raise BadRequest(f"{where}: an image without a fracture has boxes {boxes!r}")
    checked: list[list[float | int]] = []
    for box in boxes:
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box
            )
        ):
            raise BadRequest(f"{where}: box {box!r} is not [x0, y0, x1, y1] (four numbers, in pixels)")
        x0, y0, x1, y1 = box
        if not (x0 < x1 and y0 < y1):
            raise BadRequest(f"{where}: box {box!r} needs x0 < x1 and y0 < y1")
        if x0 < 0 or y0 < 0 or (columns is not None and x1 > columns) or (rows is not None and y1 > rows):
            raise BadRequest(f"{where}: box {box!r} lies outside the {columns}×{rows} image")
        checked.append([int(v) if float(v).is_integer() else float(v) for v in box])
    out: JsonDict = {"fracture": fracture, "type": kind if fracture else None, "boxes": checked}
    for extra in _LABEL_EXTRAS:
        value = label.get(extra)
        if isinstance(value, str | bool | int | float) or (value is None and extra in label):
            out[extra] = value
    return out


# ---------------------------------------------------------------------------------------- split
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


def assign_splits(
    patients: dict[str, bool], seed: int, ratios: tuple[float, float, float]
) -> dict[str, SplitValues]:
    """Each patient's split: stratified by whether they have a positive image, deterministic.

    Within each stratum patients are ordered by SHA-256 of the seed and their key (so adding a
    patient does not reorder the others) and cut by the ratios with the largest remainders; when a
    stratum has at least as many patients as there are splits, every split gets at least one.
    """
    out: dict[str, SplitValues] = {}
    for positive in (True, False):
        keys = sorted(
            (k for k, p in patients.items() if p is positive),
            key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest(),
        )
        sizes = _shares(len(keys), ratios)
        start = 0
        for split, size in zip(_SPLITS, sizes, strict=True):
            for key in keys[start : start + size]:
                out[key] = split
            start += size
    return out


def _shares(count: int, ratios: tuple[float, float, float]) -> list[int]:
    exact = [count * r for r in ratios]
    sizes = [math.floor(e) for e in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    if count >= len(sizes):
        while 0 in sizes:
            sizes[sizes.index(max(sizes))] -= 1
            sizes[sizes.index(0)] = 1
    return sizes


def _counts(planned: Sequence[_Planned], splits: dict[str, SplitValues]) -> JsonDict:
    """Patients, images, positive and negative images, and positive images by type, per split."""

    def empty() -> JsonDict:
        return {"patients": 0, "images": 0, "positive": 0, "negative": 0, "types": {}}

    counts: JsonDict = {str(s): empty() for s in _SPLITS} | {"all": empty()}
    seen: set[tuple[str, str]] = set()
    for item in planned:
        split = str(splits[item.patient])
        for bucket in (split, "all"):
            entry = counts[bucket]
            if (bucket, item.patient) not in seen:
                seen.add((bucket, item.patient))
                entry["patients"] += 1
            entry["images"] += 1
            if item.label["fracture"]:
                entry["positive"] += 1
                kind = item.label.get("type") or "unknown"
                entry["types"][kind] = entry["types"].get(kind, 0) + 1
            else:
                entry["negative"] += 1
    return counts


def _describe(counts: JsonDict) -> str:
    """``train: 6 patients, 2 positive and 10 negative images; validation: …; all: …``."""
    return "; ".join(
        f"{s}: {_plural(counts[s]['patients'], 'patient')}, {counts[s]['positive']} positive and "
        f"{_plural(counts[s]['negative'], 'negative image')}"
        for s in (*(str(s) for s in _SPLITS), "all")
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _check_counts(counts: JsonDict) -> None:
    """Refuse a data set with one class, or a split that is empty or lacks a class."""
    total = counts["all"]
    if not total["images"]:
        raise BadRequest("the data set has no images")
    if not total["positive"] or not total["negative"]:
        only = "with a fracture" if total["positive"] else "without a fracture"
        raise BadRequest(
            f"the data set has one class: all {total['images']} images are {only} "
            f"({total['positive']} positive, {total['negative']} negative); a detector needs both"
        )
    for split in _SPLITS:
        entry = counts[str(split)]
        if not entry["images"]:
            raise BadRequest(
                f"split '{split}' would be empty ({_describe(counts)}); add patients or change the ratios"
            )
        if not entry["positive"] or not entry["negative"]:
            missing = "positive" if not entry["positive"] else "negative"
            raise BadRequest(
                f"split '{split}' would have no {missing} image ({_describe(counts)}); each split needs "
                "patients with and without a fracture: add patients or change the ratios"
            )


# ---------------------------------------------------------------------------------------- service
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
        counts = _counts(planned, splits)
        _check_counts(counts)
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
        progress: JsonDict = {
            "files_total": len(paths),
            "files_done": 0,
            "bytes_total": sum(p.stat().st_size for p in paths),
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
            ingest = partial(_ingest_one, self.store, batch=batch, encode=options.encode, analyser=analyser)
            # A chunk at a time, so a job told to stop stops after the chunk, not after every file.
            for start in range(0, len(paths), _CHUNK):
                chunk = paths[start : start + _CHUNK]
                for path, result in zip(chunk, pool.map(ingest, chunk), strict=True):
                    progress["files_done"] += 1
                    progress["bytes_done"] += path.stat().st_size
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
        """Pin each item to its stored content, hash, and write the version (or find it)."""
        order = sorted(
            planned,
            key=lambda p: (_SPLITS.index(splits[p.patient]), self._patient_key(p.patient), p.sop_uid),
        )
        stored = _current_instances(self.store, order)
        items = [
            DatasetItem(
                position=position,
                split=splits[item.patient],
                study_uid=item.study_uid,
                series_uid=stored[item.sop_uid][0].series_uid,
                sop_uid=item.sop_uid,
                instance_hash=stored[item.sop_uid][1],
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
        """The stored instance with the pinned content, current or in an earlier study version."""
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

    def __call__(self, context: JobContext) -> JsonDict:
        params = context.job.params
        submitter = params["submitted_by"]
        principal = Principal(str(submitter["subject"]), str(submitter["role"]), "job")
        progress: JsonDict = {}

        def report(update: JsonDict) -> None:
            progress.update(update)
            done = int(update["files_done"])
            # Saved (the lease renewed) every few files and at both ends, not on every file.
            context.report(dict(progress), save=done % _CHUNK == 0 or done == update["files_total"])

        version = self.service.create_from_folder(
            str(params["name"]),
            str(params["folder"]),
            principal,
            seed=int(params.get("seed", 0)),
            ratios=parse_ratios(params.get("ratios") or DEFAULT_RATIOS),
            description=str(params.get("description", "")),
            options=self.options,
            analyser=self.analyser,
            parallel=self.parallel,
            on_progress=report,
        )
        return {**progress, "dataset": version.name, "version": version.version, "created": version.created}


# ---------------------------------------------------------------------------------------- helpers
def _read_truth(path: Path) -> dict[str, Any]:
    """SOP Instance UID → label from a truth file: ``{"images": {uid: {...}}, …}`` as
    ``radstack demo-data fractures`` writes it, or a bare ``{uid: {...}}`` mapping."""
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


def _ingest_one(
    store: StudyStore, path: Path, *, batch: Batch, encode: bool, analyser: Analyser | None
) -> IngestResult:
    return ingest_file(store, path, batch, encode=encode, analyser=analyser)


def _check_image(record: InstanceRecord, where: str) -> tuple[int, int]:
    """(rows, columns) of a single-frame grayscale image of at most 16 unsigned bits; refused otherwise."""
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


def _current_instances(
    store: StudyStore, planned: Sequence[_Planned]
) -> dict[str, tuple[InstanceRecord, str]]:
    """SOP Instance UID → (current stored instance, its content hash), checked to be images of
    the planned studies; :class:`NotFound` naming one that is not stored."""
    sops = [item.sop_uid for item in planned]
    found: dict[str, tuple[InstanceRecord, str]] = {}
    with store.engine.connect() as connection:
        for start in range(0, len(sops), 500):
            rows = connection.execute(
                select(InstanceRow.__table__).where(
                    InstanceRow.sop_uid.in_(sops[start : start + 500]), InstanceRow.version_removed.is_(None)
                )
            ).all()
            for row in rows:
                found[row.sop_uid] = (InstanceRecord.from_row(row), str(row.content_hash))
    for item in planned:
        record = found.get(item.sop_uid)
        if record is None or record[0].study_uid != item.study_uid:
            raise NotFound(f"instance {item.sop_uid} is not stored in study {item.study_uid}")
        _check_image(record[0], f"instance {item.sop_uid}")
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

"""Exports of a labeling project's labels: training data (a data set version) and files for other tools
(COCO JSON, a MONAI datalist, an nnU-Net v2 raw data set), split by patient and de-identified.

**Which labels.** Each item (study) is exported with its *final* labels:

* its **consensus** when it has one (what a reviewer decided: see :mod:`radstack.labeling._reads`;
  a consensus of nothing makes the item's images negatives);
* else, in a project with **one reader per item**, that reader's submitted read;
* else (several readers and no consensus yet) the item is **left out**, unless the export asks for
  ``majority``: then, once every read of the item is in, each label is decided image by image by
  :mod:`radstack.labeling.consensus` (a plurality of the reads, :func:`majority_class`; a tie leaves
  the item out, for adjudication), its boxes are those a majority drew (:func:`quorum_boxes` at IoU
  0.5, quorum more than half the reads), its mask the pixel-wise strict majority
  (:func:`majority_mask`), and a label present with neither is an image-level class.

Items left out are counted by reason in the export's summary. A project with nothing to export (no
item decided, or no label on any decided item) is refused (:class:`~radstack.errors.Conflict`), and
nothing is made.

**Which images.** Every current image of an exported item's study that is a single-frame grayscale
image of unsigned 8 or 16 bits (what a data set holds); an image with no final label is a negative
(the reader read the whole study). Segmentations and the readers' own objects are not images.

**Who may export.** The project's owner or a reviewer (the one membership check, through the
policy), whose role may ``export``; a data set needs ``manage-datasets`` too (the data set service
checks it). Every study is checked against the caller's scope (``read-pixels``).

**Training data** (:meth:`LabelExports.dataset_instances`): one instance per image, labeled in the
data set's form ``{"fracture": bool, "type": None, "boxes": [[x0, y0, x1, y1], …]}`` for one label of
the schema (``fracture`` by default): present or not on the image (see
:func:`radstack.labeling._reads.present`), its boxes. The labeling package cannot make the data set
itself (it sits below ``ai``): the platform hands these to the data set service, which splits by
patient and pins every instance.

**Files** (a ``labeling-export`` job writes one zip under ``<data dir>/exports/labeling/``, reporting
its progress image by image; :meth:`LabelExports.submit`):

* every image as a PNG of its stored samples (16-bit, or 8-bit for 8-bit images; a MONOCHROME1 image
  inverted so that every PNG is MONOCHROME2), named ``case_00001``, … in split and patient order;
* ``headers/<case>.json``: its DICOM header as JSON through a de-identified view of the caller's role
  (PS3.15 Annex E, as a data scientist sees it: pseudonymous UIDs, no name or ID, shifted dates),
  whatever the caller's own view; ``cases.json`` maps each case to its split and pseudonymous
  patient, study and image; ``export.json`` says what was exported and left out;
* the split: by patient (a patient's images all in one of ``train``, ``validation``, ``test``),
  stratified by whether the patient has any label, with the seed and shares of a data set
  (:mod:`radstack.ai.splits`, handed in by the platform as ``splitter``);
* ``coco``: ``images/<case>.png`` and one COCO file per split, ``annotations/<split>.json``: images
  with ``width``, ``height`` and their pseudonymous UIDs, one category per schema label (id = its
  place in the schema, 1-based, with its code), an annotation per box (``bbox`` ``[x, y, w, h]``) and
  per mask (``segmentation``: COCO's uncompressed RLE, ``bbox`` its extent, ``area`` its pixels);
  image-level labels as the image's ``classes`` (category ids); points and lines are not COCO
  annotations and are counted as left out;
* ``monai``: ``images/<case>.png`` and ``datalist.json`` with ``training``, ``validation`` and
  ``test`` lists, in the form of MONAI's detection datalists (``load_decathlon_datalist``): each
  entry ``{"image", "box": [[x0, y0, x1, y1], …] ("xyxy"), "label": [class index per box], "classes":
  [0 or 1 per schema label]}`` and, when the schema takes masks, ``"seg": "labels/<case>.png"`` (the
  nnU-Net label map below);
* ``nnunet``: an nnU-Net v2 raw data set ``Dataset<id>_<name>/`` read by its ``NaturalImage2DIO``
  (PNG: no new dependency, where NIfTI would need one): ``imagesTr/<case>_0000.png`` and
  ``labelsTr/<case>.png`` for the train and validation splits, ``imagesTs``/``labelsTs`` for test,
  ``dataset.json`` (one channel, ``background`` 0 and each schema label that takes masks 1, 2, … in
  schema order; a later label wins where masks overlap) and ``splits_final.json`` (nnU-Net's form,
  one fold: our train and validation cases; copy it to the preprocessed folder to keep the split by
  patient). A schema without mask labels cannot be an nnU-Net export (refused).
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session

from radstack.dicom.deid import Deidentifier
from radstack.errors import BadRequest, Conflict, NotFound
from radstack.jobs.kinds import DEFAULT_QUEUE, JobParams, Submitter, declare
from radstack.jobs.queue import JobContext, JobQueue
from radstack.jobs.records import Job, JobState
from radstack.labeling._reads import ProjectLabels, image_key, load, present
from radstack.labeling.consensus import majority_class, majority_mask, quorum_boxes
from radstack.labeling.labels import mask_from_rle, mask_rle
from radstack.labeling.models import LabelObjectRow
from radstack.labeling.projects import Label, Member, ProjectService
from radstack.labeling.schema import Geometry, LabelSchema
from radstack.security.audit import AuditActionValues, AuditEntry, audited
from radstack.security.policy import ActionValues, Policy, Principal, ViewValues
from radstack.security.views import View
from radstack.store.models import InstanceRow
from radstack.store.records import InstanceRecord
from radstack.store.retrieve import decoded_frame
from radstack.store.studies import StudyStore

__all__ = [
    "LABEL_EXPORT",
    "LABEL_EXPORT_KIND",
    "SPLITS",
    "ExportFormat",
    "ExportImage",
    "ExportItem",
    "ExportPlan",
    "FinalLabel",
    "LabelExportParams",
    "LabelExportRunner",
    "LabelExports",
    "LabelsFrom",
    "Splitter",
    "export_path",
    "plan_export",
]

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]

#: The partitions, in order (the data set's splits).
SPLITS = ("train", "validation", "test")
#: ``(patients → has a positive image, seed, shares) → patient → split``: the data set's split by
#: patient (:func:`radstack.ai.splits.assign_splits`), handed in by the platform.
Splitter = Callable[[dict[str, bool], int, tuple[float, float, float]], Mapping[str, str]]
#: IoU at which the majority rule groups readers' boxes.
MAJORITY_IOU = 0.5
#: Segmentation SOP classes (bitmap and label map) are labels, not images.
_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66"
#: Images between two saved progress reports.
_REPORT_EVERY = 16
_NNUNET_NAME = re.compile(r"[^A-Za-z0-9]+")


class ExportFormat(StrEnum):
    """What an export makes."""

    DATASET = "dataset"
    COCO = "coco"
    MONAI = "monai"
    NNUNET = "nnunet"


class LabelsFrom(StrEnum):
    """Where an exported item's labels come from."""

    CONSENSUS = "consensus"
    READER = "reader"
    MAJORITY = "majority"


@dataclass(frozen=True, slots=True)
class FinalLabel:
    """One exported label: what (a schema key), where (geometry, data on an image), and its details."""

    label: str
    geometry: Geometry
    data: JsonDict
    sop_uid: str
    frame: int | None = None
    value: str | None = None
    laterality: str | None = None
    site: str | None = None

    @classmethod
    def of(cls, label: Label) -> FinalLabel:
        return cls(
            label.label,
            label.geometry,
            label.data,
            label.sop_uid,
            label.frame,
            label.value,
            label.laterality,
            label.site,
        )


@dataclass(frozen=True, slots=True)
class ExportItem:
    """An item that is exported, with its final labels and where they came from."""

    item_id: int
    study_uid: str
    source: LabelsFrom
    labels: tuple[FinalLabel, ...]


@dataclass(frozen=True, slots=True)
class ExportPlan:
    """What an export of a project takes: its items with final labels, and what it leaves out."""

    project: str
    schema: LabelSchema
    items: tuple[ExportItem, ...]
    #: Reason → items left out for it.
    left_out: Mapping[str, int]

    @property
    def sources(self) -> dict[str, int]:
        """Exported items by where their labels come from."""
        return dict(Counter(item.source.value for item in self.items))


@dataclass(frozen=True, slots=True)
class ExportImage:
    """One image of an exported item: the stored instance and its final labels."""

    record: InstanceRecord
    #: The real patient key (the split is by it; files name only its pseudonym).
    patient: str
    labels: tuple[FinalLabel, ...]


# ---------------------------------------------------------------------------------------- the plan
_NOT_READ = "not read yet"
_NO_CONSENSUS = "several reads and no consensus yet (export with majority to take the readers' majority)"
_INCOMPLETE = "not all its reads are in yet"


def plan_export(project: ProjectLabels, *, majority: bool = False) -> ExportPlan:
    """The final labels of each of ``project``'s items, and what is left out (see the module
    docstring); pure, no I/O."""
    items: list[ExportItem] = []
    left_out: Counter[str] = Counter()
    for item in project.items:
        reads = project.reads_of(item.id)
        if item.id in project.consensus:
            labels = tuple(FinalLabel.of(label) for label in project.consensus[item.id])
            items.append(ExportItem(item.id, item.study_uid, LabelsFrom.CONSENSUS, labels))
        elif project.readers_per_item == 1 and reads:
            labels = tuple(FinalLabel.of(label) for label in reads[0][1])
            items.append(ExportItem(item.id, item.study_uid, LabelsFrom.READER, labels))
        elif not reads:
            left_out[_NOT_READ] += 1
        elif not majority:
            left_out[_NO_CONSENSUS] += 1
        elif len(reads) < project.readers_per_item:
            left_out[_INCOMPLETE] += 1
        else:
            decided, undecided = majority_labels(project.schema, [labels for _, labels in reads])
            if undecided is not None:
                left_out[undecided] += 1
            else:
                items.append(ExportItem(item.id, item.study_uid, LabelsFrom.MAJORITY, decided))
    return ExportPlan(project.name, project.schema, tuple(items), dict(left_out))


def majority_labels(
    schema: LabelSchema, reads: Sequence[Sequence[Label]]
) -> tuple[tuple[FinalLabel, ...], str | None]:
    """The labels most of ``reads`` give each image of an item (see the module docstring), or the
    reason the item is undecided (a tie)."""
    decided: list[FinalLabel] = []
    for definition in schema.labels:
        key = definition.key
        images = sorted({image_key(lb) for read in reads for lb in read if lb.label == key})
        for image in images:
            on_image = [[lb for lb in read if lb.label == key and image_key(lb) == image] for read in reads]
            vote = majority_class([present(labels, key) for labels in on_image])
            if vote.needs_adjudication:
                return (), f"the readers are split on a label ({vote.outcome.value}): it needs adjudication"
            if vote.category is not True:
                continue
            sop_uid, _frame = image
            frame_of = next(lb.frame for labels in on_image for lb in labels)
            quorum = len(reads) // 2 + 1
            kept = len(decided)
            boxes = [[lb.data["box"] for lb in labels if lb.geometry is Geometry.BOX] for labels in on_image]
            if any(boxes):
                for fused in quorum_boxes(boxes, MAJORITY_IOU, quorum).accepted:
                    box = [round(c, 3) for c in fused.box]
                    decided.append(FinalLabel(key, Geometry.BOX, {"box": box}, sop_uid, frame_of))
            masks = [_merged_mask(labels) for labels in on_image]
            drawn = [mask for mask in masks if mask is not None]
            if drawn:
                empty = np.zeros(drawn[0].shape, bool)
                agreed = majority_mask([mask if mask is not None else empty for mask in masks])
                if agreed.any():
                    rows, columns = agreed.shape
                    data = {"mask": {"rows": rows, "columns": columns, "rle": mask_rle(agreed)}}
                    decided.append(FinalLabel(key, Geometry.MASK, data, sop_uid, frame_of))
            if len(decided) == kept:
                decided.append(FinalLabel(key, Geometry.CLASS, {}, sop_uid, frame_of))
    return tuple(decided), None


def _merged_mask(labels: Iterable[Label]) -> NDArray[np.bool_] | None:
    merged: NDArray[np.bool_] | None = None
    for label in labels:
        if label.geometry is Geometry.MASK:
            mask = mask_from_rle(label.data["mask"]["rle"])
            merged = mask if merged is None else merged | mask
    return merged


# ---------------------------------------------------------------------------------------- jobs
class LabelExportParams(JobParams):
    """A ``labeling-export`` job: files of project ``project`` in ``format``, for its submitter."""

    project: str
    format: ExportFormat
    submitted_by: Submitter
    seed: int = 0
    ratios: tuple[float, float, float] = (0.70, 0.15, 0.15)
    majority: bool = False
    #: nnU-Net's data set number (``Dataset<id>_<name>``).
    nnunet_id: int = 501


#: The job kind that writes a project's labels as files.
LABEL_EXPORT = declare("labeling-export", LabelExportParams, queue=DEFAULT_QUEUE)
LABEL_EXPORT_KIND = LABEL_EXPORT.name


def export_path(data_dir: Path, job_id: str) -> Path:
    """Where the zip of export job ``job_id`` is written."""
    return data_dir / "exports" / "labeling" / f"{job_id}.zip"


# ---------------------------------------------------------------------------------------- service
class LabelExports:
    """Exports of labeling projects (see the module docstring).

    Parameters
    ----------
    projects
        The projects service (its membership check decides who may export).
    deidentifier
        Pseudonyms for patients, UIDs and headers in the files.
    splitter
        The data set's split by patient (:data:`Splitter`).
    data_dir
        Where the zips are written (``exports/labeling/``).
    jobs
        Where file exports are queued.
    audit
        Receives a record per export submitted (and per refusal).
    """

    def __init__(
        self,
        projects: ProjectService,
        deidentifier: Deidentifier,
        splitter: Splitter,
        data_dir: Path,
        jobs: JobQueue,
        audit: Callable[[AuditEntry], None],
    ) -> None:
        self.projects = projects
        self.store: StudyStore = projects.store
        self.policy: Policy = projects.policy
        self.deidentifier = deidentifier
        self.splitter = splitter
        self.data_dir = data_dir
        self.jobs = jobs
        self._audit = audit

    # ------------------------------------------------------------------ planning
    def plan(self, principal: Principal, name: str, *, majority: bool = False) -> ExportPlan:
        """The project's final labels, for its owner or a reviewer whose role may export.

        Raises
        ------
        NotFound
            No such project, the caller has no part in it, or a study is outside their scope.
        Forbidden
            The caller is a reader only, or their role may not export (or lacks what their part needs).
        Conflict
            Nothing to export: no item is decided (the reasons counted), or no decided item has a label.
        """
        labels, _members = load(self.projects, principal, name, Member.OWNER, Member.REVIEWER)
        self.policy.require(principal, ActionValues.EXPORT)
        plan = plan_export(labels, majority=majority)
        if not plan.items:
            reasons = "; ".join(f"{n} {reason}" for reason, n in sorted(plan.left_out.items())) or "no items"
            raise Conflict(
                f"labeling project {name!r} has nothing to export: no item has final labels ({reasons}); "
                "an item is exported once its consensus is in (or its one reader's read)"
            )
        if not any(item.labels for item in plan.items):
            raise Conflict(
                f"labeling project {name!r} has no labels to export: its {len(plan.items)} decided "
                "item(s) carry none"
            )
        for item in plan.items:
            self.policy.require(principal, ActionValues.READ_PIXELS, item.study_uid)
        return plan

    def images(self, plan: ExportPlan) -> list[ExportImage]:
        """The exported items' images (see the module docstring), in item and image order."""
        studies = [item.study_uid for item in plan.items]
        with Session(self.store.engine) as session:
            objects = set(
                session.scalars(select(LabelObjectRow.sop_uid).where(LabelObjectRow.study_uid.in_(studies)))
            )
            rows: dict[str, list[InstanceRecord]] = defaultdict(list)
            for start in range(0, len(studies), 500):
                query = (
                    select(InstanceRow.__table__)
                    .where(
                        InstanceRow.study_uid.in_(studies[start : start + 500]),
                        InstanceRow.version_removed.is_(None),
                        InstanceRow.rows.is_not(None),
                    )
                    .order_by(InstanceRow.series_uid, InstanceRow.instance_number, InstanceRow.sop_uid)
                )
                for row in session.execute(query):
                    record = InstanceRecord.from_row(row)
                    if record.sop_uid not in objects and _is_image(record):
                        rows[record.study_uid].append(record)
        images = []
        for item in plan.items:
            patient = self.store.patient_key(item.study_uid)
            by_image: dict[str, list[FinalLabel]] = defaultdict(list)
            for label in item.labels:
                by_image[label.sop_uid].append(label)
            for record in rows.get(item.study_uid, []):
                images.append(ExportImage(record, patient, tuple(by_image.get(record.sop_uid, ()))))
        return images

    def dataset_instances(
        self, principal: Principal, name: str, label: str | None = None, *, majority: bool = False
    ) -> tuple[ExportPlan, list[JsonDict]]:
        """The project's images labeled in the data set's form for one label (see the module
        docstring), as ``{"study_uid", "series_uid", "sop_uid", "label"}`` with the stored UIDs.

        Raises
        ------
        BadRequest
            ``label`` is not a label of the schema, or none is named and the schema has no
            ``fracture`` and more than one label.
        NotFound, Forbidden, Conflict
            As :meth:`plan`.
        """
        plan = self.plan(principal, name, majority=majority)
        key = _positive_label(plan.schema, label)
        instances = []
        for image in self.images(plan):
            on_image = [lb for lb in image.labels if lb.label == key]
            positive = present(on_image, key)
            boxes = (
                [list(lb.data["box"]) for lb in on_image if lb.geometry is Geometry.BOX] if positive else []
            )
            record = image.record
            instances.append(
                {
                    "study_uid": record.study_uid,
                    "series_uid": record.series_uid,
                    "sop_uid": record.sop_uid,
                    "label": {"fracture": positive, "type": None, "boxes": boxes},
                }
            )
        return plan, instances

    # ------------------------------------------------------------------ file exports
    def submit(
        self,
        principal: Principal,
        name: str,
        format: ExportFormat | str,
        *,
        seed: int = 0,
        ratios: tuple[float, float, float] = (0.70, 0.15, 0.15),
        majority: bool = False,
        nnunet_id: int = 501,
    ) -> Job:
        """Queue a job writing the project's labels as files in ``format`` (coco, monai, nnunet).

        What the job would refuse is refused here, and nothing is queued.

        Raises
        ------
        BadRequest
            An unknown format (or ``dataset``, which is no file), an nnU-Net id outside 1-999, or an
            nnU-Net export of a schema without mask labels.
        NotFound, Forbidden, Conflict
            As :meth:`plan`.
        """
        resource: JsonDict = {"labeling_project": name, "event": "export", "format": str(format)}
        with audited(self._audit, principal, AuditActionValues.EXPORT, resource):
            kind = _file_format(format)
            if not 1 <= nnunet_id <= 999:
                raise BadRequest(
                    f"nnunet_id {nnunet_id} must be 1 to 999 (nnU-Net's Dataset<id>, three digits)"
                )
            plan = self.plan(principal, name, majority=majority)
            if kind is ExportFormat.NNUNET and not _mask_labels(plan.schema):
                raise BadRequest(
                    f"labeling project {name!r} has no label that takes masks; an nnU-Net data set is "
                    "segmentations (export coco or monai for boxes)"
                )
            params = {
                "project": name,
                "format": kind.value,
                "seed": seed,
                "ratios": list(ratios),
                "majority": majority,
                "nnunet_id": nnunet_id,
                "submitted_by": {"subject": principal.subject, "role": principal.role},
            }
            job, _created = self.jobs.submit(LABEL_EXPORT, params)
            resource.update(job=job.id, items=len(plan.items))
        return job

    def job(self, principal: Principal, job_id: str) -> Job:
        """An export job, for the one who submitted it (or an administrator) while their role may export.

        Raises
        ------
        NotFound
            No such export job, or another's.
        Forbidden
            The caller's role may not export.
        """
        self.policy.require(principal, ActionValues.EXPORT)
        try:
            job = self.jobs.records.get(job_id)
        except NotFound:
            job = None
        if (
            job is None
            or job.kind != LABEL_EXPORT_KIND
            or (
                job.params.get("submitted_by", {}).get("subject") != principal.subject
                and not self.policy.allows(principal, ActionValues.MANAGE_SYSTEM)
            )
        ):
            raise NotFound(f"labeling export {job_id!r} not found")
        return job

    def jobs_of(self, principal: Principal, name: str, limit: int = 20) -> list[Job]:
        """The caller's newest export jobs of project ``name`` (an administrator: everyone's)."""
        if not self.policy.allows(principal, ActionValues.EXPORT):
            return []
        admin = self.policy.allows(principal, ActionValues.MANAGE_SYSTEM)
        return [
            job
            for job in self.jobs.records.find(kind=LABEL_EXPORT_KIND, limit=500)
            if job.params.get("project") == name
            and (admin or job.params.get("submitted_by", {}).get("subject") == principal.subject)
        ][:limit]

    def file(self, principal: Principal, job_id: str) -> Path:
        """The zip an export job wrote.

        Raises
        ------
        NotFound
            As :meth:`job`, or the zip was removed.
        Conflict
            The job has not succeeded (yet).
        """
        job = self.job(principal, job_id)
        if job.state is not JobState.SUCCEEDED:
            raise Conflict(
                f"labeling export {job_id} is {job.state.value.lower()}; its file is there once it succeeds"
            )
        path = export_path(self.data_dir, job_id)
        if not path.is_file():
            raise NotFound(f"the file of labeling export {job_id} is no longer there")
        return path

    def write(
        self,
        principal: Principal,
        params: LabelExportParams,
        out: Path,
        on_progress: Callable[[JsonDict, bool], None] | None = None,
    ) -> JsonDict:
        """Write the export ``params`` describe as a zip at ``out`` (atomically: a ``.part`` file
        renamed once complete); returns its summary.

        Raises
        ------
        NotFound, Forbidden, Conflict
            As :meth:`plan` (checked again: the submitter's role or the project may have changed).
        BadRequest
            ``params.format`` is not a file format.
        """
        kind = _file_format(params.format)
        plan = self.plan(principal, params.project, majority=params.majority)
        images = self.images(plan)
        role = self.policy.role(principal)
        # Files are always de-identified, whatever the caller's own view (PS3.15 Annex E).
        view = View(replace(role, view=ViewValues.DEIDENTIFIED), self.store, self.deidentifier)
        split_of = self._splits(images, params.seed, params.ratios)
        cases = self._cases(images, split_of)
        writer = _FORMATS[kind](plan, params, self.deidentifier.uid)
        progress: JsonDict = {"stage": "images", "images_done": 0, "images_total": len(cases)}
        if on_progress is not None:
            on_progress(dict(progress), True)
        out.parent.mkdir(parents=True, exist_ok=True)
        # A file of its own per run: a second run of the job (after a lost lease) never shares it.
        partial = out.with_name(f"{out.name}.{uuid.uuid4().hex}.part")
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                for done, case in enumerate(cases, 1):
                    record = case.image.record
                    pixels = _png(self.store, record)
                    header = view.json(json.loads(self.store.instance_json(record)), record.study_uid)
                    writer.add(archive, case, pixels)
                    archive.writestr(f"{writer.root}headers/{case.name}.json", json.dumps(header, indent=1))
                    progress["images_done"] = done
                    if on_progress is not None:
                        on_progress(dict(progress), done % _REPORT_EVERY == 0 or done == len(cases))
                counts = _split_counts(cases)
                summary: JsonDict = {
                    "project": plan.project,
                    "format": kind.value,
                    "created_at": datetime.now(UTC).isoformat(),
                    "seed": params.seed,
                    "ratios": list(params.ratios),
                    "items": len(plan.items),
                    "labels_from": plan.sources,
                    "left_out_items": dict(plan.left_out),
                    "images": len(cases),
                    "splits": counts,
                    "left_out_labels": dict(writer.left_out),
                }
                writer.finish(archive, cases)
                archive.writestr(
                    f"{writer.root}cases.json",
                    json.dumps(
                        {
                            case.name: {
                                "split": case.split,
                                "patient": case.patient,
                                "study_instance_uid": self.deidentifier.uid(case.image.record.study_uid),
                                "series_instance_uid": self.deidentifier.uid(case.image.record.series_uid),
                                "sop_instance_uid": self.deidentifier.uid(case.image.record.sop_uid),
                            }
                            for case in cases
                        },
                        indent=1,
                    ),
                )
                archive.writestr(f"{writer.root}export.json", json.dumps(summary, indent=1))
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
        log.info("labeling export of %s (%s): %d images written", plan.project, kind.value, len(cases))
        return {**summary, "images_done": len(cases), "images_total": len(cases), "bytes": out.stat().st_size}

    def _splits(
        self, images: Sequence[ExportImage], seed: int, ratios: tuple[float, float, float]
    ) -> Mapping[str, str]:
        patients: dict[str, bool] = {}
        for image in images:
            # A patient with any label present on an image is a positive one (the split's strata).
            positive = any(present(image.labels, label.label) for label in image.labels)
            patients[image.patient] = patients.get(image.patient, False) or positive
        return self.splitter(patients, seed, ratios)

    def _cases(self, images: Sequence[ExportImage], split_of: Mapping[str, str]) -> list[_Case]:
        order = sorted(
            images,
            key=lambda image: (
                SPLITS.index(str(split_of[image.patient])),
                self._patient(image.patient),
                self.deidentifier.uid(image.record.sop_uid),
            ),
        )
        return [
            _Case(f"case_{number:05d}", str(split_of[image.patient]), self._patient(image.patient), image)
            for number, image in enumerate(order, 1)
        ]

    def _patient(self, real: str) -> str:
        """The patient's pseudonym, as the data set keeps it."""
        return self.deidentifier.pseudonym(real, "id")


class LabelExportRunner:
    """The job handler of ``labeling-export`` jobs. Safe to run twice: the zip is written again."""

    def __init__(self, exports: LabelExports) -> None:
        self.exports = exports

    def __call__(self, context: JobContext[LabelExportParams]) -> JsonDict:
        params = context.params
        principal = Principal(params.submitted_by.subject, params.submitted_by.role, "job")
        out = export_path(self.exports.data_dir, context.job.id)
        return self.exports.write(principal, params, out, lambda p, save: context.report(p, save=save))


# ---------------------------------------------------------------------------------------- helpers
def _is_image(record: InstanceRecord) -> bool:
    """A single-frame grayscale image of unsigned 8 or 16 bits (what exports and data sets hold)."""
    pixel = record.pixel
    return (
        pixel is not None
        and not record.sop_class_uid.startswith(_SEGMENTATION)
        and pixel.number_of_frames == 1
        and pixel.samples_per_pixel == 1
        and not pixel.pixel_representation
        and pixel.bits_allocated in (8, 16)
    )


def _positive_label(schema: LabelSchema, label: str | None) -> str:
    """The schema key a data set's ``fracture`` stands for.

    Raises
    ------
    BadRequest
        ``label`` is not in the schema, or none is given and it cannot be chosen.
    """
    if label is not None:
        found = schema.find(label)
        if found is None:
            raise BadRequest(
                f"label {label!r} is not a label of this project; accepted: {', '.join(schema.keys)}"
            )
        return found.key
    if "fracture" in schema.keys:
        return "fracture"
    if len(schema.keys) == 1:
        return schema.keys[0]
    raise BadRequest(f"name the label that is the data set's positive class: one of {', '.join(schema.keys)}")


def _file_format(value: ExportFormat | str) -> ExportFormat:
    """A file format.

    Raises
    ------
    BadRequest
        Not coco, monai or nnunet.
    """
    try:
        kind = ExportFormat(value)
    except ValueError:
        kind = None
    if kind is None or kind is ExportFormat.DATASET:
        raise BadRequest(f"format {str(value)!r} is not a file export; use coco, monai or nnunet")
    return kind


def _mask_labels(schema: LabelSchema) -> list[str]:
    return [label.key for label in schema.labels if Geometry.MASK in label.geometry]


def _png(store: StudyStore, record: InstanceRecord) -> bytes:
    """The image's stored samples as a PNG (8 or 16 bits), MONOCHROME1 inverted to MONOCHROME2."""
    pixel = record.pixel
    assert pixel is not None
    image = decoded_frame(store, record, 1).reshape(pixel.rows, pixel.columns)
    dtype = np.uint8 if pixel.bits_allocated == 8 else np.uint16
    if pixel.photometric_interpretation == "MONOCHROME1":
        top = (1 << pixel.bits_stored) - 1
        image = top - np.clip(image.astype(np.int64), 0, top)
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(image.astype(dtype))))


def _split_counts(cases: Sequence[_Case]) -> JsonDict:
    counts: JsonDict = {split: {"patients": 0, "images": 0, "labeled_images": 0} for split in SPLITS}
    seen: set[tuple[str, str]] = set()
    for case in cases:
        entry = counts[case.split]
        if (case.split, case.patient) not in seen:
            seen.add((case.split, case.patient))
            entry["patients"] += 1
        entry["images"] += 1
        entry["labeled_images"] += bool(case.image.labels)
    return counts


@dataclass(frozen=True, slots=True)
class _Case:
    """One exported image: its case name, split and pseudonymous patient."""

    name: str
    split: str
    patient: str
    image: ExportImage

    @property
    def rows(self) -> int:
        assert self.image.record.pixel is not None
        return self.image.record.pixel.rows

    @property
    def columns(self) -> int:
        assert self.image.record.pixel is not None
        return self.image.record.pixel.columns


class _Writer:
    """What one format writes for each case and at the end."""

    root = ""

    def __init__(self, plan: ExportPlan, params: LabelExportParams, uid: Callable[[str], str]) -> None:
        self.plan = plan
        self.params = params
        #: A stored UID's pseudonym.
        self.uid = uid
        self.keys = list(plan.schema.keys)
        self.left_out: Counter[str] = Counter()

    def add(self, archive: zipfile.ZipFile, case: _Case, png: bytes) -> None:
        raise NotImplementedError

    def finish(self, archive: zipfile.ZipFile, cases: Sequence[_Case]) -> None:
        raise NotImplementedError

    def classes(self, case: _Case) -> list[str]:
        """The schema keys present on the case's image, in schema order."""
        return [key for key in self.keys if present(case.image.labels, key)]

    def label_map(self, case: _Case) -> NDArray[np.uint8]:
        """The case's masks as one label map: 0 background, the i-th mask label of the schema i."""
        labels = np.zeros((case.rows, case.columns), np.uint8)
        for value, key in enumerate(_mask_labels(self.plan.schema), 1):
            for label in case.image.labels:
                if label.label == key and label.geometry is Geometry.MASK:
                    labels[mask_from_rle(label.data["mask"]["rle"])] = value
        return labels


def _stored(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    """A PNG, stored as it is (it is compressed already)."""
    archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_STORED)


class _Coco(_Writer):
    root = "coco/"

    def __init__(self, plan: ExportPlan, params: LabelExportParams, uid: Callable[[str], str]) -> None:
        super().__init__(plan, params, uid)
        self.images: dict[str, list[JsonDict]] = {split: [] for split in SPLITS}
        self.annotations: dict[str, list[JsonDict]] = {split: [] for split in SPLITS}
        self.next_annotation = 1

    def add(self, archive: zipfile.ZipFile, case: _Case, png: bytes) -> None:
        _stored(archive, f"{self.root}images/{case.name}.png", png)
        image_id = int(case.name.removeprefix("case_"))
        record = case.image.record
        self.images[case.split].append(
            {
                "id": image_id,
                "file_name": f"images/{case.name}.png",
                "width": case.columns,
                "height": case.rows,
                "patient": case.patient,
                "study_instance_uid": self.uid(record.study_uid),
                "sop_instance_uid": self.uid(record.sop_uid),
                "classes": [self.keys.index(key) + 1 for key in self.classes(case)],
            }
        )
        for label in case.image.labels:
            category = self.keys.index(label.label) + 1
            extra = {
                k: v
                for k, v in (("laterality", label.laterality), ("site", label.site), ("value", label.value))
                if v is not None
            }
            if label.geometry is Geometry.BOX:
                x0, y0, x1, y1 = label.data["box"]
                entry: JsonDict = {
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "segmentation": [],
                }
            elif label.geometry is Geometry.MASK:
                rle = label.data["mask"]["rle"]
                mask = mask_from_rle(rle)
                ys, xs = np.nonzero(mask)
                entry = {
                    "bbox": [
                        int(xs.min()),
                        int(ys.min()),
                        int(xs.max() - xs.min() + 1),
                        int(ys.max() - ys.min() + 1),
                    ],
                    "area": int(mask.sum()),
                    "segmentation": {"size": list(rle["size"]), "counts": list(rle["counts"])},
                }
            else:
                if label.geometry is not Geometry.CLASS:
                    self.left_out[f"{label.geometry.value} labels (COCO has no {label.geometry.value})"] += 1
                continue
            self.annotations[case.split].append(
                {
                    "id": self.next_annotation,
                    "image_id": image_id,
                    "category_id": category,
                    "iscrowd": 0,
                    **entry,
                    **({"attributes": extra} if extra else {}),
                }
            )
            self.next_annotation += 1

    def finish(self, archive: zipfile.ZipFile, cases: Sequence[_Case]) -> None:
        categories = [
            {"id": i, "name": label.key, "supercategory": "finding", "code": label.code.to_json()}
            for i, label in enumerate(self.plan.schema.labels, 1)
        ]
        for split in SPLITS:
            document = {
                "info": {
                    "description": f"labeling project {self.plan.project}, {split} split (by patient)",
                    "version": "1.0",
                    "date_created": datetime.now(UTC).isoformat(),
                },
                "licenses": [],
                "categories": categories,
                "images": self.images[split],
                "annotations": self.annotations[split],
            }
            archive.writestr(f"{self.root}annotations/{split}.json", json.dumps(document))


class _Monai(_Writer):
    root = "monai/"

    def __init__(self, plan: ExportPlan, params: LabelExportParams, uid: Callable[[str], str]) -> None:
        super().__init__(plan, params, uid)
        self.entries: dict[str, list[JsonDict]] = {split: [] for split in SPLITS}
        self.masks = bool(_mask_labels(plan.schema))

    def add(self, archive: zipfile.ZipFile, case: _Case, png: bytes) -> None:
        _stored(archive, f"{self.root}images/{case.name}.png", png)
        boxes = [lb for lb in case.image.labels if lb.geometry is Geometry.BOX]
        present_keys = self.classes(case)
        entry: JsonDict = {
            "image": f"images/{case.name}.png",
            "box": [list(lb.data["box"]) for lb in boxes],
            "label": [self.keys.index(lb.label) for lb in boxes],
            "classes": [int(key in present_keys) for key in self.keys],
            "case": case.name,
            "patient": case.patient,
        }
        if self.masks:
            _stored(archive, f"{self.root}labels/{case.name}.png", _png_of(self.label_map(case)))
            entry["seg"] = f"labels/{case.name}.png"
        for label in case.image.labels:
            if label.geometry in (Geometry.POINT, Geometry.LINE):
                self.left_out[f"{label.geometry.value} labels"] += 1
        self.entries[case.split].append(entry)

    def finish(self, archive: zipfile.ZipFile, cases: Sequence[_Case]) -> None:
        document = {
            "name": self.plan.project,
            "description": f"labeling project {self.plan.project}, split by patient",
            "box_mode": "xyxy",
            "labels": {str(i): key for i, key in enumerate(self.keys)},
            "seg_labels": {"0": "background"}
            | {str(i): key for i, key in enumerate(_mask_labels(self.plan.schema), 1)},
            "training": self.entries["train"],
            "validation": self.entries["validation"],
            "test": self.entries["test"],
        }
        archive.writestr(f"{self.root}datalist.json", json.dumps(document, indent=1))


class _NnUnet(_Writer):
    def __init__(self, plan: ExportPlan, params: LabelExportParams, uid: Callable[[str], str]) -> None:
        super().__init__(plan, params, uid)
        name = _NNUNET_NAME.sub("", plan.project.title()) or "Labels"
        self.root = f"Dataset{params.nnunet_id:03d}_{name}/"

    def add(self, archive: zipfile.ZipFile, case: _Case, png: bytes) -> None:
        part = "Ts" if case.split == "test" else "Tr"
        _stored(archive, f"{self.root}images{part}/{case.name}_0000.png", png)
        _stored(archive, f"{self.root}labels{part}/{case.name}.png", _png_of(self.label_map(case)))
        for label in case.image.labels:
            if label.geometry is not Geometry.MASK:
                self.left_out[f"{label.geometry.value} labels (nnU-Net takes masks)"] += 1

    def finish(self, archive: zipfile.ZipFile, cases: Sequence[_Case]) -> None:
        training = [case for case in cases if case.split != "test"]
        document = {
            "name": self.plan.project,
            "description": f"labeling project {self.plan.project}, split by patient",
            "channel_names": {"0": "radiograph"},
            "labels": {"background": 0} | {key: i for i, key in enumerate(_mask_labels(self.plan.schema), 1)},
            "numTraining": len(training),
            "file_ending": ".png",
            "overwrite_image_reader_writer": "NaturalImage2DIO",
        }
        archive.writestr(f"{self.root}dataset.json", json.dumps(document, indent=1))
        folds = [
            {
                "train": [case.name for case in cases if case.split == "train"],
                "val": [case.name for case in cases if case.split == "validation"],
            }
        ]
        archive.writestr(f"{self.root}splits_final.json", json.dumps(folds, indent=1))


_FORMATS: dict[ExportFormat, type[_Writer]] = {
    ExportFormat.COCO: _Coco,
    ExportFormat.MONAI: _Monai,
    ExportFormat.NNUNET: _NnUnet,
}


def _png_of(labels: NDArray[np.uint8]) -> bytes:
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(labels)))

"""Labeled projects for the tests of agreement figures and exports: projects made and read through
:class:`ProjectService` as readers do, and consensus labels as a reviewer's decision leaves them (a
submitted ``review`` task whose labels have source ``consensus``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from radstack.labeling.labels import mask_rle
from radstack.labeling.models import ItemRow, ProjectRow, TaskRow
from radstack.labeling.projects import LabelSource, ProjectService, TaskKind, TaskState
from radstack.labeling.schema import LabelSchema, check_label
from radstack.security.policy import Principal

OWNER = Principal("dana", "data-scientist", "token")
REVIEWER = Principal("reva", "radiologist", "token")
READERS = {
    "rita": Principal("rita", "annotator", "token"),
    "raj": Principal("raj", "radiologist", "token"),
    "rex": Principal("rex", "annotator", "token"),
}

SCHEMA: dict[str, Any] = {
    "labels": [
        {
            "key": "fracture",
            "code": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
            "geometry": ["box", "class", "mask", "point"],
            "laterality": True,
        },
        {
            "key": "dislocation",
            "code": {"value": "87642003", "scheme": "SCT", "meaning": "Dislocation of joint"},
            "geometry": ["class"],
        },
    ]
}


def make_project(
    service: ProjectService,
    name: str,
    studies: Sequence[Dataset],
    readers: Sequence[str],
    readers_per_item: int,
    schema: dict[str, Any] | None = None,
) -> None:
    """A project of ``studies`` read by ``readers`` (round robin) and reviewed by reva, owned by dana."""
    service.create(
        OWNER,
        name,
        schema=schema or SCHEMA,
        cohort=[str(ds.StudyInstanceUID) for ds in studies],
        readers=list(readers),
        reviewers=["reva"],
        readers_per_item=readers_per_item,
    )


def task_of(service: ProjectService, project: str, ds: Dataset, reader: str) -> int:
    """The id of ``reader``'s read task on ``ds``'s study."""
    for task in service.tasks_of(OWNER, project):
        if task.study_uid == ds.StudyInstanceUID and task.reader == reader:
            return task.id
    raise AssertionError(f"{reader} has no task on {ds.StudyInstanceUID} in {project}")


def read(
    service: ProjectService, project: str, ds: Dataset, reader: str, labels: Sequence[dict[str, Any]]
) -> None:
    """``reader`` reads ``ds``: sends ``labels`` (JSON, as the API takes them) and submits the task."""
    principal = READERS[reader]
    task = task_of(service, project, ds, reader)
    service.submit_labels(principal, task, list(labels))
    service.submit(principal, task)


def skip(service: ProjectService, project: str, ds: Dataset, reader: str) -> None:
    """``reader`` skips ``ds``: a read that is missing."""
    service.skip(READERS[reader], task_of(service, project, ds, reader))


def consensus(service: ProjectService, project: str, ds: Dataset, labels: Sequence[dict[str, Any]]) -> None:
    """reva decides ``ds``: a ``review`` task of the item, submitted, with ``labels`` as consensus labels
    (an empty list: the consensus is that there is nothing)."""
    with Session(service.engine) as session, session.begin():
        row = session.scalar(select(ProjectRow).where(ProjectRow.name == project))
        assert row is not None
        item = session.scalar(
            select(ItemRow.id).where(ItemRow.project_id == row.id, ItemRow.study_uid == ds.StudyInstanceUID)
        )
        schema = LabelSchema.from_json(json.loads(row.schema))
        now = datetime.now(UTC)
        task_id = session.execute(
            insert(TaskRow)
            .values(
                project_id=row.id,
                item_id=item,
                reader="reva",
                kind=TaskKind.REVIEW.value,
                state=TaskState.ASSIGNED.value,
                due_at=None,
                assigned_at=now,
                submitted_at=None,
                revision=0,
            )
            .returning(TaskRow.id)
        ).scalar_one()
    checked = [check_label(schema, label, i) for i, label in enumerate(labels)]
    service._write(
        partial(ProjectService._replace_labels, task_id, "reva", checked, LabelSource.CONSENSUS, None)
    )
    with Session(service.engine) as session, session.begin():
        session.execute(
            update(TaskRow)
            .where(TaskRow.id == task_id)
            .values(state=TaskState.SUBMITTED.value, submitted_at=datetime.now(UTC))
        )


# ----------------------------------------------------------------------------- labels as JSON
def box(ds: Dataset, coordinates: Sequence[float], key: str = "fracture") -> dict[str, Any]:
    return {
        "label": key,
        "geometry": "box",
        "data": {"box": list(coordinates)},
        "sop_uid": str(ds.SOPInstanceUID),
    }


def mask(ds: Dataset, rows: slice, columns: slice, key: str = "fracture") -> dict[str, Any]:
    """A mask of ``ds``'s size with ``[rows, columns]`` set."""
    pixels = np.zeros((int(ds.Rows), int(ds.Columns)), bool)
    pixels[rows, columns] = True
    data = {"mask": {"rows": int(ds.Rows), "columns": int(ds.Columns), "rle": mask_rle(pixels)}}
    return {"label": key, "geometry": "mask", "data": data, "sop_uid": str(ds.SOPInstanceUID)}


def present(ds: Dataset, key: str = "fracture", value: str | None = None) -> dict[str, Any]:
    """An image-level class label."""
    label: dict[str, Any] = {"label": key, "geometry": "class", "sop_uid": str(ds.SOPInstanceUID)}
    if value is not None:
        label["value"] = value
    return label

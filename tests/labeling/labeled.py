"""Labeled projects for the tests of agreement figures and exports: projects made and read through
:class:`ProjectService` as readers do, and decided by a reviewer through :class:`ReviewService`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from radstack.labeling.labels import mask_rle
from radstack.labeling.projects import ProjectService, TaskKind, TaskState
from radstack.labeling.review import ReviewService
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
    """reva decides ``ds`` on her review task (an edit: ``labels`` become the consensus, an empty list
    that there is nothing), and, when the readers disagreed, on the adjudication it opens too."""
    reviews = ReviewService(service, service._audit)
    for _ in range(3):  # the review, its adjudication, then nothing left
        task = next(
            (
                t.id
                for t in service.tasks_of(REVIEWER, project, TaskState.ASSIGNED)
                if t.study_uid == ds.StudyInstanceUID and t.kind is not TaskKind.READ
            ),
            None,
        )
        if task is None:
            return
        reviews.edit(REVIEWER, task, list(labels))
    raise AssertionError(f"{ds.StudyInstanceUID} in {project} is still undecided")


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

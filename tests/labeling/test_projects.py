"""Labeling projects, reader tasks and JSON labels (``labeling/projects.py``, ``labeling/schema.py``) on a
real index: the schema's checks, a cohort frozen from a list or a query, the three assignment policies,
who sees and does what, task states, labels checked against the schema and the image, revisions that
keep their history, and the audit trail."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydicom.dataset import Dataset

from radstack.config import Settings
from radstack.errors import BadRequest, Conflict, Forbidden, NotFound
from radstack.labeling.projects import (
    Assignment,
    Member,
    ProjectService,
    TaskState,
    assign_readers,
    uncertainty_order,
)
from radstack.labeling.schema import Geometry, LabelSchema
from radstack.platform import Platform
from radstack.security.audit import AuditOutcomeValues, AuditRecord
from radstack.security.policy import Principal
from tests.ai.results import ingest, radiograph, record

OWNER = Principal("dana", "data-scientist", "token")
RITA = Principal("rita", "annotator", "token")
RAJ = Principal("raj", "radiologist", "token")
REVA = Principal("reva", "radiologist", "token")
OUTSIDER = Principal("otto", "annotator", "token")
TECH = Principal("tom", "technologist", "token")
ADMIN = Principal("admin", "admin", "password")

SCHEMA: dict[str, Any] = {
    "labels": [
        {
            "key": "fracture",
            "code": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
            "geometry": ["box", "point", "class", "mask"],
            "laterality": True,
            "site": True,
        },
        {
            "key": "dislocation",
            "code": {"value": "87642003", "scheme": "SCT", "meaning": "Dislocation of joint"},
            "geometry": ["box", "class"],
        },
    ]
}


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    opened = Platform.open(settings)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def studies(platform: Platform) -> list[Dataset]:
    stored = [radiograph(seed) for seed in range(1, 5)]
    ingest(platform.store, *stored)
    return stored


@pytest.fixture
def service(platform: Platform) -> ProjectService:
    return platform.labeling


def _uids(studies: list[Dataset]) -> list[str]:
    return [str(ds.StudyInstanceUID) for ds in studies]


def _create(service: ProjectService, studies: list[Dataset], name: str = "wrists", **options: Any) -> Any:
    fields: dict[str, Any] = {
        "schema": SCHEMA,
        "cohort": _uids(studies),
        "readers": ["rita", "raj"],
        "reviewers": ["reva"],
        "readers_per_item": 1,
    }
    return service.create(OWNER, name, **(fields | options))


def _audit(platform: Platform) -> list[AuditRecord]:
    platform.audit.flush()
    return platform.audit.log.records(limit=10_000)


# ----------------------------------------------------------------------------- schema
def test_a_schema_reads_back_and_finds_labels_by_key_or_meaning() -> None:
    schema = LabelSchema.from_json(SCHEMA)
    assert schema.keys == ("fracture", "dislocation")
    assert LabelSchema.from_json(schema.to_json()) == schema
    fracture = schema.find("FRACTURE OF BONE")
    assert fracture is not None and fracture.key == "fracture" and fracture.laterality and fracture.site
    assert schema.find(" dislocation ") is not None and schema.find("effusion") is None
    dislocation = schema.find("dislocation")
    assert dislocation is not None and dislocation.geometry == (Geometry.BOX, Geometry.CLASS)
    assert not dislocation.laterality and not dislocation.site


def _label(**changes: Any) -> dict[str, Any]:
    return {**SCHEMA["labels"][0], **changes}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "schema must be a JSON object"),
        ({"labels": []}, "schema.labels must be a non-empty list"),
        ({"labels": [], "colour": 1}, "schema: unknown field 'colour'; accepted: labels"),
        ({"labels": [_label(key="Fracture!")]}, r"schema.labels\[0\].key 'Fracture!' is not valid"),
        (
            {"labels": [_label(code={"value": "1", "meaning": "x"})]},
            r"schema.labels\[0\].code.scheme is missing",
        ),
        (
            {"labels": [_label(code={"value": "1", "scheme": "", "meaning": "x"})]},
            r"schema.labels\[0\].code.scheme must be a non-empty string",
        ),
        (
            {"labels": [_label(geometry=["box", "polygon"])]},
            r"schema.labels\[0\].geometry\[1\] 'polygon' is not one of box, point, line, mask, class",
        ),
        ({"labels": [_label(geometry=[])]}, r"schema.labels\[0\].geometry must be a non-empty list"),
        ({"labels": [_label(laterality="yes")]}, r"schema.labels\[0\].laterality must be true or false"),
        (
            {"labels": [_label(), _label()]},
            r"schema.labels\[1\]: 'fracture' already names schema.labels\[0\] \('fracture'\)",
        ),
        (
            {"labels": [_label(), _label(key="other")]},
            r"schema.labels\[1\]: 'fracture of bone' already names schema.labels\[0\] \('fracture'\)",
        ),
    ],
)
def test_a_bad_schema_is_refused_naming_the_field(document: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        LabelSchema.from_json(document)


# ----------------------------------------------------------------------------- assignment
def test_round_robin_takes_readers_in_turn_from_item_to_item() -> None:
    picks = assign_readers(4, ["a", "b", "c"], 2, Assignment.ROUND_ROBIN)
    assert picks == [("a", "b"), ("c", "a"), ("b", "c"), ("a", "b")]
    assert all(len(set(p)) == 2 for p in picks)


def test_least_loaded_gives_each_item_to_the_readers_with_fewest_open_tasks() -> None:
    picks = assign_readers(3, ["a", "b", "c"], 1, Assignment.LEAST_LOADED, {"a": 2, "b": 0, "c": 1})
    assert picks == [("b",), ("b",), ("c",)]  # b: 0 → 1 → 2; then c (1) before a (2) and b (2)


def test_uncertainty_puts_the_priorities_nearest_the_suspicious_boundary_first() -> None:
    order = uncertainty_order(
        ["s1", "s2", "s3", "s4", "s5"], {"s1": 90, "s2": None, "s3": 52, "s4": 10, "s5": 48}
    )
    assert order == ["s3", "s5", "s1", "s4", "s2"]  # |2|, |2|, |40|, |40| (ties: cohort order), unscored


def test_a_project_freezes_its_cohort_and_assigns_every_item(
    platform: Platform, service: ProjectService, studies: list[Dataset]
) -> None:
    project = _create(service, studies, readers=["rita", "raj", "reva2"], reviewers=[], readers_per_item=2)
    assert project.owner == "dana" and project.member == (Member.OWNER,)
    assert project.progress.items == 4
    assert project.progress.tasks == {"assigned": 8, "submitted": 0, "skipped": 0}
    assert project.cohort == {"kind": "list"} and project.assignment is Assignment.ROUND_ROBIN
    tasks = service.tasks_of(OWNER, "wrists")
    assert [(t.position, t.reader) for t in tasks] == [
        (0, "rita"),
        (0, "raj"),
        (1, "reva2"),
        (1, "rita"),
        (2, "raj"),
        (2, "reva2"),
        (3, "rita"),
        (3, "raj"),
    ]
    assert [t.study_uid for t in tasks[::2]] == _uids(studies)
    # Each study has one image: the task opens the viewer on it.
    assert tasks[0].sop_uid == studies[0].SOPInstanceUID
    assert tasks[0].viewer_url == (
        f"/viewer/viewer?StudyInstanceUIDs={studies[0].StudyInstanceUID}"
        f"&initialSOPInstanceUID={studies[0].SOPInstanceUID}&customization=/task/{tasks[0].id}"
    )
    # A study stored later is not in the frozen cohort.
    ingest(platform.store, radiograph(9))
    assert service.get(OWNER, "wrists").progress.items == 4


def test_least_loaded_counts_the_open_tasks_of_other_projects(
    service: ProjectService, studies: list[Dataset]
) -> None:
    _create(service, studies[:3], "first", readers=["rita"], reviewers=[])
    _create(service, studies, "second", readers=["rita", "raj"], reviewers=[], assignment="least-loaded")
    readers = [t.reader for t in service.tasks_of(OWNER, "second")]
    assert readers == ["raj", "raj", "raj", "rita"]  # rita had 3 open tasks; raj catches up first


def test_uncertainty_orders_the_items_by_the_ai_priority(
    platform: Platform, service: ProjectService, studies: list[Dataset]
) -> None:
    # Priorities under the operating points 0.3/0.7: 0.95 → 95, 0.31 → 51, 0.05 → 8; the last is unscored.
    # Nearest 50 first: 51, then 8 (42 away), then 95 (45 away), then the unscored study.
    for ds, score in zip(studies[:3], (0.95, 0.31, 0.05), strict=True):
        record(platform.ai_results, ds, [score])
    _create(service, studies, assignment=Assignment.UNCERTAINTY)
    tasks = service.tasks_of(OWNER, "wrists")
    assert [t.study_uid for t in tasks] == _uids([studies[1], studies[2], studies[0], studies[3]])
    assert service.next_task(RITA) is not None
    assert service.next_task(RITA).study_uid == studies[1].StudyInstanceUID  # type: ignore[union-attr]


def test_a_query_cohort_is_searched_as_qido_does(service: ProjectService, studies: list[Dataset]) -> None:
    project = _create(service, studies, "dx", cohort={"ModalitiesInStudy": ["DX"]})
    assert project.progress.items == 4
    assert project.cohort == {"kind": "query", "query": {"ModalitiesInStudy": ["DX"]}}
    one = _create(service, studies, "one", cohort={"PatientID": str(studies[2].PatientID)})
    assert [t.study_uid for t in service.tasks_of(OWNER, "one")] == [studies[2].StudyInstanceUID]
    assert one.progress.items == 1


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"cohort": []}, BadRequest, "the cohort is empty"),
        (
            {"cohort": {"ModalitiesInStudy": "MR"}},
            BadRequest,
            r"the cohort is empty: the query \{'ModalitiesInStudy': 'MR'\} matches no study",
        ),
        (
            {"cohort": {"Modality": "DX"}},
            BadRequest,
            "the cohort query is refused: Modality is not supported",
        ),
        ({"cohort": ["1.2.3.4.5"]}, BadRequest, r"1 of the cohort's studies are not stored: 1\.2\.3\.4\.5"),
        ({"cohort": ["1.2..3"]}, BadRequest, r"cohort\[0\] '1\.2\.\.3' is not a valid UID"),
        ({"cohort": {"NoSuchKey": "x"}}, BadRequest, "NoSuchKey"),
        ({"cohort": "1.2.3"}, BadRequest, "cohort must be a QIDO-style query"),
        ({"cohort": {}}, BadRequest, "the cohort query names no attribute"),
        ({"readers_per_item": 3}, BadRequest, "readers_per_item 3 is more than the project's 2 readers"),
        ({"readers_per_item": 0}, BadRequest, "readers_per_item 0 must be 1 to 9"),
        ({"readers_per_item": 10}, BadRequest, "readers_per_item 10 must be 1 to 9"),
        ({"readers": []}, BadRequest, "readers is empty"),
        ({"readers": ["rita", "rita"]}, BadRequest, "readers lists 'rita' twice"),
        ({"reviewers": ["rita"]}, BadRequest, "'rita' is both a reader and a reviewer"),
        ({"assignment": "random"}, BadRequest, "assignment 'random' is not one of round-robin"),
        ({"schema": {"labels": "x"}}, BadRequest, "schema.labels must be a non-empty list"),
        (
            {"due_at": datetime(2020, 1, 1, tzinfo=UTC)},
            BadRequest,
            "due_at 2020-01-01T00:00:00\\+00:00 is in the past",
        ),
    ],
)
def test_creation_refuses_bad_input_and_stores_nothing(
    platform: Platform,
    service: ProjectService,
    studies: list[Dataset],
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        _create(service, studies, **options)
    assert service.list(OWNER) == []
    refused = _audit(platform)[-1]
    assert refused.resource["labeling_project"] == "wrists" and refused.outcome is AuditOutcomeValues.FAILURE


def test_creation_needs_manage_datasets_and_a_free_name(
    platform: Platform, service: ProjectService, studies: list[Dataset]
) -> None:
    with pytest.raises(Forbidden, match="the annotator role may not manage datasets"):
        service.create(RITA, "mine", schema=SCHEMA, cohort=_uids(studies), readers=["rita"])
    with pytest.raises(BadRequest, match="project name 'Wrists' is not valid"):
        _create(service, studies, "Wrists")
    _create(service, studies)
    with pytest.raises(Conflict, match="a labeling project named 'wrists' exists"):
        _create(service, studies)
    created = [r for r in _audit(platform) if r.resource.get("event") == "create"]
    assert [r.outcome for r in created] == [
        AuditOutcomeValues.FAILURE,
        AuditOutcomeValues.FAILURE,
        AuditOutcomeValues.SUCCESS,
        AuditOutcomeValues.FAILURE,
    ]
    assert created[2].actor == "dana" and created[2].resource["studies"] == 4


# ----------------------------------------------------------------------------- who sees what
def test_readers_see_their_own_tasks_reviewers_and_the_owner_all(
    service: ProjectService, studies: list[Dataset]
) -> None:
    _create(service, studies)
    mine = service.tasks_of(RITA)
    assert [t.position for t in mine] == [0, 2] and {t.reader for t in mine} == {"rita"}
    assert [t.position for t in service.tasks_of(RITA, "wrists")] == [0, 2]
    assert [t.position for t in service.tasks_of(RAJ)] == [1, 3]
    assert len(service.tasks_of(REVA, "wrists")) == 4 and service.tasks_of(REVA) == []
    assert len(service.tasks_of(ADMIN, "wrists")) == 4
    with pytest.raises(NotFound, match="labeling project 'wrists' not found"):
        service.tasks_of(OUTSIDER, "wrists")
    with pytest.raises(NotFound):
        service.get(OUTSIDER, "wrists")
    with pytest.raises(Forbidden, match="the technologist role may not label"):
        service.tasks_of(TECH)
    assert service.list(OUTSIDER) == []
    [seen] = service.list(RITA)
    assert seen.member == (Member.READER,) and seen.mine == {"assigned": 2, "submitted": 0, "skipped": 0}
    assert seen.progress.tasks["assigned"] == 4
    # Another reader's task is not revealed; a reviewer may read it but not act on it.
    raj_task = service.tasks_of(RAJ)[0]
    with pytest.raises(NotFound, match=f"labeling task {raj_task.id} not found"):
        service.labels_of(RITA, raj_task.id)
    with pytest.raises(NotFound):
        service.submit(RITA, raj_task.id)
    assert service.labels_of(REVA, raj_task.id).labels == ()
    with pytest.raises(
        Forbidden, match=f"labeling task {raj_task.id} is raj's; only its reader may act on it"
    ):
        service.submit(REVA, raj_task.id)


def test_next_task_follows_the_item_order_and_moves_on(
    service: ProjectService, studies: list[Dataset]
) -> None:
    _create(service, studies)
    first = service.next_task(RITA)
    assert first is not None and first.position == 0 and first.state is TaskState.ASSIGNED
    done = service.submit(RITA, first.id)
    assert done.state is TaskState.SUBMITTED and done.submitted_at is not None
    assert service.submit(RITA, first.id).state is TaskState.SUBMITTED  # again: no change
    second = service.next_task(RITA, "wrists")
    assert second is not None and second.position == 2
    assert service.skip(RITA, second.id).state is TaskState.SKIPPED
    with pytest.raises(Conflict, match=f"labeling task {second.id} is skipped"):
        service.submit(RITA, second.id)
    assert service.next_task(RITA) is None
    assert [t.position for t in service.tasks_of(RITA, state="assigned")] == []
    assert service.get(OWNER, "wrists").progress.tasks == {"assigned": 2, "submitted": 1, "skipped": 1}
    with pytest.raises(BadRequest, match="state 'done' is not one of assigned, submitted, skipped"):
        service.tasks_of(RITA, state="done")


def test_only_the_owner_closes_and_a_closed_project_takes_nothing(
    platform: Platform, service: ProjectService, studies: list[Dataset]
) -> None:
    _create(service, studies)
    task = service.next_task(RITA)
    assert task is not None
    with pytest.raises(
        Forbidden, match="only the owner of labeling project 'wrists' may do this; you are its reader"
    ):
        service.close(RITA, "wrists")
    with pytest.raises(NotFound):
        service.close(OUTSIDER, "wrists")
    closed = service.close(OWNER, "wrists")
    assert closed.state.value == "closed" and closed.closed_at is not None
    with pytest.raises(Conflict, match="is closed already"):
        service.close(OWNER, "wrists")
    with pytest.raises(Conflict, match="labeling project 'wrists' is closed"):
        service.submit(RITA, task.id)
    with pytest.raises(Conflict, match="is closed"):
        service.submit_labels(RITA, task.id, [])
    assert service.next_task(RITA) is None
    events = [
        (r.resource.get("event"), r.outcome) for r in _audit(platform) if "labeling_project" in r.resource
    ]
    assert ("close", AuditOutcomeValues.SUCCESS) in events and ("close", AuditOutcomeValues.FAILURE) in events


# ----------------------------------------------------------------------------- labels
def _box(ds: Dataset, box: list[float] | None = None, **changes: Any) -> dict[str, Any]:
    return {
        "label": "fracture",
        "geometry": "box",
        "data": {"box": box or [10, 20, 30, 40]},
        "sop_uid": str(ds.SOPInstanceUID),
        **changes,
    }


def test_labels_are_stored_and_a_new_submission_supersedes_them(
    platform: Platform, service: ProjectService, studies: list[Dataset]
) -> None:
    _create(service, studies)
    task = service.next_task(RITA)
    assert task is not None
    ds = studies[0]
    first = service.submit_labels(
        RITA,
        task.id,
        [
            _box(ds, laterality="L", site="distal radius"),
            {
                "label": "Dislocation of joint",
                "geometry": "class",
                "sop_uid": str(ds.SOPInstanceUID),
                "value": "present",
            },
        ],
    )
    assert first.revision == 1
    assert [(lb.label, lb.geometry, lb.data, lb.laterality, lb.site, lb.value) for lb in first.labels] == [
        ("fracture", Geometry.BOX, {"box": [10.0, 20.0, 30.0, 40.0]}, "L", "distal radius", None),
        ("dislocation", Geometry.CLASS, {}, None, None, "present"),
    ]
    assert all(lb.source.value == "api" and lb.reader == "rita" and lb.current for lb in first.labels)
    second = service.submit_labels(
        RITA,
        task.id,
        [
            {
                "label": "fracture",
                "geometry": "point",
                "data": {"point": [80, 96]},
                "sop_uid": str(ds.SOPInstanceUID),
            },
            _box(ds, [0, 0, 80, 96]),
        ],
    )
    assert second.revision == 2
    current = service.labels_of(RITA, task.id)
    assert current.revision == 2 and [lb.data for lb in current.labels] == [
        {"point": [80.0, 96.0]},
        {"box": [0.0, 0.0, 80.0, 96.0]},
    ]
    history = service.labels_of(REVA, task.id, history=True)
    assert [(lb.revision, lb.current) for lb in history.labels] == [
        (1, False),
        (1, False),
        (2, True),
        (2, True),
    ]
    assert all(lb.superseded_at is not None for lb in history.labels[:2])
    # Nothing found: an empty submission clears the current labels, the history stays.
    assert service.submit_labels(RITA, task.id, []).revision == 3
    assert service.labels_of(RITA, task.id).labels == ()
    assert len(service.labels_of(OWNER, task.id, history=True).labels) == 4
    service.submit(RITA, task.id)
    with pytest.raises(
        Conflict, match=f"labeling task {task.id} is submitted; labels go to an assigned task"
    ):
        service.submit_labels(RITA, task.id, [_box(ds)])
    labels = [r for r in _audit(platform) if r.resource.get("event") == "labels"]
    assert [(r.resource["revision"], r.resource["labels"]) for r in labels[:3]] == [(1, 2), (2, 2), (3, 0)]
    assert (
        labels[-1].outcome is AuditOutcomeValues.FAILURE
        and labels[0].resource["study"] == ds.StudyInstanceUID
    )


def test_a_mask_label_is_checked_against_its_image(service: ProjectService, studies: list[Dataset]) -> None:
    _create(service, studies)
    task = service.next_task(RITA)
    assert task is not None
    sop = str(studies[0].SOPInstanceUID)
    pixels = 96 * 80
    mask = {"label": "fracture", "geometry": "mask", "sop_uid": sop}
    stored = service.submit_labels(
        RITA,
        task.id,
        [
            {
                **mask,
                "data": {
                    "mask": {
                        "rows": 96,
                        "columns": 80,
                        "rle": {"size": [96, 80], "counts": [100, 20, pixels - 120]},
                    }
                },
            }
        ],
    )
    assert stored.labels[0].data["mask"]["rle"] == {"size": [96, 80], "counts": [100, 20, pixels - 120]}
    with pytest.raises(BadRequest, match=r"labels\[0\].data.mask is 80 × 96; image .* is 96 × 80"):
        service.submit_labels(
            RITA,
            task.id,
            [
                {
                    **mask,
                    "data": {
                        "mask": {
                            "rows": 80,
                            "columns": 96,
                            "rle": {"size": [80, 96], "counts": [pixels - 1, 1]},
                        }
                    },
                }
            ],
        )
    with pytest.raises(
        BadRequest, match=r"labels\[0\].data.mask.rle covers 10 pixels; a 96 × 80 mask has 7680"
    ):
        service.submit_labels(
            RITA,
            task.id,
            [
                {
                    **mask,
                    "data": {
                        "mask": {"rows": 96, "columns": 80, "rle": {"size": [96, 80], "counts": [5, 5]}}
                    },
                }
            ],
        )
    with pytest.raises(BadRequest, match=r"labels\[0\].data.mask sets no pixel"):
        service.submit_labels(
            RITA,
            task.id,
            [
                {
                    **mask,
                    "data": {
                        "mask": {"rows": 96, "columns": 80, "rle": {"size": [96, 80], "counts": [pixels]}}
                    },
                }
            ],
        )
    assert service.labels_of(RITA, task.id).revision == 1  # the refusals changed nothing


def test_labels_outside_the_schema_or_the_image_are_refused(
    platform: Platform, service: ProjectService, studies: list[Dataset]
) -> None:
    _create(service, studies)
    task = service.next_task(RITA)
    assert task is not None
    ds, other = studies[0], studies[1]
    refusals: list[tuple[list[Any], str]] = [
        (
            [_box(ds), _box(ds, label="effusion")],
            r"labels\[1\].label 'effusion' is not a label of this project; accepted: fracture, dislocation",
        ),
        (
            [_box(ds, label="dislocation", geometry="point", data={"point": [1, 1]})],
            "geometry 'point' is not allowed for 'dislocation'; it takes box, class",
        ),
        (
            [_box(ds, geometry="polygon")],
            "geometry 'polygon' is not allowed for 'fracture'; it takes box, point, class, mask",
        ),
        (
            [_box(other)],
            rf"labels\[0\].sop_uid {other.SOPInstanceUID} is not an image of study {ds.StudyInstanceUID}",
        ),
        ([_box(ds, sop_uid="1.2.3.4")], r"labels\[0\].sop_uid 1\.2\.3\.4 is not an image of study"),
        ([_box(ds, sop_uid="bad uid")], r"labels\[0\].sop_uid 'bad uid' is not a valid UID"),
        ([_box(ds, [10, 20, 81, 40])], r"\(81, 40\) is outside image .* \(0–80 across, 0–96 down"),
        (
            [_box(ds, [30, 20, 10, 40])],
            r"labels\[0\].data.box \[30.0, 20.0, 10.0, 40.0\] is inverted or empty",
        ),
        ([_box(ds, [10, 20, 30])], r"labels\[0\].data.box must be \[x0, y0, x1, y1\]"),
        ([_box(ds, [10, 20, 30, float("nan")])], r"labels\[0\].data.box\[3\] nan is not a finite number"),
        ([_box(ds, data={"point": [1, 2]})], r"labels\[0\].data: unknown field 'point'; accepted: box"),
        ([_box(ds, label="dislocation", laterality="L")], "label 'dislocation' takes no laterality"),
        ([_box(ds, laterality="left")], "laterality 'left' is not one of R, L, B, U"),
        ([_box(ds, value="yes")], r"labels\[0\].value: only a class label has a value, not a box"),
        ([_box(ds, frame=2)], r"labels\[0\].frame 2: image .* has 1 frame\(s\)"),
        ([_box(ds, colour="red")], r"labels\[0\]: unknown field 'colour'"),
        ([{"label": "fracture", "geometry": "box"}], r"labels\[0\].sop_uid is missing"),
        (
            [
                {
                    "label": "fracture",
                    "geometry": "line",
                    "data": {"line": [1, 1, 1, 1]},
                    "sop_uid": str(ds.SOPInstanceUID),
                }
            ],
            "geometry 'line' is not allowed for 'fracture'",
        ),
    ]
    for labels, message in refusals:
        with pytest.raises(BadRequest, match=message):
            service.submit_labels(RITA, task.id, labels)
    assert service.labels_of(RITA, task.id) == service.labels_of(RITA, task.id)
    assert service.labels_of(RITA, task.id).revision == 0 and service.labels_of(RITA, task.id).labels == ()
    refused = [r for r in _audit(platform) if r.resource.get("event") == "labels"]
    assert len(refused) == len(refusals) and all(r.outcome is AuditOutcomeValues.FAILURE for r in refused)


def test_a_due_date_is_carried_by_every_task(service: ProjectService, studies: list[Dataset]) -> None:
    due = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    project = _create(service, studies, due_at=due)
    assert project.due_at == due
    assert {t.due_at for t in service.tasks_of(OWNER, "wrists")} == {due}


# ----------------------------------------------------------------------------- both backends
def test_the_flow_on_each_backend_with_concurrent_submissions(backend_settings: Settings) -> None:
    """Creation, assignment by uncertainty, tasks, revisions and closing on SQLite and PostgreSQL; two
    threads sending labels for one task at once get consecutive revisions and one current set."""
    platform = Platform.open(backend_settings)
    try:
        service = platform.labeling
        studies = [radiograph(seed) for seed in range(11, 14)]
        ingest(platform.store, *studies)
        record(platform.ai_results, studies[2], [0.31])
        _create(service, studies, readers=["rita", "raj"], readers_per_item=2, assignment="uncertainty")
        tasks = service.tasks_of(OWNER, "wrists")
        assert [t.study_uid for t in tasks[::2]] == _uids([studies[2], studies[0], studies[1]])
        assert {t.reader for t in tasks[:2]} == {"rita", "raj"}
        task = service.next_task(RAJ)
        assert task is not None and task.study_uid == studies[2].StudyInstanceUID
        sop = str(studies[2].SOPInstanceUID)
        errors: list[BaseException] = []

        def send(offset: int) -> None:
            try:
                for i in range(5):
                    box = [offset + i, 1, offset + i + 10, 11]
                    service.submit_labels(
                        RAJ,
                        task.id,
                        [{"label": "fracture", "geometry": "box", "data": {"box": box}, "sop_uid": sop}],
                    )
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=send, args=(offset,)) for offset in (0, 40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        history = service.labels_of(RAJ, task.id, history=True)
        assert history.revision == 10 and sorted(lb.revision for lb in history.labels) == list(range(1, 11))
        assert [lb.revision for lb in history.labels if lb.current] == [10]
        assert service.submit(RAJ, task.id).state is TaskState.SUBMITTED
        assert service.get(OWNER, "wrists").progress.tasks == {"assigned": 5, "submitted": 1, "skipped": 0}
        assert service.close(OWNER, "wrists").state.value == "closed"
        assert service.next_task(RITA) is None
    finally:
        platform.close()

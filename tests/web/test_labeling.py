"""Labeling projects and reader tasks over HTTP (``web/labeling.py``) on a real server: a project with two
readers and a reviewer made by a data scientist (who sees pseudonymous UIDs) and driven through the API,
every refusal on the way, labels with their revisions and blinding, and the ``/labeling`` page with its
next-case link, its Submit button and its new-project form."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.ai.results import radiograph
from tests.conftest import RunningServer
from tests.helpers import Caller, dicom_body, problem_detail, stow

SCHEMA: dict[str, Any] = {
    "labels": [
        {
            "key": "fracture",
            "code": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
            "geometry": ["box", "point", "class"],
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
def studies(server: RunningServer) -> list[Dataset]:
    stored = [radiograph(seed) for seed in (31, 32, 33, 34)]
    assert stow(server, dicom_body(*stored)).status_code == 200
    return stored


@pytest.fixture
def people(server: RunningServer) -> Iterator[dict[str, Caller]]:
    yield {
        "owner": Caller(server, "data-scientist"),
        "rita": Caller(server, "annotator"),
        "raj": Caller(server, "radiologist"),
        "reva": Caller(server, "radiologist"),
        "otto": Caller(server, "annotator"),
    }


def _project(people: dict[str, Caller], cohort: Any, **changes: Any) -> dict[str, Any]:
    return {
        "name": "wrists",
        "description": "Wrist radiographs, fractures and dislocations",
        "schema": SCHEMA,
        "cohort": cohort,
        "readers": [people["rita"].name, people["raj"].name],
        "reviewers": [people["reva"].name],
        "readers_per_item": 1,
        "assignment": "round-robin",
        **changes,
    }


def _box(ds: Dataset, **changes: Any) -> dict[str, Any]:
    return {
        "label": "fracture",
        "geometry": "box",
        "data": {"box": [10, 20, 30, 40]},
        "sop_uid": str(ds.SOPInstanceUID),
        **changes,
    }


def test_a_project_with_two_readers_and_a_reviewer_through_the_api(
    server: RunningServer, studies: list[Dataset], people: dict[str, Caller]
) -> None:
    owner, rita, raj, reva, otto = (people[n] for n in ("owner", "rita", "raj", "reva", "otto"))
    real = [str(ds.StudyInstanceUID) for ds in studies]
    # The data scientist sees pseudonymous study UIDs, and makes the cohort of those.
    found = owner.get("/dicomweb/studies", params={"ModalitiesInStudy": "DX"}).json()
    pseudonyms = {m["0020000D"]["Value"][0] for m in found}
    assert len(pseudonyms) == 4 and not pseudonyms & set(real)
    cohort = [
        owner.get(f"/dicomweb/studies?StudyInstanceUID={uid}").json()[0]["0020000D"]["Value"][0]
        for uid in real
    ]

    # ------------------------------------------------------------------ refusals: nothing is made
    refusals: list[tuple[Caller, dict[str, Any], int, str]] = [
        (owner, _project(people, []), 400, "the cohort is empty"),
        (owner, _project(people, {"ModalitiesInStudy": "MR"}), 400, "matches no study"),
        (owner, _project(people, ["1.2.3.4.5"]), 400, "1 of the cohort's studies are not stored: 1.2.3.4.5"),
        (
            owner,
            _project(people, cohort, schema={"labels": [{**SCHEMA["labels"][0], "geometry": ["polygon"]}]}),
            400,
            "schema.labels[0].geometry[0] 'polygon' is not one of box, point, line, mask, class",
        ),
        (
            owner,
            _project(people, cohort, schema={"labels": []}),
            400,
            "schema.labels must be a non-empty list",
        ),
        (
            owner,
            _project(people, cohort, readers_per_item=3),
            400,
            "readers_per_item 3 is more than the project's 2 readers",
        ),
        (owner, _project(people, cohort, readers_per_item=10), 400, "readers_per_item 10 must be 1 to 9"),
        (owner, _project(people, cohort, assignment="random"), 400, "assignment"),
        (rita, _project(people, real), 403, "the annotator role may not manage datasets"),
    ]
    for caller, body, status, message in refusals:
        assert message in problem_detail(caller.post("/api/v1/labeling/projects", json=body), status)
    assert owner.get("/api/v1/labeling/projects").json() == []

    made = owner.post("/api/v1/labeling/projects", json=_project(people, cohort))
    assert made.status_code == 201, made.text
    project = made.json()
    assert project["owner"] == owner.name and project["member"] == ["owner"]
    assert project["schema"] == {
        "labels": [{"laterality": False, "site": False, **label} for label in SCHEMA["labels"]]
    }
    assert project["progress"] == {
        "items": 4,
        "tasks": {"assigned": 4, "submitted": 0, "skipped": 0},
        "done": 0,
        "total": 4,
    }
    conflict = owner.post("/api/v1/labeling/projects", json=_project(people, cohort))
    assert "a labeling project named 'wrists' exists" in problem_detail(conflict, 409)

    # ------------------------------------------------------------------ who sees which tasks
    mine = rita.get("/api/v1/labeling/tasks").json()
    assert [(t["position"], t["study_uid"], t["reader"]) for t in mine] == [
        (0, real[0], rita.name),
        (2, real[2], rita.name),
    ]
    assert [t["position"] for t in raj.get("/api/v1/labeling/tasks").json()] == [1, 3]
    assert [
        t["position"] for t in rita.get("/api/v1/labeling/tasks", params={"project": "wrists"}).json()
    ] == [0, 2]
    assert reva.get("/api/v1/labeling/tasks").json() == []
    assert len(reva.get("/api/v1/labeling/tasks", params={"project": "wrists"}).json()) == 4
    owners = owner.get("/api/v1/labeling/tasks", params={"project": "wrists"}).json()
    assert [t["study_uid"] for t in owners] == cohort  # the owner's view: pseudonyms, in cohort order
    assert "labeling project 'wrists' not found" in problem_detail(
        otto.get("/api/v1/labeling/projects/wrists"), 404
    )
    problem_detail(otto.get("/api/v1/labeling/tasks", params={"project": "wrists"}), 404)
    assert otto.get("/api/v1/labeling/projects").json() == []
    assert [p["member"] for p in rita.get("/api/v1/labeling/projects").json()] == [["reader"]]

    first = rita.get("/api/v1/labeling/tasks/next").json()
    assert first["position"] == 0 and first["state"] == "assigned"
    ds = studies[0]
    task = first["id"]
    assert first["viewer_url"] == (
        f"/viewer/viewer?StudyInstanceUIDs={ds.StudyInstanceUID}&initialSOPInstanceUID={ds.SOPInstanceUID}"
        f"&customization=/task/{task}"
    )
    raj_task = raj.get("/api/v1/labeling/tasks/next").json()["id"]

    # ------------------------------------------------------------------ labels
    labels = f"/api/v1/labeling/tasks/{task}/labels"
    sent = rita.post(
        labels,
        json={
            "labels": [
                _box(ds, laterality="R", site="distal radius"),
                {"label": "Dislocation of joint", "geometry": "class", "sop_uid": str(ds.SOPInstanceUID)},
            ]
        },
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["revision"] == 1
    assert [(lb["label"], lb["geometry"], lb["data"], lb["source"]) for lb in sent.json()["labels"]] == [
        ("fracture", "box", {"box": [10.0, 20.0, 30.0, 40.0]}, "api"),
        ("dislocation", "class", {}, "api"),
    ]
    refused = [
        (
            rita,
            [_box(ds, label="effusion")],
            400,
            "'effusion' is not a label of this project; accepted: fracture, dislocation",
        ),
        (
            rita,
            [_box(ds, label="dislocation", geometry="point", data={"point": [1, 2]})],
            400,
            "geometry 'point' is not allowed for 'dislocation'; it takes box, class",
        ),
        (
            rita,
            [_box(studies[1])],
            400,
            f"labels[0].sop_uid {studies[1].SOPInstanceUID} is not an image of study {ds.StudyInstanceUID}",
        ),
        (rita, [_box(ds, data={"box": [10, 20, 30, 400]})], 400, "is outside image"),
        (raj, [_box(ds)], 404, f"labeling task {task} not found"),
        (reva, [_box(ds)], 403, "only its reader may act on it"),
        (otto, [_box(ds)], 404, f"labeling task {task} not found"),
    ]
    for caller, sent_labels, status, message in refused:
        assert message in problem_detail(caller.post(labels, json={"labels": sent_labels}), status)
    assert rita.get(labels).json()["revision"] == 1  # none of that changed anything

    again = rita.post(labels, json={"labels": [_box(ds, data={"box": [12, 22, 32, 42]})]})
    assert again.json()["revision"] == 2
    current = rita.get(labels).json()
    assert [(lb["revision"], lb["data"]) for lb in current["labels"]] == [
        (2, {"box": [12.0, 22.0, 32.0, 42.0]})
    ]
    history = rita.get(labels, params={"all": "true"}).json()["labels"]
    assert [(lb["revision"], lb["superseded_at"] is None) for lb in history] == [
        (1, False),
        (1, False),
        (2, True),
    ]
    # Blinding: the reviewer sees rita's labels, the other reader does not (and rita not raj's).
    assert len(reva.get(labels, params={"all": "true"}).json()["labels"]) == 3
    problem_detail(raj.get(labels), 404)
    problem_detail(rita.get(f"/api/v1/labeling/tasks/{raj_task}/labels"), 404)

    done = rita.post(f"/api/v1/labeling/tasks/{task}/submit")
    assert done.status_code == 200 and done.json()["state"] == "submitted" and done.json()["revision"] == 2
    assert "labels go to an assigned task" in problem_detail(rita.post(labels, json={"labels": []}), 409)
    upcoming = rita.get("/api/v1/labeling/tasks/next").json()
    assert upcoming["position"] == 2
    progress = owner.get("/api/v1/labeling/projects/wrists").json()["progress"]
    assert progress["tasks"] == {"assigned": 3, "submitted": 1, "skipped": 0} and progress["done"] == 1

    # ------------------------------------------------------------------ the reader's page
    page = rita.page()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    second = studies[2]
    assert (
        f'<a class="next-case" href="/viewer/viewer?StudyInstanceUIDs={second.StudyInstanceUID}'
        f'&amp;initialSOPInstanceUID={second.SOPInstanceUID}&amp;customization=/task/{upcoming["id"]}">Next case</a>'
    ) in page.text
    assert f"<code>{second.StudyInstanceUID}</code>" in page.text
    assert f"<code>{ds.StudyInstanceUID}</code>" not in page.text  # submitted: no longer open
    assert '<tr id="project-wrists">' in page.text and "1 of 4" in page.text
    assert 'action="/labeling/projects"' not in page.text  # an annotator makes no project

    # ------------------------------------------------------------------ closing
    assert "only the owner of labeling project 'wrists'" in problem_detail(
        rita.post("/api/v1/labeling/projects/wrists/close"), 403
    )
    left = rita.get("/api/v1/labeling/tasks/next").json()["id"]
    closed = owner.post("/api/v1/labeling/projects/wrists/close")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    assert rita.get("/api/v1/labeling/tasks/next").status_code == 204
    assert "labeling project 'wrists' is closed" in problem_detail(
        rita.post(f"/api/v1/labeling/tasks/{left}/submit"), 409
    )

    # Every change is in the audit trail, the refusals too.
    server.platform.audit.flush()
    records = server.platform.audit.log.records(limit=10_000)
    events = [(r.actor, r.resource.get("event"), r.outcome.value) for r in records if r.resource.get("event")]
    assert (owner.name, "create", "success") in events and (rita.name, "create", "failure") in events
    assert events.count((rita.name, "labels", "success")) == 2
    assert (raj.name, "labels", "failure") in events and (rita.name, "submit", "success") in events
    assert (owner.name, "close", "success") in events


def test_the_labeling_page_makes_a_project_and_submits_a_task(
    server: RunningServer, studies: list[Dataset], people: dict[str, Caller]
) -> None:
    owner, rita = people["owner"], people["rita"]
    page = owner.page()
    assert page.status_code == 200
    assert (
        '<form method="post" action="/labeling/projects"' in page.text
        and "POST /api/v1/labeling/projects" in page.text
    )
    assert "You take part in no labeling project." in page.text
    made = owner.post(
        "/labeling/projects",
        data={
            "name": "ankles",
            "cohort": "ModalitiesInStudy=DX",
            "readers": rita.name,
            "readers_per_item": "1",
            "assignment": "least-loaded",
            "blinded": "1",
            "due": "2999-12-31",
            "schema": '{"labels": [{"key": "fracture", "code": {"value": "125605004", "scheme": "SCT", '
            '"meaning": "Fracture of bone"}, "geometry": ["box"]}]}',
        },
        headers={"Accept": "text/html"},
    )
    assert made.status_code == 303, made.text
    assert made.headers["location"] == "/labeling?done=Project+ankles+made%3A+4+studies%2C+4+tasks"
    project = owner.get("/api/v1/labeling/projects/ankles").json()
    assert project["assignment"] == "least-loaded" and project["due_at"].startswith("2999-12-31T23:59:59")
    assert project["cohort"] == {"kind": "query", "query": {"ModalitiesInStudy": "DX"}}
    refused = owner.post(
        "/labeling/projects",
        data={"name": "bad", "cohort": "ModalitiesInStudy=DX", "readers": rita.name, "schema": "{not json"},
        headers={"Accept": "text/html"},
    )
    assert refused.status_code == 400 and "the schema is not JSON" in refused.text

    page = rita.page()
    first = rita.get("/api/v1/labeling/tasks/next").json()
    assert f'action="/labeling/tasks/{first["id"]}/submit"' in page.text
    submitted = rita.post(f"/labeling/tasks/{first['id']}/submit", headers={"Accept": "text/html"})
    assert submitted.status_code == 303
    assert submitted.headers["location"].startswith("/labeling?done=Task+")
    assert rita.get(f"/api/v1/labeling/tasks/{first['id']}").json()["state"] == "submitted"
    # The owner's page shows the progress; someone else's task cannot be submitted from the page.
    assert "1 of 4" in owner.page().text
    other = owner.post(f"/labeling/tasks/{first['id']}/skip", headers={"Accept": "text/html"})
    assert other.status_code == 403 and "only its reader may act on it" in other.text

"""Review, consensus and adjudication (``labeling/review.py``, ``labeling/proposal.py``,
``labeling/writeback.py``, ``web/labeling_review.py``) on a real server through the JSON API: a project
with two readers and two reviewers; the review task that appears once both readers are done; the
proposed consensus against hand-computed boxes, classes and masks; accept, which stores consensus labels
and a consensus SR and SEG in the study that read back with highdicom; a re-review that replaces them;
a disagreement that goes to adjudication; who may see and decide; AI reviews as labels; the rules."""

from __future__ import annotations

import html
import io
import re
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from radstack.config import Settings
from radstack.errors import BadRequest
from radstack.labeling.labels import labels_of_seg, labels_of_sr, mask_from_rle, mask_rle
from radstack.labeling.projects import Label, LabelSource, TaskKind
from radstack.labeling.proposal import ConsensusRules, DisagreementKind, Read, agreement_of, propose
from radstack.labeling.review import consensus_labels
from radstack.labeling.schema import Geometry
from radstack.platform import Platform
from radstack.security.policy import Principal
from tests.ai.results import ingest, radiograph, record
from tests.conftest import RunningServer, require_binary
from tests.helpers import Caller, dicom_body, problem_detail, stow

pytestmark = pytest.mark.timeout(300)

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
            "geometry": ["box", "class"],
        },
    ]
}
ROWS, COLUMNS = 96, 80  # tests.ai.results.radiograph (size=(96, 80): rows, columns)
ADMIN = Principal("admin", "admin", "password")


@pytest.fixture
def people(server: RunningServer) -> dict[str, Caller]:
    return {
        "owner": Caller(server, "admin"),
        "rita": Caller(server, "annotator"),
        "raj": Caller(server, "radiologist"),
        "reva": Caller(server, "radiologist"),
        "vic": Caller(server, "radiologist"),
    }


@pytest.fixture
def studies(server: RunningServer) -> list[Dataset]:
    stored = [radiograph(seed) for seed in (41, 42)]
    assert stow(server, dicom_body(*stored)).status_code == 200
    return stored


def _make_project(
    people: dict[str, Caller], studies: list[Dataset], owner: str = "owner", **changes: Any
) -> dict[str, Any]:
    body = {
        "name": "wrists",
        "schema": SCHEMA,
        "cohort": [str(ds.StudyInstanceUID) for ds in studies],
        "readers": [people["rita"].name, people["raj"].name],
        "reviewers": [people["reva"].name, people["vic"].name],
        "readers_per_item": 2,
        **changes,
    }
    project: dict[str, Any] = people[owner].ok(people[owner].post("/api/v1/labeling/projects", json=body))
    return project


def _task(caller: Caller, study: Dataset, kind: str = "read", project: str = "wrists") -> dict[str, Any]:
    tasks = caller.ok(caller.get("/api/v1/labeling/tasks", params={"project": project}))
    found = [
        t
        for t in tasks
        if t["study_uid"] == study.StudyInstanceUID and t["kind"] == kind and t["reader"] == caller.name
    ]
    assert len(found) == 1, tasks
    task: dict[str, Any] = found[0]
    return task


def _read(caller: Caller, study: Dataset, labels: list[dict[str, Any]]) -> int:
    """The caller's read of ``study``: labels sent, task submitted."""
    task = _task(caller, study)["id"]
    caller.ok(caller.post(f"/api/v1/labeling/tasks/{task}/labels", json={"labels": labels}))
    caller.ok(caller.post(f"/api/v1/labeling/tasks/{task}/submit"))
    return int(task)


def _label(
    ds: Dataset, geometry: str, data: dict[str, Any], label: str = "fracture", **more: Any
) -> dict[str, Any]:
    return {"label": label, "geometry": geometry, "data": data, "sop_uid": str(ds.SOPInstanceUID), **more}


def _mask(rows: slice, columns: slice) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
    mask = np.zeros((ROWS, COLUMNS), dtype=bool)
    mask[rows, columns] = True
    return mask, {"mask": {"rows": ROWS, "columns": COLUMNS, "rle": mask_rle(mask)}}


def _consensus_series(server: RunningServer, study: Dataset) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.dicomweb}/studies/{study.StudyInstanceUID}/series", headers=server.auth, timeout=30
    )
    assert response.status_code == 200, response.text
    return [s for s in response.json() if s.get("0008103E", {}).get("Value", [""])[0] == "Consensus wrists"]


def _instances(server: RunningServer, study: Dataset, series: dict[str, Any]) -> list[str]:
    uid = series["0020000E"]["Value"][0]
    response = httpx.get(
        f"{server.dicomweb}/studies/{study.StudyInstanceUID}/series/{uid}/instances",
        headers=server.auth,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return [i["00080018"]["Value"][0] for i in response.json()]


def _retrieve(server: RunningServer, study: Dataset, series: dict[str, Any], sop: str) -> Dataset:
    uid = series["0020000E"]["Value"][0]
    response = httpx.get(
        f"{server.dicomweb}/studies/{study.StudyInstanceUID}/series/{uid}/instances/{sop}",
        headers={**server.auth, "Accept": 'multipart/related; type="application/dicom"'},
        timeout=30,
    )
    response.raise_for_status()
    body = response.content
    return pydicom.dcmread(io.BytesIO(body[body.index(b"\r\n\r\n") + 4 : body.rindex(b"\r\n--")]))


def _by_modality(server: RunningServer, study: Dataset) -> dict[str, dict[str, Any]]:
    found = {s["00080060"]["Value"][0]: s for s in _consensus_series(server, study)}
    assert len(found) == len(_consensus_series(server, study)), "one consensus series per modality"
    return found


def _boxes_of_sr(sr: Dataset) -> list[tuple[str, list[list[float]], str | None]]:
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    found: list[tuple[str, list[list[float]], str | None]] = []
    for group in report.get_planar_roi_measurement_groups():
        assert isinstance(group.roi, hd.sr.ImageRegion) and group.finding_type is not None
        assert group.tracking_uid is not None and group.tracking_identifier
        found.append(
            (str(group.finding_type.value), group.roi.value.tolist(), str(group.roi.graphic_type.value))
        )
    return found


# ----------------------------------------------------------------------------- through the server
def test_two_readers_a_review_and_a_consensus_sr_and_seg_in_the_study(
    server: RunningServer, studies: list[Dataset], people: dict[str, Caller], tmp_path: Path
) -> None:
    rita, raj, reva, vic, owner = (people[n] for n in ("rita", "raj", "reva", "vic", "owner"))
    ds = studies[0]
    _make_project(people, studies[:1])
    rita_mask, rita_data = _mask(slice(10, 30), slice(20, 40))
    raj_mask, raj_data = _mask(slice(15, 35), slice(20, 40))
    _read(
        rita,
        ds,
        [
            _label(ds, "box", {"box": [10, 20, 30, 40]}, laterality="L"),
            _label(ds, "class", {}),
            _label(ds, "mask", rita_data),
            _label(ds, "point", {"point": [50, 50]}),
        ],
    )
    # One read done: no review yet.
    assert [t for t in reva.ok(reva.get("/api/v1/labeling/tasks")) if t["kind"] == "review"] == []
    _read(
        raj,
        ds,
        [
            _label(ds, "box", {"box": [12, 22, 32, 42]}, laterality="L"),
            _label(ds, "class", {}),
            _label(ds, "mask", raj_data),
        ],
    )

    # Both done: the review task is the first listed reviewer's (both have no open task).
    review = _task(reva, ds, "review")
    assert review["state"] == "assigned" and review["viewer_url"].startswith(
        "/viewer/viewer?StudyInstanceUIDs="
    )
    url = f"/api/v1/labeling/tasks/{review['id']}/review"
    # The reviewer's labeling page links it to its review; the project's progress counts the reads.
    assert (
        f'href="/labeling/review/{review["id"]}"'
        in reva.get("/labeling", headers={"Accept": "text/html"}).text
    )
    progress = owner.ok(owner.get("/api/v1/labeling/projects/wrists"))["progress"]
    assert progress["tasks"] == {"assigned": 0, "submitted": 2, "skipped": 0}

    # ------------------------------------------------------------------ who may see and decide
    assert "not found" in problem_detail(rita.get(url), 404)  # a reader: the review does not exist
    assert "not found" in problem_detail(raj.post(f"{url}/accept"), 404)
    seen = vic.ok(vic.get(url))  # another reviewer may look, not decide
    assert "only its reader may act on it" in problem_detail(vic.post(f"{url}/accept"), 403)
    assert owner.ok(owner.get(url))["task"]["id"] == review["id"]
    reading = _task(rita, ds)["id"]
    assert "is a read task" in problem_detail(reva.get(f"/api/v1/labeling/tasks/{reading}/review"), 404)
    # A review task is decided by the review routes, not submitted as a read.
    assert "is a review task" in problem_detail(
        reva.post(f"/api/v1/labeling/tasks/{review['id']}/submit"), 409
    )

    # ------------------------------------------------------------------ side by side, the proposal
    shown = reva.ok(reva.get(url))
    assert shown == seen
    assert [(r["reader"], r["state"], len(r["labels"])) for r in shown["readers"]] == [
        (rita.name, "submitted", 4),
        (raj.name, "submitted", 3),
    ]
    proposal = shown["proposal"]
    assert proposal["voters"] == [rita.name, raj.name] and proposal["quorum"] == 2
    assert proposal["disagreements"] == [] and not proposal["needs_adjudication"]
    assert proposal["agreement"] == 1.0
    # Hand-computed: the boxes overlap at IoU 324 / 476 ≥ 0.5, so one box, their mean; the class is
    # present for both; the masks' strict majority of two is their intersection; the point is unfused.
    by_geometry = {p["geometry"]: p for p in proposal["labels"]}
    assert sorted(by_geometry) == ["box", "class", "mask"]
    assert by_geometry["box"]["data"] == {"box": [11.0, 21.0, 31.0, 41.0]}
    assert by_geometry["box"]["laterality"] == "L" and by_geometry["box"]["readers"] == [rita.name, raj.name]
    assert by_geometry["class"]["value"] is None
    consensus_mask = mask_from_rle(by_geometry["mask"]["data"]["mask"]["rle"])
    np.testing.assert_array_equal(consensus_mask, rita_mask & raj_mask)
    point = next(label for label in shown["readers"][0]["labels"] if label["geometry"] == "point")
    assert proposal["unfused"] == [point["id"]]

    # ------------------------------------------------------------------ accept
    accepted = reva.ok(reva.post(f"{url}/accept", json={"comment": "agreed"}))
    assert accepted["task"]["state"] == "submitted" and accepted["adjudication"] is None
    consensus = accepted["consensus"]["labels"]
    assert {(c["geometry"], c["source"]) for c in consensus} == {
        ("box", "consensus"),
        ("class", "consensus"),
        ("mask", "consensus"),
    }
    assert next(c for c in consensus if c["geometry"] == "box")["data"] == {"box": [11.0, 21.0, 31.0, 41.0]}
    assert [d["decision"] for d in accepted["decisions"]] == ["accept"]

    # The consensus SR: one series, one instance, the fused box as OHIF draws it, the reviewer observing.
    series = _by_modality(server, ds)
    assert sorted(series) == ["SEG", "SR"]
    [sr_uid] = _instances(server, ds, series["SR"])
    sr = _retrieve(server, ds, series["SR"], sr_uid)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.PreliminaryFlag == "FINAL" and sr.CompletionFlag == "COMPLETE"
    assert _boxes_of_sr(sr) == [
        ("125605004", [[11.0, 21.0], [31.0, 21.0], [31.0, 41.0], [11.0, 41.0], [11.0, 21.0]], "POLYLINE")
    ]
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    [observer] = report.get_observer_contexts(observer_type=codes.DCM.Person)
    assert str(observer.observer_identifying_attributes.name) == f"{reva.name}^"
    read_back = labels_of_sr(sr)
    assert [(d.text, d.geometry, d.data) for d in read_back] == [
        ("Fracture of bone", "box", {"box": [11.0, 21.0, 31.0, 41.0]})
    ]
    assert {c["geometry"] for c in consensus if c["source_uid"] == sr_uid} == {"box", "class"}
    path = tmp_path / "consensus.dcm"
    sr.save_as(path, enforce_file_format=True)
    check = subprocess.run(
        [require_binary("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60
    )
    errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors
    # The consensus SEG: the majority mask on the image.
    [seg_uid] = _instances(server, ds, series["SEG"])
    seg = _retrieve(server, ds, series["SEG"], seg_uid)
    [segment] = labels_of_seg(seg)
    assert segment.code == ("125605004", "SCT", "Fracture of bone") and segment.sop_uid == ds.SOPInstanceUID
    np.testing.assert_array_equal(mask_from_rle(segment.data["mask"]["rle"]), rita_mask & raj_mask)
    assert next(c for c in consensus if c["geometry"] == "mask")["source_uid"] == seg_uid

    # What exports read: the item's consensus, final.
    [decided] = consensus_labels(server.platform.store.engine, _project_id(server)).values()
    assert decided.final and decided.task_id == review["id"] and decided.reviewer == reva.name
    assert sorted(label.geometry.value for label in decided.labels) == ["box", "class", "mask"]

    # ------------------------------------------------------------------ a re-review replaces
    # Rejecting raj's box leaves rita's alone, short of the quorum: the reviewer edits instead.
    raj_box = next(label for label in shown["readers"][1]["labels"] if label["geometry"] == "box")
    marked = reva.ok(reva.post(f"{url}/reject", json={"labels": [raj_box["id"]], "comment": "too wide"}))
    assert next(label for label in marked["readers"][1]["labels"] if label["id"] == raj_box["id"])["rejected"]
    assert [d["kind"] for d in marked["proposal"]["disagreements"]] == ["quorum"]
    restored = reva.ok(reva.post(f"{url}/restore", json={"labels": [raj_box["id"]]}))
    assert restored["proposal"]["disagreements"] == []
    edited = reva.ok(
        reva.post(
            f"{url}/edit",
            json={
                "labels": [
                    _label(ds, "box", {"box": [11, 21, 31, 41]}),
                    _label(ds, "class", {}, value="distal"),
                ]
            },
        )
    )
    assert edited["consensus"]["revision"] == 2 and len(edited["consensus"]["labels"]) == 2
    assert [d["decision"] for d in edited["decisions"]] == ["accept", "reject", "restore", "edit"]
    series = _by_modality(server, ds)
    assert sorted(series) == ["SR"]  # no mask any more: the SEG series is gone
    [again] = _instances(server, ds, series["SR"])
    assert again != sr_uid
    assert _boxes_of_sr(_retrieve(server, ds, series["SR"], again))[0][1][0] == [11.0, 21.0]
    # An edit is checked as a reader's labels are.
    assert "is outside image" in problem_detail(
        reva.post(f"{url}/edit", json={"labels": [_label(ds, "box", {"box": [0, 0, 200, 10]})]}), 400
    )

    # ------------------------------------------------------------------ the reviewer's pages
    listing = reva.get("/labeling/review", headers={"Accept": "text/html"})
    assert listing.status_code == 200 and f"/labeling/review/{review['id']}" in listing.text
    page = reva.get(f"/labeling/review/{review['id']}", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert rita.name in page.text and raj.name in page.text and "Accept the proposed consensus" in page.text
    assert f"StudyInstanceUIDs={ds.StudyInstanceUID}" in page.text
    # The image, with the readers' boxes in their colours and the proposed consensus dashed over it.
    assert "<title>proposed consensus: fracture</title>" in page.text
    assert (
        f"<title>{rita.name}: fracture</title>" in page.text
        or f"<title>{raj.name}: fracture</title>" in page.text
    )
    [image] = re.findall(r'<image href="([^"]+)"', page.text)
    rendered = reva.get(html.unescape(image))
    assert rendered.status_code == 200 and rendered.headers["content-type"].startswith("image/")
    form = reva.post(
        f"/labeling/review/{review['id']}/accept", data={"comment": ""}, headers={"Accept": "text/html"}
    )
    assert form.status_code == 303 and "Consensus+accepted" in form.headers["location"]
    assert len(_instances(server, ds, _by_modality(server, ds)["SR"])) == 1
    assert rita.get(f"/labeling/review/{review['id']}", headers={"Accept": "text/html"}).status_code == 404


def _project_id(server: RunningServer, name: str = "wrists") -> int:
    return server.platform.labeling.get(ADMIN, name).id


def test_a_disagreement_goes_to_another_reviewer_whose_decision_is_final(
    server: RunningServer, studies: list[Dataset], people: dict[str, Caller]
) -> None:
    rita, raj, reva, vic = (people[n] for n in ("rita", "raj", "reva", "vic"))
    # The owner is a data scientist: a de-identified view, sent pseudonyms.
    owner = people["scientist"] = Caller(server, "data-scientist")
    ds = studies[1]
    _make_project(people, studies[1:], owner="scientist")
    # The rules: the owner's; a bad one is refused naming the field; a reader may not set them.
    rules = "/api/v1/labeling/projects/wrists/consensus-rules"
    assert owner.ok(owner.get(rules)) == ConsensusRules().to_json()
    assert "consensus.boxes 'mean' is not one of quorum, wbf" in problem_detail(
        owner.put(rules, json={"boxes": "mean"}), 400
    )
    assert "only the owner" in problem_detail(rita.put(rules, json={"boxes": "wbf"}), 403)
    assert owner.ok(owner.put(rules, json={"boxes": "wbf"}))["boxes"] == "wbf"

    _read(
        rita, ds, [_label(ds, "box", {"box": [10, 20, 30, 40]}), _label(ds, "class", {}, label="dislocation")]
    )
    _read(raj, ds, [])
    review = _task(reva, ds, "review")
    url = f"/api/v1/labeling/tasks/{review['id']}/review"
    shown = reva.ok(reva.get(url))
    assert shown["rules"]["boxes"] == "wbf"
    proposal = shown["proposal"]
    assert proposal["labels"] == [] and proposal["needs_adjudication"] and proposal["agreement"] == 0.0
    assert sorted((d["kind"], d["label"], d["geometry"]) for d in proposal["disagreements"]) == [
        ("quorum", "fracture", "box"),
        ("tie", "dislocation", "class"),
    ]
    seen = owner.ok(owner.get(url))
    pseudonym = seen["task"]["sop_uid"]
    assert seen["task"]["study_uid"] != ds.StudyInstanceUID and pseudonym != ds.SOPInstanceUID
    assert {label["sop_uid"] for label in seen["readers"][0]["labels"]} == {pseudonym}
    assert {d["sop_uid"] for d in seen["proposal"]["disagreements"]} == {pseudonym}
    decided = reva.ok(reva.post(f"{url}/accept"))
    adjudication = decided["adjudication"]
    assert adjudication is not None
    # The adjudication is the other reviewer's; the review's consensus is preliminary meanwhile.
    task = _task(vic, ds, "adjudicate")
    assert task["id"] == adjudication and task["state"] == "assigned"
    [sr_uid] = _instances(server, ds, _by_modality(server, ds)["SR"])
    assert _retrieve(server, ds, _by_modality(server, ds)["SR"], sr_uid).PreliminaryFlag == "PRELIMINARY"
    assert not next(iter(consensus_labels(server.platform.store.engine, _project_id(server)).values())).final
    assert "went to adjudication" in problem_detail(reva.post(f"{url}/accept"), 409)
    assert "only its reader may act on it" in problem_detail(
        reva.post(f"/api/v1/labeling/tasks/{adjudication}/review/accept"), 403
    )

    # The adjudicator keeps rita's box and says there is no dislocation: final, nothing more opens.
    judged = vic.ok(
        vic.post(
            f"/api/v1/labeling/tasks/{adjudication}/review/edit",
            json={"labels": [_label(ds, "box", {"box": [10, 20, 30, 40]})], "comment": "seen on the lateral"},
        )
    )
    assert judged["task"]["state"] == "submitted" and judged["task"]["kind"] == "adjudicate"
    assert [(t["kind"], t["reader"]) for t in judged["tasks"]] == [
        ("review", reva.name),
        ("adjudicate", vic.name),
    ]
    series = _by_modality(server, ds)["SR"]
    [final_uid] = _instances(server, ds, series)
    final = _retrieve(server, ds, series, final_uid)
    assert final_uid != sr_uid and final.PreliminaryFlag == "FINAL"
    assert _boxes_of_sr(final)[0][1][0] == [10.0, 20.0]
    [item] = consensus_labels(server.platform.store.engine, _project_id(server)).values()
    assert item.final and item.kind.value == "adjudicate" and item.reviewer == vic.name
    assert [(label.geometry.value, label.data) for label in item.labels] == [
        ("box", {"box": [10.0, 20.0, 30.0, 40.0]})
    ]
    # A decision on the adjudication again replaces it (still one consensus instance).
    vic.ok(vic.post(f"/api/v1/labeling/tasks/{adjudication}/review/accept"))
    assert len(_instances(server, ds, _by_modality(server, ds)["SR"])) == 1
    # Every decision is audited.
    server.platform.audit.flush()
    events = [
        r.resource.get("event")
        for r in server.platform.audit.log.records(limit=10_000)
        if r.resource.get("labeling_project") == "wrists"
    ]
    assert {"review-accept", "review-edit", "consensus-rules"} <= set(events)


def test_ai_reviews_count_as_the_radiologists_labels(
    server: RunningServer, studies: list[Dataset], people: dict[str, Caller]
) -> None:
    raj = people["raj"]
    ds = studies[0]
    _make_project(people, studies[:1], readers=[raj.name], readers_per_item=1, show_ai=True)
    # Not blinded: a blinded project without AI proposals would hide the AI from its readers (blinding).
    _make_project(people, studies[:1], name="plain", readers=[raj.name], readers_per_item=1, blinded=False)
    result = record(server.platform.ai_results, ds, [0.9, 0.8])
    task = _task(raj, ds)["id"]
    labels = f"/api/v1/labeling/tasks/{task}/labels"
    raj.ok(raj.post(labels, json={"labels": [_label(ds, "class", {}, label="dislocation")]}))

    def review(index: int, decision: str) -> None:
        raj.ok(
            raj.post(f"/api/v1/ai-results/{result.id}/findings/{index}/review", json={"decision": decision})
        )

    review(0, "accepted")
    review(1, "rejected")
    current = raj.ok(raj.get(labels))
    assert current["revision"] == 3
    shapes = sorted(
        (label["source"], label["geometry"], label["value"] or "", tuple(label["data"].get("box", ())))
        for label in current["labels"]
    )
    assert shapes == [
        ("ai-review", "box", "", (10.0, 20.0, 30.0, 40.0)),
        ("ai-review", "box", "absent", (11.0, 20.0, 31.0, 40.0)),
        ("api", "class", "", ()),
    ]
    assert {label["source_uid"] for label in current["labels"] if label["source"] == "ai-review"} == {
        f.tracking_uid for f in result.findings
    }
    # Deciding again replaces the finding's label; the history keeps the old one.
    review(0, "rejected")
    current = raj.ok(raj.get(labels))
    assert sorted(label["value"] or "" for label in current["labels"] if label["source"] == "ai-review") == [
        "absent",
        "absent",
    ]
    assert len(current["labels"]) == 3
    # A negative is nothing drawn: the consensus of this one reader has only the class.
    raj.ok(raj.post(f"/api/v1/labeling/tasks/{task}/submit"))
    review_task = _task(people["reva"], ds, "review")
    proposal = people["reva"].ok(people["reva"].get(f"/api/v1/labeling/tasks/{review_task['id']}/review"))[
        "proposal"
    ]
    assert [(p["label"], p["geometry"]) for p in proposal["labels"]] == [("dislocation", "class")]
    # A project without AI proposals takes no AI label; a finished task neither.
    plain = _task(raj, ds, project="plain")
    assert plain["revision"] == 0
    review(1, "accepted")
    assert raj.ok(raj.get(labels))["revision"] == 4


def test_two_reads_finished_at_once_open_one_review_on_each_backend(backend_settings: Settings) -> None:
    """Both readers submit at the same moment (PostgreSQL: two transactions, each waiting on the item's
    row lock): exactly one review task; its acceptance stores the consensus on either backend."""
    platform = Platform.open(backend_settings)
    try:
        ds = radiograph(51)
        ingest(platform.store, ds)
        service = platform.labeling
        project = service.create(
            ADMIN,
            "wrists",
            schema=SCHEMA,
            cohort=[str(ds.StudyInstanceUID)],
            readers=["rita", "raj"],
            reviewers=["reva", "vic"],
            readers_per_item=2,
        )
        readers = {"rita": Principal("rita", "annotator", "t"), "raj": Principal("raj", "radiologist", "t")}
        tasks = {t.reader: t.id for t in service.tasks_of(ADMIN, "wrists")}
        for name, box in (("rita", [10, 20, 30, 40]), ("raj", [12, 22, 32, 42])):
            service.submit_labels(readers[name], tasks[name], [_label(ds, "box", {"box": box})])
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def submit(name: str) -> None:
            try:
                barrier.wait()
                service.submit(readers[name], tasks[name])
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=submit, args=(name,)) for name in readers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        reviews = [t for t in service.tasks_of(ADMIN, "wrists") if t.kind is not TaskKind.READ]
        assert [(t.kind, t.reader) for t in reviews] == [(TaskKind.REVIEW, "reva")]
        decided = platform.review.accept(Principal("reva", "radiologist", "t"), reviews[0].id)
        assert [label.data for label in decided.consensus.labels] == [{"box": [11.0, 21.0, 31.0, 41.0]}]
        [item] = consensus_labels(platform.store.engine, project.id).values()
        assert item.final and item.labels == decided.consensus.labels
    finally:
        platform.close()


# ----------------------------------------------------------------------------- the rules, by hand
def _labels(reader: str, first_id: int, *shapes: tuple[str, dict[str, Any], str | None]) -> tuple[Label, ...]:
    return tuple(
        Label(
            id=first_id + i,
            task_id=first_id,
            reader=reader,
            label="fracture",
            geometry=Geometry(geometry),
            data=data,
            value=value,
            sop_uid="1.2.3",
            frame=None,
            laterality=None,
            site=None,
            source=LabelSource.API,
            source_uid=None,
            revision=1,
            created_at=datetime.now(UTC),
            superseded_at=None,
        )
        for i, (geometry, data, value) in enumerate(shapes)
    )


def test_fleiss_per_subject_agreement() -> None:
    assert agreement_of(["a", "a"]) == 1 and agreement_of(["a", "b"]) == 0
    assert agreement_of(["a", "a", "b"]) == pytest.approx(1 / 3)
    assert agreement_of(["a", "a", "b", "c"]) == pytest.approx(1 / 6)
    assert agreement_of(["a"]) is None


def test_three_readers_quorum_and_wbf_and_a_fragmented_class_vote() -> None:
    reads = [
        Read(
            "a", 1, True, _labels("a", 10, ("box", {"box": [0, 0, 10, 10]}, None), ("class", {}, "displaced"))
        ),
        Read(
            "b", 2, True, _labels("b", 20, ("box", {"box": [1, 1, 11, 11]}, None), ("class", {}, "displaced"))
        ),
        Read(
            "c", 3, True, _labels("c", 30, ("box", {"box": [50, 50, 60, 60]}, None), ("class", {}, "simple"))
        ),
        Read("d", 4, False, _labels("d", 40, ("box", {"box": [50, 50, 60, 60]}, None))),  # skipped: no vote
    ]
    proposal = propose(reads)
    assert proposal.voters == ("a", "b", "c") and proposal.quorum == 2
    boxes = [p for p in proposal.labels if p.geometry is Geometry.BOX]
    assert [(p.data["box"], p.readers, p.members) for p in boxes] == [
        ([0.5, 0.5, 10.5, 10.5], ("a", "b"), (10, 20))
    ]
    [classes] = [p for p in proposal.labels if p.geometry is Geometry.CLASS]
    assert classes.value == "displaced" and classes.readers == ("a", "b")
    # c's lone box is short of the quorum; the 2-1 class split (agreement 1/3) stays with the majority.
    assert [(d.kind, d.members) for d in proposal.disagreements] == [(DisagreementKind.QUORUM, (30,))]
    assert proposal.agreement == pytest.approx(1 / 3)
    # A stricter minimum agreement sends the 2-1 class split to adjudication too; WBF fuses alike.
    strict = propose(
        reads, ConsensusRules(boxes=ConsensusRules.from_json({"boxes": "wbf"}).boxes, min_agreement=0.5)
    )
    assert [p.data["box"] for p in strict.labels if p.geometry is Geometry.BOX] == [[0.5, 0.5, 10.5, 10.5]]
    assert sorted(d.kind for d in strict.disagreements) == [
        DisagreementKind.AGREEMENT,
        DisagreementKind.QUORUM,
    ]


def test_staple_masks_and_a_quorum_of_one() -> None:
    full = np.zeros((4, 4), dtype=bool)
    full[:2, :] = True
    half = np.zeros((4, 4), dtype=bool)
    half[:2, :2] = True
    data = [{"mask": {"rows": 4, "columns": 4, "rle": mask_rle(m)}} for m in (full, full, half)]
    reads = [
        Read(r, i, True, _labels(r, 10 * i, ("mask", d, None)))
        for i, (r, d) in enumerate(zip("abc", data, strict=True), 1)
    ]
    [majority] = propose(reads).labels
    np.testing.assert_array_equal(mask_from_rle(majority.data["mask"]["rle"]), full)
    [estimated] = propose(reads, ConsensusRules.from_json({"masks": "staple"})).labels
    np.testing.assert_array_equal(mask_from_rle(estimated.data["mask"]["rle"]), full)
    # A quorum of one takes a box only one reader drew.
    lone = [
        Read("a", 1, True, _labels("a", 10, ("box", {"box": [0, 0, 2, 2]}, None))),
        Read("b", 2, True, ()),
    ]
    assert [p.data["box"] for p in propose(lone, ConsensusRules.from_json({"quorum": 1})).labels] == [
        [0.0, 0.0, 2.0, 2.0]
    ]
    with pytest.raises(BadRequest, match=r"consensus.quorum 0 must be null"):
        ConsensusRules.from_json({"quorum": 0})

"""AI results in the clinical flow over HTTP (``web/findings.py``, the worklist, the model page) on a real
server: the worklist's AI priority order, findings badge and "AI positive" filter; reviews through the
API and the study's AI page, with what each role may do and see; labels; the scores per version per day."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from pydicom.dataset import Dataset

from radstack.ai.contract import Contract
from radstack.ai.findings import priority_of
from radstack.security.policy import SYSTEM
from tests.ai.results import DEFINITE, SUSPICIOUS, radiograph, record
from tests.ai.tiny_models import CONTRACT, metrics, tiny_onnx
from tests.conftest import RunningServer
from tests.helpers import Caller, dicom_body, problem_detail, signed_in_browser, stow

HTML = {"Accept": "text/html"}


@pytest.fixture
def browser(server: RunningServer) -> Iterator[httpx.Client]:
    client = signed_in_browser(server)
    try:
        yield client
    finally:
        client.close()


def _stored(server: RunningServer, *seeds: int) -> list[Dataset]:
    studies = [radiograph(seed) for seed in seeds]
    assert stow(server, dicom_body(*studies)).status_code == 200
    return studies


def _order(page: httpx.Response) -> list[str]:
    body = page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r'src="/dicomweb/studies/([^/"]+)/thumbnail', body)


def _row(page: httpx.Response, uid: str) -> str:
    body = page.text.split("<tbody>", 1)[1]
    return body[: body.index(f'src="/dicomweb/studies/{uid}/thumbnail')].rsplit("<tr>", 1)[1]


# ----------------------------------------------------------------------------- worklist
def test_worklist_orders_by_ai_priority_with_a_findings_badge_and_an_ai_positive_filter(
    server: RunningServer, browser: httpx.Client
) -> None:
    a, b, c, d = _stored(server, 21, 22, 23, 24)
    uid = {name: str(ds.StudyInstanceUID) for name, ds in zip("abcd", (a, b, c, d), strict=True)}
    results = server.platform.ai_results
    urgent = record(results, a, [0.95, 0.75])
    high = record(results, b, [0.5])
    routine = record(results, c, [])
    page = browser.get("/")
    assert _order(page) == [uid["a"], uid["b"], uid["c"], uid["d"]]  # unscored last
    # The band drawn is the one priority_of gave.
    for name, result in (("a", urgent), ("b", high), ("c", routine)):
        assert f'<span class="badge {result.level.value}" title="AI priority {result.priority} ' in _row(
            page, uid[name]
        )
    assert [urgent.level.value, high.level.value, routine.level.value] == ["urgent", "high", "routine"]
    badge = _row(page, uid["a"])
    assert (
        f'<a class="findings" href="/studies/{uid["a"]}/ai"><span class="badge urgent">2 findings</span>'
        in badge
    )
    assert '<span class="badge high">1 finding</span>' in _row(page, uid["b"])
    assert f'href="/studies/{uid["c"]}/ai">no finding<' in _row(page, uid["c"])
    assert "/ai" not in _row(page, uid["d"]) and 'title="not scored by AI"' in _row(page, uid["d"])
    assert browser.get(f"/studies/{uid['a']}/ai").status_code == 200  # the badge's page

    positive = browser.get("/", params={"ai_positive": "1"})
    assert _order(positive) == [uid["a"], uid["b"]]
    assert 'name="ai_positive" type="checkbox" value="1" checked' in positive.text
    assert 'name="ai_positive" type="checkbox" value="1">' in page.text  # unchecked without it
    assert _order(browser.get("/", params={"ai_positive": "1", "modality": "CT"})) == []

    # A newer run on a finds nothing: a falls below b, and out of the AI-positive list.
    lower = record(results, a, [], version=2)
    assert lower.priority == priority_of(0.05, SUSPICIOUS, DEFINITE)[0] < high.priority
    page = browser.get("/")
    assert (
        _order(page)[:2] == [uid["b"], uid["a"]] and f'href="/studies/{uid["a"]}/ai">no finding<' in page.text
    )
    assert _order(browser.get("/", params={"ai_positive": "1"})) == [uid["b"]]


# ----------------------------------------------------------------------------- API
def test_review_through_the_api(server: RunningServer) -> None:
    (study,) = _stored(server, 31)
    uid = str(study.StudyInstanceUID)
    result = record(server.platform.ai_results, study, [0.9, 0.4])
    rita = Caller(server, "radiologist")

    listed = rita.get(f"/api/v1/studies/{uid}/ai-results")
    assert listed.status_code == 200, listed.text
    (found,) = listed.json()
    assert (found["id"], found["model"], found["model_version"], found["level"]) == (
        result.id,
        "fracture",
        1,
        "urgent",
    )
    assert found["trigger"] == "rule:new-radiographs" and found["superseded_at"] is None
    assert [(f["index"], f["level"], f["review"]) for f in found["findings"]] == [
        (0, "urgent", None),
        (1, "high", None),
    ]
    assert found["findings"][0]["sop_uid"] == str(study.SOPInstanceUID)
    assert found["findings"][0]["box"] == list(result.findings[0].box)

    review = f"/api/v1/ai-results/{result.id}/findings/0/review"
    accepted = rita.post(review, json={"decision": "accepted"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["decision"] == "accepted" and accepted.json()["role"] == "radiologist"
    changed = rita.post(review, json={"decision": "rejected", "comment": "nutrient canal"})
    assert changed.status_code == 200 and changed.json()["comment"] == "nutrient canal"
    now = rita.get(f"/api/v1/studies/{uid}/ai-results").json()[0]["findings"]
    assert now[0]["review"]["decision"] == "rejected" and now[1]["review"] is None
    server.platform.audit.flush()
    decisions = [
        (r.actor, r.resource["decision"], r.outcome.value)
        for r in server.platform.audit.log.records(limit=10_000)
        if "decision" in r.resource
    ]
    assert decisions == [
        (accepted.json()["reviewed_by"], "accepted", "success"),
        (accepted.json()["reviewed_by"], "rejected", "success"),
    ]

    for role in ("technologist", "data-scientist"):
        assert "may not label" in problem_detail(
            Caller(server, role).post(review, json={"decision": "accepted"}), 403
        )
    assert "has no finding 7; it has findings 0–1" in problem_detail(
        rita.post(f"/api/v1/ai-results/{result.id}/findings/7/review", json={"decision": "accepted"}), 404
    )
    assert "AI result 987654 not found" in problem_detail(
        rita.post("/api/v1/ai-results/987654/findings/0/review", json={"decision": "accepted"}), 404
    )
    assert "decision 'probably' is not one of accepted, rejected" in problem_detail(
        rita.post(review, json={"decision": "probably"}), 400
    )
    record(server.platform.ai_results, study, [0.8], version=2)
    assert "was superseded by a newer run" in problem_detail(
        rita.post(review, json={"decision": "accepted"}), 409
    )
    assert (
        problem_detail(rita.get("/api/v1/studies/1.2.3.999/ai-results"), 404)
        == "study 1.2.3.999 is not stored"
    )


def test_labels_and_what_a_deidentified_role_sees(server: RunningServer) -> None:
    (study,) = _stored(server, 41)
    uid = str(study.StudyInstanceUID)
    result = record(server.platform.ai_results, study, [0.9, 0.6])
    rita, dana, tom = (Caller(server, role) for role in ("radiologist", "data-scientist", "technologist"))
    assert (
        rita.post(
            f"/api/v1/ai-results/{result.id}/findings/0/review",
            json={"decision": "accepted", "comment": "Doe's wrist"},
        ).status_code
        == 200
    )
    assert (
        rita.post(
            f"/api/v1/ai-results/{result.id}/findings/1/review", json={"decision": "rejected"}
        ).status_code
        == 200
    )

    labels = rita.get("/api/v1/ai-labels")
    assert labels.status_code == 200, labels.text
    assert [(x["index"], x["decision"], x["sop_uid"], x["study_uid"]) for x in labels.json()] == [
        (0, "accepted", str(study.SOPInstanceUID), uid),
        (1, "rejected", str(study.SOPInstanceUID), uid),
    ]
    first = labels.json()[0]
    assert first["box"] == list(result.findings[0].box) and first["comment"] == "Doe's wrist"
    assert (first["model"], first["model_version"], first["label"]) == ("fracture", 1, "fracture")
    assert [x["index"] for x in rita.get("/api/v1/ai-labels", params={"decision": "rejected"}).json()] == [1]
    assert rita.get("/api/v1/ai-labels", params={"model": "other"}).json() == []
    assert "decision 'x' is not one of accepted, rejected" in problem_detail(
        rita.get("/api/v1/ai-labels", params={"decision": "x"}), 400
    )
    assert "may not label" in problem_detail(tom.get("/api/v1/ai-labels"), 403)

    # A data scientist (read-datasets, de-identified): the same labels under pseudonymous UIDs, no comment.
    deid = server.platform.deidentifier
    seen = dana.get("/api/v1/ai-labels")
    assert seen.status_code == 200
    assert [(x["sop_uid"], x["study_uid"], x["comment"]) for x in seen.json()] == [
        (deid.uid(str(study.SOPInstanceUID)), deid.uid(uid), ""),
        (deid.uid(str(study.SOPInstanceUID)), deid.uid(uid), ""),
    ]
    assert seen.json()[0]["tracking_uid"] == deid.uid(result.findings[0].tracking_uid)
    # Its results answer names the study by the pseudonym it knows, and shows no stored UID.
    answer = dana.get(f"/api/v1/studies/{deid.uid(uid)}/ai-results")
    assert answer.status_code == 200, answer.text
    for real in (
        uid,
        str(study.SOPInstanceUID),
        str(study.SeriesInstanceUID),
        result.sr_series_uid,
        "Doe's wrist",
    ):
        assert str(real) not in answer.text
    assert answer.json()[0]["study_uid"] == deid.uid(uid)
    assert answer.json()[0]["findings"][0]["review"]["decision"] == "accepted"
    assert dana.get(f"/api/v1/studies/{uid}/ai-results").status_code == 404  # the stored UID names nothing
    # And so does its page: pseudonyms in every link (the server maps them back), no review buttons.
    page = dana.get(f"/studies/{deid.uid(uid)}/ai", headers=HTML)
    assert page.status_code == 200 and "fracture v1" in page.text and uid not in page.text
    assert (
        f"StudyInstanceUIDs={deid.uid(uid)}" in page.text
        and '<form method="post" action="/ai-results' not in page.text
    )
    image = re.search(r'<image href="([^"]+)"', page.text)
    assert image is not None and str(study.SOPInstanceUID) not in image.group(1)
    assert dana.get(image.group(1).replace("&amp;", "&"), headers={"Accept": "image/*"}).status_code == 200


# ----------------------------------------------------------------------------- the study's AI page
def test_review_on_the_studys_ai_page(server: RunningServer, browser: httpx.Client) -> None:
    (study,) = _stored(server, 51)
    uid = str(study.StudyInstanceUID)
    result = record(server.platform.ai_results, study, [0.9, 0.5], trigger="user:admin")
    page = browser.get(f"/studies/{uid}/ai")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "fracture v1" in page.text and "started by <code>user:admin</code>" in page.text
    assert f'title="AI priority {result.priority} (urgent)"' in page.text and "Probability 0.900" in page.text
    assert f'href="/viewer/viewer?StudyInstanceUIDs={uid}">Open in viewer</a>' in page.text
    assert page.text.count("Not reviewed") == 2
    action = f'action="/ai-results/{result.id}/findings/0/review"'
    assert f'<form method="post" {action}' in page.text
    # Each finding on its image (the box in the image's pixels, the image rendered by WADO-RS).
    image = re.search(r'<image href="([^"]+)"', page.text)
    assert image is not None and f"/instances/{study.SOPInstanceUID}/rendered" in image.group(1)
    assert (
        'viewBox="0 0 80 96"' in page.text
        and '<rect x="10.0" y="20.0" width="20.0" height="20.0"' in page.text
    )
    rendered = browser.get(image.group(1).replace("&amp;", "&"), headers={"Accept": "image/*"})
    assert rendered.status_code == 200 and rendered.headers["content-type"].startswith("image/")

    target = f"/ai-results/{result.id}/findings/0/review"
    assert browser.post(target, data={"decision": "accepted"}).status_code == 403  # no Origin: CSRF
    assert server.platform.ai_results.get(result.id).reviews == {}
    done = browser.post(
        target, data={"decision": "accepted", "comment": "displaced"}, headers={"Origin": server.url}
    )
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"/studies/{uid}/ai?done=") and done.headers[
        "location"
    ].endswith(f"#finding-{result.id}-0")
    after = browser.get(done.headers["location"].split("#")[0])
    assert "Finding 1 of fracture v1: accepted." in after.text
    assert "<strong>Accepted</strong> by admin (admin)" in after.text and "“displaced”" in after.text
    assert after.text.count("Not reviewed") == 1
    assert (
        browser.post(target, data={"decision": "rejected"}, headers={"Origin": server.url}).status_code == 303
    )
    assert "<strong>Rejected</strong> by admin" in browser.get(f"/studies/{uid}/ai").text

    bad = browser.post(target, data={"decision": "maybe"}, headers={"Origin": server.url})
    assert bad.status_code == 400 and "is not one of accepted, rejected" in bad.text
    # A role that may not label sees the results without the buttons, and its POST is refused.
    technologist = {"Authorization": f"Bearer {server.token_for('technologist')}", **HTML}
    seen = httpx.get(f"{server.url}/studies/{uid}/ai", headers=technologist)
    assert (
        seen.status_code == 200
        and "fracture v1" in seen.text
        and '<form method="post" action="/ai-results' not in seen.text
    )
    refused = httpx.post(f"{server.url}{target}", data={"decision": "accepted"}, headers=technologist)
    assert refused.status_code == 403 and "may not label" in refused.text
    record(server.platform.ai_results, study, [], version=2)
    stale = browser.post(target, data={"decision": "accepted"}, headers={"Origin": server.url})
    assert stale.status_code == 409 and "superseded" in stale.text
    newest = browser.get(f"/studies/{uid}/ai")
    assert (
        "fracture v2" in newest.text and "fracture v1" not in newest.text and "found nothing" in newest.text
    )
    assert browser.get("/studies/1.2.3.999/ai").status_code == 404


# ----------------------------------------------------------------------------- drift
def test_scores_per_version_per_day_on_the_api_and_the_model_page(
    server: RunningServer, browser: httpx.Client
) -> None:
    server.platform.models.import_onnx(
        "fracture", tiny_onnx(), Contract.from_json(CONTRACT), by=SYSTEM, metrics=metrics()
    )
    studies = _stored(server, 61, 62, 63)
    results = server.platform.ai_results
    record(results, studies[0], [0.95])
    record(results, studies[1], [0.15])
    record(results, studies[2], [0.92], version=2)
    record(results, studies[2], [0.91], version=2)  # the same study again: two runs, one study

    rita = Caller(server, "radiologist")
    answer = rita.get("/api/v1/models/fracture/score-distribution")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "fracture" and body["days"] == 30 and len(body["bin_edges"]) == 11
    assert [(s["model_version"], s["n"], s["studies"], s["bins"]) for s in body["scores"]] == [
        (2, 2, 1, [0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
        (1, 2, 2, [0, 1, 0, 0, 0, 0, 0, 0, 0, 1]),
    ]
    assert body["scores"][1]["mean"] == pytest.approx(0.55)
    assert "may not read models" in problem_detail(
        Caller(server, "technologist").get("/api/v1/models/fracture/score-distribution"), 403
    )
    assert problem_detail(rita.get("/api/v1/models/nothing/score-distribution"), 404)
    assert "days 0 must be 1 to 366" in problem_detail(
        rita.get("/api/v1/models/fracture/score-distribution", params={"days": 0}), 400
    )

    page = browser.get("/models/fracture")
    assert page.status_code == 200
    section = page.text.split('<h2 id="scores">Scores in use</h2>', 1)[1].split("</table>", 1)[0]
    rows = re.findall(
        r"<tr><td>v(\d)</td><td>([\d-]+)</td><td class=\"num\">(\d+)</td><td class=\"num\">(\d+)</td>",
        section,
    )
    assert [(v, studies, runs) for v, _day, studies, runs in rows] == [("2", "1", "2"), ("1", "2", "2")]
    assert section.count('<svg class="histogram"') == 2
    # The registered v1 has its operating points drawn (0.3 and 0.7 of 120 pixels); v2 is not registered.
    v1 = section.split("<tr><td>v1</td>", 1)[1]
    assert 'x1="36.0"' in v1 and 'x1="84.0"' in v1 and "0.9–1.0: 1" in v1

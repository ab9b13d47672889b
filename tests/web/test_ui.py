"""The worklist UI (``web/ui.py``): login, filters, paging, scope and de-identification, jobs page."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from radstack.jobs.models import JobRow
from radstack.jobs.records import JobState
from radstack.store.models import StudyRow
from tests import authed
from tests.conftest import RunningServer, server_settings, start_server
from tests.helpers import dicom_body, part10, signed_in_browser, stow, synthetic_ct

HTML = {"Accept": "text/html"}


def _study(name: str, patient_id: str, modality: str, date: str, **attrs: str) -> Dataset:
    ds = synthetic_ct(patient_name=name, patient_id=patient_id)
    ds.Modality, ds.StudyDate = modality, date
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def add_studies(
    engine: Engine,
    count: int,
    *,
    priority: Callable[[int], int | None] = lambda n: None,
    status: Callable[[int], str | None] = lambda n: None,
) -> None:
    """``count`` study rows (``Bulk^000``…) written straight to the index, as ingest leaves them: the
    matched columns and the DICOM JSON attributes QIDO answers from (no blobs: enough for lists)."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        for n in range(count):
            name, patient_id, date = (
                f"Bulk^{n:03d}",
                f"B-{n}",
                f"20{10 + n % 15}{1 + n % 12:02d}{1 + n % 28:02d}",
            )
            attrs = {
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
                "00100020": {"vr": "LO", "Value": [patient_id]},
                "00080020": {"vr": "DA", "Value": [date]},
                "00080030": {"vr": "TM", "Value": ["120000"]},
                "00081030": {"vr": "LO", "Value": ["Bulk study"]},
            }
            session.add(
                StudyRow(
                    study_uid=f"1.2.826.0.1.3680043.10.99.{n}",
                    patient_name=name,
                    patient_id=patient_id,
                    study_date=date,
                    study_time="120000",
                    study_description="Bulk study",
                    modalities="CT",
                    num_series=1,
                    num_instances=1,
                    attrs=json.dumps(attrs),
                    updated_at=now,
                    ai_priority=priority(n),
                    status=status(n),
                )
            )
        session.commit()


@pytest.fixture
def stored(server: RunningServer) -> dict[str, Dataset]:
    studies = {
        "john": _study("Doe^John", "P-1", "CT", "20240102", ReferringPhysicianName="Smith^Ann"),
        "jane": _study("Roe^Jane", "P-2", "MR", "20230505", StudyDescription="Knee MRI"),
        "jim": _study("Doe^Jim", "P-3", "CT", "20220101"),
    }
    assert stow(server, dicom_body(*studies.values())).status_code == 200
    return studies


@pytest.fixture
def browser(server: RunningServer) -> Iterator[httpx.Client]:
    client = signed_in_browser(server)
    try:
        yield client
    finally:
        client.close()


def _names(page: httpx.Response) -> list[str]:
    body = page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<td>((?:Doe|Roe|Bulk), [^<]*)</td>", body)


def test_anonymous_browser_is_redirected_to_login(server: RunningServer) -> None:
    page = httpx.get(f"{server.url}/?modality=CT", headers=HTML)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/%3Fmodality%3DCT"


def test_worklist_lists_stored_studies_with_links(
    server: RunningServer, stored: dict[str, Dataset], browser: httpx.Client
) -> None:
    page = browser.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<caption>" in page.text and '<th scope="col">Patient name</th>' in page.text
    assert _names(page) == ["Doe, John", "Roe, Jane", "Doe, Jim"]  # newest first
    uid = stored["jane"].StudyInstanceUID
    assert f'src="/dicomweb/studies/{uid}/thumbnail?viewport=64,64"' in page.text
    assert f'href="/viewer/viewer?StudyInstanceUIDs={uid}"' in page.text
    assert "Knee MRI" in page.text and "2023-05-05" in page.text
    assert "1–3 of 3" in page.text
    for href in ("/jobs", "/models", "/labeling"):
        assert f'href="{href}"' in page.text
        assert browser.get(href).status_code == 200
    assert '<form method="post" action="/logout">' in page.text
    # The thumbnail the page links to is served.
    thumb = browser.get(f"/dicomweb/studies/{uid}/thumbnail?viewport=64,64", headers={"Accept": "image/*"})
    assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")


def test_filters_narrow_the_list(
    server: RunningServer, stored: dict[str, Dataset], browser: httpx.Client
) -> None:
    assert _names(browser.get("/", params={"patient": "doe"})) == ["Doe, John", "Doe, Jim"]
    assert _names(browser.get("/", params={"patient": "d?e^j*m"})) == ["Doe, Jim"]
    assert _names(browser.get("/", params={"modality": "MR"})) == ["Roe, Jane"]
    assert _names(browser.get("/", params={"patient_id": "P-3"})) == ["Doe, Jim"]
    dated = browser.get("/", params={"date_from": "2023-01-01", "date_to": "2023-12-31"})
    assert _names(dated) == ["Roe, Jane"]
    assert 'value="2023-01-01"' in dated.text  # the form keeps what was asked
    assert _names(browser.get("/", params={"date_from": "2023-01-01"})) == ["Doe, John", "Roe, Jane"]
    assert _names(browser.get("/", params={"status": "read"})) == []
    assert len(_names(browser.get("/", params={"status": "unread"}))) == 3
    bad = browser.get("/", params={"date_from": "yesterday"})
    assert bad.status_code == 400 and "is not a date; give it as YYYY-MM-DD" in bad.text


def test_ai_priority_first_and_paging(server: RunningServer, browser: httpx.Client) -> None:
    add_studies(
        server.platform.store.engine,
        120,
        priority=lambda n: 90 if n == 7 else None,
        status=lambda n: "read" if n == 8 else None,
    )
    first = browser.get("/")
    names = _names(first)
    assert len(names) == 50 and names[0] == "Bulk, 007"
    assert 'class="badge urgent"' in first.text and "1–50 of 120" in first.text
    assert "Previous page" not in first.text
    link = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert link is not None and link.group(1) == "/?offset=50"
    second = browser.get(link.group(1))
    assert len(_names(second)) == 50 and not set(_names(second)) & set(names)
    assert "51–100 of 120" in second.text and 'rel="prev"' in second.text
    last = browser.get("/?offset=100")
    assert len(_names(last)) == 20 and 'rel="next"' not in last.text
    # Filters travel with the paging links.
    filtered = browser.get("/", params={"modality": "CT", "status": "unread"})
    assert 'href="/?modality=CT&amp;status=unread&amp;offset=50"' in filtered.text
    assert _names(browser.get("/", params={"status": "read"})) == ["Bulk, 008"]


def test_referring_physician_sees_only_their_studies(
    server: RunningServer, stored: dict[str, Dataset]
) -> None:
    token = server.token_for("referring-physician", referring_name="SMITH^ANN")
    page = httpx.get(f"{server.url}/", headers={"Authorization": f"Bearer {token}", **HTML})
    assert page.status_code == 200 and _names(page) == ["Doe, John"]
    assert stored["jane"].StudyInstanceUID not in page.text
    assert 'href="/jobs"' not in page.text  # no manage-system, no jobs link


def test_data_scientist_sees_pseudonyms_only(server: RunningServer, stored: dict[str, Dataset]) -> None:
    token = server.token_for("data-scientist")
    headers = {"Authorization": f"Bearer {token}", **HTML}
    page = httpx.get(f"{server.url}/", headers=headers)
    assert page.status_code == 200
    for ds in stored.values():
        assert str(ds.PatientName).split("^")[0] not in page.text
        assert ds.PatientID not in page.text and ds.StudyInstanceUID not in page.text
    assert page.text.count("ANON") >= 3
    # Its links carry pseudonymous UIDs that the server maps back.
    thumb = re.search(r'src="(/dicomweb/studies/[^"]+/thumbnail[^"]*)"', page.text)
    assert thumb is not None
    assert (
        httpx.get(
            server.url + thumb.group(1).replace("&amp;", "&"), headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 200
    )
    # Matching on a name would reveal whether a patient is stored: refused, and the form has no such field.
    assert 'name="patient"' not in page.text
    refused = httpx.get(f"{server.url}/", params={"patient": "Doe"}, headers=headers)
    assert refused.status_code == 400 and "cannot match on PatientName" in refused.text
    ct = httpx.get(f"{server.url}/", params={"modality": "CT"}, headers=headers)
    assert ct.status_code == 200 and ct.text.count("<td>ANON, ") == 2


def test_jobs_page_shows_a_dead_job_and_requeues_it(server: RunningServer, browser: httpx.Client) -> None:
    records = server.platform.jobs.records
    job, _ = records.create("import", {"source": "/nonexistent/dir", "submitted_by": {"subject": "admin"}})
    with Session(server.platform.store.engine) as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job.id)
            .values(state="DEAD", last_error="source vanished", attempts=5)
        )
        session.commit()
    page = browser.get("/jobs")
    assert page.status_code == 200 and "source vanished" in page.text
    assert f'<form method="post" action="/jobs/{job.id}/requeue">' in page.text
    # Without Origin a cookie POST is refused (CSRF); from our own page it requeues.
    assert browser.post(f"/jobs/{job.id}/requeue").status_code == 403
    assert records.get(job.id).state is JobState.DEAD
    done = browser.post(f"/jobs/{job.id}/requeue", headers={"Origin": server.url})
    assert done.status_code == 303 and done.headers["location"] == f"/jobs?requeued={job.id}"
    assert records.get(job.id).state is not JobState.DEAD
    after = browser.get(done.headers["location"])
    assert f"Job {job.id} was queued again." in after.text
    assert f'action="/jobs/{job.id}/requeue"' not in after.text


def test_import_progress_is_shown(server: RunningServer, browser: httpx.Client) -> None:
    records = server.platform.jobs.records
    job, _ = records.create("import", {"source": "/data/in", "submitted_by": {"subject": "admin"}})
    running = records.claim(job.id)  # as a worker that has done 4 of 10 files shows it
    assert running is not None and running.lease_owner is not None
    records.heartbeat(job.id, running.lease_owner, {"files_total": 10, "files_done": 4})
    page = browser.get("/jobs")
    assert '<progress max="10" value="4"' in page.text and "4 / 10 files" in page.text


def test_an_import_with_refused_files_shows_its_counts_and_links_the_reasons(
    server: RunningServer, browser: httpx.Client, tmp_path: Path
) -> None:
    source = tmp_path / "archive"
    (source / "scans").mkdir(parents=True)
    good = synthetic_ct(seed=5, rows=8, columns=8)
    (source / "scans" / "a.dcm").write_bytes(part10(good))
    (source / "scans" / "a-copy.dcm").write_bytes(part10(good))
    (source / "readme.txt").write_text("not DICOM")
    started = authed.post(f"{server.url}/api/v1/import-jobs", json={"source": str(source)}, timeout=30)
    job_id = started.json()["id"]
    deadline = time.monotonic() + 60
    while (job := authed.get(f"{server.url}/api/v1/jobs/{job_id}").json())["finished_at"] is None:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["state"] == "DONE_WITH_ERRORS"

    page = browser.get("/jobs")
    row = page.text[page.text.index(f"<code>{job_id}</code>") :].split("</tr>")[0]
    assert '<span class="badge high">DONE_WITH_ERRORS</span>' in row
    assert "<progress" not in row and "3 / 3 files" in row  # finished: counts, not a full bar
    assert re.findall(r'<td class="num">(.*?)</td>', row)[:2] == ["1", "1"]  # stored, already stored
    link = f'<a href="/jobs/{job_id}/refused" aria-label="1 files refused by job {job_id}: the reasons">1</a>'
    assert link in row

    reasons = browser.get(f"/jobs/{job_id}/refused")
    assert reasons.status_code == 200
    assert "<td><code>readme.txt</code></td>" in reasons.text and "0xC000" in reasons.text
    assert "not a DICOM Part-10 file" in reasons.text
    assert "a.dcm" not in reasons.text and good.PatientName.family_name not in reasons.text
    assert f'href="/api/v1/import-jobs/{job_id}/failure.ndjson"' in reasons.text
    assert browser.get("/jobs/nope/refused").status_code == 404


def test_roles_without_the_action_get_403(tmp_path: Path) -> None:
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"front-desk": {"actions": ["ingest"], "view": "full", "scope": "all"}}))
    for server in start_server(server_settings(tmp_path / "data", roles_file=roles, dicom_port=0)):
        desk = {"Authorization": f"Bearer {server.token_for('front-desk')}", **HTML}
        denied = httpx.get(f"{server.url}/", headers=desk)
        assert denied.status_code == 403 and "may not read metadata" in denied.text
        assert denied.headers["content-type"].startswith("text/html")
        radiologist = {"Authorization": f"Bearer {server.token_for('radiologist')}", **HTML}
        assert httpx.get(f"{server.url}/jobs", headers=radiologist).status_code == 403
        assert httpx.post(f"{server.url}/jobs/x/requeue", headers=radiologist).status_code == 403

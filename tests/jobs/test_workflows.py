"""Study workflows: ``study.stable`` after a quiet period, routing rules and their actions, events
on the SSE stream and on webhooks. Two real radstack servers and a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pydicom
import pytest

from radstack.config import Settings
from radstack.jobs.routing import ActionContext, RouteAction, register_action
from tests import authed
from tests.conftest import RunningServer, free_port, start_server
from tests.helpers import dicom_body, pixels_of, stow, synthetic_ct

STABLE_SECONDS = 1.0


class Receiver:
    """A webhook receiver: records every JSON body POSTed to it; answers ``status``."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                self.send_response(receiver.status)
                self.end_headers()
                if receiver.status < 300:
                    receiver.bodies.append(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 30) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count:
            assert time.monotonic() < deadline, f"received {self.bodies}"
            time.sleep(0.05)
        return self.bodies


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(
        data_dir=tmp_path / "archive", http_port=free_port(), dicom_port=0, ingest_processes=0
    )
    yield from start_server(settings)


@pytest.fixture
def hub(tmp_path: Path, receiver: Receiver, archive: RunningServer) -> Iterator[RunningServer]:
    """The server whose rules route; it forwards to ``archive`` with a token of the archive's."""
    settings = Settings(
        data_dir=tmp_path / "hub",
        http_port=free_port(),
        dicom_port=free_port(),
        ingest_processes=0,
        starter_model=False,  # no AI rule: these rules alone route
        stable_seconds=STABLE_SECONDS,
        event_webhooks=[receiver.url],
        outbound_tokens={archive.dicomweb: archive.token},
    )
    yield from start_server(settings)


def finished_job(server: RunningServer, kind: str, timeout: float = 30) -> dict[str, Any]:
    """The newest job of ``kind`` once it has finished."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = authed.get(f"{server.url}/api/v1/jobs", params={"kind": kind}).json()
        if jobs and jobs[0]["state"] in ("SUCCEEDED", "FAILED", "DEAD"):
            return dict(jobs[0])
        assert time.monotonic() < deadline, f"no finished {kind} job: {jobs}"
        time.sleep(0.1)


def chest_series(study: str, n: int = 3) -> list[pydicom.Dataset]:
    series = []
    for i in range(n):
        ds = synthetic_ct(seed=i, study=study, series=f"{study}.1")
        ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
        series.append(ds)
    return series


def test_stable_study_is_routed_to_another_archive_and_announced(
    hub: RunningServer, archive: RunningServer, receiver: Receiver
) -> None:
    rule = {
        "name": "chest-to-archive",
        "conditions": {"Modality": ["CR", "DX"], "BodyPartExamined": ["CH*"]},
        "actions": [{"type": "stow", "url": archive.dicomweb}, {"type": "webhook", "url": receiver.url}],
    }
    assert authed.put(f"{hub.url}/api/v1/routing-rules/chest-to-archive", json=rule).status_code == 201
    other = {
        "name": "ct-only",
        "conditions": {"Modality": ["CT"]},
        "actions": [{"type": "webhook", "url": receiver.url}],
    }
    assert authed.put(f"{hub.url}/api/v1/routing-rules/ct-only", json=other).status_code == 201

    study = "1.2.826.0.1.3680043.8.498.61"
    series = chest_series(study)
    sent_at = time.monotonic()
    assert stow(hub, dicom_body(*series[:2])).status_code == 200
    time.sleep(STABLE_SECONDS / 2)
    assert stow(hub, dicom_body(series[2])).status_code == 200  # still arriving: not stable yet

    bodies = receiver.wait(2)
    stable = next(b for b in bodies if b["type"] == "study.stable")
    assert time.monotonic() - sent_at >= STABLE_SECONDS * 1.5
    assert stable["study_uid"] == study
    assert stable["data"]["num_instances"] == 3 and stable["data"]["rules"] == ["chest-to-archive"]  # type: ignore[index]
    route = next(b for b in bodies if b["type"] == "route")
    assert route == {"type": "route", "rule": "chest-to-archive", "study_uid": study}

    deadline = time.monotonic() + 30
    while len(authed.get(f"{archive.dicomweb}/studies/{study}/instances").json() or []) < 3:
        assert time.monotonic() < deadline, "the study was not forwarded"
        time.sleep(0.1)
    forwarded = authed.get(
        f"{archive.dicomweb}/studies/{study}/series/{study}.1/instances/{series[0].SOPInstanceUID}",
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
        },
    )
    assert forwarded.status_code == 200
    time.sleep(STABLE_SECONDS * 2)
    assert len([b for b in receiver.bodies if b["type"] == "study.stable"]) == 1, "one event per change"


def test_event_stream_replays_and_follows(hub: RunningServer) -> None:
    study = "1.2.826.0.1.3680043.8.498.62"
    assert stow(hub, dicom_body(*chest_series(study, 1))).status_code == 200
    lines: list[str] = []
    with authed.stream("GET", f"{hub.url}/api/v1/events", params={"since": 0}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break
    event = json.loads(lines[-1].removeprefix("data: "))
    assert "event: study.stable" in lines and event["study_uid"] == study
    event_id = next(line for line in lines if line.startswith("id: ")).removeprefix("id: ")

    # Resuming after the last event seen: nothing is repeated, the next study's event comes.
    second = "1.2.826.0.1.3680043.8.498.63"
    assert stow(hub, dicom_body(*chest_series(second, 1))).status_code == 200
    with authed.stream(
        "GET", f"{hub.url}/api/v1/events", headers={"Last-Event-ID": event_id}, timeout=30
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line.removeprefix("data: "))["study_uid"] == second
                break


def test_a_receiver_that_is_down_gets_the_event_when_it_is_back(
    hub: RunningServer, receiver: Receiver
) -> None:
    hub.platform.jobs.backoff_seconds = 0.2
    receiver.status = 503
    assert stow(hub, dicom_body(*chest_series("1.2.826.0.1.3680043.8.498.64", 1))).status_code == 200
    deadline = time.monotonic() + 30
    while (
        not (jobs := authed.get(f"{hub.url}/api/v1/jobs", params={"kind": "webhook"}).json())
        or jobs[0]["attempts"] < 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "HTTP 503" in jobs[0]["last_error"]
    receiver.status = 200
    assert receiver.wait(1)[0]["type"] == "study.stable"


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (
            {
                "name": "x",
                "conditions": {"Modalty": ["CT"]},
                "actions": [{"type": "webhook", "url": "http://h/"}],
            },
            "'Modalty' is not a DICOM keyword",
        ),
        ({"name": "x", "actions": [{"type": "forward"}]}, "names the peer's AE title"),
        ({"name": "x", "actions": [{"type": "stow", "url": "ftp://h/"}]}, "http(s) URL"),
        ({"name": "x", "actions": []}, "at least 1"),
        (
            {"name": "x", "actions": [{"type": "teleport", "model": "fracture"}]},
            "action type 'teleport' is not known; known types: forward, infer, stow",
        ),
        ({"name": "x", "actions": [{"peer": "PACS"}]}, "action type None is not known; known types: forward"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(
    hub: RunningServer, rule: dict[str, object], reason: str
) -> None:
    response = authed.put(f"{hub.url}/api/v1/routing-rules/x", json=rule)
    assert response.status_code == 400 and reason in response.json()["detail"]


def test_a_rule_forwards_by_c_store_in_a_syntax_the_peer_accepts(hub: RunningServer, tmp_path: Path) -> None:
    from tests.dimse.helpers import storescp

    study = "1.2.826.0.1.3680043.8.498.65"
    series = chest_series(study, 2)
    with storescp(tmp_path / "received", ae_title="READING") as port:
        assert (
            authed.put(
                f"{hub.url}/api/v1/peers/READING", json={"host": "127.0.0.1", "port": port}
            ).status_code
            == 201
        )
        rule = {
            "name": "to-reading",
            "conditions": {"SOPClassUID": [str(series[0].SOPClassUID)]},
            "actions": [{"type": "forward", "peer": "READING"}],
        }
        assert authed.put(f"{hub.url}/api/v1/routing-rules/to-reading", json=rule).status_code == 201
        assert stow(hub, dicom_body(*series)).status_code == 200
        job = finished_job(hub, "route-action")
    received = {
        str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in (tmp_path / "received").glob("*"))
    }
    for original in series:
        copy = received[str(original.SOPInstanceUID)]
        assert copy.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", "dcmtk 3.6.7 knows no HTJ2K"
        assert (pixels_of(copy) == pixels_of(original)).all()
    assert job["state"] == "SUCCEEDED" and job["progress"] == {"peer": "READING", "sent": 2}


def test_forwarding_to_an_unknown_peer_fails_with_the_reason(hub: RunningServer) -> None:
    rule = {"name": "nowhere", "actions": [{"type": "forward", "peer": "NOSUCHPEER"}]}
    assert authed.put(f"{hub.url}/api/v1/routing-rules/nowhere", json=rule).status_code == 201
    assert stow(hub, dicom_body(*chest_series("1.2.826.0.1.3680043.8.498.66", 1))).status_code == 200
    job = finished_job(hub, "route-action")
    assert job["state"] == "FAILED" and "NOSUCHPEER" in job["last_error"]


def test_a_peer_that_accepts_no_producible_syntax_fails_the_job_with_the_reason(hub: RunningServer) -> None:
    from tests.dimse.helpers import StorageSCP

    jpeg_only = StorageSCP("JPEGONLY", syntaxes=["1.2.840.10008.1.2.4.50"])  # JPEG baseline: lossy
    try:
        peer = {"host": "127.0.0.1", "port": jpeg_only.port}
        assert authed.put(f"{hub.url}/api/v1/peers/JPEGONLY", json=peer).status_code == 201
        rule = {"name": "lossy-peer", "actions": [{"type": "forward", "peer": "JPEGONLY"}]}
        assert authed.put(f"{hub.url}/api/v1/routing-rules/lossy-peer", json=rule).status_code == 201
        assert stow(hub, dicom_body(*chest_series("1.2.826.0.1.3680043.8.498.67", 1))).status_code == 200
        job = finished_job(hub, "route-action")
    finally:
        jpeg_only.close()
    assert job["state"] == "FAILED", "never re-encoded lossily, never retried in vain"
    assert "accepted no transfer syntax radstack can send" in job["last_error"]
    assert jpeg_only.received == []


def test_rules_match_the_calling_ae_title_of_c_store(hub: RunningServer, receiver: Receiver) -> None:
    from tests.dimse.helpers import store

    rule = {
        "name": "from-xray",
        "conditions": {"CallingAETitle": ["XRAY*"]},
        "actions": [{"type": "webhook", "url": receiver.url}],
    }
    assert authed.put(f"{hub.url}/api/v1/routing-rules/from-xray", json=rule).status_code == 201
    from_xray = chest_series("1.2.826.0.1.3680043.8.498.68", 1)
    from_ct = chest_series("1.2.826.0.1.3680043.8.498.69", 1)
    assert [s.Status for s in store(hub, *from_xray, calling="XRAY1")] == [0]
    assert [s.Status for s in store(hub, *from_ct, calling="CT2")] == [0]
    bodies = receiver.wait(3)  # two study.stable events and one route
    stable = [b for b in bodies if b["type"] == "study.stable"]
    routed = [b for b in bodies if b["type"] == "route"]
    assert [b["study_uid"] for b in routed] == ["1.2.826.0.1.3680043.8.498.68"]
    by_study = {b["study_uid"]: b["data"]["rules"] for b in stable}  # type: ignore[index]
    assert by_study == {"1.2.826.0.1.3680043.8.498.68": ["from-xray"], "1.2.826.0.1.3680043.8.498.69": []}


@register_action
class NoteAction(RouteAction):
    """An action of the tests' own: one registered class, and rules may name it."""

    type: Literal["test-note"] = "test-note"
    text: str

    def run(self, context: ActionContext) -> dict[str, Any]:
        return {"noted": self.text, "rule": context.rule, "instances": len(context.instances())}


def test_a_registered_action_class_is_a_routing_action(hub: RunningServer) -> None:
    rule = {"name": "noting", "actions": [{"type": "test-note", "text": "seen"}]}
    assert authed.put(f"{hub.url}/api/v1/routing-rules/noting", json=rule).status_code == 201
    assert authed.get(f"{hub.url}/api/v1/routing-rules/noting").json()["actions"] == rule["actions"]
    missing = {"name": "noting", "actions": [{"type": "test-note"}]}
    refused = authed.put(f"{hub.url}/api/v1/routing-rules/noting", json=missing)
    assert (
        refused.status_code == 400 and "test-note action: 'text': Field required" in refused.json()["detail"]
    )

    assert stow(hub, dicom_body(*chest_series("1.2.826.0.1.3680043.8.498.67", 2))).status_code == 200
    job = finished_job(hub, "route-action")
    assert job["state"] == "SUCCEEDED" and job["progress"] == {
        "noted": "seen",
        "rule": "noting",
        "instances": 2,
    }
    schema = authed.get(f"{hub.url}/api/v1/openapi.json").json()["components"]["schemas"]["RoutingRule"]
    titles = {s["title"] for s in schema["properties"]["actions"]["items"]["oneOf"]}
    assert {"ForwardAction", "StowAction", "WebhookAction", "NoteAction"} <= titles

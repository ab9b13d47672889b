"""The model registry over HTTP (``web/models.py``) on a real server: import, review, promotion and
rollback through ``/api/v1/models``, what each role may do, problems that name the fault, and the
``/models`` pages with the model card's ROC, FROC and calibration plots."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from radstack.security.audit import AuditOutcomeValues
from tests.ai.tiny_models import CONTRACT, bundle_metadata, bundle_zip, metrics, tiny_onnx
from tests.conftest import RunningServer, server_settings, start_server
from tests.helpers import problem_detail

HTML = {"Accept": "text/html"}
CARD = {
    "intended_use": "Triage of adult wrist radiographs for fractures",
    "training_data": "Synthetic DX radiographs, seed 7",
    "limitations": "Not validated on children or casts",
}


@dataclass
class Registry:
    server: RunningServer
    #: Role label → bearer token: two data scientists (the trainer and a reviewer), a radiologist, a
    #: technologist (no registry access at all).
    tokens: dict[str, str]
    onnx: bytes

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.server.url}{path}", headers=headers, timeout=60, **kwargs)

    def register_onnx(self, who: str, name: str, onnx: bytes | None = None) -> httpx.Response:
        return self.call(
            who,
            "POST",
            f"/api/v1/models/{name}/versions",
            files={
                "onnx": ("model.onnx", onnx if onnx is not None else self.onnx, "application/octet-stream"),
                "contract": ("contract.json", json.dumps(CONTRACT), "application/json"),
            },
            data={
                "metrics": json.dumps(metrics()),
                "card": json.dumps(CARD),
                "lineage": json.dumps({"dataset_version": "wrists@2", "training_job": "job-7"}),
                "description": "Wrist fracture detector",
            },
        )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    settings = server_settings(tmp_path_factory.mktemp("models") / "data", no_workers=True, dicom_port=0)
    for server in start_server(settings):
        tokens = {
            "alice": server.token_for("data-scientist"),
            "bob": server.token_for("data-scientist"),
            "rita": server.token_for("radiologist"),
            "tom": server.token_for("technologist"),
        }
        tokens["admin"] = server.token
        yield Registry(server, tokens, tiny_onnx())


def test_import_review_promote_and_rollback(registry: Registry) -> None:
    created = registry.register_onnx("alice", "wrist")
    assert created.status_code == 201, created.text
    first = created.json()
    assert (first["version"], first["status"], first["stage"], first["format"]) == (
        1,
        "pending",
        None,
        "onnx",
    )
    assert first["card"] == CARD and first["lineage"]["dataset_version"] == "wrists@2"
    assert {a["name"] for a in first["artifacts"]} == {"model.onnx", "contract.json", "preprocessing.json"}
    trainer = first["trained_by"]

    # Not production before approval; not approved by the trainer; not by a radiologist.
    detail = problem_detail(
        registry.call(
            "alice", "POST", "/api/v1/models/wrist/versions/1/promote", json={"stage": "production"}
        ),
        409,
    )
    assert "only approved versions reach production" in detail
    detail = problem_detail(
        registry.call("alice", "POST", "/api/v1/models/wrist/versions/1/approve", json={"comment": "mine"}),
        403,
    )
    assert f"'{trainer}' trained wrist v1" in detail and "separation of duties" in detail
    detail = problem_detail(
        registry.call("rita", "POST", "/api/v1/models/wrist/versions/1/approve", json={"comment": "ok"}), 403
    )
    assert detail == "the radiologist role may not manage models"
    assert registry.call("bob", "GET", "/api/v1/models/wrist/versions/1").json()["status"] == "pending"

    approved = registry.call(
        "bob", "POST", "/api/v1/models/wrist/versions/1/approve", json={"comment": "metrics fine"}
    )
    assert approved.status_code == 200 and approved.json()["reviewed_by"] != trainer
    promoted = registry.call(
        "bob", "POST", "/api/v1/models/wrist/versions/1/promote", json={"stage": "production"}
    )
    assert promoted.json()["stage"] == "production"

    assert registry.register_onnx("alice", "wrist", tiny_onnx(seed=3)).json()["version"] == 2
    registry.call("admin", "POST", "/api/v1/models/wrist/versions/2/approve", json={"comment": "better"})
    registry.call("admin", "POST", "/api/v1/models/wrist/versions/2/promote", json={"stage": "production"})
    assert registry.call("rita", "GET", "/api/v1/models/wrist/production").json()["version"] == 2
    stages = {
        v["version"]: v["stage"] for v in registry.call("rita", "GET", "/api/v1/models/wrist/versions").json()
    }
    assert stages == {2: "production", 1: "archived"}

    back = registry.call("bob", "POST", "/api/v1/models/wrist/rollback")
    assert back.status_code == 200 and back.json()["version"] == 1
    assert registry.call("bob", "GET", "/api/v1/models/wrist").json()["production_version"] == 1
    assert "no earlier one" in problem_detail(
        registry.call("bob", "POST", "/api/v1/models/wrist/rollback"), 409
    )
    history = registry.call("bob", "GET", "/api/v1/models/wrist/history").json()
    assert [(h["version"], h["to_stage"], h["reason"]) for h in history[:2]] == [
        (1, "production", "rollback"),
        (2, "archived", "archive"),
    ]

    # The artifact comes back as it went in, to those who manage models.
    onnx = registry.call("bob", "GET", "/api/v1/models/wrist/versions/1/artifacts/model.onnx")
    assert onnx.status_code == 200 and onnx.content == registry.onnx

    # Each change, and the refused approval, is in the audit trail with who did it.
    platform = registry.server.platform
    platform.audit.flush()
    records = platform.audit.log.records(limit=10_000)
    decisions = [
        (r.resource.get("event"), r.outcome)
        for r in records
        if r.resource.get("model") == "wrist" and "route" not in r.resource
    ]
    for expected in (
        ("approve", AuditOutcomeValues.FAILURE),
        ("approve", AuditOutcomeValues.SUCCESS),
        ("promote", AuditOutcomeValues.SUCCESS),
        ("rollback", AuditOutcomeValues.SUCCESS),
    ):
        assert expected in decisions


def test_radiologist_reads_model_cards_but_changes_nothing(registry: Registry) -> None:
    assert registry.register_onnx("alice", "elbow").status_code == 201
    assert registry.call("rita", "GET", "/api/v1/models").status_code == 200
    card = registry.call("rita", "GET", "/api/v1/models/elbow/versions/1")
    assert card.status_code == 200 and card.json()["card"] == CARD
    page = registry.call("rita", "GET", "/models/elbow/versions/1", headers=HTML)
    assert page.status_code == 200 and "Triage of adult wrist radiographs" in page.text
    assert (
        "<form" not in page.text.split("<main", 1)[1]
    )  # no review or promotion forms (logout is in the header)
    for method, path, kwargs in (
        ("POST", "/api/v1/models/elbow/versions/1/approve", {"json": {"comment": "ok"}}),
        ("POST", "/api/v1/models/elbow/versions/1/reject", {"json": {"comment": "no"}}),
        ("POST", "/api/v1/models/elbow/versions/1/promote", {"json": {"stage": "staging"}}),
        ("POST", "/api/v1/models/elbow/rollback", {}),
        ("GET", "/api/v1/models/elbow/versions/1/artifacts/model.onnx", {}),
        ("POST", "/models/elbow/versions/1/review", {"data": {"decision": "approve", "comment": "ok"}}),
    ):
        assert registry.call("rita", method, path, **kwargs).status_code == 403, path
    assert registry.register_onnx("rita", "elbow").status_code == 403
    version = registry.call("rita", "GET", "/api/v1/models/elbow/versions/1").json()
    assert (version["status"], version["stage"]) == ("pending", None)
    assert len(registry.call("rita", "GET", "/api/v1/models/elbow/versions").json()) == 1
    # A role without read-models sees nothing of the registry.
    assert registry.call("tom", "GET", "/api/v1/models").status_code == 403
    assert registry.call("tom", "GET", "/models", headers=HTML).status_code == 403


def test_corrupt_onnx_and_bad_contract_are_problems_that_change_nothing(registry: Registry) -> None:
    assert registry.register_onnx("alice", "ankle").status_code == 201
    detail = problem_detail(
        registry.register_onnx("alice", "ankle", b"\x08\x07 this is not a protobuf \xff\xff"), 422
    )
    assert detail.startswith("model.onnx is not an ONNX model")
    wrong = {**CONTRACT, "inputs": [{"name": "pixels", "shape": [None, 1, 32, 32], "dtype": "float32"}]}
    response = registry.call(
        "alice",
        "POST",
        "/api/v1/models/ankle/versions",
        files={"onnx": ("m.onnx", registry.onnx), "contract": ("c.json", json.dumps(wrong))},
    )
    detail = problem_detail(response, 422)
    assert "input 'pixels' is not in the graph of model.onnx" in detail and "'image'" in detail
    missing = registry.call(
        "alice", "POST", "/api/v1/models/ankle/versions", files={"onnx": ("m.onnx", registry.onnx)}
    )
    assert "needs its 'contract'" in problem_detail(missing, 400)
    versions = registry.call("alice", "GET", "/api/v1/models/ankle/versions").json()
    assert [(v["version"], v["status"]) for v in versions] == [(1, "pending")]


def test_monai_bundle_import_and_a_mismatched_bundle(registry: Registry) -> None:
    response = registry.call(
        "alice", "POST", "/api/v1/models/squares/versions", files={"bundle": ("b.zip", bundle_zip())}
    )
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["format"] == "monai-bundle" and version["contract"]["verified_by"] == "forward pass"
    assert "models/model.pt" in {a["name"] for a in version["artifacts"]}
    assert version["card"]["intended_use"] == "Testing the registry only; not for diagnosis."

    mismatched = bundle_zip(bundle_metadata(out_channels=3))
    response = registry.call(
        "alice", "POST", "/api/v1/models/squares/versions", files={"bundle": ("b.zip", mismatched)}
    )
    detail = problem_detail(response, 422)
    assert "configs/metadata.json does not match models/model.pt: output 'pred'" in detail
    assert len(registry.call("alice", "GET", "/api/v1/models/squares/versions").json()) == 1


def test_models_pages_and_the_model_card_with_its_plots(registry: Registry) -> None:
    assert registry.register_onnx("alice", "forearm").status_code == 201
    listing = registry.call("admin", "GET", "/models", headers=HTML)
    assert listing.status_code == 200 and 'href="/models/forearm"' in listing.text
    model = registry.call("admin", "GET", "/models/forearm", headers=HTML)
    assert model.status_code == 200 and 'href="/models/forearm/versions/1"' in model.text

    page = registry.call("bob", "GET", "/models/forearm/versions/1", headers=HTML)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    for field in CARD.values():
        assert field in text
    plots = re.findall(r'<svg class="plot" data-plot="(\w+)"', text)
    assert plots == ["roc", "froc", "calibration"]
    for kind in plots:
        svg = text.split(f'data-plot="{kind}"', 1)[1].split("</svg>", 1)[0]
        assert svg.count("<polyline") >= 2, kind  # axes and the curve
    assert "AUROC 0.930 (95% CI 0.900–0.960)" in text
    assert "0.880 at 1 FP/image" in text
    assert "ECE 0.040" in text

    # A reviewer approves and promotes from the card's forms (POST-redirect-GET).
    reviewed = registry.call(
        "bob", "POST", "/models/forearm/versions/1/review", data={"decision": "approve", "comment": "fine"}
    )
    assert reviewed.status_code == 303 and reviewed.headers["location"].startswith(
        "/models/forearm/versions/1?"
    )
    promoted = registry.call(
        "bob", "POST", "/models/forearm/versions/1/promote", data={"stage": "production"}
    )
    assert promoted.status_code == 303
    card = registry.call("bob", "GET", promoted.headers["location"], headers=HTML).text
    assert "v1 is in production" in card and '<span class="badge routine">production</span>' in card
    # A refusal on a page is the error page with the problem's status and message.
    again = registry.call(
        "bob", "POST", "/models/forearm/versions/1/review", data={"decision": "reject", "comment": "x"}
    )
    assert again.status_code == 409 and "a review decision is final" in again.text

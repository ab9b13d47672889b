"""The model registry's service (``ai/registry.py``) on SQLite and PostgreSQL: the approval and stage
state machine, separation of duties, permissions, encrypted content-addressed artifacts, ONNX and
MONAI bundle import, and refusals that leave everything as it was."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from radstack.ai.card import ModelCard
from radstack.ai.contract import Contract, ContractMismatch, InvalidModel
from radstack.ai.models import ModelVersionRow
from radstack.ai.registry import (
    ApprovalStatus,
    ArtifactIntegrityError,
    ArtifactKind,
    Lineage,
    ModelFormat,
    ModelRegistry,
    Stage,
)
from radstack.errors import BadRequest, Conflict, Forbidden, NotFound
from radstack.security.audit import AuditActionValues, AuditEntry, AuditLog, AuditOutcomeValues, AuditRecord
from radstack.security.crypto import MAGIC, KeyConfig, open_encrypted_blob_store
from radstack.security.policy import DEFAULT_ROLES, Policy, Principal
from radstack.store.index import create_index_engine, migrate
from tests.ai.tiny_models import CONTRACT, bundle_metadata, bundle_zip, metrics, tiny_onnx, unsorted_onnx

ALICE = Principal("alice", "data-scientist", "token", source="10.0.0.1")  # trains
BOB = Principal("bob", "data-scientist", "token", source="10.0.0.2")  # reviews
CAROL = Principal("carol", "admin", "password")
RITA = Principal("rita", "radiologist", "password")
LINEAGE = Lineage("fractures@1", "abc1234", {"epochs": 3, "lr": 0.001}, "job-42")
CARD = ModelCard("Fracture triage on DX radiographs", "10k synthetic radiographs", "Not for children")


@dataclass
class Setup:
    registry: ModelRegistry
    audit: AuditLog
    blob_dir: Path

    def audited(self) -> list[AuditRecord]:
        return self.audit.records()


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return tiny_onnx()


def _setup(database_url: str, tmp_path: Path) -> Iterator[Setup]:
    engine = create_index_engine(database_url)
    migrate(engine)
    blobs = open_encrypted_blob_store(
        f"file://{tmp_path / 'blobs'}", KeyConfig(f"file://{tmp_path / 'keys'}")
    )
    audit = AuditLog(engine)
    policy = Policy(DEFAULT_ROLES, lambda study: None)

    def record(entry: AuditEntry) -> None:
        audit.append_many([entry])

    try:
        yield Setup(ModelRegistry(engine, blobs, policy, record), audit, tmp_path / "blobs")
    finally:
        engine.dispose()


@pytest.fixture
def setup(database_url: str, tmp_path: Path) -> Iterator[Setup]:
    """A registry on each backend, its artifacts in an encrypted blob store, its audit trail real."""
    yield from _setup(database_url, tmp_path)


@pytest.fixture
def sqlite_setup(tmp_path: Path) -> Iterator[Setup]:
    yield from _setup(f"sqlite:///{tmp_path / 'index.db'}", tmp_path)


def _import(setup: Setup, onnx: bytes, by: Principal = ALICE, name: str = "fracture") -> int:
    version = setup.registry.import_onnx(
        name, onnx, Contract.from_json(CONTRACT), by=by, lineage=LINEAGE, metrics=metrics(), card=CARD
    )
    return version.version


def test_state_machine_with_one_production_version_and_rollback(setup: Setup, onnx_bytes: bytes) -> None:
    registry = setup.registry
    first = registry.import_onnx(
        "fracture",
        onnx_bytes,
        Contract.from_json(CONTRACT),
        by=ALICE,
        lineage=LINEAGE,
        metrics=metrics(),
        card=CARD,
        description="Fracture detector",
    )
    assert (first.version, first.status, first.stage) == (1, ApprovalStatus.PENDING, None)
    assert first.format is ModelFormat.ONNX and first.trained_by == "alice"
    assert first.lineage == LINEAGE and first.card == CARD and first.metrics["auroc"] == 0.93
    assert first.contract.verified_by == "onnxruntime"
    assert {a.name: a.kind for a in first.artifacts} == {
        "contract.json": ArtifactKind.CONTRACT,
        "model.onnx": ArtifactKind.ONNX,
        "preprocessing.json": ArtifactKind.PREPROCESSING,
    }

    # Only approved versions reach production, and the trainer cannot approve.
    with pytest.raises(Conflict, match="only approved versions reach production"):
        registry.promote("fracture", 1, Stage.PRODUCTION, by=ALICE)
    with pytest.raises(Forbidden, match=r"'alice' trained fracture v1.*someone other than its trainer"):
        registry.approve("fracture", 1, by=ALICE, comment="looks good to me")
    with pytest.raises(BadRequest, match="needs a comment"):
        registry.approve("fracture", 1, by=BOB, comment=" ")
    assert registry.version("fracture", 1).status is ApprovalStatus.PENDING
    registry.promote("fracture", 1, Stage.STAGING, by=ALICE)  # a pending version may be staged
    approved = registry.approve("fracture", 1, by=BOB, comment="AUROC and calibration acceptable")
    assert (approved.status, approved.reviewed_by, approved.review_comment) == (
        ApprovalStatus.APPROVED,
        "bob",
        "AUROC and calibration acceptable",
    )
    with pytest.raises(Conflict, match="already approved by bob; a review decision is final"):
        registry.reject("fracture", 1, by=CAROL, comment="changed my mind")
    assert registry.promote("fracture", 1, Stage.PRODUCTION, by=BOB).stage is Stage.PRODUCTION
    with pytest.raises(Conflict, match="already in production"):
        registry.promote("fracture", 1, Stage.PRODUCTION, by=BOB)

    # A second approved version displaces the first: one production version per model.
    assert _import(setup, tiny_onnx(seed=1)) == 2
    registry.approve("fracture", 2, by=CAROL, comment="better FROC")
    registry.promote("fracture", 2, Stage.PRODUCTION, by=CAROL)
    stages = {v.version: v.stage for v in registry.versions("fracture")}
    assert stages == {2: Stage.PRODUCTION, 1: Stage.ARCHIVED}
    assert registry.production("fracture").version == 2
    assert registry.model("fracture").production_version == 2

    # Rollback returns to the version before, and no further than the first.
    assert registry.rollback("fracture", by=BOB).version == 1
    assert {v.version: v.stage for v in registry.versions("fracture")} == {
        2: Stage.ARCHIVED,
        1: Stage.PRODUCTION,
    }
    with pytest.raises(Conflict, match="first production version"):
        registry.rollback("fracture", by=BOB)
    assert registry.production("fracture").version == 1
    assert [(c.version, c.to_stage, c.reason) for c in registry.history("fracture")][:2] == [
        (1, Stage.PRODUCTION, "rollback"),
        (2, Stage.ARCHIVED, "archive"),
    ]

    # The database itself refuses a second production version, whatever a writer does.
    model_id = None
    with setup.registry.engine.begin() as connection:
        model_id = (
            connection.execute(
                ModelVersionRow.__table__.select().where(ModelVersionRow.stage == "production")
            )
            .one()
            ._mapping["model_id"]
        )
    with pytest.raises(IntegrityError), setup.registry.engine.begin() as connection:
        connection.execute(
            update(ModelVersionRow)
            .where(ModelVersionRow.model_id == model_id, ModelVersionRow.version == 2)
            .values(stage="production")
        )

    events = [(r.actor, r.action, r.resource.get("event"), r.outcome) for r in setup.audited()]
    assert ("alice", AuditActionValues.DEPLOY, "approve", AuditOutcomeValues.FAILURE) in events
    assert ("bob", AuditActionValues.DEPLOY, "approve", AuditOutcomeValues.SUCCESS) in events
    assert ("bob", AuditActionValues.DEPLOY, "rollback", AuditOutcomeValues.SUCCESS) in events
    assert ("carol", AuditActionValues.DEPLOY, "promote", AuditOutcomeValues.SUCCESS) in events
    assert ("alice", AuditActionValues.WRITE, "register", AuditOutcomeValues.SUCCESS) in events
    refused = next(r for r in setup.audited() if r.resource.get("event") == "approve")
    assert refused.reason is not None and "separation of duties" in refused.reason


def test_rollback_walks_back_through_every_earlier_production_version(
    sqlite_setup: Setup, onnx_bytes: bytes
) -> None:
    registry = sqlite_setup.registry
    for seed in range(3):
        number = _import(sqlite_setup, tiny_onnx(seed=seed))
        registry.approve("fracture", number, by=BOB, comment="ok")
        registry.promote("fracture", number, Stage.PRODUCTION, by=BOB)
    assert registry.production("fracture").version == 3
    assert registry.rollback("fracture", by=BOB).version == 2
    assert registry.rollback("fracture", by=BOB).version == 1  # not forward to v3
    with pytest.raises(Conflict):
        registry.rollback("fracture", by=BOB)
    # Promoting again after a rollback starts from where production is.
    registry.promote("fracture", 3, Stage.PRODUCTION, by=BOB)
    assert registry.rollback("fracture", by=BOB).version == 1


def test_rejected_version_leaves_staging_and_never_reaches_production(
    sqlite_setup: Setup, onnx_bytes: bytes
) -> None:
    registry = sqlite_setup.registry
    _import(sqlite_setup, onnx_bytes)
    registry.promote("fracture", 1, Stage.STAGING, by=ALICE)
    with pytest.raises(Forbidden, match="someone other than its trainer"):
        registry.reject("fracture", 1, by=ALICE, comment="self-review")
    rejected = registry.reject("fracture", 1, by=BOB, comment="misses buckle fractures")
    assert (rejected.status, rejected.stage, rejected.reviewed_by) == (
        ApprovalStatus.REJECTED,
        Stage.ARCHIVED,
        "bob",
    )
    for stage in (Stage.STAGING, Stage.PRODUCTION):
        with pytest.raises(Conflict, match="was rejected by bob; it cannot be promoted"):
            registry.promote("fracture", 1, stage, by=CAROL)
    with pytest.raises(Conflict, match="already rejected"):
        registry.approve("fracture", 1, by=CAROL, comment="overrule")
    with pytest.raises(NotFound, match="no version in production"):
        registry.production("fracture")


def test_a_trainer_named_by_the_registrant_cannot_approve_either(
    sqlite_setup: Setup, onnx_bytes: bytes
) -> None:
    """A training job's output registered by the platform names the job's submitter as trainer."""
    registry = sqlite_setup.registry
    from radstack.ai.registry import ArtifactIn

    version = registry.register(
        "fracture", [ArtifactIn("model.onnx", ArtifactKind.ONNX, onnx_bytes)], by=CAROL, trained_by="alice"
    )
    assert (version.trained_by, version.registered_by) == ("alice", "carol")
    assert [t.name for t in version.contract.inputs] == ["image"]  # the graph's own contract
    for reviewer in (ALICE, CAROL):
        with pytest.raises(Forbidden, match="separation of duties"):
            registry.approve("fracture", 1, by=reviewer, comment="fine")
    assert registry.approve("fracture", 1, by=BOB, comment="fine").status is ApprovalStatus.APPROVED


def test_radiologist_may_not_register_approve_or_promote(sqlite_setup: Setup, onnx_bytes: bytes) -> None:
    registry = sqlite_setup.registry
    with pytest.raises(Forbidden, match="the radiologist role may not manage models"):
        registry.import_onnx("fracture", onnx_bytes, Contract.from_json(CONTRACT), by=RITA)
    with pytest.raises(Forbidden):
        registry.import_bundle("seg", bundle_zip(), by=RITA)
    assert registry.models() == []
    _import(sqlite_setup, onnx_bytes)
    attempts: list[Callable[[], object]] = [
        lambda: registry.approve("fracture", 1, by=RITA, comment="ok"),
        lambda: registry.reject("fracture", 1, by=RITA, comment="no"),
        lambda: registry.promote("fracture", 1, Stage.STAGING, by=RITA),
        lambda: registry.rollback("fracture", by=RITA),
    ]
    for attempt in attempts:
        with pytest.raises(Forbidden):
            attempt()
    version = registry.version("fracture", 1)
    assert (version.status, version.stage) == (ApprovalStatus.PENDING, None)
    refused = [r for r in sqlite_setup.audited() if r.actor == "rita"]
    assert len(refused) == 6 and all(r.outcome is AuditOutcomeValues.FAILURE for r in refused)


def test_artifacts_are_encrypted_content_addressed_and_verified(
    sqlite_setup: Setup, onnx_bytes: bytes
) -> None:
    registry = sqlite_setup.registry
    _import(sqlite_setup, onnx_bytes)
    version = registry.version("fracture", 1)
    artifact = version.artifact(ArtifactKind.ONNX)
    assert artifact.sha256 == hashlib.sha256(onnx_bytes).hexdigest() and artifact.size == len(onnx_bytes)
    assert artifact.blob_key == f"models/{artifact.sha256[:2]}/{artifact.sha256}"
    raw = (sqlite_setup.blob_dir / artifact.blob_key).read_bytes()
    assert raw.startswith(MAGIC) and onnx_bytes[:64] not in raw  # encrypted at rest
    assert registry.artifact_bytes(version, ArtifactKind.ONNX) == onnx_bytes
    preprocessing = json.loads(registry.artifact_bytes(version, ArtifactKind.PREPROCESSING))
    assert preprocessing == CONTRACT["preprocessing"]
    # The same bytes registered again are stored once.
    stored = sorted(p for p in (sqlite_setup.blob_dir / "models").rglob("*") if p.is_file())
    _import(sqlite_setup, onnx_bytes)
    assert registry.version("fracture", 2).artifact(ArtifactKind.ONNX).blob_key == artifact.blob_key
    assert sorted(p for p in (sqlite_setup.blob_dir / "models").rglob("*") if p.is_file()) == stored
    # A blob replaced by other (validly encrypted) bytes is caught by its SHA-256.
    registry.blobs.replace(artifact.blob_key, b"not the model")
    with pytest.raises(
        ArtifactIntegrityError, match=re.escape("model.onnx of fracture v1 does not match its SHA-256")
    ):
        registry.artifact_bytes(version, ArtifactKind.ONNX)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"", "model.onnx is empty"),
        (lambda data: b"\x08\x07garbage that is not protobuf\xff\xff\xff", "model.onnx is not an ONNX model"),
        (lambda data: data[: len(data) // 2], "model.onnx is not an ONNX model: it cannot be parsed"),
        (lambda data: unsorted_onnx(), "model.onnx fails the ONNX checker: .*input 'missing'"),
    ],
    ids=["empty", "garbage", "truncated", "checker"],
)
def test_corrupt_onnx_is_refused_and_nothing_changes(
    sqlite_setup: Setup, onnx_bytes: bytes, damage: Any, message: str
) -> None:
    registry = sqlite_setup.registry
    _import(sqlite_setup, onnx_bytes)
    before = registry.versions("fracture")
    with pytest.raises(InvalidModel, match=message) as refused:
        registry.import_onnx("fracture", damage(onnx_bytes), Contract.from_json(CONTRACT), by=ALICE)
    assert refused.value.http_status == 422
    assert registry.versions("fracture") == before
    assert registry.models()[0].version_count == 1
    last = sqlite_setup.audited()[-1]
    assert last.outcome is AuditOutcomeValues.FAILURE and last.reason == refused.value.message


def test_contract_that_does_not_match_the_graph_is_refused(sqlite_setup: Setup, onnx_bytes: bytes) -> None:
    registry = sqlite_setup.registry
    wrong = copy.deepcopy(CONTRACT)
    wrong["inputs"][0]["shape"] = [None, 3, 32, 32]
    with pytest.raises(
        ContractMismatch, match=r"input 'image' is declared with shape \[\?, 3, 32, 32\].*dimension 1"
    ):
        registry.import_onnx("fracture", onnx_bytes, Contract.from_json(wrong), by=ALICE)
    renamed = copy.deepcopy(CONTRACT)
    renamed["outputs"][1]["name"] = "score"
    with pytest.raises(ContractMismatch, match=re.escape("output 'score' is not in the graph of model.onnx")):
        registry.import_onnx("fracture", onnx_bytes, Contract.from_json(renamed), by=ALICE)
    typed = copy.deepcopy(CONTRACT)
    typed["inputs"][0]["dtype"] = "uint8"
    with pytest.raises(
        ContractMismatch, match=re.escape("declared uint8 but the graph of model.onnx has float32")
    ):
        registry.import_onnx("fracture", onnx_bytes, Contract.from_json(typed), by=ALICE)
    with pytest.raises(BadRequest, match=r"contract.inputs\[0\].dtype is 'float'"):
        Contract.from_json({**CONTRACT, "inputs": [{"name": "image", "shape": [1], "dtype": "float"}]})
    assert registry.models() == []


def test_monai_bundle_import(sqlite_setup: Setup, tmp_path: Path) -> None:
    registry = sqlite_setup.registry
    data = bundle_zip()
    version = registry.import_bundle("tiny-seg", data, by=ALICE)
    assert (version.format, version.status) == (ModelFormat.MONAI_BUNDLE, ApprovalStatus.PENDING)
    assert version.contract.verified_by == "forward pass"
    assert [(t.name, t.shape) for t in version.contract.inputs] == [("image", (None, 1, "16*n", "16*n"))]
    assert [(t.name, t.shape) for t in version.contract.outputs] == [("pred", (None, 2, "16*n", "16*n"))]
    assert {a.name: a.kind for a in version.artifacts} == {
        "configs/inference.json": ArtifactKind.CONFIG,
        "configs/metadata.json": ArtifactKind.CONFIG,
        "contract.json": ArtifactKind.CONTRACT,
        "docs/README.md": ArtifactKind.DOC,
        "models/model.pt": ArtifactKind.WEIGHTS,
    }
    assert version.card.intended_use == "Testing the registry only; not for diagnosis."
    assert version.card.training_data == "synthetic squares; numpy"
    assert version.lineage.code_version == "tiny_segmentation 0.1.0"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        weights = archive.read("tiny_segmentation/models/model.pt")
        archive.extractall(tmp_path / "unzipped")
    assert registry.artifact_bytes(version, ArtifactKind.WEIGHTS) == weights
    # A bundle directory imports the same way, as the next version.
    again = registry.import_bundle("tiny-seg", tmp_path / "unzipped" / "tiny_segmentation", by=ALICE)
    assert again.version == 2 and again.contract == version.contract


def test_mismatched_bundles_are_refused_and_nothing_changes(sqlite_setup: Setup) -> None:
    registry = sqlite_setup.registry
    registry.import_bundle("tiny-seg", bundle_zip(), by=ALICE)
    before = registry.versions("tiny-seg")
    # The metadata declares 3 output channels; the network gives 2.
    with pytest.raises(
        ContractMismatch, match=r"output 'pred' is declared with shape \[1, 3, 32, 32\].*\[1, 2, 32, 32\]"
    ):
        registry.import_bundle("tiny-seg", bundle_zip(bundle_metadata(out_channels=3)), by=ALICE)
    # The importer expects another input than the metadata declares.
    expected = {
        "inputs": [{"name": "image", "shape": [None, 3, 64, 64], "dtype": "float32"}],
        "outputs": [{"name": "pred", "shape": [None, 2, 64, 64], "dtype": "float32"}],
    }
    with pytest.raises(
        ContractMismatch,
        match=re.escape("declared contract does not match the bundle's configs/metadata.json"),
    ):
        registry.import_bundle("tiny-seg", bundle_zip(), by=ALICE, contract=Contract.from_json(expected))
    # Weights of another network.
    import torch

    other = io.BytesIO()
    torch.save(torch.nn.Conv2d(1, 2, 3).state_dict(), other)
    with pytest.raises(
        ContractMismatch, match=re.escape("models/model.pt does not fit the bundle's network_def")
    ):
        registry.import_bundle("tiny-seg", bundle_zip(weights=other.getvalue()), by=ALICE)
    with pytest.raises(InvalidModel, match=re.escape("models/model.pt is not a PyTorch state dict")):
        registry.import_bundle("tiny-seg", bundle_zip(weights=b"not a checkpoint"), by=ALICE)
    with pytest.raises(InvalidModel, match="not a zip file"):
        registry.import_bundle("tiny-seg", b"plain bytes", by=ALICE)
    no_metadata = io.BytesIO()
    with zipfile.ZipFile(no_metadata, "w") as archive:
        archive.writestr("models/model.pt", b"x")
    with pytest.raises(InvalidModel, match=re.escape("needs one configs/metadata.json")):
        registry.import_bundle("tiny-seg", no_metadata.getvalue(), by=ALICE)
    assert registry.versions("tiny-seg") == before


def test_bad_metrics_card_and_names_are_refused(sqlite_setup: Setup, onnx_bytes: bytes) -> None:
    registry = sqlite_setup.registry
    contract = Contract.from_json(CONTRACT)
    bad = metrics()
    bad["roc"]["tpr"] = bad["roc"]["tpr"][:-1]
    with pytest.raises(
        BadRequest, match=r"metrics.roc.fpr and metrics.roc.tpr must have the same length \(6 and 5\)"
    ):
        registry.import_onnx("fracture", onnx_bytes, contract, by=ALICE, metrics=bad)
    with pytest.raises(BadRequest, match="model name 'Fracture Detector' is not valid"):
        registry.import_onnx("Fracture Detector", onnx_bytes, contract, by=ALICE)
    with pytest.raises(BadRequest, match=r"card has unknown fields \['purpose'\]"):
        ModelCard.from_json({"purpose": "x"})
    with pytest.raises(BadRequest, match=re.escape("lineage.hyperparameters must be a JSON object")):
        Lineage.from_json({"hyperparameters": [1, 2]})
    assert registry.models() == []


def test_cli_imports_reviews_and_promotes(tmp_path: Path, onnx_bytes: bytes) -> None:
    """``radstack models …`` acts as the user named by ``--user``, under the same rules."""
    import subprocess

    from tests.processes import RADSTACK

    (tmp_path / "model.onnx").write_bytes(onnx_bytes)
    (tmp_path / "contract.json").write_text(json.dumps(CONTRACT))
    data = ["--data-dir", str(tmp_path / "data")]

    def radstack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RADSTACK, *args, *data], capture_output=True, text=True, timeout=120)

    for user in ("alice", "bob"):
        assert radstack("user", "create", user, "--role", "data-scientist").returncode == 0
    imported = radstack(
        "models", "import-onnx", "wrist", str(tmp_path / "model.onnx"),
        "--contract", str(tmp_path / "contract.json"), "--user", "alice",
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "wrist v1: pending, stage - (onnx)"
    refused = radstack("models", "approve", "wrist", "1", "--user", "alice", "--comment", "mine")
    assert refused.returncode == 2
    assert "radstack models approve: 'alice' trained wrist v1, so may not approve it" in refused.stderr
    assert radstack("models", "approve", "wrist", "1", "--user", "bob", "--comment", "fine").returncode == 0
    promoted = radstack("models", "promote", "wrist", "1", "--user", "bob")
    assert promoted.stdout.strip() == "wrist v1: approved, stage production (onnx)"
    listed = radstack("models", "list").stdout.splitlines()
    assert listed[1].split() == ["wrist", "1", "1", "v1"]

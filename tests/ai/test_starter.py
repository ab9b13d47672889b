"""The starter model (``ai/starter.py``): the shipped artifact runs, a fresh data dir's server has it
approved and in production with its metrics and model card, a second start changes nothing, a damaged
artifact is refused with the error logged and nothing registered, a site's own decisions are kept, and
``build_starter`` makes the same artifact twice from one recipe."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from radstack.ai.registry import ApprovalStatus, ArtifactIn, ArtifactKind, Stage
from radstack.ai.runtime import OnnxDetector
from radstack.ai.starter import (
    BUILDER,
    MANIFEST_NAME,
    MODEL_NAME,
    ONNX_NAME,
    RELEASER,
    STARTER_DIR,
    BuildProgress,
    Phase,
    Recipe,
    build_starter,
    install_starter,
    read_manifest,
)
from radstack.ai.synthetic import Options, generate
from radstack.config import Settings
from radstack.errors import BadRequest, Conflict
from radstack.platform import Platform
from radstack.security.policy import Principal
from tests.ai.tiny import TINY_DETECTOR
from tests.conftest import server_settings, start_server

HTML = {"Accept": "text/html"}
RADSTACK = str(Path(sys.executable).with_name("radstack"))
SITE_ADMIN = Principal("site-admin", "admin", "password")
SITE_SCIENTIST = Principal("site-scientist", "data-scientist", "token")

#: A recipe that builds in seconds: 64 small images, a small detector on 64-pixel inputs, 2 epochs.
TINY_RECIPE: dict[str, Any] = {
    "description": "tests",
    "data": {
        "train": {"seed": 11, "count": 32},
        "validation": {"seed": 12, "count": 16},
        "test": {"seed": 13, "count": 16},
        "options": {"scale": 0.05, "rg3_rate": 0.1},
        "twins": True,
    },
    "training": {
        "seed": 1,
        "epochs": 2,
        "batch_size": 8,
        "device": "cpu",
        "detector": TINY_DETECTOR.to_dict(),
        "preprocess": {"size": 64},
    },
    "threads": 1,
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return read_manifest()


def _platform(data_dir: Path, **settings: Any) -> Platform:
    return Platform.open(server_settings(data_dir, dicom_port=0, no_workers=True, **settings))


def _fracture_audit(platform: Platform) -> list[tuple[str, str, str]]:
    platform.audit.flush()
    return [
        (r.actor, str(r.resource.get("event")), str(r.outcome))
        for r in platform.audit.log.records(limit=10_000)
        if r.resource.get("model") == MODEL_NAME and "route" not in r.resource
    ]


# ------------------------------------------------------------------------------------ the shipped files
def test_the_shipped_onnx_matches_its_manifest_and_detects_on_a_generated_radiograph(
    manifest: dict[str, Any],
) -> None:
    onnx = STARTER_DIR / ONNX_NAME
    assert hashlib.sha256(onnx.read_bytes()).hexdigest() == manifest["onnx"]["sha256"]
    assert Recipe.from_dict(manifest["recipe"]) == Recipe.load(STARTER_DIR / "recipe.json"), (
        "the shipped artifact was made from another recipe: run `make starter-model`"
    )
    detector = OnnxDetector(onnx, threads=1)
    assert detector.spec.size == manifest["config"]["preprocess"]["size"]
    # A radiograph with a fracture at half the realistic size (1250 × 1024 for a long bone), in stored pixels.
    image = next(
        i
        for i in (generate(77, k, Options(scale=0.5, rg3_rate=0.0)) for k in range(10))
        if i.truth["fracture"]
    )
    prediction = detector.predict(image.pixels)
    assert 0.0 <= prediction.probability <= 1.0
    assert prediction.boxes.shape == (len(prediction.scores), 4)
    assert prediction.boxes.shape[0] == manifest["config"]["detector"]["max_detections"]
    rows, columns = image.pixels.shape
    assert np.all(prediction.boxes[:, [0, 2]] <= columns) and np.all(prediction.boxes[:, [1, 3]] <= rows)
    assert np.all(np.diff(prediction.scores) <= 0), "highest score first"
    # The manifest holds what the card and the registry show.
    assert manifest["metrics"]["n_images"] == manifest["recipe"]["data"]["test"]["count"]
    assert "not for clinical use" in manifest["card"]["intended_use"].lower()
    assert set(manifest["timings"]) >= {"data_seconds", "training_seconds", "evaluation_seconds"}
    assert manifest["training"]["device"] == "cpu" and manifest["training"]["seconds"] > 0


# ------------------------------------------------------------------------------- first start of a server
def _get(url: str, token: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return httpx.get(f"{url}{path}", headers=headers, timeout=60, **kwargs)


def test_a_fresh_data_dir_serves_the_starter_model_in_production_and_a_restart_changes_nothing(
    tmp_path: Path, manifest: dict[str, Any]
) -> None:
    settings = server_settings(tmp_path / "data", dicom_port=0, no_workers=True, starter_model=True)
    for server in start_server(settings):
        production = _get(server.url, server.token, f"/api/v1/models/{MODEL_NAME}/production")
        assert production.status_code == 200, production.text
        version = production.json()
        assert (version["version"], version["status"], version["stage"]) == (1, "approved", "production")
        assert version["trained_by"] == version["registered_by"] == BUILDER.subject
        assert version["reviewed_by"] == RELEASER.subject != version["trained_by"]
        assert "not for clinical use" in version["review_comment"]
        assert version["metrics"]["auroc"] == manifest["metrics"]["auroc"]
        assert version["metrics"]["roc"] == manifest["metrics"]["roc"]
        lineage = version["lineage"]
        assert lineage["dataset_version"].startswith("synthetic demo data")
        assert lineage["code_version"] == manifest["code_version"]
        assert lineage["hyperparameters"] == manifest["config"]
        assert version["card"] == manifest["card"]
        artifacts = {a["name"]: a for a in version["artifacts"]}
        assert artifacts[ONNX_NAME]["sha256"] == manifest["onnx"]["sha256"]
        assert artifacts[MANIFEST_NAME]["kind"] == "doc"
        assert artifacts["preprocessing.json"]["kind"] == "preprocessing"

        # The model card page renders, with its plots and the card's text.
        page = _get(server.url, server.token, f"/models/{MODEL_NAME}/versions/1", headers=HTML)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert re.findall(r'<svg class="plot" data-plot="(\w+)"', page.text) == ["roc", "froc", "calibration"]
        assert "NOT FOR CLINICAL USE" in page.text and "radstack-release" in page.text

        # Audited like any registry change, under the two system principals.
        audited = _fracture_audit(server.platform)
        assert audited == [
            (BUILDER.subject, "register", "success"),
            (RELEASER.subject, "approve", "success"),
            (RELEASER.subject, "promote", "success"),
        ]
        history = server.platform.models.history(MODEL_NAME)

    for server in start_server(settings):  # the second start of the same data dir
        registry = server.platform.models
        assert [v.version for v in registry.versions(MODEL_NAME)] == [1]
        assert registry.history(MODEL_NAME) == history
        assert registry.production(MODEL_NAME).stage is Stage.PRODUCTION
        assert _fracture_audit(server.platform) == audited


def test_starter_model_off_installs_nothing(tmp_path: Path) -> None:
    # RADSTACK_STARTER_MODEL=off reads the same as the keyword here.
    settings = Settings(data_dir=tmp_path / "data", ingest_processes=0, starter_model="off")
    assert settings.starter_model is False
    platform = Platform.open(settings)
    try:
        assert platform.install_starter_model() is None
        assert platform.models.models() == []
    finally:
        platform.close()


# ------------------------------------------------------------------------------------- refused artifacts
@pytest.fixture
def copied(tmp_path: Path) -> Path:
    """The shipped starter files, copied to change them."""
    target = tmp_path / "shipped"
    shutil.copytree(STARTER_DIR, target)
    return target


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    opened = _platform(tmp_path / "data")
    try:
        yield opened
    finally:
        opened.close()


def test_a_tampered_artifact_is_refused_with_the_file_named_and_nothing_registered(
    copied: Path, platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    onnx = copied / ONNX_NAME
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="radstack.ai.starter"):
        assert install_starter(platform.models, copied) is None
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(onnx) in record.getMessage() and "SHA-256" in record.getMessage()
    assert "changed or damaged" in record.getMessage()
    assert platform.models.models() == []
    assert _fracture_audit(platform) == []

    onnx.unlink()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="radstack.ai.starter"):
        assert install_starter(platform.models, copied) is None
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(onnx) in record.getMessage() and "cannot be read" in record.getMessage()
    assert platform.models.models() == []


def test_a_tampered_manifest_is_refused_too(
    copied: Path, platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    manifest_path = copied / MANIFEST_NAME
    document = json.loads(manifest_path.read_text())
    document["onnx"]["sha256"] = "0" * 64  # a manifest edited to match another file
    manifest_path.write_text(json.dumps(document))
    with caplog.at_level(logging.ERROR, logger="radstack.ai.starter"):
        assert install_starter(platform.models, copied) is None
    assert any(
        str(copied / ONNX_NAME) in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
    )
    assert platform.models.models() == []


# --------------------------------------------------------------------------------- a site's own decisions
def test_a_site_that_promoted_its_own_version_keeps_it(platform: Platform) -> None:
    registry = platform.models
    assert install_starter(registry) is not None
    onnx = (STARTER_DIR / ONNX_NAME).read_bytes()
    mine = registry.register(
        MODEL_NAME, [ArtifactIn("site.onnx", ArtifactKind.ONNX, onnx)], by=SITE_SCIENTIST
    )
    registry.approve(MODEL_NAME, mine.version, by=SITE_ADMIN, comment="validated on our data")
    registry.promote(MODEL_NAME, mine.version, Stage.PRODUCTION, by=SITE_ADMIN)
    history = registry.history(MODEL_NAME)

    assert install_starter(registry) is None
    assert registry.production(MODEL_NAME).version == 2
    assert registry.version(MODEL_NAME, 1).stage is Stage.ARCHIVED
    assert registry.history(MODEL_NAME) == history


def test_a_second_node_cannot_register_the_starter_again(platform: Platform) -> None:
    """Two nodes starting at once both find no model; the registration that comes second is refused
    (``new_model``), so there is never a v2 of the starter."""
    registry = platform.models
    assert install_starter(registry) is not None
    onnx = (STARTER_DIR / ONNX_NAME).read_bytes()
    with pytest.raises(Conflict, match="exists already"):
        registry.register(
            MODEL_NAME, [ArtifactIn(ONNX_NAME, ArtifactKind.ONNX, onnx)], by=BUILDER, new_model=True
        )
    assert [v.version for v in registry.versions(MODEL_NAME)] == [1]


def test_an_interrupted_installation_is_finished_but_a_rejection_stands(tmp_path: Path) -> None:
    onnx = (STARTER_DIR / ONNX_NAME).read_bytes()
    for name, rejected in (("finished", False), ("rejected", True)):
        platform = _platform(tmp_path / name)
        try:
            registry = platform.models
            # What a start that stopped right after registering leaves behind.
            registry.register(MODEL_NAME, [ArtifactIn(ONNX_NAME, ArtifactKind.ONNX, onnx)], by=BUILDER)
            if rejected:
                registry.reject(MODEL_NAME, 1, by=SITE_ADMIN, comment="we use our own model")
            result = install_starter(registry)
            version = registry.version(MODEL_NAME, 1)
            if rejected:
                assert result is None
                assert (version.status, version.stage) == (ApprovalStatus.REJECTED, None)
                assert registry.history(MODEL_NAME) == []
            else:
                assert result is not None
                assert (version.status, version.stage) == (ApprovalStatus.APPROVED, Stage.PRODUCTION)
                assert version.reviewed_by == RELEASER.subject
        finally:
            platform.close()


# ------------------------------------------------------------------------------------------------- build
def test_build_starter_makes_the_same_artifact_twice_from_one_recipe(tmp_path: Path) -> None:
    recipe = Recipe.from_dict(TINY_RECIPE)
    events: list[BuildProgress] = []
    first = build_starter(recipe, tmp_path / "first", events.append)
    # Again by the documented command, drawing the images in two worker processes: that changes nothing
    # but the time.
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(TINY_RECIPE))
    second_dir = tmp_path / "second"
    command = [RADSTACK, "models", "build-starter", "--recipe", str(recipe_file), "--out", str(second_dir)]
    done = subprocess.run([*command, "--processes", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for phase in Phase:
        assert re.search(rf"^{phase}: [0-9.]+ s$", done.stdout, re.MULTILINE), done.stdout
    assert "epoch 2/2: train loss" in done.stdout
    second = read_manifest(second_dir)
    assert f"sha256 {second['onnx']['sha256']}" in done.stdout

    onnx = first.onnx_path.read_bytes()
    assert first.onnx_path.name == ONNX_NAME and first.manifest_path.name == MANIFEST_NAME
    assert (
        hashlib.sha256(onnx).hexdigest()
        == first.sha256
        == read_manifest(tmp_path / "first")["onnx"]["sha256"]
    )
    assert second["onnx"]["sha256"] == first.sha256, "the same recipe gave other ONNX bytes"
    assert second["weights_sha256"] == first.manifest["weights_sha256"]
    assert second["metrics"] == first.manifest["metrics"]
    assert second["operating_points"] == first.manifest["operating_points"]
    manifest = first.manifest
    assert manifest["recipe"] == recipe.to_dict()
    assert manifest["metrics"]["n_images"] == 16 and manifest["training"]["threads"] == 1
    assert "each with its intact twin" in manifest["card"]["training_data"]
    assert set(manifest["operating_points"]) >= {"suspicious", "definite"}

    # Progress: every image, every batch (2 epochs × 4 batches), each epoch, and each phase's time.
    drawn = [e.done for e in events if e.phase is Phase.DATA and e.seconds is None]
    assert drawn == list(range(2, 33, 2)) + list(range(33, 65))  # twins come two at a time
    batches = [e.batch for e in events if e.batch is not None]
    assert [(b.epoch, b.batch) for b in batches] == [(e, b) for e in (1, 2) for b in (1, 2, 3, 4)]
    assert [e.epoch.epoch for e in events if e.epoch is not None] == [1, 2]
    finished = {e.phase: e.seconds for e in events if e.seconds is not None}
    assert set(finished) == set(Phase) and all(s is not None and s >= 0 for s in finished.values())

    # The artifact installs like the shipped one.
    platform = _platform(tmp_path / "data")
    try:
        installed = install_starter(platform.models, first.onnx_path.parent)
        assert installed is not None and installed.metrics == manifest["metrics"]
    finally:
        platform.close()


def test_a_recipe_with_a_seed_used_twice_is_refused() -> None:
    bad = json.loads(json.dumps(TINY_RECIPE))
    bad["data"]["test"]["seed"] = bad["data"]["train"]["seed"]
    with pytest.raises(BadRequest, match="different seeds"):
        Recipe.from_dict(bad)
    bad = json.loads(json.dumps(TINY_RECIPE))
    bad["data"]["train"]["count"] = 33
    with pytest.raises(BadRequest, match="must be even with twins"):
        Recipe.from_dict(bad)
    bad = json.loads(json.dumps(TINY_RECIPE))
    bad["training"]["threads"] = 2
    with pytest.raises(BadRequest, match="set only threads"):
        Recipe.from_dict(bad)
    bad = json.loads(json.dumps(TINY_RECIPE))
    bad["training"]["epoch"] = 2
    with pytest.raises(BadRequest, match="epoch"):
        Recipe.from_dict(bad).train_config()

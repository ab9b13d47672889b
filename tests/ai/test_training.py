"""Training jobs: through the API to a pending model version, the refusals at submit, roles, cancel,
resume after a killed ``radstack worker``, and ``radstack train --follow``.

The images are tiny learnable radiographs (:mod:`tests.ai.tiny`) written as DX DICOM, made into a data
set through the store, and read back by the job in the data scientist's de-identified view; a run
trains a small detector at 64 px for a few epochs (seconds).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from radstack.ai.datasets import parse_ratios
from radstack.ai.models import DatasetItemRow
from radstack.ai.train import load_checkpoint_model
from radstack.ai.training import checkpoint_path
from radstack.config import Settings
from radstack.platform import Platform
from radstack.security.policy import SYSTEM
from tests import authed
from tests.ai.test_datasets import dx_image
from tests.ai.tiny import TINY_DETECTOR, tiny_sample
from tests.conftest import RunningServer, server_settings, start_server
from tests.processes import RADSTACK, Workers

#: A small detector that learns the tiny images in a few epochs (one thread: the same curve every run).
CONFIG: dict[str, Any] = {
    "seed": 0,
    "epochs": 4,
    "batch_size": 8,
    "learning_rate": 0.01,
    "threads": 1,
    "device": "cpu",
    "detector": TINY_DETECTOR.to_dict(),
    "preprocess": {"size": 64},
    "augment": {"enabled": False},
}
FINAL = {"SUCCEEDED", "FAILED", "DEAD", "CANCELLED"}
DATASET = "tiny"
MODEL = "tiny-fracture"


# ----------------------------------------------------------------------------------------- data
def tiny_folder(folder: Path, count: int, seed: int) -> Path:
    """A folder as ``radstack demo-data fractures`` writes it, of ``count`` tiny radiographs (64 px, one
    patient each, every other one with a fracture) and their ``truth.json``."""
    rng = np.random.default_rng(seed)
    truth: dict[str, Any] = {}
    for number in range(count):
        sample = tiny_sample(rng, 64, fracture=bool(number % 2))
        patient = f"TINY{number:04d}"
        ds = dx_image(
            patient, f"1.2.826.0.1.3680043.8.498.{seed}.{number + 1}", seed=number, rows=64, columns=64
        )
        ds.PixelData = sample.image.astype(np.uint16).tobytes()
        relative = f"dicom/{patient}/{ds.SOPInstanceUID}.dcm"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / relative, enforce_file_format=True)
        truth[str(ds.SOPInstanceUID)] = {
            "fracture": sample.label,
            "type": sample.fracture_type,
            "boxes": np.clip(sample.boxes, 0, 64).tolist(),
            "patient_id": patient,
            "file": relative,
        }
    (folder / "truth.json").write_text(json.dumps({"generator": "tests", "images": truth}))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """192 tiny images: the data set splits them 4/1/1 by patient (64 + 64 / 16 + 16 / 16 + 16)."""
    return tiny_folder(tmp_path_factory.mktemp("tiny"), 192, seed=5)


def make_dataset(platform: Platform, folder: Path, name: str = DATASET) -> str:
    """The data set ``name`` made from ``folder``; returns its version's content hash."""
    version = platform.datasets.create_from_folder(name, folder, SYSTEM, seed=1, ratios=parse_ratios("4/1/1"))
    return version.content_hash


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Iterator[RunningServer]:
    """A server that runs training jobs in-process, with the data set ``tiny`` made."""
    settings = server_settings(tmp_path_factory.mktemp("server") / "data", dicom_port=0)
    for running in start_server(settings):
        make_dataset(running.platform, folder)
        yield running


SCIENTIST = "dora"


def headers_of(server: RunningServer, user: str, role: str) -> dict[str, str]:
    """The Authorization header of a new user ``user`` with ``role``."""
    server.platform.accounts.create_user(user, role)
    return {"Authorization": f"Bearer {server.platform.accounts.create_token(user)}"}


@pytest.fixture(scope="module")
def scientist(server: RunningServer) -> dict[str, str]:
    """The data scientist ``dora``'s Authorization header."""
    return headers_of(server, SCIENTIST, "data-scientist")


def submit(server: RunningServer, headers: dict[str, str], **body: Any) -> Any:
    return authed.post(
        f"{server.url}/api/v1/training-jobs",
        json={"dataset": DATASET, "model": MODEL, "config": CONFIG, **body},
        headers=headers,
        timeout=60,
    )


def wait_for(
    url: str, job_id: str, headers: dict[str, str], done: Any = None, timeout: float = 180
) -> dict[str, Any]:
    """The training job once ``done(job)`` holds (default: it has ended)."""
    done = done or (lambda job: job["state"] in FINAL)
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = authed.get(f"{url}/api/v1/training-jobs/{job_id}", headers=headers).json()
        if done(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def registered_by_jobs(server: RunningServer, headers: dict[str, str]) -> list[str]:
    """The training jobs of the versions of ``MODEL`` (none when it has none yet)."""
    answer = authed.get(f"{server.url}/api/v1/models/{MODEL}/versions", headers=headers)
    return [v["lineage"]["training_job"] for v in answer.json()] if answer.status_code == 200 else []


def comparable(epochs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What decides an epoch's report (not how long it took)."""
    return [(e["epoch"], e["train_loss"], e["learning_rate"], e["validation"]) for e in epochs]


# ----------------------------------------------------------------------------------------- API
def test_a_training_job_through_the_api_registers_a_pending_version_with_its_lineage(
    server: RunningServer, scientist: dict[str, str]
) -> None:
    answer = submit(server, scientist, description="fractures on tiny radiographs")
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert answer.headers["location"] == f"{server.url}/api/v1/training-jobs/{job['id']}"
    assert (job["dataset"], job["dataset_version"], job["model"]) == (DATASET, 1, MODEL)
    assert job["config"]["epochs"] == 4 and job["config"]["schedule"] == "onecycle"  # defaults filled in

    done = wait_for(server.url, job["id"], scientist)
    assert done["state"] == "SUCCEEDED", done["error"]
    epochs = done["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"], [e["train_loss"] for e in epochs]
    assert all(e["validation"]["auroc"] is not None and e["seconds"] > 0 for e in epochs)
    assert done["runs"] == [{"attempt": 1, "resumed_from_epoch": 0, "device": "cpu"}]
    assert done["progress"]["stage"] == "done" and done["progress"]["fraction"] == 1.0
    result = done["result"]
    assert done["model_version"] == result["version"] == 1 and result["status"] == "pending"
    assert result["test_auroc"] > 0.75, result  # chance is 0.5
    assert result["test_images"] == 32
    assert not checkpoint_path(server.platform.settings.data_dir, job["id"]).parent.exists()

    version = authed.get(f"{server.url}/api/v1/models/{MODEL}/versions/1", headers=scientist).json()
    assert version["status"] == "pending" and version["stage"] is None
    assert version["trained_by"] == version["registered_by"] == SCIENTIST
    content_hash = authed.get(f"{server.url}/api/v1/datasets/{DATASET}").json()["content_hash"]
    lineage = version["lineage"]
    assert lineage["dataset_version"] == f"{DATASET}@1" and lineage["dataset_id"] == content_hash
    assert lineage["training_job"] == job["id"] and lineage["device"] == "cpu"
    assert lineage["hyperparameters"] == done["config"]
    assert lineage["code_version"].startswith("radstack ")
    metrics = version["metrics"]
    assert metrics["auroc"] == result["test_auroc"] and metrics["n_images"] == 32
    assert set(metrics["operating_points"]) == {"suspicious", "definite"}
    assert "tiny version 1" in version["card"]["training_data"]
    assert "32 held-out test images" in version["card"]["limitations"]
    assert {a["name"] for a in version["artifacts"]} == {
        "model.onnx",
        "weights.pt",
        "contract.json",
        "preprocessing.json",
    }
    assert version["contract"]["preprocessing"]["size"] == 64
    # The model itself is described by the job's description.
    assert authed.get(f"{server.url}/api/v1/models/{MODEL}").json()["description"] == (
        "fractures on tiny radiographs"
    )

    # The submission is in the audit trail, as a registry change is.
    records = authed.get(f"{server.url}/api/v1/audit").json()
    train = [
        r for r in records if r["resource"].get("event") == "train" and r["resource"].get("job") == job["id"]
    ]
    assert [(r["actor"], r["outcome"], r["resource"]["dataset"]) for r in train] == [
        (SCIENTIST, "success", f"{DATASET}@1")
    ]

    listed = authed.get(f"{server.url}/api/v1/training-jobs", params={"model": MODEL}, headers=scientist)
    assert job["id"] in [j["id"] for j in listed.json()]

    # The models pages show the job, its loss per epoch and the version it registered.
    page = authed.get(f"{server.url}/models", headers=scientist).text
    assert job["id"][:12] in page and f"{epochs[0]['train_loss']:.3f}" in page
    assert f"{MODEL} v1</a>, test AUROC {result['test_auroc']:.3f}" in page
    detail = authed.get(f"{server.url}/models/{MODEL}/training-jobs/{job['id']}", headers=scientist).text
    for epoch in epochs:
        assert f"{epoch['train_loss']:.4f}" in detail and f"{epoch['validation']['loss']:.4f}" in detail
    card = authed.get(f"{server.url}/models/{MODEL}/versions/1", headers=scientist).text
    assert f'<a href="/models/{MODEL}/training-jobs/{job["id"]}">' in card and " on cpu" in card


def test_what_a_run_would_refuse_is_refused_at_submit_and_nothing_is_queued_or_registered(
    server: RunningServer, scientist: dict[str, str], folder: Path
) -> None:
    platform = server.platform
    make_dataset(platform, folder, "broken")
    refusals: list[tuple[dict[str, Any], int, str]] = [
        ({"dataset": "nothing"}, 404, "data set 'nothing' does not exist"),
        ({"dataset_version": 7}, 404, "data set 'tiny' has no version 7; its versions are 1"),
        ({"model": "Bad Name"}, 400, "model name 'Bad Name' is not valid"),
        ({"config": {"epochs": 2, "learnin_rate": 0.1}}, 400, "unknown field 'learnin_rate'"),
        ({"config": {"augment": {"rotate": 5}}}, 400, "unknown field 'augment.rotate'"),
        (
            {"config": {"epochs": 0}},
            400,
            "epochs (0), batch size (8) and learning rate (0.002) must be positive",
        ),
        ({"config": {"batch_size": "eight"}}, 400, "'batch_size': Input should be a valid integer"),
        (
            {"config": {"augment": {"scale": [1, "x"]}}},
            400,
            "'augment.scale.1': Input should be a valid number",
        ),
        ({"config": {"device": "tpu"}}, 400, "field 'device' is 'tpu'; use auto, cpu, cuda or cuda:N"),
        ({"config": [1, 2]}, 400, "config"),
        ({"datset": "tiny"}, 400, "datset"),
    ]
    # A version whose split lacks a class or is empty (written before the split rules, or by hand):
    # the counts are taken from its items, which is what a run would read.
    with platform.store.engine.begin() as connection:
        connection.execute(
            update(DatasetItemRow)
            .where(DatasetItemRow.split == "test", DatasetItemRow.fracture.is_(True))
            .where(DatasetItemRow.version_id == select_version_id(platform, "broken"))
            .values(fracture=False, label=json.dumps({"fracture": False, "type": None, "boxes": []}))
        )
    refusals.append(
        ({"dataset": "broken"}, 400, "its test split has no image with a fracture (train: 64 with")
    )
    for body, status, message in refusals:
        answer = submit(server, scientist, **{"model": "never", **body})
        assert answer.status_code == status, (body, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert message in answer.json()["detail"], (body, answer.json())
    with platform.store.engine.begin() as connection:
        connection.execute(
            update(DatasetItemRow)
            .where(DatasetItemRow.split == "validation")
            .where(DatasetItemRow.version_id == select_version_id(platform, "broken"))
            .values(split="train")
        )
    answer = submit(server, scientist, dataset="broken", model="never")
    assert answer.status_code == 400
    assert (
        "data set 'broken' version 1 cannot be trained on: its validation split is empty"
        in answer.json()["detail"]
    )

    assert (
        authed.get(f"{server.url}/api/v1/training-jobs", params={"model": "never"}, headers=scientist).json()
        == []
    )
    assert authed.get(f"{server.url}/api/v1/models/never", headers=scientist).status_code == 404
    records = authed.get(f"{server.url}/api/v1/audit").json()
    refused = [
        r for r in records if r["resource"].get("event") == "train" and r["resource"]["model"] == "never"
    ]
    assert all(r["outcome"] == "failure" and r["actor"] == SCIENTIST for r in refused)
    assert any("its validation split is empty" in (r["reason"] or "") for r in refused)
    assert any("has no version 7" in (r["reason"] or "") for r in refused)


def select_version_id(platform: Platform, name: str) -> int:
    from sqlalchemy import select

    from radstack.ai.models import DatasetRow, DatasetVersionRow

    with platform.store.engine.connect() as connection:
        return int(
            connection.execute(
                select(DatasetVersionRow.id).join(DatasetRow).where(DatasetRow.name == name)
            ).scalar_one()
        )


def test_a_radiologist_may_neither_train_nor_see_training_jobs(server: RunningServer) -> None:
    radiologist = headers_of(server, "rita", "radiologist")
    answer = submit(server, radiologist, model="rita-model")
    assert answer.status_code == 403 and "may not manage models" in answer.json()["detail"]
    assert authed.get(f"{server.url}/api/v1/training-jobs", headers=radiologist).status_code == 403
    jobs = server.platform.training.find(SYSTEM, model="rita-model")
    assert jobs == []
    # The models page is theirs to read, without the training jobs.
    page = authed.get(f"{server.url}/models", headers=radiologist)
    assert page.status_code == 200 and "Training jobs" not in page.text


def test_a_cancelled_job_stops_keeps_its_checkpoint_and_registers_nothing(
    server: RunningServer, scientist: dict[str, str]
) -> None:
    job = submit(server, scientist, config={**CONFIG, "epochs": 60}).json()
    running = wait_for(
        server.url, job["id"], scientist, lambda j: len(j["epochs"]) >= 1 or j["state"] in FINAL
    )
    assert running["state"] == "RUNNING", running
    page = authed.get(f"{server.url}/models/{MODEL}/training-jobs/{job['id']}", headers=scientist).text
    assert "Cancel this training job" in page

    answer = authed.post(f"{server.url}/api/v1/training-jobs/{job['id']}/cancel", headers=scientist)
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    assert cancelled["state"] == "CANCELLED" and cancelled["error"] == f"cancelled by {SCIENTIST}"
    again = authed.post(f"{server.url}/api/v1/training-jobs/{job['id']}/cancel", headers=scientist)
    assert (
        again.status_code == 409 and "only a QUEUED or RUNNING job can be cancelled" in again.json()["detail"]
    )

    # The server runs one training job at a time: the next one starts once the cancelled run stopped.
    following = submit(server, scientist, config={**CONFIG, "epochs": 1}).json()
    wait_for(server.url, following["id"], scientist, lambda j: j["state"] != "QUEUED")
    path = checkpoint_path(server.platform.settings.data_dir, job["id"])
    completed = load_checkpoint_model(path)[2]
    assert 1 <= completed < 60  # kept for a resume
    time.sleep(1)
    assert load_checkpoint_model(path)[2] == completed  # nothing trains it any more
    stopped = authed.get(f"{server.url}/api/v1/training-jobs/{job['id']}", headers=scientist).json()
    assert stopped["state"] == "CANCELLED" and stopped["result"] is None
    assert job["id"] not in registered_by_jobs(server, scientist)
    wait_for(server.url, following["id"], scientist)


# ----------------------------------------------------------------------------------------- workers
#: The lease of the workers below: a killed worker's job is claimed again a few seconds later.
LEASE = 2.0
TRAINING_WORKER = ("--queues", "training")


@pytest.fixture
def api_node(tmp_path: Path, folder: Path) -> Iterator[RunningServer]:
    """A server that runs no jobs (their queue is in its data dir), with the data set ``tiny`` made."""
    settings = server_settings(tmp_path / "data", dicom_port=0, no_workers=True)
    for running in start_server(settings):
        make_dataset(running.platform, folder)
        yield running


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path / "data", tmp_path / "worker-logs")
    try:
        yield pool
    finally:
        pool.stop()


def test_a_killed_training_workers_job_resumes_from_its_checkpoint_to_the_uninterrupted_result(
    api_node: RunningServer, workers: Workers
) -> None:
    scientist = headers_of(api_node, SCIENTIST, "data-scientist")
    doomed = workers.start(*TRAINING_WORKER, job_lease_seconds=str(LEASE))
    job = submit(api_node, scientist).json()
    path = checkpoint_path(api_node.platform.settings.data_dir, job["id"])
    deadline = time.monotonic() + 180
    while not path.exists():  # the first epoch's checkpoint
        assert doomed.poll() is None and time.monotonic() < deadline, workers.log()
        time.sleep(0.01)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    completed = load_checkpoint_model(path)[2]
    assert 1 <= completed < 4
    orphan = api_node.platform.jobs.records.get(job["id"])
    assert orphan.state.value == "RUNNING" and f"/{doomed.pid}/" in str(orphan.lease_owner)

    workers.start(
        *TRAINING_WORKER, job_lease_seconds=str(LEASE)
    )  # its sweep queues the job again once the dead worker's lease has run out
    resumed = wait_for(api_node.url, job["id"], scientist)
    assert resumed["state"] == "SUCCEEDED", (resumed["error"], workers.log())
    assert resumed["attempts"] == 2
    assert resumed["runs"] == [
        {"attempt": 1, "resumed_from_epoch": 0, "device": "cpu"},
        {"attempt": 2, "resumed_from_epoch": completed, "device": "cpu"},
    ]
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3, 4]  # the epochs before the kill once

    # The same job again, never interrupted: the same history, the same model.
    again = submit(api_node, scientist).json()
    uninterrupted = wait_for(api_node.url, again["id"], scientist)
    assert uninterrupted["state"] == "SUCCEEDED" and uninterrupted["attempts"] == 1, workers.log()
    assert comparable(resumed["epochs"]) == comparable(uninterrupted["epochs"])
    first, second = (
        authed.get(f"{api_node.url}/api/v1/models/{MODEL}/versions/{n}", headers=scientist).json()
        for n in (resumed["model_version"], uninterrupted["model_version"])
    )
    assert first["lineage"]["training_job"] == job["id"] and second["lineage"]["training_job"] == again["id"]
    assert first["metrics"] == second["metrics"]  # the same predictions on the test split


def test_radstack_train_follows_the_job_to_its_registered_version(tmp_path: Path, folder: Path) -> None:
    data_dir = tmp_path / "data"
    platform = Platform.open(Settings(data_dir=data_dir, ingest_processes=0))
    try:
        make_dataset(platform, folder)
        platform.accounts.create_user(SCIENTIST, "data-scientist")
    finally:
        platform.close()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    pool = Workers(data_dir, tmp_path / "worker-logs")
    pool.start(*TRAINING_WORKER, job_lease_seconds=str(LEASE))

    def train(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [RADSTACK, "train", "--model", MODEL, "--user", SCIENTIST, "--data-dir", str(data_dir), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    try:
        done = train("--dataset", f"{DATASET}:1", "--config", str(config), "--epochs", "3", "--follow")
        assert done.returncode == 0, (done.stderr, pool.log())
        lines = done.stdout.splitlines()
        epochs = [line for line in lines if line.startswith("epoch ")]
        assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], done.stdout
        assert all("train loss" in line and "validation loss" in line and "AUROC" in line for line in epochs)
        assert re.fullmatch(
            rf"registered {MODEL} v1 \(pending: someone other than {SCIENTIST} approves it\): test AUROC "
            r"[01]\.\d{3} \(95% CI [01]\.\d{3}-[01]\.\d{3}\) on 32 test images",
            lines[-1],
        ), lines[-1]
        assert re.search(r"training job [0-9a-f]{32}: data set tiny version 1 into model", done.stderr)
        assert re.search(r"\] \d+/48 batches, epoch [1-3]/3", done.stderr), done.stderr  # the progress bar

        broken = tmp_path / "broken.json"
        broken.write_text(json.dumps({**CONFIG, "learning_rate": 1e30}))
        failed = train("--dataset", DATASET, "--config", str(broken), "--follow")
        assert failed.returncode == 1, failed.stderr
        assert "is FAILED: training diverged in epoch 1" in failed.stderr

        refused = train("--dataset", "nothing", "--follow")
        assert (
            refused.returncode == 2 and "radstack train: data set 'nothing' does not exist" in refused.stderr
        )
    finally:
        pool.stop()

"""Jobs go to the named queue of their kind: a node consumes only the queues it is given, and a node
that cannot run a kind (no handler: an API node without the GPU) still submits it.

Real ``radstack worker --queues …`` processes on Redis, and the in-process consumers of
``radstack serve`` on the default SQLite queue."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from radstack.config import Settings
from radstack.jobs import JobState
from tests.conftest import RunningServer, free_port, start_server
from tests.jobs.conftest import finished, wait_for_job
from tests.jobs.plugin import ECHO, TRAIN, EchoParams, TrainParams, echo, runs_of, train
from tests.processes import RADSTACK, Workers

#: Long enough for a consumer of a queue to take a waiting job (they poll at most every 0.5 s).
NOT_TAKEN_SECONDS = 2.0


def test_a_worker_takes_only_the_jobs_of_the_queues_it_names(
    api_node: RunningServer, workers: Workers, runs: Path
) -> None:
    jobs = api_node.platform.jobs
    assert not jobs.handles(TRAIN.name) and not jobs.handles(ECHO.name), "the API node runs neither"
    training, _ = jobs.submit(TRAIN, TrainParams(runs=str(runs)))
    other, _ = jobs.submit(ECHO, EchoParams(runs=str(runs)))
    assert training.state is JobState.QUEUED and other.state is JobState.QUEUED

    trainer = workers.start("--queues", "training")
    done = wait_for_job(api_node, training.id, finished, why=workers.log())
    assert done.state is JobState.SUCCEEDED and done.progress == {"pid": trainer.pid, "attempt": 1}
    time.sleep(NOT_TAKEN_SECONDS)
    assert jobs.records.get(other.id).state is JobState.QUEUED, "a training worker took a default job"
    assert runs_of(runs, other.id) == []

    generalist = workers.start("--queues", "default")
    done = wait_for_job(api_node, other.id, finished, why=workers.log())
    assert done.state is JobState.SUCCEEDED and done.progress == {"pid": generalist.pid}
    assert runs_of(runs, training.id) == [["start", str(trainer.pid), "1"], ["end", str(trainer.pid)]]


def test_a_worker_refuses_a_queue_nobody_declared(api_node: RunningServer) -> None:
    done = subprocess.run(
        [RADSTACK, "worker", "--data-dir", str(api_node.platform.settings.data_dir), "--queues", "gpu"],
        env={**os.environ, "RADSTACK_QUEUE_URL": api_node.platform.settings.queue_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "queue 'gpu' is not declared; declared queues: default, ingest, inference, training" in done.stderr


@pytest.fixture
def trainer(tmp_path: Path) -> Iterator[RunningServer]:
    """``radstack serve`` on the default SQLite queue, consuming only ``training`` in-process."""
    settings = Settings(
        data_dir=tmp_path / "trainer",
        http_port=free_port(),
        dicom_port=0,
        ingest_processes=0,
        worker_queues=["training"],
    )
    yield from start_server(settings)


def test_a_server_consumes_only_the_queues_it_is_given(trainer: RunningServer, runs: Path) -> None:
    jobs = trainer.platform.jobs
    jobs.register(ECHO, echo)
    jobs.register(TRAIN, train)  # its queue is one this server serves: consumed from now on
    assert jobs.queues(trainer.platform.settings.worker_queues) == ["training"]
    training, _ = jobs.submit(TRAIN, {"runs": str(runs), "seconds": 0.2})
    other, _ = jobs.submit(ECHO, {"runs": str(runs)})

    done = wait_for_job(trainer, training.id, finished)
    assert done.state is JobState.SUCCEEDED and done.progress == {"pid": os.getpid(), "attempt": 1}
    time.sleep(NOT_TAKEN_SECONDS)
    assert jobs.records.get(other.id).state is JobState.QUEUED
    assert runs_of(runs, other.id) == []

"""A real Redis server for queue tests, started from Debian's ``redis-server`` binary; an API node
and ``radstack worker`` processes with the test plugin on it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from radstack.config import Settings
from radstack.jobs.records import FINAL_STATES, Job
from tests.conftest import RunningServer, free_port, start_server
from tests.processes import Workers


@pytest.fixture
def api_node(tmp_path: Path, redis_url: str) -> Iterator[RunningServer]:
    """An API server that runs no jobs (``--no-workers``): it submits jobs to the Redis queue."""
    settings = Settings(
        data_dir=tmp_path / "data",
        http_port=free_port(),
        dicom_port=0,
        ingest_processes=0,
        queue_url=redis_url,
        no_workers=True,
    )
    yield from start_server(settings)


@pytest.fixture
def workers(api_node: RunningServer, redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(
        api_node.platform.settings.data_dir,
        tmp_path / "worker-logs",
        queue_url=redis_url,
        plugins="tests.jobs.plugin",
    )
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Where the plugin's jobs note their runs."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


def wait_for_job(
    server: RunningServer, job_id: str, done: Callable[[Job], bool], timeout: float = 60, why: str = ""
) -> Job:
    """The job once ``done(job)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        job = server.platform.jobs.records.get(job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} is {job.state} ({job.progress}) {why}"
        time.sleep(0.1)


def finished(job: Job) -> bool:
    return job.state in FINAL_STATES

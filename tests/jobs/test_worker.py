"""``radstack worker`` processes take jobs from a Redis queue that a server without workers fills."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from radstack.config import Settings
from tests import authed
from tests.conftest import RunningServer, free_port, start_server
from tests.helpers import part10, synthetic_ct
from tests.processes import start_worker


@pytest.fixture
def api_only(tmp_path: Path, redis_url: str) -> Iterator[RunningServer]:
    settings = Settings(
        data_dir=tmp_path / "data",
        http_port=free_port(),
        dicom_port=0,
        ingest_processes=0,
        queue_url=redis_url,
        no_workers=True,
    )
    yield from start_server(settings)


def test_a_worker_process_runs_the_jobs_a_server_without_workers_queued(
    api_only: RunningServer, redis_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    study = "1.2.826.0.1.3680043.8.498.31"
    for n in range(20):
        (source / f"{n}.dcm").write_bytes(part10(synthetic_ct(seed=n, study=study)))
    job_id = authed.post(f"{api_only.url}/api/v1/import-jobs", json={"source": str(source)}).json()["id"]
    time.sleep(1)
    assert authed.get(f"{api_only.url}/api/v1/jobs/{job_id}").json()["state"] == "QUEUED", "no consumer here"

    env = {"RADSTACK_QUEUE_URL": redis_url, "RADSTACK_INGEST_PROCESSES": "0"}
    worker = start_worker(api_only.platform.settings.data_dir, env)
    try:
        deadline = time.monotonic() + 60
        while (job := authed.get(f"{api_only.url}/api/v1/jobs/{job_id}").json())["state"] != "SUCCEEDED":
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else "worker exited"
            assert job["state"] in ("QUEUED", "RUNNING") and time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["progress"]["stored"] == 20
        assert len(authed.get(f"{api_only.dicomweb}/studies/{study}/instances").json()) == 20
    finally:
        worker.send_signal(signal.SIGINT)  # graceful: finish the running job, then exit
        assert worker.wait(timeout=30) == 0

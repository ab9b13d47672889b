"""The durable job queue: real Huey (SQLite file, or Redis) consumers inside a running server.

Job state lives in the database: retries with backoff, a dead letter after the last attempt, the
requeue call, and a job whose worker vanished resumed by the sweep.
"""

from __future__ import annotations

import threading
import time

import pytest

from radstack.errors import BadRequest
from radstack.jobs import JobContext, JobParams, JobState, declare
from tests import authed
from tests.conftest import RunningServer


class Count(JobParams):
    n: int


FLAKY = declare("test-flaky", Count)
BROKEN = declare("test-broken", JobParams)
PICKY = declare("test-picky", JobParams)
RESUMABLE = declare("test-resumable", JobParams)
#: No process here runs it: only this test claims it, by hand.
ORPHANED = declare("test-orphaned", JobParams)
STOPPABLE = declare("test-stoppable", JobParams)


def wait_for_state(
    server: RunningServer, job_id: str, states: set[str], timeout: float = 30
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, object] = authed.get(f"{server.url}/api/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stayed {job['state']}"
        time.sleep(0.05)


@pytest.fixture
def fast_retries(server: RunningServer) -> RunningServer:
    server.platform.jobs.backoff_seconds = 0.05
    return server


def test_a_failing_job_is_retried_with_backoff_until_it_succeeds(fast_retries: RunningServer) -> None:
    runs: list[float] = []

    def flaky(context: JobContext[Count]) -> dict[str, object]:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise OSError("the archive share is not mounted yet")
        return {"done": context.params.n}

    fast_retries.platform.jobs.register(FLAKY, flaky)
    job, created = fast_retries.platform.jobs.submit(FLAKY, Count(n=7))
    assert created
    finished = wait_for_state(fast_retries, job.id, {"SUCCEEDED", "DEAD", "FAILED"})
    assert finished["state"] == "SUCCEEDED" and finished["attempts"] == 3
    assert finished["progress"] == {"done": 7}
    # Backoff 0.05 s, then 0.1 s (the queue's scheduler wakes once a second, so it may wait longer).
    assert runs[1] - runs[0] >= 0.05 and runs[2] - runs[1] >= 0.1


def test_after_the_last_attempt_a_job_is_dead_until_requeued(fast_retries: RunningServer) -> None:
    healthy = threading.Event()

    def broken(context: JobContext[JobParams]) -> dict[str, object]:
        if not healthy.is_set():
            raise RuntimeError("the peer refused the association")
        return {}

    fast_retries.platform.jobs.register(BROKEN, broken)
    job, _ = fast_retries.platform.jobs.submit(BROKEN, {})
    dead = wait_for_state(fast_retries, job.id, {"SUCCEEDED", "DEAD", "FAILED"})
    assert dead["state"] == "DEAD" and dead["attempts"] == fast_retries.platform.settings.job_max_attempts
    assert "RuntimeError: the peer refused the association" in str(dead["last_error"])
    letters = authed.get(f"{fast_retries.url}/api/v1/jobs", params={"state": "DEAD"}).json()
    assert [j["id"] for j in letters] == [job.id]

    healthy.set()
    requeued = authed.post(f"{fast_retries.url}/api/v1/jobs/{job.id}/requeue")
    assert requeued.status_code == 200 and requeued.json()["state"] in ("QUEUED", "RUNNING", "SUCCEEDED")
    done = wait_for_state(fast_retries, job.id, {"SUCCEEDED", "DEAD", "FAILED"})
    assert done["state"] == "SUCCEEDED" and done["attempts"] == 1

    again = authed.post(f"{fast_retries.url}/api/v1/jobs/{job.id}/requeue")
    assert again.status_code == 409 and "only FAILED, DEAD or CANCELLED" in again.json()["detail"]


def test_a_cancelled_job_stops_at_its_next_report_and_can_be_requeued(server: RunningServer) -> None:
    started, stopped = threading.Event(), threading.Event()
    runs: list[int] = []

    def stoppable(context: JobContext[JobParams]) -> dict[str, object]:
        runs.append(context.job.attempts)
        if len(runs) == 1:
            started.set()
            try:
                for step in range(10_000):
                    context.report({"step": step})  # raises once the job is cancelled
                    time.sleep(0.02)
            finally:
                stopped.set()
        return {"run": len(runs)}

    server.platform.jobs.register(STOPPABLE, stoppable)
    job, _ = server.platform.jobs.submit(STOPPABLE, {})
    assert started.wait(30)
    answer = authed.post(f"{server.url}/api/v1/jobs/{job.id}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "CANCELLED" and answer.json()["last_error"] == "cancelled by admin"
    assert stopped.wait(10)
    time.sleep(0.2)
    after = server.platform.jobs.records.get(job.id)
    assert after.state is JobState.CANCELLED and after.finished_at is not None
    assert after.progress.get("step", 0) < 10_000 - 1  # stopped, and recorded nothing after the cancel
    again = authed.post(f"{server.url}/api/v1/jobs/{job.id}/cancel")
    assert (
        again.status_code == 409 and "only a QUEUED or RUNNING job can be cancelled" in again.json()["detail"]
    )

    assert authed.post(f"{server.url}/api/v1/jobs/{job.id}/requeue").status_code == 200
    done = wait_for_state(server, job.id, {"SUCCEEDED", "FAILED", "DEAD"})
    assert done["state"] == "SUCCEEDED" and done["progress"] == {"run": 2}


def test_a_client_mistake_fails_at_once_without_retries(fast_retries: RunningServer) -> None:
    def picky(context: JobContext[JobParams]) -> dict[str, object]:
        raise BadRequest("source '/nowhere' is not a directory this server can read")

    fast_retries.platform.jobs.register(PICKY, picky)
    job, _ = fast_retries.platform.jobs.submit(PICKY, {})
    failed = wait_for_state(fast_retries, job.id, {"SUCCEEDED", "DEAD", "FAILED"})
    assert failed["state"] == "FAILED" and failed["attempts"] == 1
    assert "'/nowhere' is not a directory" in str(failed["last_error"])


def test_a_job_whose_worker_vanished_is_resumed_by_the_sweep(server: RunningServer) -> None:
    jobs = server.platform.jobs
    jobs.register(RESUMABLE, lambda context: {"resumed_on_attempt": context.job.attempts})
    records = jobs.records
    job, _ = records.create(RESUMABLE.name, {})  # recorded, no message: as if the queue lost it
    stolen = records.claim(job.id)  # a worker took it and died without a trace
    assert stolen is not None and stolen.state is JobState.RUNNING and stolen.lease_owner
    assert jobs.execute(job.id) is None, "a job leased to a live worker is not run twice"

    lease, records.lease = records.lease, records.lease * 0
    assert records.heartbeat(job.id, stolen.lease_owner)  # its last heartbeat: the lease runs out now
    records.lease = lease
    assert jobs.sweep() == 1
    done = wait_for_state(server, job.id, {"SUCCEEDED"})
    assert done["progress"] == {"resumed_on_attempt": 2}


def test_a_job_that_takes_its_worker_down_on_every_attempt_ends_dead(server: RunningServer) -> None:
    jobs = server.platform.jobs
    records = jobs.records
    job, _ = records.create(ORPHANED.name, {})
    lease = records.lease
    for _attempt in range(job.max_attempts):  # each run's worker dies (out of memory, say)
        claimed = records.claim(job.id)
        assert claimed is not None and claimed.lease_owner is not None
        records.lease = records.lease * 0
        assert records.heartbeat(job.id, claimed.lease_owner)  # its last heartbeat: the lease ends now
        records.lease = lease
        jobs.sweep()
    dead = wait_for_state(server, job.id, {"DEAD"})
    assert dead["attempts"] == job.max_attempts
    assert "no longer renewed the lease" in str(dead["last_error"])
    assert records.claim(job.id) is None, "a dead job is not claimed again until requeued"


def test_unknown_jobs_are_404_problems(server: RunningServer) -> None:
    response = authed.get(f"{server.url}/api/v1/jobs/0123456789abcdef")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "0123456789abcdef" in response.json()["detail"]


def test_parameters_that_do_not_fit_the_kind_are_refused_naming_the_field(server: RunningServer) -> None:
    jobs = server.platform.jobs
    with pytest.raises(BadRequest) as refused:
        jobs.submit("import", {"sauce": "/data/in"})
    assert refused.value.http_status == 400
    assert refused.value.message == (
        "import job parameters are not valid: 'source': Field required; "
        "'sauce': Extra inputs are not permitted"
    )
    with pytest.raises(BadRequest, match=r"'n': Input should be a valid integer.*, not 'seven'$"):
        jobs.submit(FLAKY, {"n": "seven"})
    with pytest.raises(BadRequest, match=r"job kind 'imprt' is not declared; declared kinds: .*import"):
        jobs.submit("imprt", {"source": "/data/in"})
    assert jobs.records.find(kind="import") == [] and jobs.records.find(kind=FLAKY.name) == []

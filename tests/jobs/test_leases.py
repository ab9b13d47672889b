"""Leases: a live worker keeps its job by heartbeat however long it runs, a killed worker's job is
claimed again once its lease has run out, and a worker paused past its lease learns that the job is
no longer its own and records nothing. Real ``radstack worker`` processes on Redis, with a short
lease, running the plugin's ``test-train`` jobs (which never report progress: only the heartbeat
thread renews their lease)."""

from __future__ import annotations

import signal
from pathlib import Path

from radstack.jobs import JobState
from tests.conftest import RunningServer
from tests.jobs.conftest import finished, wait_for_job
from tests.jobs.plugin import TRAIN, TrainParams, runs_of
from tests.processes import Workers

LEASE = 2.0
SETTINGS = {"job_lease_seconds": str(LEASE)}


def test_a_job_running_for_many_leases_is_never_taken_by_a_second_worker(
    api_node: RunningServer, workers: Workers, runs: Path
) -> None:
    first, second = (workers.start("--queues", "training", **SETTINGS) for _ in range(2))
    job, _ = api_node.platform.jobs.submit(TRAIN, TrainParams(runs=str(runs), seconds=5 * LEASE))
    done = wait_for_job(api_node, job.id, finished, why=workers.log())
    assert done.state is JobState.SUCCEEDED and done.attempts == 1, workers.log()
    pid = done.progress["pid"]
    assert pid in (first.pid, second.pid)
    assert runs_of(runs, job.id) == [["start", str(pid), "1"], ["end", str(pid)]]


def test_a_killed_workers_job_is_claimed_again_once_its_lease_ran_out(
    api_node: RunningServer, workers: Workers, runs: Path
) -> None:
    doomed = workers.start("--queues", "training", **SETTINGS)
    job, _ = api_node.platform.jobs.submit(TRAIN, TrainParams(runs=str(runs), seconds=2 * LEASE))
    wait_for_job(api_node, job.id, lambda _job: bool(runs_of(runs, job.id)), why=workers.log())
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    orphan = api_node.platform.jobs.records.get(job.id)
    assert orphan.state is JobState.RUNNING and f"/{doomed.pid}/" in str(orphan.lease_owner)

    survivor = workers.start("--queues", "training", **SETTINGS)
    done = wait_for_job(api_node, job.id, finished, why=workers.log())
    assert done.state is JobState.SUCCEEDED and done.attempts == 2, workers.log()
    assert done.progress == {"pid": survivor.pid, "attempt": 2}
    assert runs_of(runs, job.id) == [
        ["start", str(doomed.pid), "1"],
        ["start", str(survivor.pid), "2"],
        ["end", str(survivor.pid)],
    ]


def test_a_worker_paused_past_its_lease_stops_and_overwrites_nothing(
    api_node: RunningServer, workers: Workers, runs: Path
) -> None:
    paused = workers.start("--queues", "training", **SETTINGS)
    job, _ = api_node.platform.jobs.submit(TRAIN, TrainParams(runs=str(runs), seconds=2 * LEASE))
    wait_for_job(api_node, job.id, lambda _job: bool(runs_of(runs, job.id)), why=workers.log())
    paused.send_signal(signal.SIGSTOP)  # as a VM suspended, or a process swapped out, for a while

    other = workers.start("--queues", "training", **SETTINGS)
    done = wait_for_job(api_node, job.id, finished, why=workers.log())
    assert done.state is JobState.SUCCEEDED and done.progress == {"pid": other.pid, "attempt": 2}

    paused.send_signal(signal.SIGCONT)
    stopped = ["stopped", str(paused.pid)]
    wait_for_job(api_node, job.id, lambda _job: stopped in runs_of(runs, job.id), why=workers.log())
    after = api_node.platform.jobs.records.get(job.id)
    assert (after.state, after.attempts, after.progress) == (done.state, 2, done.progress)
    assert ["end", str(paused.pid)] not in runs_of(runs, job.id)
    assert "lost its lease" in workers.log()

"""A plugin (``RADSTACK_PLUGINS=tests.jobs.plugin``) with job kinds of its own, for the queue and lease
tests: ``test-train`` on the ``training`` queue (a long job that checks ``stopping`` between steps
and never reports progress, as a training loop between checkpoints) and ``test-echo`` on ``default``.

Importing it declares the kinds (what an API node needs to submit them); ``setup`` registers their
handlers (what a worker needs to run them). Each run appends a line to ``<runs>/<job id>``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from radstack.jobs import JobContext, JobParams, declare
from radstack.jobs.kinds import DEFAULT_QUEUE, TRAINING_QUEUE
from radstack.platform import Platform

#: One step of the fake training: how often it asks whether it must stop.
STEP_SECONDS = 0.1


class TrainParams(JobParams):
    runs: str
    seconds: float = 0.0


class EchoParams(JobParams):
    runs: str


TRAIN = declare("test-train", TrainParams, queue=TRAINING_QUEUE)
ECHO = declare("test-echo", EchoParams, queue=DEFAULT_QUEUE)


def note(runs: str, job_id: str, line: str) -> None:
    with (Path(runs) / job_id).open("a") as file:
        file.write(f"{line}\n")


def runs_of(runs: Path, job_id: str) -> list[list[str]]:
    """The lines the job's runs wrote, split into words: ``start <pid> <attempt>``, ``end <pid>``,
    ``stopped <pid>``."""
    path = runs / job_id
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def train(context: JobContext[TrainParams]) -> dict[str, object]:
    params, pid = context.params, os.getpid()
    note(params.runs, context.job.id, f"start {pid} {context.job.attempts}")
    for _step in range(round(params.seconds / STEP_SECONDS)):
        time.sleep(STEP_SECONDS)  # time a SIGSTOP holds the process does not count
        if context.stopping():
            note(params.runs, context.job.id, f"stopped {pid}")
            context.report({"stopped_by": pid})  # raises: the job is given back, or is not ours
    note(params.runs, context.job.id, f"end {pid}")
    return {"pid": pid, "attempt": context.job.attempts}


def echo(context: JobContext[EchoParams]) -> dict[str, object]:
    note(context.params.runs, context.job.id, f"end {os.getpid()}")
    return {"pid": os.getpid()}


def setup(platform: Platform) -> None:
    platform.jobs.register(TRAIN, train)
    platform.jobs.register(ECHO, echo)

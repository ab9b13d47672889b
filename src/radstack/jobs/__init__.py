"""Durable jobs: records in the database, named queues (Huey) that carry their ids, workflows on top."""

from radstack.jobs.kinds import JobKind, JobParams, declare, declare_queue
from radstack.jobs.queue import JobContext, JobInterrupted, JobLeaseLost, JobQueue
from radstack.jobs.records import Job, JobState, JobStore

__all__ = [
    "Job",
    "JobContext",
    "JobInterrupted",
    "JobKind",
    "JobLeaseLost",
    "JobParams",
    "JobQueue",
    "JobState",
    "JobStore",
    "declare",
    "declare_queue",
]

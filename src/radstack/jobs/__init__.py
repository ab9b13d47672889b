"""Durable jobs: records in the database, a queue (Huey) that carries their ids, workflows on top."""

from radstack.jobs.queue import JobContext, JobQueue
from radstack.jobs.records import Job, JobState, JobStore

__all__ = ["Job", "JobContext", "JobQueue", "JobState", "JobStore"]

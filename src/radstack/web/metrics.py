"""What ``/metrics`` reports beyond HTTP: job queue depths and inference latency, read at each scrape.

Queue depths and the inference latency come from the job records in the index, which every node
shares: a scrape of any API node shows the whole cluster's queues and the latency of inference run by
any worker. ``radstack_inference_seconds`` is this process's own model time (decode, preprocessing,
``session.run``), observed as each run ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from radstack.ai.inference import INFER
from radstack.jobs.kinds import declared_kinds
from radstack.jobs.records import JobState, JobStore

__all__ = ["JobsCollector", "inference_histogram"]

#: The window the end-to-end inference latency quantiles are taken over.
LATENCY_WINDOW = timedelta(minutes=15)
_QUANTILES = (0.5, 0.9, 0.95, 0.99)


def inference_histogram(registry: CollectorRegistry) -> Histogram:
    """Model time per run in this process, by model."""
    return Histogram(
        "radstack_inference_seconds",
        "Model time per inference run in this process (decode, preprocessing, model), by model",
        ["model"],
        registry=registry,
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )


class JobsCollector(Collector):
    """Queue depths by queue and state, and the latency of ``infer`` jobs from submission to stored
    result over the last :data:`LATENCY_WINDOW`, from the job records."""

    def __init__(self, records: Callable[[], JobStore | None]) -> None:
        self.records = records

    def collect(self) -> Iterator[Metric]:
        records = self.records()
        if records is None:  # the app has not started
            return
        queues = {kind.name: kind.queue for kind in declared_kinds()}
        depth = GaugeMetricFamily(
            "radstack_jobs", "Jobs waiting or running, by queue and state", labels=["queue", "state"]
        )
        totals: dict[tuple[str, str], int] = {
            (queue, state.value): 0
            for queue in set(queues.values())
            for state in (JobState.QUEUED, JobState.RUNNING)
        }
        for (kind, state), count in records.counts().items():
            key = (queues.get(kind, "unknown"), state)
            totals[key] = totals.get(key, 0) + count
        for (queue, state), count in sorted(totals.items()):
            depth.add_metric([queue, state], count)
        yield depth
        durations = records.durations(INFER.name, datetime.now(UTC) - LATENCY_WINDOW)
        latency = GaugeMetricFamily(
            "radstack_inference_latency_seconds",
            "Seconds from an infer job's submission to its stored result, quantiles over the last 15 minutes",
            labels=["quantile"],
        )
        if durations:
            for q, value in zip(_QUANTILES, np.quantile(durations, _QUANTILES), strict=True):
                latency.add_metric([str(q)], float(value))
        yield latency
        yield GaugeMetricFamily(
            "radstack_inference_runs_recent",
            "infer jobs that stored a result in the last 15 minutes",
            value=len(durations),
        )

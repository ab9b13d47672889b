"""The running platform: settings plus the services built from them, created once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from radstack.config import Settings
from radstack.dimse.peers import PeerRegistry
from radstack.dimse.scu import send_instances
from radstack.ingest.importjobs import IMPORT_KIND, ImportRunner
from radstack.ingest.pool import IngestPool
from radstack.ingest.watch import INBOX_KIND, Inbox, InboxRunner, InboxWatcher, open_inbox
from radstack.jobs.queue import JobQueue
from radstack.jobs.records import JobStore
from radstack.jobs.routing import ACTION_KIND, RouteActionRunner, RuleStore, StableStudyRunner
from radstack.jobs.workflows import STABLE_KIND, WEBHOOK_KIND, EventLog, StabilityMonitor, deliver_webhook
from radstack.store.blobs import open_blob_store
from radstack.store.index import create_index_engine, migrate
from radstack.store.studies import InstanceRecord, StudyStore

__all__ = ["Platform"]


@dataclass
class Platform:
    settings: Settings
    store: StudyStore
    jobs: JobQueue
    events: EventLog
    rules: RuleStore
    peers: PeerRegistry
    analyser: IngestPool | None = None
    inboxes: list[Inbox] = field(default_factory=list)
    watchers: list[InboxWatcher] = field(default_factory=list)
    monitor: StabilityMonitor | None = None

    @classmethod
    def open(cls, settings: Settings) -> Platform:
        """Create the data dir, migrate the index to the newest schema and open the blob store."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_index_engine(settings.resolved_database_url)
        migrate(engine)
        blob_url = settings.resolved_blob_url
        store = StudyStore(engine, open_blob_store(blob_url))
        analyser = IngestPool(settings.ingest_processes, blob_url) if settings.ingest_processes else None
        records = JobStore(
            engine, max_attempts=settings.job_max_attempts, lease_seconds=settings.job_lease_seconds
        )
        jobs = JobQueue(settings.queue_url, settings.data_dir, records)
        # Two files per ingest process keep every process busy while the next file is read.
        parallel = 2 * analyser.processes if analyser is not None else 2
        jobs.register(IMPORT_KIND, ImportRunner(store, analyser, parallel))
        inboxes = [open_inbox(str(settings.resolved_inbox_dir))] if settings.watch_inbox else []
        if settings.inbox_url:
            inboxes.append(open_inbox(settings.inbox_url))
        jobs.register(INBOX_KIND, InboxRunner({inbox.name: inbox for inbox in inboxes}, store, analyser))
        events = EventLog(engine, jobs, settings.event_webhooks)
        rules = RuleStore(engine)
        jobs.register(WEBHOOK_KIND, deliver_webhook)
        jobs.register(STABLE_KIND, StableStudyRunner(store, rules, events, jobs))
        peers = PeerRegistry(engine, settings.peers)
        platform = cls(
            settings=settings,
            store=store,
            jobs=jobs,
            events=events,
            rules=rules,
            peers=peers,
            analyser=analyser,
            inboxes=inboxes,
        )
        jobs.register(ACTION_KIND, RouteActionRunner(store, platform.forward))
        return platform

    def forward(self, ae_title: str, records: list[InstanceRecord]) -> dict[str, Any]:
        """C-STORE ``records`` to the registered peer ``ae_title`` (routing's ``forward`` action)."""
        peer = self.peers.get(ae_title)
        return send_instances(self.store, peer, records, calling_ae=self.settings.ae_title)

    def start_workers(self) -> None:
        """Run job consumer threads, the drop-folder watcher and the study-stable monitor here
        (``radstack serve`` without ``--no-workers``)."""
        self.jobs.start_consumer(self.settings.queue_workers)
        self._start_monitors()

    def run_worker(self) -> None:
        """Consume jobs until SIGINT or SIGTERM, with the watcher and monitor (``radstack worker``)."""
        self._start_monitors()
        try:
            self.jobs.run_worker(self.settings.queue_workers)
        finally:
            self.stop_workers()

    def _start_monitors(self) -> None:
        if not self.watchers:
            settle = self.settings.inbox_settle_seconds
            self.watchers = [InboxWatcher(inbox, self.jobs, settle_seconds=settle) for inbox in self.inboxes]
            for watcher in self.watchers:
                watcher.thread.start()
        if self.monitor is None:
            self.monitor = StabilityMonitor(
                self.store.engine, self.jobs, stable_seconds=self.settings.stable_seconds
            )
            self.monitor.thread.start()

    def stop_workers(self) -> None:
        if self.monitor is not None:
            self.monitor.thread.stop()
            self.monitor = None
        for watcher in self.watchers:
            watcher.thread.stop()
        self.watchers = []
        self.jobs.stop_consumer()

    def close(self) -> None:
        self.stop_workers()
        if self.analyser is not None:
            self.analyser.close()
        self.store.close()

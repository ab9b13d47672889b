"""The running platform: settings plus the services built from them, created once per process."""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from radstack.ai.datasets import DATASET, DatasetRunner, DatasetService
from radstack.ai.engine import ModelCache
from radstack.ai.findings import AiResults, ResultRecord, Review, ReviewDecision
from radstack.ai.inference import INFER, INFER_BATCH, BatchInferRunner, InferAction, Inference, InferRunner
from radstack.ai.registry import ModelRegistry, ModelVersion
from radstack.ai.splits import assign_splits
from radstack.ai.starter import install_starter
from radstack.ai.training import TRAINING, TrainingRunner, TrainingService
from radstack.config import Settings
from radstack.dicom.config import configure_pydicom
from radstack.dicom.deid import Deidentifier
from radstack.dimse.peers import PeerRegistry
from radstack.dimse.scp import DimseConfig, DimseServer
from radstack.dimse.scu import send_instances
from radstack.errors import NotFound
from radstack.ingest.importjobs import IMPORT, ImportRunner
from radstack.ingest.items import ImportItems
from radstack.ingest.options import IngestOptions
from radstack.ingest.pool import IngestPool
from radstack.ingest.watch import INBOX, Inbox, InboxRunner, InboxWatcher, open_inbox
from radstack.jobs.queue import JobQueue
from radstack.jobs.records import JobStore
from radstack.jobs.routing import (
    ACTION,
    ArrivalRouter,
    RouteActionRunner,
    RoutingRule,
    RuleStore,
    RuleTrigger,
    StableStudyRunner,
)
from radstack.jobs.workflows import STABLE, WEBHOOK, EventLog, StabilityMonitor, deliver_webhook
from radstack.labeling.blinding import Blinding
from radstack.labeling.export import LABEL_EXPORT, LabelExportRunner, LabelExports
from radstack.labeling.intake import LabelIntake
from radstack.labeling.projects import ProjectService
from radstack.labeling.report import AgreementService
from radstack.labeling.review import ReviewService, open_review
from radstack.security.atna import AtnaSender
from radstack.security.audit import AuditLog, AuditWriter, load_audit_key
from radstack.security.authn import Accounts, OidcVerifier
from radstack.security.crypto import KeyConfig, open_encrypted_blob_store
from radstack.security.index_key import open_index_engine
from radstack.security.keyfile import load_secret
from radstack.security.policy import Policy, Principal, RoleDef, load_roles
from radstack.security.views import View
from radstack.store.index import migrate
from radstack.store.studies import InstanceRecord, StudyStore

__all__ = ["DEFAULT_AI_RULE", "Platform"]

log = logging.getLogger(__name__)

#: The rule a fresh data dir gets with the starter model: every radiograph checked as it arrives.
DEFAULT_AI_RULE = RoutingRule(
    name="ai-fracture",
    trigger=RuleTrigger.ARRIVAL,
    conditions={"Modality": ["CR", "DX"]},
    actions=[InferAction(model="fracture")],
)


@dataclass
class Platform:
    settings: Settings
    store: StudyStore
    jobs: JobQueue
    events: EventLog
    rules: RuleStore
    peers: PeerRegistry
    policy: Policy
    accounts: Accounts
    audit: AuditWriter
    deidentifier: Deidentifier
    #: Import jobs' file outcomes (their manifests).
    import_items: ImportItems
    #: The ingest settings every way in (STOW, C-STORE, import jobs, drop folders, demo) passes down.
    ingest_options: IngestOptions = field(default_factory=IngestOptions)
    oidc: OidcVerifier | None = None
    analyser: IngestPool | None = None
    inboxes: list[Inbox] = field(default_factory=list)
    watchers: list[InboxWatcher] = field(default_factory=list)
    monitor: StabilityMonitor | None = None

    @classmethod
    def open(cls, settings: Settings) -> Platform:
        """Create the data dir, migrate the index to the newest schema and open the blob store."""
        configure_pydicom()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        blob_url = settings.resolved_blob_url
        # Every blob is encrypted at rest; the ingest processes open the same store from the same settings.
        keys = KeyConfig(settings.resolved_key_url, allow_plaintext=settings.allow_plaintext_blobs)
        # So is an embedded (SQLite) index, under a key wrapped by the same KEK.
        engine = open_index_engine(settings, keys.open_provider())
        migrate(engine)
        store = StudyStore(engine, open_encrypted_blob_store(blob_url, keys))
        processes = settings.ingest_processes
        analyser = IngestPool(processes, blob_url, keys) if processes else None
        records = JobStore(
            engine, max_attempts=settings.job_max_attempts, lease_seconds=settings.job_lease_seconds
        )
        # The sweep looks for jobs whose lease ran out at least as often as a lease lasts.
        sweep = min(5.0, settings.job_lease_seconds)
        jobs = JobQueue(settings.queue_url, settings.data_dir, records, sweep_seconds=sweep)
        import_items = ImportItems(engine)
        # Two files per ingest process keep every process busy while the next file is read.
        parallel = 2 * analyser.processes if analyser is not None else 2
        policy = Policy(load_roles(settings.roles_file), store.study_scope)
        ingest_options = IngestOptions.from_settings(settings)
        jobs.register(IMPORT, ImportRunner(store, import_items, analyser, parallel, policy, ingest_options))
        inboxes = [open_inbox(str(settings.resolved_inbox_dir))] if settings.watch_inbox else []
        if settings.inbox_url:
            inboxes.append(open_inbox(settings.inbox_url))
        by_name = {inbox.name: inbox for inbox in inboxes}
        jobs.register(INBOX, InboxRunner(by_name, store, analyser, ingest_options))
        events = EventLog(engine, jobs, settings.event_webhooks)
        rules = RuleStore(engine)
        jobs.register(WEBHOOK, deliver_webhook)
        jobs.register(STABLE, StableStudyRunner(store, rules, events, jobs))
        peers = PeerRegistry(engine, settings.peers)
        accounts = Accounts(engine, set(policy.roles))
        created = accounts.bootstrap(settings.data_dir)
        if created is not None:
            log.warning("created the first administrator 'admin'; its one-time password is in %s", created)
        oidc = (
            OidcVerifier(
                settings.oidc_issuer,
                settings.oidc_audience,
                jwks_url=settings.oidc_jwks_url,
                role_claim=settings.oidc_role_claim,
                username_claim=settings.oidc_username_claim,
                roles=set(policy.roles),
            )
            if settings.oidc_issuer
            else None
        )
        syslog = AtnaSender(settings.audit_syslog_url) if settings.audit_syslog_url else None
        audit = AuditWriter(
            AuditLog(engine, load_audit_key(settings.data_dir)), forward=syslog.send if syslog else None
        )
        deidentifier = Deidentifier(_deid_secret(settings))
        store.pseudonym = deidentifier.uid
        store.fill_pseudonyms()
        platform = cls(
            settings=settings,
            store=store,
            jobs=jobs,
            events=events,
            rules=rules,
            peers=peers,
            policy=policy,
            accounts=accounts,
            audit=audit,
            deidentifier=deidentifier,
            import_items=import_items,
            ingest_options=ingest_options,
            oidc=oidc,
            analyser=analyser,
            inboxes=inboxes,
        )
        jobs.register(ACTION, RouteActionRunner(store, jobs, platform.forward, settings.outbound_tokens))
        jobs.register(DATASET, DatasetRunner(platform.datasets, analyser, parallel, ingest_options))
        jobs.register(TRAINING, TrainingRunner(platform.datasets, platform.models, settings.data_dir))
        jobs.register(INFER, InferRunner(platform.inference))
        jobs.register(INFER_BATCH, BatchInferRunner(store, jobs))
        jobs.register(LABEL_EXPORT, LabelExportRunner(platform.label_exports))
        for name in settings.plugins:
            _load_plugin(name, platform)
        return platform

    @cached_property
    def models(self) -> ModelRegistry:
        """The model registry: its rows in the index, its artifacts in the (encrypted) blob store."""
        return ModelRegistry(self.store.engine, self.store.blobs, self.policy, self.audit.submit)

    def install_starter_model(self) -> ModelVersion | None:
        """On a data dir whose registry has no model ``fracture``, install the shipped starter model
        (registered, approved, in production); nothing when ``settings.starter_model`` is off or the
        model exists. With it, the routing rule :data:`DEFAULT_AI_RULE` (unless ``settings.auto_infer``
        is off). Problems are logged; the platform starts either way."""
        if not self.settings.starter_model:
            return None
        installed = install_starter(self.models)
        if installed is not None and self.settings.auto_infer:
            try:
                self.rules.get(DEFAULT_AI_RULE.name)
            except NotFound:
                self.rules.put(DEFAULT_AI_RULE)
                log.info(
                    "routing rule %s created: %s checks every CR and DX study as it arrives",
                    DEFAULT_AI_RULE.name,
                    installed.ref,
                )
        return installed

    @cached_property
    def inference(self) -> Inference:
        """Models run on radiographs: the ``infer`` jobs and the real-time endpoint, one warm cache."""
        return Inference(self.store, ModelCache(self.models), self.ai_results, self.policy, self.audit.submit)

    @cached_property
    def arrivals(self) -> ArrivalRouter:
        """Matches the ``arrival`` routing rules when a C-STORE association or STOW-RS request ends."""
        return ArrivalRouter(self.store, self.rules, self.jobs)

    @cached_property
    def datasets(self) -> DatasetService:
        """Data sets: their rows in the index, their images in the store, made and read by policy."""
        return DatasetService(self.store, self.deidentifier, self.policy, self.audit.submit)

    @cached_property
    def ai_results(self) -> AiResults:
        """AI results on studies (their findings, the study's priority) and the reviews of their findings."""
        return AiResults(self.store.engine, self.audit.submit, self.policy)

    @cached_property
    def labeling(self) -> ProjectService:
        """Labeling projects, their reader tasks and the labels readers send; an item whose reads are
        all done gets its review task."""
        service = ProjectService(self.store, self.policy, self.audit.submit)
        service.finished.append(open_review)
        return service

    @cached_property
    def review(self) -> ReviewService:
        """Reviews, consensus and adjudication of labeling items."""
        return ReviewService(self.labeling, self.audit.submit)

    def label_ai_review(self, principal: Principal, result: ResultRecord, review: Review) -> None:
        """A decision on an AI finding as the reviewer's label in the labeling projects that show AI
        proposals (:meth:`ReviewService.ai_reviewed`): labeling does not know the AI's records."""
        finding = next(f for f in result.findings if f.index == review.index)
        self.review.ai_reviewed(
            principal,
            study_uid=result.study_uid,
            sop_uid=finding.sop_uid,
            label=finding.label,
            box=finding.box,
            accepted=review.decision is ReviewDecision.ACCEPTED,
            finding_uid=finding.tracking_uid,
        )

    @cached_property
    def label_intake(self) -> LabelIntake:
        """Readers' SR and SEG stored by STOW-RS or C-STORE, screened and turned into their tasks' labels."""
        return LabelIntake(self.labeling)

    @cached_property
    def labeling_agreement(self) -> AgreementService:
        """Agreement figures of labeling projects, for their owners and reviewers."""
        return AgreementService(self.labeling)

    @cached_property
    def label_exports(self) -> LabelExports:
        """Exports of labeling projects: labeled instances for a data set, files written by a job; split
        by patient as data sets are (:func:`radstack.ai.splits.assign_splits`)."""
        return LabelExports(
            self.labeling,
            self.deidentifier,
            assign_splits,
            self.settings.data_dir,
            self.jobs,
            self.audit.submit,
        )

    @cached_property
    def training(self) -> TrainingService:
        """Training jobs: submitted here, run by a worker of the ``training`` queue."""
        return TrainingService(self.jobs, self.datasets, self.policy, self.audit.submit)

    @cached_property
    def blinding(self) -> Blinding:
        """What labeling's blinding hides from each principal: other readers' label objects, and AI
        results from blinded readers (their SR series from :meth:`AiResults.sr_series`)."""
        return Blinding(self.store, self.policy, self.ai_results.sr_series)

    def view(self, role: RoleDef, principal: Principal | None = None) -> View:
        """How ``role`` sees headers and, for ``principal``, which objects blinding hides from it (a new
        one per request or association: it caches patient keys and what is hidden)."""
        hidden = self.blinding.lookup(principal) if principal is not None else None
        return View(role, self.store, self.deidentifier, hidden)

    def dimse_server(self) -> DimseServer | None:
        """The DICOM service on the services of this platform; ``None`` when no DICOM port is set."""
        config = DimseConfig.from_settings(self.settings)
        if not config.listens:
            return None
        return DimseServer(
            config,
            store=self.store,
            peers=self.peers,
            accounts=self.accounts,
            policy=self.policy,
            views=self.view,
            audit=self.audit,
            ingest_options=self.ingest_options,
            analyser=self.analyser,
            on_arrival=self.arrivals,
            screen_for=self.label_intake.screen,
        )

    def forward(self, ae_title: str, records: list[InstanceRecord]) -> dict[str, Any]:
        """C-STORE ``records`` to the registered peer ``ae_title`` (routing's ``forward`` action)."""
        peer = self.peers.get(ae_title)
        return send_instances(self.store, peer, records, calling_ae=self.settings.ae_title)

    def start_workers(self) -> None:
        """Run job consumer threads, the drop-folder watcher and the study-stable monitor here
        (``radstack serve`` without ``--no-workers``)."""
        self.jobs.start_consumer(self.settings.queue_workers, self.settings.worker_queues or None)
        self._start_monitors()

    def run_worker(self) -> None:
        """Consume jobs until SIGINT or SIGTERM, with the watcher and monitor (``radstack worker``)."""
        self._start_monitors()
        try:
            self.jobs.run_worker(self.settings.queue_workers, self.settings.worker_queues or None)
        finally:
            self.stop_workers()

    def _warm_up(self) -> None:
        """A process that runs ``infer`` jobs loads the models its rules name, in the background."""
        queues = self.settings.worker_queues
        if queues and INFER.queue not in queues:
            return
        models = sorted(
            {
                action.model
                for rule in self.rules.list_rules()
                if rule.enabled
                for action in rule.actions
                if isinstance(action, InferAction)
            }
        )
        if models:
            threading.Thread(
                target=self.inference.warm_up, args=(models,), name="warm-up", daemon=True
            ).start()

    def _start_monitors(self) -> None:
        self._warm_up()
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
        self.jobs.close()
        if "inference" in self.__dict__:  # made (a cached property): free its models
            self.inference.models.clear()
        self.audit.close()
        if self.analyser is not None:
            self.analyser.close()
        self.store.close()


def _load_plugin(name: str, platform: Platform) -> None:
    """Import the module ``name`` (``RADSTACK_PLUGINS``) and call its ``setup(platform)``: a site's
    own job kinds and handlers, routing actions or event consumers."""
    module = importlib.import_module(name)
    setup = getattr(module, "setup", None)
    if not callable(setup):
        raise ValueError(f"plugin module {name!r} has no setup(platform) function")
    setup(platform)
    log.info("plugin %s loaded", name)


def _deid_secret(settings: Settings) -> bytes:
    """The key of every pseudonym and date shift (``<data dir>/deid.key``; the same on every node)."""
    secret = load_secret(settings.data_dir / "deid.key", "de-identification key")
    assert secret is not None
    return secret

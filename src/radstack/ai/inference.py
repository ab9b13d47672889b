"""AI in the clinical flow: models run on stored radiographs, their findings stored in the study as DICOM.

Three ways in, one path (:class:`Inference`):

- **real time**: ``POST /api/v1/models/{name}/infer`` runs the model in the serving process (its
  :class:`~radstack.ai.engine.ModelCache` keeps it warm) on a stored study, series or instance, or on an
  uploaded file, and answers the findings; asked to, it stores them as for the others;
- **automatic**: the routing action ``{"type": "infer", "model": "fracture"}`` submits an ``infer`` job
  on the ``inference`` queue (one model run at a time per worker process; with Redis, any number of
  ``radstack worker --queues inference`` processes on any number of machines share them). On a fresh
  data dir the rule ``ai-fracture`` runs the production ``fracture`` model on every CR and DX study as
  soon as it arrives (the end of the C-STORE association or STOW request), not after the quiet period;
- **batch**: an ``infer-batch`` job runs a model on every study a QIDO-style query matches, a few
  ``infer`` jobs at a time (so automatic ones are never stuck behind a batch), with progress.

A stored result is a TID 1500 SR (:mod:`radstack.ai.results`) in a new series, written in one study
version that also removes the series of the model's previous result on the study: running a model
again replaces its result (the old one stays readable in the earlier study version), never duplicates
it. The run's inputs are hashed (:func:`~radstack.ai.engine.input_key`): an automatic run whose
inputs are those of the current result does nothing, so the SR's own change to the study never makes
the model run again. The result's row (:mod:`radstack.ai.findings`) sets the study's AI priority on
the worklist. Every run is audited: who asked (a user, or the routing rule), the model version, the
study.

Nothing is stored before the model has run: an image the contract does not fit, a model that is not
approved, a missing or damaged artifact fail the run with a reason and leave the study as it was; a
worker killed mid-run leaves its job to the lease sweep, whose retry stores the one SR (its UIDs are
derived from the job, and a retry removes what an earlier attempt of the same job stored).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import pydicom
from pydantic import Field
from pydicom.dataset import Dataset

from radstack.ai.engine import ImageRefused, LoadedModel, ModelCache, check_image, input_key
from radstack.ai.findings import AiResults, FindingRecord, PriorityLevel, ResultRecord, priority_of
from radstack.ai.results import Finding, fracture_report
from radstack.ai.samples import Prediction
from radstack.dicom.codecs import PixelInfo
from radstack.dicom.frames import pixel_info
from radstack.errors import BadRequest, NotFound, ProcessingFailure, RadstackError
from radstack.ingest.pipeline import stage_file
from radstack.jobs.kinds import INFERENCE_QUEUE, JobParams, Submitter, declare
from radstack.jobs.queue import JobContext, JobQueue
from radstack.jobs.records import FINAL_STATES, JobState
from radstack.jobs.routing import ActionContext, RouteAction, register_action
from radstack.security.audit import AuditActionValues, AuditEntry, audit_entry
from radstack.security.policy import ActionValues, Policy, Principal
from radstack.store.matching import QueryLevelValues, parse_query
from radstack.store.records import BatchReason, InstanceRecord
from radstack.store.retrieve import decoded_frame, header_dataset
from radstack.store.search import search_studies
from radstack.store.studies import StudyStore

__all__ = [
    "INFER",
    "INFER_BATCH",
    "BatchInferParams",
    "BatchInferRunner",
    "InferAction",
    "InferParams",
    "InferRunner",
    "Inference",
    "Outcome",
]

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]

#: What the detector reports (the SR's finding and the API's ``label``).
FRACTURE = "fracture"
#: ``infer`` jobs a batch keeps queued at once: enough to keep every inference worker busy, few enough
#: that an automatic run submitted meanwhile waits behind at most these.
BATCH_WINDOW = 4
#: The studies one batch may cover.
BATCH_MAX_STUDIES = 100_000


class InferParams(JobParams):
    """An ``infer`` job: run ``model`` (its production version, or ``version``) on a stored study."""

    model: str
    study_uid: str = Field(max_length=64)
    version: int | None = None
    #: Who asked: ``rule:<name>``, ``user:<subject>`` or ``batch:<job id>`` (audited, and on the result).
    trigger: str
    #: Run even when the study's images are those the current result was made from.
    force: bool = False
    submitted_by: Submitter | None = None


class BatchInferParams(JobParams):
    """An ``infer-batch`` job: run ``model`` on every study matching a QIDO-RS study query."""

    model: str
    #: QIDO-RS study-level keys (PS3.18 §8.3.4): ``{"ModalitiesInStudy": "DX", "StudyDate": "20260101-"}``.
    query: dict[str, str] = Field(default_factory=dict)
    version: int | None = None
    force: bool = False
    submitted_by: Submitter


INFER = declare("infer", InferParams, queue=INFERENCE_QUEUE)
#: A coordinator: it queues ``infer`` jobs and follows them (on the default queue, so it never holds
#: an inference worker while it waits).
INFER_BATCH = declare("infer-batch", BatchInferParams)


def _uid(*parts: object) -> str:
    """A UID derived from ``parts`` (PS3.5 §B.2: ``2.25.`` and a 128-bit number)."""
    digest = hashlib.sha256("/".join(["radstack.ai", *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass(frozen=True, slots=True)
class Selection:
    """A model and the images of one study it is to read (or one uploaded image)."""

    model: LoadedModel
    #: None for an uploaded file.
    study_uid: str | None
    records: tuple[InstanceRecord, ...]
    #: Each image's header (no pixel data), in the order of ``records``.
    headers: tuple[Dataset, ...]
    #: Images of the study the model does not read, and why (a CT slice, a colour photo).
    skipped: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The hash of the model version and the images' content (:func:`input_key`)."""
        return input_key(self.model, self.records)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run found: each image's prediction and the findings to report."""

    selection: Selection
    predictions: tuple[Prediction, ...]
    probability: float
    priority: int
    level: PriorityLevel
    findings: tuple[Finding, ...]
    key: str
    seconds: float = 0.0
    #: The stored result, once stored.
    result: ResultRecord | None = None

    @property
    def model(self) -> LoadedModel:
        return self.selection.model

    def to_json(self) -> JsonDict:
        """The API's answer: the model, the probability, and each finding with its box and image."""
        model = self.model
        body: JsonDict = {
            "model": {"name": model.name, "version": model.number},
            "probability": round(self.probability, 6),
            "priority": self.priority,
            "level": str(self.level),
            "findings": [
                {
                    "label": f.label,
                    "probability": round(f.probability, 6),
                    "box": [round(v, 2) for v in f.box],
                    "instance": f.sop_uid,
                    "definite": f.probability >= model.definite,
                }
                for f in self.findings
            ],
            "images": len(self.selection.headers),
            "seconds": round(self.seconds, 3),
        }
        if self.selection.skipped:
            body["not_read"] = list(self.selection.skipped)
        if self.result is not None:
            body["stored"] = {
                "result": self.result.id,
                "series": self.result.sr_series_uid,
                "instance": self.result.sr_sop_uid,
            }
        return body


class Inference:
    """Runs models on stored or uploaded radiographs and stores their results (the one path of all
    three ways in).

    Parameters
    ----------
    store
        The studies.
    models
        The warm model cache of this process.
    results
        The index of stored results (the worklist's priority).
    policy
        Who may run models and store their results.
    audit
        Where each run is recorded.
    """

    def __init__(
        self,
        store: StudyStore,
        models: ModelCache,
        results: AiResults,
        policy: Policy,
        audit: Callable[[AuditEntry], None],
        *,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.results = results
        self.policy = policy
        self.audit = audit
        #: Called with (model, seconds) after each run (the latency histogram of ``/metrics``).
        self.observe = observe

    # ------------------------------------------------------------------ running
    def select(
        self,
        model: str,
        study_uid: str,
        *,
        version: int | None = None,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> Selection:
        """The model to run and the images of a stored study (or of one series or instance) it reads.

        Raises
        ------
        NotFound
            No such study, series, instance or model, or no version in production.
        Conflict
            The version is not approved.
        ImageRefused
            The instance named by ``sop_uid`` does not fit the model, or no image of the study does.
        ModelUnavailable
            The model's artifact is missing, damaged or does not load.
        """
        loaded = self.models.get(model, version)
        if sop_uid is not None:
            candidates = [self.store.get_instance(study_uid, series_uid, sop_uid)]
        else:
            candidates = [
                r for r in self.store.current_instances(study_uid) if series_uid in (None, r.series_uid)
            ]
            if not candidates:
                what = f"series {series_uid} of study {study_uid}" if series_uid else f"study {study_uid}"
                raise NotFound(f"{what} has no instances")
        records, headers, skipped = [], [], []
        for record in candidates:
            header = header_dataset(self.store, record)
            try:
                _check(header, record.pixel, record.frame_syntax, loaded)
            except ImageRefused as refusal:
                if sop_uid is not None:
                    raise
                skipped.append(refusal.message)
                continue
            records.append(record)
            headers.append(header)
        if not records:
            reasons = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
            raise ImageRefused(f"no image of study {study_uid} fits {loaded.version.ref}: {reasons}")
        return Selection(loaded, study_uid, tuple(records), tuple(headers), tuple(skipped))

    def run(self, selection: Selection) -> Outcome:
        """Decode the selected images and run the model on them."""
        started = time.perf_counter()
        images, photometrics = [], []
        for record in selection.records:
            pixel = record.pixel
            assert pixel is not None  # checked by select
            images.append(decoded_frame(self.store, record, 1).reshape(pixel.rows, pixel.columns))
            photometrics.append(pixel.photometric_interpretation)
        predictions = selection.model.predict(images, photometrics)
        return self._outcome(selection, predictions, selection.key, started)

    def run_upload(self, model: str, data: bytes, *, version: int | None = None) -> Outcome:
        """Run ``model`` on an uploaded DICOM file (PS3.10) that is not stored; nothing is kept.

        Raises
        ------
        BadRequest
            The bytes are not a DICOM file, or its pixel data cannot be decoded.
        DataSetMismatch
            It has no pixel data, or its Image Pixel module is incomplete.
        ImageRefused
            The image does not fit the model.
        """
        started = time.perf_counter()
        loaded = self.models.get(model, version)
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:
            raise BadRequest(f"the upload is not a DICOM file: {exc}") from None
        pixel = pixel_info(ds)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) or None
        _check(ds, pixel, syntax, loaded)
        try:
            image = ds.pixel_array
        except Exception as exc:
            raise BadRequest(f"the upload's pixel data cannot be decoded: {exc}") from None
        predictions = loaded.predict([image], [pixel.photometric_interpretation])
        del ds.PixelData
        key = hashlib.sha256(f"{loaded.sha256}\n".encode() + data).hexdigest()
        return self._outcome(Selection(loaded, None, (), (ds,), ()), predictions, key, started)

    def _outcome(
        self, selection: Selection, predictions: Sequence[Prediction], key: str, started: float
    ) -> Outcome:
        loaded = selection.model
        findings: list[Finding] = []
        for header, prediction in zip(selection.headers, predictions, strict=True):
            rows, columns = float(header.Rows), float(header.Columns)
            for box, score in zip(prediction.boxes, prediction.scores, strict=True):
                x0, y0, x1, y1 = (float(v) for v in box)
                clipped = (max(0.0, x0), max(0.0, y0), min(columns, x1), min(rows, y1))
                if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
                    continue
                findings.append(
                    Finding(
                        label=FRACTURE,
                        probability=float(score),
                        box=clipped,
                        sop_uid=str(header.SOPInstanceUID),
                        tracking_uid=_uid(key, "finding", len(findings)),
                    )
                )
        probability = max((p.probability for p in predictions), default=0.0)
        priority, level = priority_of(probability, loaded.suspicious, loaded.definite)
        seconds = time.perf_counter() - started
        if self.observe is not None:
            self.observe(loaded.name, seconds)
        return Outcome(
            selection=selection,
            predictions=tuple(predictions),
            probability=probability,
            priority=priority,
            level=level,
            findings=tuple(findings),
            key=key,
            seconds=seconds,
        )

    def warm_up(self, models: Sequence[str]) -> None:
        """Load the production version of each of ``models`` and build one SR, so that the first
        radiograph after a start waits for neither (about half a second: onnxruntime's session, and
        highdicom's tables of the standard). A model that cannot be loaded is left for its jobs to report."""
        for name in models:
            try:
                loaded = self.models.get(name)
            except RadstackError as exc:
                log.info("model %s not warmed up: %s", name, exc.message)
                continue
            header = Dataset()
            header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
            header.SOPInstanceUID, header.StudyInstanceUID = _uid("warm", "image"), _uid("warm", "study")
            header.SeriesInstanceUID, header.Rows, header.Columns = _uid("warm", "series"), 512, 512
            fracture_report(
                [header],
                [],
                model=loaded.name,
                version=loaded.number,
                probability=0.0,
                series_uid=_uid("warm", "sr"),
                sop_uid=_uid("warm", "sr", "instance"),
            )
            log.info("model %s loaded and ready", loaded.version.ref)

    # ------------------------------------------------------------------ storing
    def store_result(self, outcome: Outcome, *, trigger: str, job_id: str | None = None) -> Outcome:
        """Write ``outcome`` into its study: the SR in a new series, in one study version that also
        removes the model's previous result series; then the result's row (the worklist's priority).

        ``job_id`` makes the SR's UIDs the job's own: a retry after a crash rebuilds the same series
        and removes what the crashed attempt stored, so one job stores one SR.

        Raises
        ------
        BadRequest
            The outcome is of an upload (there is no study to store it in).
        ProcessingFailure
            The SR could not be written (nothing changed).
        """
        study_uid = outcome.selection.study_uid
        if study_uid is None:
            raise BadRequest("an uploaded file's result cannot be stored: it belongs to no stored study")
        loaded = outcome.model
        seed = job_id or uuid.uuid4().hex
        series_uid, sop_uid = _uid(seed, "series"), _uid(seed, "instance")
        report = fracture_report(
            outcome.selection.headers,
            outcome.findings,
            model=loaded.name,
            version=loaded.number,
            probability=outcome.probability,
            series_uid=series_uid,
            sop_uid=sop_uid,
        )
        buffer = io.BytesIO()
        report.save_as(buffer, enforce_file_format=True)
        staged, record = stage_file(self.store.blobs, buffer.getvalue(), study_uid, True)
        if record is None:
            reason = staged.error.message if staged.error else "unknown error"
            raise ProcessingFailure(f"the SR of {loaded.version.ref} could not be stored: {reason}")
        previous = self.results.latest(study_uid, loaded.name)
        replaced = {series_uid} | ({previous.sr_series_uid} if previous and previous.sr_series_uid else set())
        remove = [r for r in self.store.current_instances(study_uid) if r.series_uid in replaced]
        with self.store.batch(BatchReason.AI, f"{loaded.name} v{loaded.number}") as batch:
            self.store.replace_instances(study_uid, batch, remove=remove, add=[record])
        series_of = {str(h.SOPInstanceUID): str(h.SeriesInstanceUID) for h in outcome.selection.headers}
        result = self.results.record(
            study_uid=study_uid,
            model=loaded.name,
            model_version=loaded.number,
            probability=outcome.probability,
            priority=outcome.priority,
            level=outcome.level,
            findings=[
                FindingRecord(
                    index=index,
                    label=f.label,
                    probability=f.probability,
                    box=f.box,
                    sop_uid=f.sop_uid,
                    series_uid=series_of[f.sop_uid],
                    tracking_uid=f.tracking_uid,
                    level=priority_of(f.probability, loaded.suspicious, loaded.definite)[1],
                )
                for index, f in enumerate(outcome.findings)
            ],
            input_key=outcome.key,
            sr_series_uid=series_uid,
            sr_sop_uid=sop_uid,
            trigger=trigger,
            job_id=job_id,
        )
        return replace(outcome, result=result)

    # ------------------------------------------------------------------ the endpoint
    def infer(
        self,
        principal: Principal,
        model: str,
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
        sop_uid: str | None = None,
        upload: bytes | None = None,
        version: int | None = None,
        store: bool = False,
    ) -> Outcome:
        """The real-time endpoint: authorise, run, store when asked, audit.

        Raises
        ------
        Forbidden
            The principal may not read the models or the study's pixels (or store into it).
        BadRequest
            Neither a study nor an upload given, or ``store`` with an upload.
        RadstackError
            Whatever running or storing refused (:meth:`select`, :meth:`run_upload`,
            :meth:`store_result`), once the refusal is audited.
        """
        trigger = f"user:{principal.subject}"
        resource: JsonDict = {"type": "inference", "model": model, "trigger": trigger}
        if study_uid:
            resource["study_uid"] = study_uid
        try:
            self.policy.require(principal, ActionValues.READ_MODELS)
            if upload is not None:
                if store:
                    raise BadRequest(
                        "'store' needs a stored study; the result of an uploaded file is only answered"
                    )
                self.policy.require(principal, ActionValues.READ_PIXELS)
                outcome = self.run_upload(model, upload, version=version)
            else:
                if not study_uid:
                    raise BadRequest(
                        'name the image ({"study": …, "series": …, "instance": …}) or upload a DICOM file'
                    )
                self.policy.require(principal, ActionValues.READ_PIXELS, study_uid)
                if store:
                    self.policy.require(principal, ActionValues.INGEST, study_uid)
                selection = self.select(
                    model, study_uid, version=version, series_uid=series_uid, sop_uid=sop_uid
                )
                outcome = self.run(selection)
                if store:
                    outcome = self.store_result(outcome, trigger=trigger)
        except RadstackError as error:
            self.audit(audit_entry(principal, AuditActionValues.READ, resource, error))
            raise
        self.audit(audit_entry(principal, AuditActionValues.READ, _audited(resource, outcome)))
        return outcome


def _check(header: Dataset, pixel: PixelInfo | None, syntax: str | None, loaded: LoadedModel) -> None:
    check_image(
        str(header.get("SOPInstanceUID", "")),
        str(header.get("Modality", "")),
        pixel,
        syntax,
        loaded.name,
    )


def _audited(resource: JsonDict, outcome: Outcome) -> JsonDict:
    """The audit resource of a run that ended: the model version, what it found, what it stored."""
    return {
        **resource,
        "study_uid": outcome.selection.study_uid or resource.get("study_uid"),
        "model_version": outcome.model.number,
        "probability": round(outcome.probability, 4),
        "findings": len(outcome.findings),
        **({"result": outcome.result.id} if outcome.result is not None else {}),
    }


# ---------------------------------------------------------------------------------------- jobs
class InferRunner:
    """The ``infer`` job: run the model on the study and store its result, unless the study's images
    are those of the current result (then nothing happens: an SR never triggers its own model)."""

    def __init__(self, inference: Inference) -> None:
        self.inference = inference

    def __call__(self, context: JobContext[InferParams]) -> JsonDict:
        params = context.params
        inference = self.inference
        resource: JsonDict = {
            "type": "inference",
            "model": params.model,
            "study_uid": params.study_uid,
            "trigger": params.trigger,
            "job": context.job.id,
        }
        by = _job_principal(params)
        try:
            selection = inference.select(params.model, params.study_uid, version=params.version)
            current = inference.results.latest(params.study_uid, params.model)
            if not params.force and current is not None and current.input_key == selection.key:
                return {
                    "skipped": "the study's images and the model are those of its current result",
                    "result": current.id,
                    "model": {"name": current.model, "version": current.model_version},
                    "level": str(current.level),
                }
            outcome = inference.run(selection)
            context.report({"stage": "storing", "probability": round(outcome.probability, 6)})
            outcome = inference.store_result(outcome, trigger=params.trigger, job_id=context.job.id)
        except RadstackError as error:
            inference.audit(audit_entry(by, AuditActionValues.READ, resource, error))
            raise
        inference.audit(audit_entry(by, AuditActionValues.READ, _audited(resource, outcome)))
        log.info(
            "study %s: %s probability %.3f (%s), %d finding(s), %d image(s), %.2f s",
            params.study_uid,
            outcome.model.version.ref,
            outcome.probability,
            outcome.level,
            len(outcome.findings),
            len(outcome.selection.records),
            outcome.seconds,
        )
        # Which worker ran it (with several, on several machines).
        return {**outcome.to_json(), "node": f"{socket.gethostname()}:{os.getpid()}"}


def _job_principal(params: InferParams) -> Principal:
    if params.submitted_by is not None:
        return Principal(params.submitted_by.subject, params.submitted_by.role, "job")
    return Principal(params.trigger, "system", "system")


class BatchInferRunner:
    """The ``infer-batch`` job: find the studies, keep :data:`BATCH_WINDOW` ``infer`` jobs of them queued,
    report progress as they end. Each study's result is stored by its own job, as it comes."""

    def __init__(self, store: StudyStore, jobs: JobQueue, *, poll_seconds: float = 0.2) -> None:
        self.store = store
        self.jobs = jobs
        self.poll_seconds = poll_seconds

    def __call__(self, context: JobContext[BatchInferParams]) -> JsonDict:
        params = context.params
        studies = self._studies(params.query)
        pending: dict[str, str] = {}  # job id → study
        counts = {"studies": len(studies), "done": 0, "stored": 0, "unchanged": 0, "failed": 0, "positive": 0}
        errors: list[str] = []
        queue = list(studies)
        while queue or pending:
            while queue and len(pending) < BATCH_WINDOW:
                study_uid = queue.pop(0)
                job, _ = self.jobs.submit(
                    INFER,
                    InferParams(
                        model=params.model,
                        study_uid=study_uid,
                        version=params.version,
                        trigger=f"batch:{context.job.id}",
                        force=params.force,
                        submitted_by=params.submitted_by,
                    ),
                    client_token=f"batch:{context.job.id}:{study_uid}"[-128:],
                )
                pending[job.id] = study_uid
            time.sleep(self.poll_seconds)
            for job_id in list(pending):
                job = self.jobs.records.get(job_id)
                if job.state not in FINAL_STATES:
                    continue
                del pending[job_id]
                counts["done"] += 1
                if job.state is JobState.SUCCEEDED:
                    if "skipped" in job.progress:
                        counts["unchanged"] += 1
                    else:
                        counts["stored"] += 1
                        counts["positive"] += job.progress.get("level") in ("urgent", "high")
                else:
                    counts["failed"] += 1
                    if len(errors) < 20:
                        errors.append(f"{job_id}: {job.last_error}")
            context.report({**counts, "errors": errors})
        if counts["failed"]:
            context.refused(f"{counts['failed']} of {counts['studies']} studies failed (see errors)")
        return {**counts, "errors": errors}

    def _studies(self, query: Mapping[str, str]) -> list[str]:
        params = [(k, v) for k, v in query.items()] + [("limit", str(BATCH_MAX_STUDIES))]
        parsed = parse_query(params, QueryLevelValues.STUDY)
        found = search_studies(self.store, parsed, base_url="", max_limit=BATCH_MAX_STUDIES)
        return [str(m["0020000D"]["Value"][0]) for m in found.matches]


# ---------------------------------------------------------------------------------------- routing
@register_action
class InferAction(RouteAction):
    """Run a model on the study (``{"type": "infer", "model": "fracture"}``): an ``infer`` job on the
    ``inference`` queue, whose result is stored in the study as an SR."""

    type: Literal["infer"] = "infer"
    #: The registered model; its production version runs.
    model: str = Field(min_length=1, max_length=64)

    def run(self, context: ActionContext) -> JsonDict:
        job, _ = context.jobs.submit(
            INFER,
            InferParams(model=self.model, study_uid=context.study_uid, trigger=f"rule:{context.rule}"),
            client_token=f"infer:{context.job.job.id}",
        )
        return {"job": job.id}

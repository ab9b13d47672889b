"""Training jobs: a detector trained on a data set version, evaluated, and registered for review.

A ``training`` job runs on the ``training`` queue, so only a worker that consumes it (the node with
the GPU: ``radstack worker --queues training``) runs it, and any node can submit it. Its handler,
:class:`TrainingRunner`:

1. reads the version's train, validation and test splits through the store in the submitter's view
   (de-identified for a data scientist), each image decoded when training asks for it;
2. trains (:func:`radstack.ai.train.train`) with its checkpoint at ``<data dir>/training/<job id>/``,
   so a run that stopped (its worker killed, the job queued again by the lease sweep; or its worker
   told to stop) resumes from its last finished epoch to the weights an uninterrupted run gets. It
   reports progress after every batch (saved about once a second) and keeps the per-epoch history
   (train loss, validation metrics, seconds) and each attempt's start in the job's progress;
3. exports ONNX, chooses the two operating points on the validation split and evaluates the exported
   graph on the test split (:mod:`radstack.ai.evaluate`) with onnxruntime, as it will be deployed;
4. registers a new version of the model, pending approval (:class:`radstack.ai.registry.ModelRegistry`),
   with its lineage (data set name, version and content hash, code version, hyperparameters, the job,
   the device), the evaluation as its metrics and a model card.

Cancelling (:meth:`TrainingService.cancel`) makes the job CANCELLED at once; the run stops before its
next batch and keeps its checkpoint (requeuing the job carries on from it). The job is safe to run
twice: a run that finds a version registered by its job returns it instead of training again.

:class:`TrainingService` is what the API and the CLI call: submit (what a run would refuse is refused
here, and nothing is queued: a missing data set or version, a split that is empty or has one class, a
bad config or model name), read, list and cancel. Every submission and cancellation, refused ones
included, is recorded in the audit trail as the registry records its changes.

torch is imported only where a run or a config check needs it, so a node that only serves the API
does not load it at start.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
import shutil
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from radstack.ai.card import ModelCard
from radstack.ai.datasets import DatasetReader, DatasetService, DatasetVersion, SplitValues
from radstack.ai.registry import ArtifactIn, ArtifactKind, Lineage, ModelRegistry, ModelVersion, check_name
from radstack.ai.samples import Prediction, Sample
from radstack.errors import BadRequest, NotFound
from radstack.jobs.kinds import TRAINING_QUEUE, JobParams, Submitter, declare, validation_message
from radstack.jobs.queue import JobContext, JobInterrupted, JobQueue
from radstack.jobs.records import Job, JobState
from radstack.security.audit import AuditActionValues, AuditEntry, audited
from radstack.security.policy import ActionValues, Policy, Principal

if TYPE_CHECKING:
    from radstack.ai.evaluate import Evaluation, OperatingPoints
    from radstack.ai.runtime import OnnxDetector
    from radstack.ai.train import TrainConfig

__all__ = [
    "TRAINING",
    "TRAINING_KIND",
    "TrainingJob",
    "TrainingJobParams",
    "TrainingRunner",
    "TrainingService",
    "checkpoint_path",
    "parse_config",
]

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]

#: Progress is saved (and the lease renewed) at most this often between epochs; every epoch is saved.
SAVE_SECONDS = 1.0
#: Decoded images a run keeps in memory by default (the rest are decoded from the store every epoch).
CACHE_BYTES = 1 << 30
#: Devices a config may name: ``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ``cuda:N``.
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
#: The job progress fields that are the run's position (the rest: history, runs, result).
_POSITION = ("stage", "fraction", "epoch", "epochs", "batch", "batches", "loss")


class TrainingJobParams(JobParams):
    """A ``training`` job: train on version ``dataset_version`` of data set ``dataset``, register the
    result as a new version of ``model``, for ``submitted_by`` (whose view reads the images)."""

    dataset: str
    dataset_version: int
    model: str
    #: The whole training config (:meth:`radstack.ai.train.TrainConfig.to_dict`), checked at submit.
    config: dict[str, Any]
    description: str = ""
    submitted_by: Submitter


#: The job kind that trains and registers a model.
TRAINING = declare("training", TrainingJobParams, queue=TRAINING_QUEUE)
TRAINING_KIND = TRAINING.name


def checkpoint_path(data_dir: Path, job_id: str) -> Path:
    """Where the run of job ``job_id`` keeps its checkpoint (removed once its version is registered)."""
    return data_dir / "training" / job_id / "checkpoint.pt"


# ---------------------------------------------------------------------------------------- config
@cache
def _config_adapter() -> Any:
    from pydantic import TypeAdapter

    from radstack.ai.train import TrainConfig

    return TypeAdapter(TrainConfig)


def _check_known(cls: type, data: Any, where: str) -> None:
    """Refuse a field the dataclass ``cls`` (or one of its nested dataclasses) does not have.

    Raises
    ------
    BadRequest
        Naming the unknown fields (``augment.rotate``) and the fields accepted there.
    """
    if not isinstance(data, Mapping):
        return  # the type check names it
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        named = ", ".join(repr(f"{where}{name}") for name in unknown)
        raise BadRequest(
            f"the training config has unknown field{'s' if len(unknown) > 1 else ''} {named}; "
            f"accepted{' in ' + repr(where.rstrip('.')) if where else ''}: {', '.join(sorted(known))}"
        )
    for name, hint in typing.get_type_hints(cls).items():
        if name in data and isinstance(hint, type) and dataclasses.is_dataclass(hint):
            _check_known(hint, data[name], f"{where}{name}.")


def _check_finite(data: Mapping[str, Any], where: str = "") -> None:
    for key, value in data.items():
        if isinstance(value, Mapping):
            _check_finite(value, f"{where}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"training config field '{where}{key}' is {value}; it must be a finite number")


def parse_config(data: Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """A training config from its JSON form (missing fields take their defaults) and ``overrides``
    (``epochs=…``, ``seed=…``; None values are ignored).

    Raises
    ------
    BadRequest
        ``data`` is not an object, has an unknown field, a value of the wrong type, a bad value or a
        device other than ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; the message names the field.
    """
    from pydantic import ValidationError

    from radstack.ai.train import TrainConfig

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise BadRequest(f"the training config must be a JSON object of TrainConfig fields, not {data!r:.60}")
    merged = {**data, **{key: value for key, value in overrides.items() if value is not None}}
    _check_known(TrainConfig, merged, "")
    try:
        config: TrainConfig = _config_adapter().validate_python(merged)
    except ValidationError as exc:
        raise BadRequest(f"the training config is not valid: {validation_message(exc)}") from None
    _check_finite(config.to_dict())
    if not _DEVICE.fullmatch(config.device):
        raise BadRequest(
            f"training config field 'device' is {config.device!r}; use auto, cpu, cuda or cuda:N"
        )
    if config.threads is not None and config.threads < 1:
        raise BadRequest(f"training config field 'threads' is {config.threads}; use 1 or more, or null")
    return config


# ---------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True, slots=True)
class TrainingJob:
    """A training job as the API shows it: what it trains, where it stands, what it made.

    ``progress`` is the run's position (``stage``: training, evaluating, registering, done;
    ``fraction`` of the training, ``epoch``/``epochs``, ``batch``/``batches``, the last batch's
    ``loss``); ``epochs`` the finished epochs' reports; ``runs`` each attempt's start (``attempt``,
    ``resumed_from_epoch``, ``device``); ``result`` the registered version and its test metrics.
    """

    id: str
    state: JobState
    dataset: str
    dataset_version: int
    model: str
    description: str
    config: JsonDict
    submitted_by: str
    attempts: int
    max_attempts: int
    progress: JsonDict
    epochs: list[JsonDict]
    runs: list[JsonDict]
    result: JsonDict | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def model_version(self) -> int | None:
        """The version the job registered, once it has."""
        return int(self.result["version"]) if self.result else None

    @classmethod
    def of(cls, job: Job) -> TrainingJob:
        params, progress = job.params, job.progress
        return cls(
            id=job.id,
            state=job.state,
            dataset=params["dataset"],
            dataset_version=int(params["dataset_version"]),
            model=params["model"],
            description=params.get("description", ""),
            config=params["config"],
            submitted_by=params["submitted_by"]["subject"],
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            progress={key: progress[key] for key in _POSITION if key in progress},
            epochs=list(progress.get("history", [])),
            runs=list(progress.get("runs", [])),
            result=progress.get("result"),
            error=job.last_error,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class TrainingService:
    """Submit, read, list and cancel training jobs: what the API and the CLI call.

    Every call needs ``manage-models`` (data scientists and admins); a submission also the data set's
    ``read-datasets`` and ``read-pixels``, which the run reads with.
    """

    def __init__(
        self,
        jobs: JobQueue,
        datasets: DatasetService,
        policy: Policy,
        audit: Callable[[AuditEntry], None],
    ) -> None:
        self.jobs = jobs
        self.datasets = datasets
        self.policy = policy
        self._audit = audit

    def submit(
        self,
        principal: Principal,
        *,
        dataset: str,
        model: str,
        version: int | None = None,
        config: Mapping[str, Any] | None = None,
        description: str = "",
        client_token: str | None = None,
    ) -> tuple[TrainingJob, bool]:
        """Queue a training job on version ``version`` (None: the newest) of ``dataset``.

        Returns
        -------
        tuple
            The job, and whether this call made it (a retry with the same ``client_token`` gets
            the job the first call made).

        Raises
        ------
        Forbidden
            The principal may not manage models, or read the data set's images.
        NotFound
            There is no such data set or version (the message names the versions there are).
        BadRequest
            A bad model name or config (the field named), or a split of the version that is empty or
            lacks a class.
        """
        resource: JsonDict = {
            "model": model,
            "event": "train",
            "dataset": dataset if version is None else f"{dataset}@{version}",
        }
        with audited(self._audit, principal, AuditActionValues.WRITE, resource):
            self.policy.require(principal, ActionValues.MANAGE_MODELS)
            self.policy.require(principal, ActionValues.READ_PIXELS)
            check_name(model)
            found = self.datasets.version(principal, dataset, version)
            resource["dataset"] = f"{found.name}@{found.version}"
            checked = parse_config(config)
            self._check_splits(principal, found)
            params = {
                "dataset": found.name,
                "dataset_version": found.version,
                "model": model,
                "config": checked.to_dict(),
                "description": description,
                "submitted_by": {"subject": principal.subject, "role": principal.role},
            }
            job, created = self.jobs.submit(TRAINING, params, client_token=client_token)
            resource["job"] = job.id
        if created:
            log.info("training job %s queued: %s into model %s", job.id, resource["dataset"], model)
        return TrainingJob.of(job), created

    def _check_splits(self, principal: Principal, version: DatasetVersion) -> None:
        """Refuse a version whose train, validation or test split is empty or has one class (counted
        from its items: what a run would read).

        Raises
        ------
        BadRequest
            Naming the split, what it lacks and the counts of every split.
        """
        counts = {split: [0, 0] for split in SplitValues}
        for item in self.datasets.items(principal, version.name, version.version):
            counts[item.split][0 if item.fracture else 1] += 1
        summary = "; ".join(
            f"{split}: {pos} with and {neg} without a fracture" for split, (pos, neg) in counts.items()
        )
        for split, (positive, negative) in counts.items():
            problem = (
                "is empty"
                if not positive + negative
                else "has no image with a fracture"
                if not positive
                else "has no image without a fracture"
                if not negative
                else None
            )
            if problem is not None:
                raise BadRequest(
                    f"data set {version.name!r} version {version.version} cannot be trained on: its "
                    f"{split} split {problem} ({summary}); training, validation and testing each need "
                    "both classes"
                )

    def get(self, principal: Principal, job_id: str) -> TrainingJob:
        """The training job ``job_id``.

        Raises
        ------
        Forbidden
            The principal may not manage models.
        NotFound
            There is no training job ``job_id``.
        """
        self.policy.require(principal, ActionValues.MANAGE_MODELS)
        return TrainingJob.of(self._job(job_id))

    def _job(self, job_id: str) -> Job:
        job = self.jobs.records.get(job_id)
        if job.kind != TRAINING_KIND:
            raise NotFound(f"job {job_id!r} is not a training job")
        return job

    def find(
        self,
        principal: Principal,
        *,
        model: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
    ) -> list[TrainingJob]:
        """Training jobs, newest first (of ``model``, in ``state``).

        Raises
        ------
        Forbidden
            The principal may not manage models.
        """
        self.policy.require(principal, ActionValues.MANAGE_MODELS)
        # Filtered by model here, from the newest 1000 training jobs.
        jobs = self.jobs.records.find(kind=TRAINING_KIND, state=state, limit=1000 if model else limit)
        found = [TrainingJob.of(job) for job in jobs if model is None or job.params.get("model") == model]
        return found[:limit]

    def cancel(self, principal: Principal, job_id: str) -> TrainingJob:
        """Cancel a queued or running training job; a running one stops before its next batch and
        keeps its checkpoint.

        Raises
        ------
        Forbidden
            The principal may not manage models.
        NotFound
            There is no training job ``job_id``.
        Conflict
            The job has already ended.
        """
        resource: JsonDict = {"event": "cancel-training", "job": job_id}
        with audited(self._audit, principal, AuditActionValues.WRITE, resource):
            self.policy.require(principal, ActionValues.MANAGE_MODELS)
            resource["model"] = self._job(job_id).params.get("model")
            job = self.jobs.records.cancel(job_id, f"cancelled by {principal.subject}")
        log.info("training job %s cancelled by %s", job_id, principal.subject)
        return TrainingJob.of(job)


# ---------------------------------------------------------------------------------------- the run
class _Budget:
    """Bytes of decoded images a run may still keep in memory."""

    def __init__(self, available: int) -> None:
        self.available = available


class _StoredSamples(Sequence[Sample]):
    """A data set split as training samples: each image decoded from the store when asked for, and
    kept while the run's budget lasts (so later epochs read it from memory)."""

    def __init__(self, reader: DatasetReader, budget: _Budget) -> None:
        self.reader = reader
        self.budget = budget
        self._kept: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.reader)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | Sequence[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        kept = self._kept.get(index)
        if kept is not None:
            return kept
        stored = self.reader[index]
        sample = Sample(
            image=stored.image,
            boxes=stored.boxes,
            label=stored.label,
            patient_id=stored.patient_id,
            fracture_type=stored.fracture_type,
            photometric=stored.photometric,
            key=stored.key,
        )
        if stored.image.nbytes <= self.budget.available:
            self.budget.available -= stored.image.nbytes
            self._kept[index] = sample
        return sample

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]


def _predict(detector: OnnxDetector, samples: Sequence[Sample], batch_size: int) -> list[Prediction]:
    """The exported graph's predictions for ``samples`` (boxes in their pixels), a batch at a time."""
    out: list[Prediction] = []
    for start in range(0, len(samples), batch_size):
        chunk = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        out.extend(
            detector.predict_batch([s.image for s in chunk], [s.photometric for s in chunk], min_score=0.01)
        )
    return out


def _card(
    version: DatasetVersion, evaluation: Evaluation, points: OperatingPoints, config: TrainConfig
) -> ModelCard:
    """The model card of a version trained on ``version`` and evaluated on its test split."""
    counts = version.counts
    split = {name: counts[str(name)] for name in SplitValues}
    total = counts["all"]
    size = config.preprocess.size
    low, high = evaluation.auroc_ci
    return ModelCard(
        intended_use=(
            "Fracture detection on radiographs: an image-level fracture probability and boxes around "
            "suspected fractures, to prioritise and assist reading, never to replace it. Two operating "
            f"points chosen on the validation split: 'suspicious' (sensitivity at least "
            f"{points.sensitivity_target:.0%} there) and 'definite' (specificity at least "
            f"{points.specificity_target:.0%} there)."
        ),
        training_data=(
            f"Data set {version.name} version {version.version} (content {version.content_hash[:16]}): "
            f"{split[SplitValues.TRAIN]['images']} training, {split[SplitValues.VALIDATION]['images']} "
            f"validation and {split[SplitValues.TEST]['images']} test images of {total['patients']} "
            f"patients, split by patient; {total['positive']} images with a fracture and "
            f"{total['negative']} without. Images are read in the trainer's view and resized to "
            f"{size}×{size} pixels."
        ),
        limitations=(
            f"Evaluated on the {evaluation.n_images} held-out test images of the same data set "
            f"({evaluation.n_fracture} with a fracture): AUROC {evaluation.auroc:.3f} (95% CI "
            f"{low:.3f}–{high:.3f}). Performance on other sites, devices, populations and fracture types "
            f"is unknown. Fractures that span only a few pixels at {size}×{size} may be missed. Not for "
            "clinical use before someone other than its trainer has reviewed and approved it."
        ),
    )


class TrainingRunner:
    """The job handler of ``training`` jobs (see the module docstring).

    Parameters
    ----------
    datasets
        Reads the data set in the submitter's view.
    models
        Where the trained version is registered (as the submitter, who is its trainer).
    data_dir
        Checkpoints go under ``<data_dir>/training/``.
    cache_bytes
        Decoded images a run keeps in memory (the rest are decoded again every epoch).
    """

    def __init__(
        self,
        datasets: DatasetService,
        models: ModelRegistry,
        data_dir: Path,
        *,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.datasets = datasets
        self.models = models
        self.data_dir = data_dir
        self.cache_bytes = cache_bytes

    def __call__(self, context: JobContext[TrainingJobParams]) -> JsonDict:
        params = context.params
        registered = self._registered(params.model, context.job.id)
        if registered is not None:  # a run before this one registered it, then lost its job
            log.info("training job %s already registered %s", context.job.id, registered.ref)
            return {**context.job.progress, "stage": "done", "result": _result(registered, None)}
        return _Run(self, context).run()

    def _registered(self, model: str, job_id: str) -> ModelVersion | None:
        try:
            versions = self.models.versions(model)
        except NotFound:
            return None
        return next((v for v in versions if v.lineage.training_job == job_id), None)


def _result(version: ModelVersion, evaluation: Evaluation | None) -> JsonDict:
    metrics = version.metrics
    result: JsonDict = {
        "model": version.model,
        "version": version.version,
        "status": version.status.value,
        "test_auroc": metrics.get("auroc"),
        "test_auroc_ci": metrics.get("auroc_ci"),
        "test_images": metrics.get("n_images"),
        "operating_points": {
            name: {key: point.get(key) for key in ("threshold", "sensitivity", "specificity", "box_recall")}
            for name, point in (metrics.get("operating_points") or {}).items()
        },
    }
    if evaluation is not None:
        result["froc"] = evaluation.froc.to_dict()["at"]
    return result


class _Run:
    """One attempt of a training job: read, train (resuming), evaluate, register."""

    def __init__(self, runner: TrainingRunner, context: JobContext[TrainingJobParams]) -> None:
        self.runner = runner
        self.context = context
        params = context.params
        self.principal = Principal(params.submitted_by.subject, params.submitted_by.role, "job")
        self.progress: JsonDict = {}
        self.saved = 0.0

    def report(self, *, save: bool = True, **update: Any) -> None:
        """Record the run's position; raises when the job must stop (see :meth:`JobContext.report`)."""
        self.progress.update(update)
        now = time.monotonic()
        save = save or now - self.saved >= SAVE_SECONDS
        if save:
            self.saved = now
        self.context.report(dict(self.progress), save=save)

    def run(self) -> JsonDict:
        import torch

        from radstack import __version__
        from radstack.ai.contract import check_onnx
        from radstack.ai.detector import export_onnx
        from radstack.ai.evaluate import choose_operating_points, evaluate
        from radstack.ai.runtime import OnnxDetector
        from radstack.ai.train import (
            BatchProgress,
            EpochReport,
            TrainConfig,
            TrainingCancelled,
            TrainingDiverged,
            checkpoint_history,
            resolve_device,
            train,
        )

        context, params = self.context, self.context.params
        job = context.job
        config = TrainConfig.from_dict(params.config)
        device = resolve_device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BadRequest(
                f"the training config asks for device {config.device!r}; this worker has no CUDA"
            )
        version = self.runner.datasets.version(self.principal, params.dataset, params.dataset_version)
        budget = _Budget(self.runner.cache_bytes)
        splits = {
            split: _StoredSamples(
                self.runner.datasets.reader(self.principal, version.name, version.version, split), budget
            )
            for split in SplitValues
        }
        path = checkpoint_path(self.runner.data_dir, job.id)
        history = [report.to_dict() for report in checkpoint_history(path)] if path.exists() else []
        runs = [
            *job.progress.get("runs", []),
            {"attempt": job.attempts, "resumed_from_epoch": len(history), "device": str(device)},
        ]
        batches = math.ceil(len(splits[SplitValues.TRAIN]) / config.batch_size)
        log.info(
            "training job %s attempt %d: %s@%d on %s, from epoch %d of %d",
            job.id,
            job.attempts,
            version.name,
            version.version,
            device,
            len(history),
            config.epochs,
        )
        self.report(
            stage="training",
            fraction=len(history) / config.epochs,
            epoch=len(history),
            epochs=config.epochs,
            batch=0,
            batches=batches,
            loss=None,
            history=history,
            runs=runs,
        )

        def on_batch(batch: BatchProgress) -> None:
            self.report(
                save=False,
                fraction=batch.fraction,
                epoch=batch.epoch,
                batch=batch.batch,
                batches=batch.batches,
                loss=batch.loss,
            )

        def on_epoch(epoch: EpochReport) -> None:
            history.append(epoch.to_dict())
            self.report(history=list(history))

        try:
            result = train(
                splits[SplitValues.TRAIN],
                splits[SplitValues.VALIDATION],
                config,
                checkpoint_path=path,
                on_epoch=on_epoch,
                on_batch=on_batch,
                should_stop=context.stopping,
            )
        except TrainingCancelled:
            # Cancelled (the job is no longer this run's) or the worker is stopping: report raises
            # the matching JobLeaseLost or JobInterrupted; the checkpoint stays for a resume.
            self.report()
            raise JobInterrupted(job.id) from None
        except TrainingDiverged as exc:  # the same run diverges again: no retry
            raise BadRequest(str(exc)) from None
        history = [report.to_dict() for report in result.history]
        self.report(stage="evaluating", fraction=1.0, history=history)

        onnx = export_onnx(result.model, config.preprocess)
        detector = OnnxDetector(onnx, threads=config.threads)
        validation, test = splits[SplitValues.VALIDATION], splits[SplitValues.TEST]
        scores = [p.probability for p in _predict(detector, validation, config.batch_size)]
        points = choose_operating_points([s.label for s in validation], scores)
        evaluation = evaluate(_predict(detector, test, config.batch_size), test, points, seed=config.seed)
        self.report(stage="registering")

        weights = io.BytesIO()
        torch.save(result.model.state_dict(), weights)
        contract = dataclasses.replace(check_onnx(onnx, None), preprocessing=config.preprocess.to_dict())
        registered = self.runner.models.register(
            params.model,
            [
                ArtifactIn("model.onnx", ArtifactKind.ONNX, onnx),
                ArtifactIn("weights.pt", ArtifactKind.WEIGHTS, weights.getvalue()),
            ],
            by=self.principal,
            contract=contract,
            lineage=Lineage(
                dataset_version=f"{version.name}@{version.version}",
                dataset_id=version.content_hash,
                code_version=f"radstack {__version__} (torch {torch.__version__})",
                hyperparameters=config.to_dict(),
                training_job=job.id,
                device=result.device,
            ),
            metrics=evaluation.to_dict(),
            card=_card(version, evaluation, points, config),
            description=params.description,
        )
        log.info("training job %s registered %s (test AUROC %.3f)", job.id, registered.ref, evaluation.auroc)
        shutil.rmtree(path.parent, ignore_errors=True)  # the weights are in the registry now
        calibration = list(result.calibration) if result.calibration is not None else None
        return {
            **self.progress,
            "stage": "done",
            "calibration": calibration,
            "result": _result(registered, evaluation),
        }

"""The model registry: models, versions, artifacts, approval and stages (after SageMaker's model registry).

A *model* (``fracture``) has numbered *versions*. A version holds its artifacts (the ONNX graph, the
weights, the preprocessing spec, a MONAI bundle's configs) as blobs in the platform's blob store,
which encrypts them at rest; each is addressed by its SHA-256 (``models/<aa>/<sha256>``) and checked
against it whenever it is read. A version also records its input/output contract
(:mod:`radstack.ai.contract`), its lineage (data set version, code version, hyperparameters,
training job), its evaluation metrics and its model card (:mod:`radstack.ai.card`).

Approval (one decision per version, final)::

    pending ──approve──► approved
       └─────reject────► rejected

made by a principal with ``manage-models`` who neither trained nor registered the version, with a
comment. Stages: a pending or approved version may be put in ``staging``; only an approved version
reaches ``production``, one per model (the database refuses a second); the version it displaces is
``archived``. :meth:`ModelRegistry.rollback` returns production to the version that was there
before, as often as there is one.

Every change (registration, import, approval, rejection, promotion, rollback), refused ones
included, is recorded in the audit trail. A refused change leaves nothing behind: everything is
checked before anything is written, blobs are written before the rows that name them, and the rows
commit in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from radstack.ai.card import ModelCard, check_metrics
from radstack.ai.contract import Bundle, Contract, InvalidModel, check_bundle, check_onnx, read_bundle
from radstack.ai.models import ModelArtifactRow, ModelRow, ModelStageChangeRow, ModelVersionRow
from radstack.errors import BadRequest, Conflict, Forbidden, NotFound, ProcessingFailure, RadstackError
from radstack.security.audit import AuditActionValues, AuditEntry, audit_entry, audited
from radstack.security.policy import ActionValues, Policy, Principal
from radstack.store.blobs import BlobStore, content_key

__all__ = [
    "ApprovalStatus",
    "Artifact",
    "ArtifactIn",
    "ArtifactIntegrityError",
    "ArtifactKind",
    "Lineage",
    "Model",
    "ModelFormat",
    "ModelRegistry",
    "ModelVersion",
    "Stage",
    "StageChange",
]

#: Blob key prefix of model artifacts (the garbage collector of instance blobs never looks here).
BLOB_PREFIX = "models"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Longest review comment.
COMMENT_MAX = 4000


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class Stage(StrEnum):
    STAGING = "staging"
    PRODUCTION = "production"
    #: Left production (displaced by a promotion or rollback) or staging (rejected).
    ARCHIVED = "archived"


class ModelFormat(StrEnum):
    ONNX = "onnx"
    MONAI_BUNDLE = "monai-bundle"


class ArtifactKind(StrEnum):
    ONNX = "onnx"
    #: PyTorch weights (a state dict, a checkpoint, TorchScript).
    WEIGHTS = "weights"
    #: The preprocessing spec the inference code applies before the model (JSON).
    PREPROCESSING = "preprocessing"
    #: The input/output contract as the registry checked it (JSON).
    CONTRACT = "contract"
    #: A MONAI bundle's ``configs/*``.
    CONFIG = "config"
    #: A MONAI bundle's ``docs/*`` and other files.
    DOC = "doc"


class ArtifactIntegrityError(ProcessingFailure):
    """An artifact's bytes no longer match the SHA-256 it was registered under."""

    title = "Artifact damaged"


@dataclass(frozen=True, slots=True)
class ArtifactIn:
    """A file to register with a version."""

    name: str
    kind: ArtifactKind
    data: bytes


@dataclass(frozen=True, slots=True)
class Artifact:
    """A registered file: its name in the model, kind, SHA-256 and size (its bytes are in the blob store)."""

    name: str
    kind: ArtifactKind
    sha256: str
    size: int
    blob_key: str


_LINEAGE_FIELDS = (
    "dataset_version",
    "dataset_id",
    "code_version",
    "hyperparameters",
    "training_job",
    "device",
)


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a version came from."""

    #: The data set version it was trained on (``fractures@3``).
    dataset_version: str | None = None
    #: The code that trained it (a git commit, a package version, a bundle version).
    code_version: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    #: The training job's id.
    training_job: str | None = None
    #: The data set version's identity (its content hash), which its name and number stand for.
    dataset_id: str | None = None
    #: Where it was trained (``cpu``, ``cuda``).
    device: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset_version": self.dataset_version,
            "dataset_id": self.dataset_id,
            "code_version": self.code_version,
            "hyperparameters": self.hyperparameters,
            "training_job": self.training_job,
            "device": self.device,
        }

    @classmethod
    def from_json(cls, document: Any, where: str = "lineage") -> Lineage:
        """The lineage a JSON document gives (empty for None).

        Raises
        ------
        BadRequest
            ``document`` is not a JSON object, has unknown fields, a version or job that is not
            text, or hyperparameters that are not an object (the message names the field).
        """
        if document is None:
            return cls()
        fields = ", ".join(_LINEAGE_FIELDS)
        if not isinstance(document, Mapping):
            raise BadRequest(f"{where} must be a JSON object with {fields}")
        unknown = set(document) - set(_LINEAGE_FIELDS)
        if unknown:
            raise BadRequest(f"{where} has unknown fields {sorted(unknown)}; accepted: {fields}")
        texts = {}
        for key in (f for f in _LINEAGE_FIELDS if f != "hyperparameters"):
            value = document.get(key)
            if value is not None and not isinstance(value, str | int):
                raise BadRequest(f"{where}.{key} must be text, not {type(value).__name__}")
            texts[key] = None if value is None else str(value)
        hyperparameters = document.get("hyperparameters") or {}
        if not isinstance(hyperparameters, dict):
            raise BadRequest(f"{where}.hyperparameters must be a JSON object")
        return cls(hyperparameters=hyperparameters, **texts)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A registered version of a model, as it stands now."""

    model: str
    version: int
    format: ModelFormat
    status: ApprovalStatus
    stage: Stage | None
    trained_by: str
    registered_by: str
    created_at: datetime
    reviewed_by: str | None
    review_comment: str | None
    reviewed_at: datetime | None
    stage_changed_at: datetime | None
    contract: Contract
    lineage: Lineage
    metrics: dict[str, Any]
    card: ModelCard
    artifacts: tuple[Artifact, ...]

    @property
    def ref(self) -> str:
        """``fracture v3``: how messages name it."""
        return f"{self.model} v{self.version}"

    def artifact(self, kind: ArtifactKind, name: str | None = None) -> Artifact:
        """The artifact of ``kind`` (named ``name`` when the version has several of that kind).

        Raises
        ------
        NotFound
            None of that kind or name, or several of the kind and no name.
        """
        found = [a for a in self.artifacts if a.kind is kind and (name is None or a.name == name)]
        if len(found) == 1:
            return found[0]
        if not found:
            what = f"{kind.value} artifact" + (f" {name!r}" if name else "")
            raise NotFound(f"{self.ref} has no {what}")
        raise NotFound(
            f"{self.ref} has {len(found)} {kind.value} artifacts ({', '.join(a.name for a in found)}); name one"
        )


@dataclass(frozen=True, slots=True)
class Model:
    """A model and where its versions stand."""

    name: str
    description: str
    created_by: str
    created_at: datetime
    latest_version: int | None
    production_version: int | None
    version_count: int


@dataclass(frozen=True, slots=True)
class StageChange:
    """One entry of a model's stage history."""

    version: int
    from_stage: Stage | None
    to_stage: Stage | None
    reason: str
    changed_by: str
    changed_at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def check_name(name: str) -> str:
    """``name`` itself when it is a valid model name; :class:`BadRequest` otherwise.

    Raises
    ------
    BadRequest
        ``name`` is not 1 to 64 lowercase letters, digits, '.', '_' or '-' starting with a letter
        or digit.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(
            f"model name {name!r} is not valid: use 1 to 64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_artifact_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name or len(name) > 256 or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise BadRequest(f"artifact name {name!r} must be a relative path of at most 256 characters")
    return path.as_posix()


def _bundle_kind(name: str) -> ArtifactKind:
    if name.startswith("configs/"):
        return ArtifactKind.CONFIG
    if name.startswith("models/"):
        return ArtifactKind.ONNX if name.endswith(".onnx") else ArtifactKind.WEIGHTS
    return ArtifactKind.DOC


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True).encode()


class ModelRegistry:
    """The registry's service: every route and CLI command calls it.

    Parameters
    ----------
    engine
        The index database (migrated: the ``ai_model*`` tables).
    blobs
        The platform's blob store; it encrypts what it holds (:class:`radstack.security.crypto.EncryptedBlobStore`).
    policy
        Authorisation: every change needs ``manage-models``.
    audit
        Where audit entries go (:meth:`radstack.security.audit.AuditWriter.submit`).
    """

    def __init__(
        self, engine: Engine, blobs: BlobStore, policy: Policy, audit: Callable[[AuditEntry], None]
    ) -> None:
        self.engine = engine
        self.blobs = blobs
        self.policy = policy
        self._audit = audit

    # ------------------------------------------------------------------ audit
    def _audited(
        self, by: Principal, action: AuditActionValues, resource: dict[str, Any]
    ) -> AbstractContextManager[None]:
        """Record the change in the audit trail: its success, or its refusal with the reason."""
        return audited(self._audit, by, action, resource)

    def _record(
        self,
        by: Principal,
        action: AuditActionValues,
        resource: dict[str, Any],
        error: RadstackError | None = None,
    ) -> None:
        self._audit(audit_entry(by, action, resource, error))

    # ------------------------------------------------------------------ registering
    def register(
        self,
        name: str,
        artifacts: Sequence[ArtifactIn],
        *,
        by: Principal,
        format: ModelFormat = ModelFormat.ONNX,
        contract: Contract | None = None,
        lineage: Lineage | None = None,
        metrics: Mapping[str, Any] | None = None,
        card: ModelCard | None = None,
        description: str = "",
        trained_by: str | None = None,
        new_model: bool = False,
    ) -> ModelVersion:
        """Register a new version of ``name`` (the model is made with its first version); it is pending.

        The artifacts are checked first: an ONNX version's one ONNX graph against ``contract`` (None:
        the graph's own inputs and outputs), a MONAI bundle's files as :func:`check_bundle` does. The
        checked contract is stored with the version and as ``contract.json``, its preprocessing spec as
        ``preprocessing.json`` (unless an artifact of that kind is given).

        Parameters
        ----------
        by
            Who registers it (needs ``manage-models``).
        trained_by
            Who trained it, when that is someone else (a training job's submitter); neither may approve it.
        new_model
            Register only as version 1 of a model that does not exist yet (checked in the transaction
            that makes it, so of two nodes doing this at once one gets :class:`Conflict`).

        Raises
        ------
        Forbidden
            ``by`` may not manage models.
        BadRequest
            A bad name, artifact name, lineage, metrics or card.
        InvalidModel, ContractMismatch
            The model file is corrupt, or does not match its contract.
        Conflict
            ``new_model`` and the model exists.
        """
        resource: dict[str, Any] = {"model": name, "event": "register", "format": str(format)}
        action = AuditActionValues.WRITE
        with self._audited(by, action, resource):
            self.policy.require(by, ActionValues.MANAGE_MODELS)
            check_name(name)
            files = {_check_artifact_name(a.name): a for a in artifacts}
            if len(files) != len(artifacts):
                raise BadRequest("two artifacts have the same name")
            checked = self._check_artifacts(ModelFormat(format), files, contract)
            metrics_doc = check_metrics(dict(metrics) if metrics is not None else None)
            stored = list(files.values())
            if not any(a.kind is ArtifactKind.CONTRACT for a in stored):
                stored.append(
                    ArtifactIn("contract.json", ArtifactKind.CONTRACT, _json_bytes(checked.to_json()))
                )
            if checked.preprocessing is not None and not any(
                a.kind is ArtifactKind.PREPROCESSING for a in stored
            ):
                stored.append(
                    ArtifactIn(
                        "preprocessing.json", ArtifactKind.PREPROCESSING, _json_bytes(checked.preprocessing)
                    )
                )
            version = self._store(
                name,
                stored,
                format=ModelFormat(format),
                contract=checked,
                lineage=lineage or Lineage(),
                metrics=metrics_doc,
                card=card or ModelCard(),
                description=description,
                trained_by=trained_by or by.subject,
                registered_by=by.subject,
                new_model=new_model,
            )
            resource["version"] = version.version
        return version

    def _check_artifacts(
        self, format: ModelFormat, files: Mapping[str, ArtifactIn], contract: Contract | None
    ) -> Contract:
        if format is ModelFormat.ONNX:
            graphs = [a for a in files.values() if a.kind is ArtifactKind.ONNX]
            if len(graphs) != 1:
                raise InvalidModel(f"an ONNX model version holds one ONNX graph; {len(graphs)} were given")
            return check_onnx(graphs[0].data, contract, label=graphs[0].name)
        return check_bundle(Bundle({n: a.data for n, a in files.items()}), contract)

    def import_onnx(
        self,
        name: str,
        onnx: bytes,
        contract: Contract,
        *,
        by: Principal,
        weights: bytes | None = None,
        lineage: Lineage | None = None,
        metrics: Mapping[str, Any] | None = None,
        card: ModelCard | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Import a third-party ONNX model with its declared contract (and optionally its source weights).

        Raises as :meth:`register` does; a corrupt file or a contract its graph does not honour is refused.
        """
        artifacts = [ArtifactIn("model.onnx", ArtifactKind.ONNX, onnx)]
        if weights is not None:
            artifacts.append(ArtifactIn("weights.pt", ArtifactKind.WEIGHTS, weights))
        return self.register(
            name,
            artifacts,
            by=by,
            format=ModelFormat.ONNX,
            contract=contract,
            lineage=lineage,
            metrics=metrics,
            card=card,
            description=description,
        )

    def import_bundle(
        self,
        name: str,
        bundle: bytes | Path,
        *,
        by: Principal,
        contract: Contract | None = None,
        lineage: Lineage | None = None,
        metrics: Mapping[str, Any] | None = None,
        card: ModelCard | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Import a MONAI bundle (a directory or a zip's bytes): its configs and weights.

        Its contract is its ``configs/metadata.json``'s ``network_data_format``; a ``contract`` the
        importer expects must match it. The card, lineage and metrics default to what the metadata
        says (``intended_use``, ``data_source``, ``version``, ``eval_metrics``) where they are not given.

        Raises
        ------
        Forbidden
            ``by`` may not manage models.
        InvalidModel, ContractMismatch
            Not a MONAI bundle (no readable ``configs/metadata.json``, a path outside the bundle, a
            damaged zip), weights that do not load, or a bundle that does not match ``contract``.
        PayloadTooLarge
            The bundle is over 2 GiB uncompressed or holds over 1000 files.
        BadRequest
            A bad name, artifact name, lineage, metrics or card.
        Conflict
            Others kept taking the model's next version number (five tries).
        OutOfResources
            The blob store cannot take the artifacts.
        RadstackError
            Each refusal above is one, and is recorded in the audit trail (a failed register) before
            it reaches the caller.
        """
        try:
            self.policy.require(by, ActionValues.MANAGE_MODELS)
            files = read_bundle(bundle)
            meta = files.metadata
        except RadstackError as error:
            resource = {"model": name, "event": "register", "format": str(ModelFormat.MONAI_BUNDLE)}
            self._record(by, AuditActionValues.WRITE, resource, error)
            raise
        text = {k: v for k, v in meta.items() if isinstance(v, str)}
        card = card or ModelCard()
        card = ModelCard(  # what the importer says, else what the bundle's metadata says
            intended_use=card.intended_use or text.get("intended_use", text.get("description", "")),
            training_data=card.training_data
            or "; ".join(v for v in (text.get("data_source"), text.get("data_type")) if v),
            limitations=card.limitations or text.get("limitations", ""),
        )
        lineage = lineage or Lineage()
        if lineage.code_version is None:
            bundle_name = text.get("name", "MONAI bundle")
            code_version = f"{bundle_name} {text.get('version', '')}".strip()
            lineage = replace(lineage, code_version=code_version)
        if metrics is None and isinstance(meta.get("eval_metrics"), dict):
            metrics = {"eval_metrics": meta["eval_metrics"]}
        return self.register(
            name,
            [ArtifactIn(path, _bundle_kind(path), data) for path, data in sorted(files.files.items())],
            by=by,
            format=ModelFormat.MONAI_BUNDLE,
            contract=contract,
            lineage=lineage,
            metrics=metrics,
            card=card,
            description=description or text.get("description", ""),
        )

    def _store(
        self,
        name: str,
        artifacts: Sequence[ArtifactIn],
        *,
        format: ModelFormat,
        contract: Contract,
        lineage: Lineage,
        metrics: dict[str, Any],
        card: ModelCard,
        description: str,
        trained_by: str,
        registered_by: str,
        new_model: bool = False,
    ) -> ModelVersion:
        """Write the blobs, then the rows in one transaction (retried when another version took the number).

        Raises
        ------
        Conflict
            The fifth attempt still finds the model name or version number taken by another
            registration; or ``new_model`` and the model exists.
        OutOfResources
            The blob store cannot take an artifact.
        """
        rows = []
        for artifact in artifacts:
            key = content_key(BLOB_PREFIX, artifact.data)
            self.blobs.put(key, artifact.data)
            digest = key.rsplit("/", 1)[1]
            rows.append((artifact.name, artifact.kind, digest, len(artifact.data), key))
        for attempt in range(5):
            try:
                with Session(self.engine) as session, session.begin():
                    model = session.scalar(select(ModelRow).where(ModelRow.name == name))
                    if model is not None and new_model:
                        raise Conflict(f"model {name!r} exists already; it was not registered again")
                    if model is None:
                        model = ModelRow(
                            name=name, description=description, created_by=registered_by, created_at=_now()
                        )
                        session.add(model)
                        session.flush()
                    latest = session.scalar(
                        select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_id == model.id)
                    )
                    row = ModelVersionRow(
                        model_id=model.id,
                        version=(latest or 0) + 1,
                        format=str(format),
                        status=str(ApprovalStatus.PENDING),
                        stage=None,
                        trained_by=trained_by,
                        registered_by=registered_by,
                        created_at=_now(),
                        contract=json.dumps(contract.to_json(), sort_keys=True),
                        lineage=json.dumps(lineage.to_json(), sort_keys=True),
                        metrics=json.dumps(metrics, sort_keys=True),
                        card=json.dumps(card.to_json(), sort_keys=True),
                    )
                    session.add(row)
                    session.flush()
                    for artifact_name, kind, digest, size, key in rows:
                        session.add(
                            ModelArtifactRow(
                                version_id=row.id,
                                kind=str(kind),
                                name=artifact_name,
                                sha256=digest,
                                size=size,
                                blob_key=key,
                            )
                        )
                    version_id = row.id
                break
            except IntegrityError:
                # Another registration took this model name or version number first: read again.
                if attempt == 4:
                    raise Conflict(f"model {name!r} is being changed by others; try again") from None
        with Session(self.engine) as session:
            return self._version(session, session.get_one(ModelVersionRow, version_id))

    # ------------------------------------------------------------------ reading
    def models(self) -> list[Model]:
        """Every model, by name."""
        with Session(self.engine) as session:
            return [
                self._model(session, row) for row in session.scalars(select(ModelRow).order_by(ModelRow.name))
            ]

    def model(self, name: str) -> Model:
        with Session(self.engine) as session:
            return self._model(session, self._model_row(session, name))

    def versions(self, name: str) -> list[ModelVersion]:
        """The versions of ``name``, newest first."""
        with Session(self.engine) as session:
            model = self._model_row(session, name)
            rows = session.scalars(
                select(ModelVersionRow)
                .where(ModelVersionRow.model_id == model.id)
                .order_by(ModelVersionRow.version.desc())
            ).all()
            artifacts = self._artifacts(session, [r.id for r in rows])
            return [self._version(session, r, name, artifacts.get(r.id, ())) for r in rows]

    def version(self, name: str, version: int) -> ModelVersion:
        with Session(self.engine) as session:
            return self._version(session, self._version_row(session, name, version), name)

    def production(self, name: str) -> ModelVersion:
        """The version of ``name`` in production (what inference runs).

        Raises
        ------
        NotFound
            No such model, or none of its versions is in production.
        """
        with Session(self.engine) as session:
            model = self._model_row(session, name)
            row = session.scalar(
                select(ModelVersionRow).where(
                    ModelVersionRow.model_id == model.id, ModelVersionRow.stage == str(Stage.PRODUCTION)
                )
            )
            if row is None:
                raise NotFound(f"model {name!r} has no version in production")
            return self._version(session, row, name)

    def history(self, name: str) -> list[StageChange]:
        """The stage changes of ``name``'s versions, newest first."""
        with Session(self.engine) as session:
            model = self._model_row(session, name)
            rows = session.execute(
                select(ModelStageChangeRow, ModelVersionRow.version)
                .join(ModelVersionRow, ModelVersionRow.id == ModelStageChangeRow.version_id)
                .where(ModelStageChangeRow.model_id == model.id)
                .order_by(ModelStageChangeRow.id.desc())
            ).all()
            return [
                StageChange(
                    version=number,
                    from_stage=Stage(change.from_stage) if change.from_stage else None,
                    to_stage=Stage(change.to_stage) if change.to_stage else None,
                    reason=change.reason,
                    changed_by=change.changed_by,
                    changed_at=_utc(change.changed_at) or change.changed_at,
                )
                for change, number in rows
            ]

    def artifact_bytes(self, version: ModelVersion, kind: ArtifactKind, name: str | None = None) -> bytes:
        """The bytes of ``version``'s artifact of ``kind`` (``name`` when it has several), checked
        against its SHA-256.

        Raises
        ------
        NotFound
            No such artifact, or its blob is missing.
        ArtifactIntegrityError
            The bytes differ from what was registered.
        """
        artifact = version.artifact(kind, name)
        data = self.blobs.get(artifact.blob_key)
        if hashlib.sha256(data).hexdigest() != artifact.sha256:
            raise ArtifactIntegrityError(
                f"artifact {artifact.name} of {version.ref} does not match its SHA-256 {artifact.sha256}: "
                "the stored blob was changed or damaged"
            )
        return data

    def _model_row(self, session: Session, name: str) -> ModelRow:
        row = session.scalar(select(ModelRow).where(ModelRow.name == name))
        if row is None:
            raise NotFound(f"model {name!r} is not registered")
        return row

    def _version_row(self, session: Session, name: str, version: int) -> ModelVersionRow:
        model = self._model_row(session, name)
        row = session.scalar(
            select(ModelVersionRow).where(
                ModelVersionRow.model_id == model.id, ModelVersionRow.version == version
            )
        )
        if row is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return row

    def _model(self, session: Session, row: ModelRow) -> Model:
        count, latest = session.execute(
            select(func.count(ModelVersionRow.id), func.max(ModelVersionRow.version)).where(
                ModelVersionRow.model_id == row.id
            )
        ).one()
        production = session.scalar(
            select(ModelVersionRow.version).where(
                ModelVersionRow.model_id == row.id, ModelVersionRow.stage == str(Stage.PRODUCTION)
            )
        )
        return Model(
            name=row.name,
            description=row.description,
            created_by=row.created_by,
            created_at=_utc(row.created_at) or row.created_at,
            latest_version=latest,
            production_version=production,
            version_count=int(count),
        )

    def _artifacts(self, session: Session, version_ids: Sequence[int]) -> dict[int, tuple[Artifact, ...]]:
        found: dict[int, list[Artifact]] = {}
        if version_ids:
            for row in session.scalars(
                select(ModelArtifactRow)
                .where(ModelArtifactRow.version_id.in_(version_ids))
                .order_by(ModelArtifactRow.name)
            ):
                found.setdefault(row.version_id, []).append(
                    Artifact(row.name, ArtifactKind(row.kind), row.sha256, row.size, row.blob_key)
                )
        return {key: tuple(value) for key, value in found.items()}

    def _version(
        self,
        session: Session,
        row: ModelVersionRow,
        model: str | None = None,
        artifacts: tuple[Artifact, ...] | None = None,
    ) -> ModelVersion:
        if model is None:
            model = session.get_one(ModelRow, row.model_id).name
        if artifacts is None:
            artifacts = self._artifacts(session, [row.id]).get(row.id, ())
        return ModelVersion(
            model=model,
            version=row.version,
            format=ModelFormat(row.format),
            status=ApprovalStatus(row.status),
            stage=Stage(row.stage) if row.stage else None,
            trained_by=row.trained_by,
            registered_by=row.registered_by,
            created_at=_utc(row.created_at) or row.created_at,
            reviewed_by=row.reviewed_by,
            review_comment=row.review_comment,
            reviewed_at=_utc(row.reviewed_at),
            stage_changed_at=_utc(row.stage_changed_at),
            contract=Contract.from_json(json.loads(row.contract)),
            lineage=Lineage.from_json(json.loads(row.lineage)),
            metrics=json.loads(row.metrics),
            card=ModelCard.from_json(json.loads(row.card)),
            artifacts=artifacts,
        )

    # ------------------------------------------------------------------ approval
    def approve(self, name: str, version: int, *, by: Principal, comment: str) -> ModelVersion:
        """Approve a pending version: ``by`` (with ``manage-models``) neither trained nor registered it.

        Raises
        ------
        Forbidden
            ``by`` may not manage models, or trained or registered this version.
        Conflict
            The version is not pending (a decision is final).
        BadRequest
            No comment.
        """
        return self._review(name, version, ApprovalStatus.APPROVED, by, comment)

    def reject(self, name: str, version: int, *, by: Principal, comment: str) -> ModelVersion:
        """Reject a pending version (it leaves staging, and can never reach production). Raises as
        :meth:`approve`."""
        return self._review(name, version, ApprovalStatus.REJECTED, by, comment)

    def _review(
        self, name: str, number: int, decision: ApprovalStatus, by: Principal, comment: str
    ) -> ModelVersion:
        event = "approve" if decision is ApprovalStatus.APPROVED else "reject"
        resource = {"model": name, "version": number, "event": event}
        with self._audited(by, AuditActionValues.DEPLOY, resource):
            self.policy.require(by, ActionValues.MANAGE_MODELS)
            comment = (comment or "").strip()
            if not comment:
                raise BadRequest(f"a review needs a comment: say why {name} v{number} is {decision.value}")
            if len(comment) > COMMENT_MAX:
                raise BadRequest(f"the comment is {len(comment)} characters; at most {COMMENT_MAX}")
            with Session(self.engine) as session, session.begin():
                row = self._version_row(session, name, number)
                ref = f"{name} v{number}"
                if row.status != ApprovalStatus.PENDING:
                    raise Conflict(
                        f"{ref} is already {row.status} by {row.reviewed_by}; a review decision is final "
                        "(register a new version to change it)"
                    )
                if by.subject in (row.trained_by, row.registered_by):
                    who = "trained" if by.subject == row.trained_by else "registered"
                    raise Forbidden(
                        f"{by.subject!r} {who} {ref}, so may not {event} it: the review must come from "
                        "someone other than its trainer (separation of duties)"
                    )
                now = _now()
                changed = (
                    session.connection()
                    .execute(
                        update(ModelVersionRow)
                        .where(
                            ModelVersionRow.id == row.id,
                            ModelVersionRow.status == str(ApprovalStatus.PENDING),
                        )
                        .values(
                            status=str(decision),
                            reviewed_by=by.subject,
                            review_comment=comment,
                            reviewed_at=now,
                        )
                    )
                    .rowcount
                )
                if changed != 1:
                    raise Conflict(f"{ref} was reviewed by someone else meanwhile")
                if decision is ApprovalStatus.REJECTED and row.stage == Stage.STAGING:
                    self._set_stage(session, row, Stage.ARCHIVED, "reject", by, now)
            return self.version(name, number)

    # ------------------------------------------------------------------ stages
    def promote(self, name: str, version: int, stage: Stage, *, by: Principal) -> ModelVersion:
        """Put a version in ``staging`` (pending or approved) or ``production`` (approved only; the
        version there before is archived, and is what :meth:`rollback` returns to).

        Raises
        ------
        Forbidden
            ``by`` may not manage models.
        Conflict
            The version is rejected, not approved (for production), or already in that stage.
        BadRequest
            ``stage`` is not staging or production.
        """
        stage = Stage(stage)
        resource = {"model": name, "version": version, "event": "promote", "stage": stage.value}
        with self._audited(by, AuditActionValues.DEPLOY, resource):
            self.policy.require(by, ActionValues.MANAGE_MODELS)
            if stage not in (Stage.STAGING, Stage.PRODUCTION):
                raise BadRequest(f"a version is promoted to staging or production, not {stage.value}")
            try:
                with Session(self.engine) as session, session.begin():
                    row = self._version_row(session, name, version)
                    ref = f"{name} v{version}"
                    if row.stage == stage:
                        raise Conflict(f"{ref} is already in {stage.value}")
                    if row.status == ApprovalStatus.REJECTED:
                        raise Conflict(f"{ref} was rejected by {row.reviewed_by}; it cannot be promoted")
                    if stage is Stage.PRODUCTION and row.status != ApprovalStatus.APPROVED:
                        raise Conflict(
                            f"{ref} is {row.status}: only approved versions reach production; "
                            "it needs an approval by someone other than its trainer first"
                        )
                    now = _now()
                    previous = None
                    if stage is Stage.PRODUCTION:
                        current = self._production_row(session, row.model_id)
                        if current is not None:
                            self._set_stage(session, current, Stage.ARCHIVED, "archive", by, now)
                            previous = current.id
                    self._set_stage(session, row, stage, "promote", by, now, previous=previous)
            except IntegrityError:
                raise Conflict(
                    f"{name} v{version}: another promotion of {name} happened meanwhile; try again"
                ) from None
            return self.version(name, version)

    def rollback(self, name: str, *, by: Principal) -> ModelVersion:
        """Return production to the version that was there before the current one (it is archived).

        Rolling back again goes one further back, as long as there is an earlier production version.

        Raises
        ------
        Forbidden
            ``by`` may not manage models.
        Conflict
            Nothing is in production, or nothing was before it.
        """
        resource: dict[str, Any] = {"model": name, "event": "rollback"}
        with self._audited(by, AuditActionValues.DEPLOY, resource):
            self.policy.require(by, ActionValues.MANAGE_MODELS)
            try:
                with Session(self.engine) as session, session.begin():
                    model = self._model_row(session, name)
                    current = self._production_row(session, model.id)
                    if current is None:
                        raise Conflict(f"model {name!r} has no version in production to roll back from")
                    resource["from_version"] = current.version
                    entered = self._entered_production(session, current.id)
                    target_id = entered.previous_version_id if entered is not None else None
                    if target_id is None:
                        raise Conflict(
                            f"{name} v{current.version} is the first production version of {name!r}: "
                            "there is no earlier one to roll back to"
                        )
                    target = session.get_one(ModelVersionRow, target_id)
                    if target.status != ApprovalStatus.APPROVED:  # approvals are final, so never; but be sure
                        raise Conflict(
                            f"{name} v{target.version} is {target.status}; it cannot return to production"
                        )
                    # The target's own entry into production says what was before it: rolling back
                    # again goes there, not forward to the version just left.
                    before = self._entered_production(session, target.id)
                    now = _now()
                    self._set_stage(session, current, Stage.ARCHIVED, "archive", by, now)
                    self._set_stage(
                        session,
                        target,
                        Stage.PRODUCTION,
                        "rollback",
                        by,
                        now,
                        previous=before.previous_version_id if before is not None else None,
                    )
                    resource["version"] = target.version
                    number = target.version
            except IntegrityError:
                raise Conflict(f"{name}: another promotion happened meanwhile; try again") from None
            return self.version(name, number)

    def _production_row(self, session: Session, model_id: int) -> ModelVersionRow | None:
        return session.scalar(
            select(ModelVersionRow).where(
                ModelVersionRow.model_id == model_id, ModelVersionRow.stage == str(Stage.PRODUCTION)
            )
        )

    def _entered_production(self, session: Session, version_id: int) -> ModelStageChangeRow | None:
        """The latest stage change that put ``version_id`` in production."""
        return session.scalar(
            select(ModelStageChangeRow)
            .where(
                ModelStageChangeRow.version_id == version_id,
                ModelStageChangeRow.to_stage == str(Stage.PRODUCTION),
            )
            .order_by(ModelStageChangeRow.id.desc())
            .limit(1)
        )

    def _set_stage(
        self,
        session: Session,
        row: ModelVersionRow,
        stage: Stage,
        reason: str,
        by: Principal,
        now: datetime,
        *,
        previous: int | None = None,
    ) -> None:
        session.add(
            ModelStageChangeRow(
                model_id=row.model_id,
                version_id=row.id,
                previous_version_id=previous,
                from_stage=row.stage,
                to_stage=str(stage),
                reason=reason,
                changed_by=by.subject,
                changed_at=now,
            )
        )
        row.stage = str(stage)
        row.stage_changed_at = now
        # The old production version leaves production before the new one enters it (unique index).
        session.flush()

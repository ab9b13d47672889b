"""The model registry over HTTP: the API at ``/api/v1/models`` and the pages at ``/models``.

Routes are thin over :class:`radstack.ai.registry.ModelRegistry`: reading needs ``read-models``
(radiologists, data scientists, admins), every change ``manage-models`` (data scientists, admins),
and the registry itself checks the rest (separation of duties, the approval and stage rules) and
records each change in the audit trail. A refusal is an RFC 9457 problem naming the problem; on the
pages, the error page with the same status.

API: ``GET /models``, ``GET /models/{name}``, ``GET /models/{name}/versions``,
``POST /models/{name}/versions`` (multipart: an ``onnx`` file and its ``contract``, or a MONAI
``bundle`` zip; optional ``weights``, ``lineage``, ``metrics``, ``card``, ``description``),
``GET /models/{name}/versions/{n}``, ``POST …/{n}/approve`` and ``…/reject`` (``{"comment"}``),
``POST …/{n}/promote`` (``{"stage"}``), ``POST /models/{name}/rollback``, ``GET /models/{name}/production``,
``GET /models/{name}/history``, ``GET …/{n}/artifacts/{path}`` (the bytes, checked against their SHA-256).

Pages: ``/models`` (every model), ``/models/{name}`` (its versions, rollback, the scores it gave per version per day),
``/models/{name}/versions/{n}`` (the model card: intended use, training data, limitations, metrics with
ROC, FROC and calibration plots, lineage, contract, artifacts; review and promotion forms for
``manage-models``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from anyio import to_thread
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from radstack.ai.card import ModelCard, calibration_svg, froc_svg, roc_svg
from radstack.ai.contract import Contract
from radstack.ai.findings import ScoreDay, operating_thresholds, score_histogram_svg
from radstack.ai.registry import (
    ApprovalStatus,
    ArtifactKind,
    Lineage,
    Model,
    ModelFormat,
    ModelRegistry,
    ModelVersion,
    Stage,
    StageChange,
)
from radstack.ai.training import TrainingJob
from radstack.errors import BadRequest, RadstackError, UnsupportedMediaType
from radstack.security.audit import AuditActionValues
from radstack.security.policy import ActionValues
from radstack.web.deps import authorize, page_or_error, platform_of, principal_of, signed_in_page

__all__ = ["pages", "router"]

router = APIRouter(tags=["models"])
pages = APIRouter(include_in_schema=False)


class ModelOut(BaseModel):
    name: str
    description: str
    created_by: str
    created_at: datetime
    latest_version: int | None
    production_version: int | None
    version_count: int

    @classmethod
    def of(cls, model: Model) -> ModelOut:
        return cls.model_validate(model, from_attributes=True)


class ArtifactOut(BaseModel):
    name: str
    kind: ArtifactKind
    sha256: str
    size: int


class VersionOut(BaseModel):
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
    contract: dict[str, Any]
    lineage: dict[str, Any]
    metrics: dict[str, Any] = Field(description="evaluation metrics (schema: radstack.ai.card)")
    card: dict[str, str] = Field(description="intended_use, training_data, limitations")
    artifacts: list[ArtifactOut]

    @classmethod
    def of(cls, version: ModelVersion) -> VersionOut:
        fields = {name: getattr(version, name) for name in cls.model_fields}
        fields.update(  # the records that travel as JSON objects
            contract=version.contract.to_json(),
            lineage=version.lineage.to_json(),
            card=version.card.to_json(),
            artifacts=[ArtifactOut.model_validate(a, from_attributes=True) for a in version.artifacts],
        )
        return cls.model_validate(fields)


class StageChangeOut(BaseModel):
    version: int
    from_stage: Stage | None
    to_stage: Stage | None
    reason: str
    changed_by: str
    changed_at: datetime

    @classmethod
    def of(cls, change: StageChange) -> StageChangeOut:
        return cls.model_validate(change, from_attributes=True)


class ReviewIn(BaseModel):
    comment: str = Field(min_length=1, max_length=4000, examples=["AUROC, FROC and calibration acceptable"])


class PromoteIn(BaseModel):
    stage: Stage = Field(examples=["production"], description="staging or production")


def _registry(
    request: Request, action: ActionValues, audit: AuditActionValues, **resource: Any
) -> ModelRegistry:
    authorize(request, action, audit=audit, **resource)
    return platform_of(request).models


def _reader(request: Request, **resource: Any) -> ModelRegistry:
    return _registry(request, ActionValues.READ_MODELS, AuditActionValues.READ, **resource)


def _writer(request: Request, audit: AuditActionValues, **resource: Any) -> ModelRegistry:
    return _registry(request, ActionValues.MANAGE_MODELS, audit, **resource)


# ----------------------------------------------------------------------------- API
@router.get("/models", response_model=list[ModelOut], summary="The registered models")
def list_models(request: Request) -> list[ModelOut]:
    return [ModelOut.of(m) for m in _reader(request).models()]


@router.get("/models/{name}", response_model=ModelOut, summary="A model")
def get_model(request: Request, name: str) -> ModelOut:
    return ModelOut.of(_reader(request, model=name).model(name))


@router.get(
    "/models/{name}/versions", response_model=list[VersionOut], summary="A model's versions, newest first"
)
def list_versions(request: Request, name: str) -> list[VersionOut]:
    return [VersionOut.of(v) for v in _reader(request, model=name).versions(name)]


@router.get("/models/{name}/versions/{version}", response_model=VersionOut, summary="A model version")
def get_version(request: Request, name: str, version: int) -> VersionOut:
    return VersionOut.of(_reader(request, model=name, version=version).version(name, version))


@router.get("/models/{name}/production", response_model=VersionOut, summary="The version in production")
def get_production(request: Request, name: str) -> VersionOut:
    return VersionOut.of(_reader(request, model=name).production(name))


@router.get(
    "/models/{name}/history", response_model=list[StageChangeOut], summary="Stage changes, newest first"
)
def get_history(request: Request, name: str) -> list[StageChangeOut]:
    return [StageChangeOut.of(c) for c in _reader(request, model=name).history(name)]


@router.get(
    "/models/{name}/versions/{version}/artifacts/{path:path}",
    response_class=Response,
    summary="An artifact's bytes (checked against its SHA-256)",
)
def get_artifact(request: Request, name: str, version: int, path: str) -> Response:
    registry = _writer(request, AuditActionValues.EXPORT, model=name, version=version, artifact=path)
    found = registry.version(name, version)
    artifact = next((a for a in found.artifacts if a.name == path), None)
    if artifact is None:
        found.artifact(ArtifactKind.DOC, path)  # raises NotFound naming the version
        raise AssertionError("unreachable")
    data = registry.artifact_bytes(found, artifact.kind, artifact.name)
    filename = quote(artifact.name.rsplit("/", 1)[-1])
    return Response(
        data,
        media_type="application/json" if artifact.name.endswith(".json") else "application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
            "ETag": f'"{artifact.sha256}"',
        },
    )


_FORM_FIELDS = {
    "onnx": ("binary", "the ONNX model (send its contract too)"),
    "bundle": ("binary", "a MONAI bundle as a zip (configs/metadata.json, models/model.pt|ts|onnx)"),
    "contract": (
        "string",
        "JSON input/output contract (required with onnx; with a bundle, what it must match)",
    ),
    "weights": ("binary", "the source weights of an ONNX model, kept with the version"),
    "lineage": ("string", "JSON: dataset_version, code_version, hyperparameters, training_job"),
    "metrics": ("string", "JSON: evaluation metrics (schema: radstack.ai.card)"),
    "card": ("string", "JSON: intended_use, training_data, limitations"),
    "description": ("string", "the model's description (when this is its first version)"),
}
#: Largest text field of the form (a JSON field may also be sent as a file, which has no such limit).
_FIELD_MAX = 8 * 1024 * 1024


async def _field(form: Any, key: str, *, binary: bool = False) -> Any:
    """A form field's bytes (``binary``) or text, whether it was sent as a file or as a value."""
    value = form.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode() if binary else value
    data = await value.read()
    return data if binary else data.decode("utf-8", errors="replace")


def _json_field(value: str | None, what: str) -> Any:
    if value is None or not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise BadRequest(f"the {what} field is not JSON: {exc}") from None


@router.post(
    "/models/{name}/versions",
    response_model=VersionOut,
    status_code=201,
    summary="Register a version: an ONNX model with its contract, or a MONAI bundle (multipart)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            key: {
                                "type": "string",
                                "description": text,
                                **({"format": kind} if kind == "binary" else {}),
                            }
                            for key, (kind, text) in _FORM_FIELDS.items()
                        },
                    }
                }
            },
        }
    },
)
async def register_version(request: Request, name: str) -> VersionOut:
    registry = _writer(request, AuditActionValues.WRITE, model=name)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "send multipart/form-data: an 'onnx' file and its 'contract', or a 'bundle' zip"
        )
    async with request.form(max_part_size=_FIELD_MAX) as form:
        unknown = set(form.keys()) - set(_FORM_FIELDS)
        if unknown:
            raise BadRequest(f"unknown form fields {sorted(unknown)}; accepted: {', '.join(_FORM_FIELDS)}")
        onnx, bundle = await _field(form, "onnx", binary=True), await _field(form, "bundle", binary=True)
        weights = await _field(form, "weights", binary=True)
        texts = {
            key: await _field(form, key) for key in ("contract", "lineage", "metrics", "card", "description")
        }
    if (onnx is None) == (bundle is None):
        raise BadRequest("send either an 'onnx' file with its 'contract', or a MONAI 'bundle' zip")
    declared = _json_field(texts["contract"], "contract")
    if onnx is not None and declared is None:
        raise BadRequest("an ONNX model needs its 'contract' (JSON: inputs, outputs, preprocessing)")
    by = principal_of(request)
    given = {key: _json_field(texts[key], key) for key in ("lineage", "metrics", "card")}
    lineage = Lineage.from_json(given["lineage"]) if given["lineage"] is not None else None
    metrics = given["metrics"]
    card = ModelCard.from_json(given["card"]) if given["card"] is not None else None
    description = (texts["description"] or "").strip()[:2000]

    def run() -> ModelVersion:
        options: dict[str, Any] = {"by": by, "lineage": lineage, "metrics": metrics, "card": card}
        options["description"] = description
        if onnx is not None:
            return registry.import_onnx(name, onnx, Contract.from_json(declared), weights=weights, **options)
        expected = Contract.from_json(declared) if declared is not None else None
        return registry.import_bundle(name, bundle, contract=expected, **options)

    # Checking a model (onnxruntime, a forward pass) takes a while: off the event loop.
    return VersionOut.of(await to_thread.run_sync(run))


@router.post(
    "/models/{name}/versions/{version}/approve", response_model=VersionOut, summary="Approve a version"
)
def approve(request: Request, name: str, version: int, body: ReviewIn) -> VersionOut:
    registry = _writer(request, AuditActionValues.DEPLOY, model=name, version=version, event="approve")
    return VersionOut.of(registry.approve(name, version, by=principal_of(request), comment=body.comment))


@router.post(
    "/models/{name}/versions/{version}/reject", response_model=VersionOut, summary="Reject a version"
)
def reject(request: Request, name: str, version: int, body: ReviewIn) -> VersionOut:
    registry = _writer(request, AuditActionValues.DEPLOY, model=name, version=version, event="reject")
    return VersionOut.of(registry.reject(name, version, by=principal_of(request), comment=body.comment))


@router.post(
    "/models/{name}/versions/{version}/promote",
    response_model=VersionOut,
    summary="Put a version in staging, or an approved one in production",
)
def promote(request: Request, name: str, version: int, body: PromoteIn) -> VersionOut:
    registry = _writer(request, AuditActionValues.DEPLOY, model=name, version=version, event="promote")
    return VersionOut.of(registry.promote(name, version, body.stage, by=principal_of(request)))


@router.post(
    "/models/{name}/rollback",
    response_model=VersionOut,
    summary="Return production to the version that was there before",
)
def rollback(request: Request, name: str) -> VersionOut:
    registry = _writer(request, AuditActionValues.DEPLOY, model=name, event="rollback")
    return VersionOut.of(registry.rollback(name, by=principal_of(request)))


# ----------------------------------------------------------------------------- pages
def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    principal, policy = principal_of(request), platform_of(request).policy
    can_manage_models = policy.allows(principal, ActionValues.MANAGE_MODELS)
    return signed_in_page(
        request, template, status, path="/models", can_manage_models=can_manage_models, **context
    )


def _training_jobs(request: Request, model: str | None = None) -> list[TrainingJob]:
    """The newest training jobs (of ``model``) for a caller who may manage models; none for others."""
    principal, platform = principal_of(request), platform_of(request)
    if not platform.policy.allows(principal, ActionValues.MANAGE_MODELS):
        return []
    return platform.training.find(principal, model=model, limit=20)


@pages.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> Response:
    """Every registered model, its latest and production versions, and the newest training jobs."""
    return page_or_error(
        request,
        "Models",
        lambda: _page(
            request,
            "models.html",
            models=_reader(request).models(),
            training_jobs=_training_jobs(request),
        ),
        path="/models",
    )


@pages.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, name: str, done: str = "") -> Response:
    """A model's versions (status, stage, who trained and reviewed them), its stage history and its
    training jobs."""

    def build() -> Response:
        registry = _reader(request, model=name)
        model, versions = registry.model(name), registry.versions(name)
        return _page(
            request,
            "model.html",
            model=model,
            versions=versions,
            history=registry.history(name)[:50],
            training_jobs=_training_jobs(request, name),
            scores=_scores(request, name, versions),
            done=done,
        )

    return page_or_error(request, "Models", build, path="/models")


@pages.get("/models/{name}/versions/{version}", response_class=HTMLResponse)
def model_card_page(request: Request, name: str, version: int, done: str = "") -> Response:
    """The model card of a version, with its ROC, FROC and calibration plots."""

    def build() -> Response:
        found = _reader(request, model=name, version=version).version(name, version)
        metrics = found.metrics
        return _page(
            request,
            "model_card.html",
            v=found,
            plots=[
                ("ROC curve", roc_svg(metrics)),
                ("FROC curve", froc_svg(metrics)),
                ("Calibration", calibration_svg(metrics)),
            ],
            summary=_metric_rows(metrics),
            done=done,
        )

    return page_or_error(request, "Models", build, path="/models")


def _scores(request: Request, name: str, versions: list[ModelVersion]) -> list[tuple[ScoreDay, str]]:
    """The "Scores in use" rows: per version per day, the scores and their histogram with the version's
    operating points, so a drift in what the model sees shows."""
    thresholds: dict[int, tuple[float, float] | None] = {}
    for version in versions:
        try:
            thresholds[version.version] = operating_thresholds(version.metrics)
        except RadstackError:  # registered without operating points: the histogram alone
            thresholds[version.version] = None
    return [
        (day, score_histogram_svg(day, thresholds.get(day.model_version)))
        for day in platform_of(request).ai_results.score_distribution(name)
    ]


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers of a metrics document, as (label, value) rows."""
    rows: list[tuple[str, str]] = []

    def number(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    def interval(value: Any) -> str:
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
            return f" (95% CI {value[0]:.3f}–{value[1]:.3f})"
        return ""

    for key, label in (
        ("n_images", "Images"),
        ("n_fracture", "With fracture"),
        ("n_normal", "Without fracture"),
    ):
        if key in metrics:
            rows.append((label, number(metrics[key])))
    if "auroc" in metrics:
        rows.append(("AUROC", number(metrics["auroc"]) + interval(metrics.get("auroc_ci"))))
    for name, point in (metrics.get("operating_points") or {}).items():
        if isinstance(point, dict):
            parts = [
                f"{key.replace('_', ' ')} {number(point[key])}{interval(point.get(key + '_ci'))}"
                for key in ("threshold", "sensitivity", "specificity", "box_recall")
                if key in point and point[key] is not None
            ]
            rows.append((f"Operating point “{name}”", ", ".join(parts)))
    froc = metrics.get("froc")
    if isinstance(froc, dict) and isinstance(froc.get("at"), dict):
        rows.append(
            (
                "FROC sensitivity",
                ", ".join(f"{number(v)} at {k} FP/image" for k, v in froc["at"].items() if v is not None),
            )
        )
    calibration = metrics.get("calibration")
    if isinstance(calibration, dict):
        rows.extend(
            (label, number(calibration[key]))
            for key, label in (("ece", "Expected calibration error"), ("brier", "Brier score"))
            if key in calibration
        )
    for name, entry in (metrics.get("per_type") or {}).items():
        if isinstance(entry, dict):
            parts = [
                f"{k.replace('_', ' ')} {number(v)}" for k, v in entry.items() if isinstance(v, int | float)
            ]
            rows.append((f"Fracture type “{name}”", ", ".join(parts)))
    return rows


def _back(name: str, version: int | None, done: str) -> RedirectResponse:
    target = f"/models/{quote(name)}" + (f"/versions/{version}" if version is not None else "")
    return RedirectResponse(f"{target}?{urlencode({'done': done})}", status_code=303)


@pages.post("/models/{name}/versions/{version}/review", response_model=None)
def review_form(
    request: Request, name: str, version: int, decision: str = Form(...), comment: str = Form("")
) -> Response:
    """Approve or reject from the model card (POST-redirect-GET)."""

    def build() -> Response:
        registry = _writer(request, AuditActionValues.DEPLOY, model=name, version=version, event=decision)
        if decision not in ("approve", "reject"):
            raise BadRequest(f"decision {decision!r} is not approve or reject")
        review = registry.approve if decision == "approve" else registry.reject
        review(name, version, by=principal_of(request), comment=comment)
        return _back(name, version, f"v{version} {decision}d")

    return page_or_error(request, "Models", build, path="/models")


@pages.post("/models/{name}/versions/{version}/promote", response_model=None)
def promote_form(request: Request, name: str, version: int, stage: str = Form(...)) -> Response:
    def build() -> Response:
        registry = _writer(request, AuditActionValues.DEPLOY, model=name, version=version, event="promote")
        try:
            target = Stage(stage)
        except ValueError:
            raise BadRequest(f"stage {stage!r} is not staging or production") from None
        registry.promote(name, version, target, by=principal_of(request))
        return _back(name, version, f"v{version} is in {target.value}")

    return page_or_error(request, "Models", build, path="/models")


@pages.post("/models/{name}/rollback", response_model=None)
def rollback_form(request: Request, name: str) -> Response:
    def build() -> Response:
        registry = _writer(request, AuditActionValues.DEPLOY, model=name, event="rollback")
        back = registry.rollback(name, by=principal_of(request))
        return _back(name, None, f"production rolled back to v{back.version}")

    return page_or_error(request, "Models", build, path="/models")

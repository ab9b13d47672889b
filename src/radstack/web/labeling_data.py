"""A labeling project's agreement figures and exports over HTTP, and the project's page.

Routes are thin over :class:`radstack.labeling.report.AgreementService` and
:class:`radstack.labeling.export.LabelExports`, which decide who may do what through the project's one
membership check and the policy (owner or reviewer; ``export`` for an export):

* ``GET /api/v1/labeling/projects/{name}/agreement?iou=0.5``: every figure per label (kappas, alpha,
  box F1 and mean IoU at τ = ``iou``, Dice, each reader against the consensus), each with ``n`` and,
  when undefined, ``value`` null and a ``reason``;
* ``POST /api/v1/labeling/projects/{name}/exports`` with ``{"format": "dataset", "name": …}``: a new
  version of a data set from the project's final labels, split by patient (201; 200 when that
  content is already a version); needs ``export`` and ``manage-datasets``. The labeling package
  makes the labeled instances, this route hands them to the data set service (``ai`` and
  ``labeling`` meet only here and in the platform). With ``{"format": "coco" | "monai" | "nnunet"}``:
  a job writing a zip (202, ``Location``: the job);
* ``GET /api/v1/labeling/exports/{job_id}`` (state and progress) and ``…/file`` (the zip), for the
  one who asked for it.

The page ``/labeling/projects/{name}`` shows the project's progress, the figures with their plots
(inline SVG made here, no external assets), and for who may export, the export forms and their jobs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from radstack.ai.datasets import DatasetVersion, LabeledInstance, check_name, parse_ratios
from radstack.errors import BadRequest, Forbidden
from radstack.labeling.export import ExportFormat
from radstack.labeling.report import DEFAULT_IOU, AgreementReport
from radstack.security.audit import AuditActionValues
from radstack.security.policy import ActionValues
from radstack.web.datasets import DatasetVersionOut
from radstack.web.deps import (
    authorize,
    note,
    page_or_error,
    platform_of,
    principal_of,
    signed_in_page,
    view_of,
)
from radstack.web.jobs import JobOut
from radstack.web.labeling_plots import agreement_svg, iou_histogram_svg, sensitivity_svg

__all__ = ["pages", "router"]

router = APIRouter(tags=["labeling"])
pages = APIRouter(include_in_schema=False)


class ExportIn(BaseModel):
    """An export of a project's final labels (see docs/labeling.md, Exports)."""

    model_config = ConfigDict(extra="forbid")

    format: ExportFormat = Field(description="dataset (a data set version), coco, monai or nnunet (a zip)")
    name: str | None = Field(default=None, description="the data set it makes a version of (format dataset)")
    label: str | None = Field(
        default=None, description="the schema label that is the data set's positive class (default: fracture)"
    )
    description: str = ""
    seed: int = 0
    split: str | list[float] = Field(
        default="70/15/15", description="train/validation/test shares, by patient"
    )
    majority: bool = Field(
        default=False, description="items with several reads and no consensus: take the readers' majority"
    )
    nnunet_id: int = Field(default=501, description="nnU-Net's Dataset<id> (format nnunet)")


def _export_dataset(request: Request, project: str, body: ExportIn) -> DatasetVersion:
    """A data set version from the project's final labels: the labeling package labels the images,
    the data set service splits and pins them (in the caller's view: a de-identified caller names
    images by their pseudonyms)."""
    if not body.name:
        raise BadRequest("a data set export needs 'name': the data set it makes a new version of")
    check_name(body.name)
    ratios = parse_ratios(body.split)
    platform, principal = platform_of(request), principal_of(request)
    # Refused before anything is read: the data set service checks it again when it writes.
    platform.policy.require(principal, ActionValues.MANAGE_DATASETS)
    plan, instances = platform.label_exports.dataset_instances(
        principal, project, body.label, majority=body.majority
    )
    view = view_of(request)

    def shown(uid: str) -> str:
        return view.deid.uid(uid) if view.deid is not None else uid

    labeled = [
        LabeledInstance(
            study_uid=shown(instance["study_uid"]),
            series_uid=shown(instance["series_uid"]),
            sop_uid=shown(instance["sop_uid"]),
            label=instance["label"],
        )
        for instance in instances
    ]
    sources = ", ".join(f"{n} by {source}" for source, n in sorted(plan.sources.items()))
    description = (
        body.description or f"labeling project {project}: {len(plan.items)} studies labeled ({sources})"
    )
    return platform.datasets.create_from_instances(
        body.name, labeled, principal, seed=body.seed, ratios=ratios, description=description
    )


def _submit_files(request: Request, project: str, body: ExportIn) -> Any:
    return platform_of(request).label_exports.submit(
        principal_of(request),
        project,
        body.format,
        seed=body.seed,
        ratios=parse_ratios(body.split),
        majority=body.majority,
        nnunet_id=body.nnunet_id,
    )


# ----------------------------------------------------------------------------- API
@router.get(
    "/labeling/projects/{name}/agreement",
    response_model=dict[str, Any],
    summary="A project's agreement figures per label (owner, reviewers): kappas, alpha, box F1/IoU, Dice, "
    "each reader against the consensus; each with n, null with a reason when undefined",
)
def get_agreement(request: Request, name: str, iou: float = Query(DEFAULT_IOU, gt=0, le=1)) -> JSONResponse:
    note(request, AuditActionValues.READ, labeling_project=name, labeling="agreement")
    report = platform_of(request).labeling_agreement.report(principal_of(request), name, iou)
    return JSONResponse(report.to_json())


@router.post(
    "/labeling/projects/{name}/exports",
    status_code=201,
    summary="Export a project's final labels: a data set version (201) or, as a job, COCO / MONAI / nnU-Net files (202)",
    responses={
        201: {"model": DatasetVersionOut, "description": "the data set version made"},
        200: {"model": DatasetVersionOut, "description": "this content is already that version"},
        202: {"model": JobOut, "description": "the job writing the zip"},
    },
)
def create_export(request: Request, name: str, body: ExportIn) -> JSONResponse:
    authorize(
        request, ActionValues.EXPORT, labeling_project=name, format=body.format.value, dataset=body.name
    )
    if body.format is ExportFormat.DATASET:
        version = _export_dataset(request, name, body)
        return JSONResponse(
            DatasetVersionOut.of(version).model_dump(mode="json"), status_code=201 if version.created else 200
        )
    job = _submit_files(request, name, body)
    return JSONResponse(
        JobOut.of(job).model_dump(mode="json"),
        status_code=202,
        headers={"Location": str(request.url_for("get_export", job_id=job.id))},
    )


@router.get(
    "/labeling/exports/{job_id}",
    response_model=JobOut,
    summary="A labeling export job: state, progress (images done of total), then its summary",
)
def get_export(request: Request, job_id: str) -> JobOut:
    note(request, AuditActionValues.READ, labeling_export=job_id)
    return JobOut.of(platform_of(request).label_exports.job(principal_of(request), job_id))


@router.get(
    "/labeling/exports/{job_id}/file",
    response_class=FileResponse,
    summary="The zip a labeling export job wrote (409 until it has succeeded)",
)
def get_export_file(request: Request, job_id: str) -> FileResponse:
    note(request, AuditActionValues.EXPORT, labeling_export=job_id)
    exports = platform_of(request).label_exports
    path = exports.file(principal_of(request), job_id)
    job = exports.job(principal_of(request), job_id)
    filename = f"{job.params['project']}-{job.params['format']}-{job_id[:8]}.zip"
    return FileResponse(path, media_type="application/zip", filename=filename)


# ----------------------------------------------------------------------------- page
@pages.get("/labeling/projects/{name}", response_class=HTMLResponse)
def project_page(request: Request, name: str, done: str = "", iou: float = DEFAULT_IOU) -> Response:
    """A project: progress, agreement figures and plots (owner and reviewers), exports."""

    def build() -> Response:
        note(request, AuditActionValues.READ, labeling_project=name, labeling="page")
        platform, principal = platform_of(request), principal_of(request)
        project = platform.labeling.get(principal, name)
        report: AgreementReport | None = None
        refused = ""
        try:
            report = platform.labeling_agreement.report(principal, name, iou)
        except Forbidden as error:
            refused = error.message
        plots: list[tuple[str, str]] = []
        if report is not None:
            plots.append(("Agreement per label", agreement_svg(report)))
            for label in report.labels:
                if any(r.sensitivity.value is not None for r in label.readers):
                    plots.append((f"Sensitivity: {label.key}", sensitivity_svg(label)))
            for label in report.labels:
                if label.boxes is not None and label.boxes.boxes:
                    plots.append((f"Box IoU: {label.key}", iou_histogram_svg(label, report.iou_threshold)))
        exports = platform.label_exports.jobs_of(principal, name) if report is not None else []
        return signed_in_page(
            request,
            "labeling_project.html",
            path="/labeling",
            project=project,
            report=report,
            refused=refused,
            plots=plots,
            exports=exports,
            can_export=report is not None and platform.policy.allows(principal, ActionValues.EXPORT),
            can_make_datasets=platform.policy.allows(principal, ActionValues.MANAGE_DATASETS),
            formats=[f.value for f in ExportFormat],
            done=done,
        )

    return page_or_error(request, "Labeling", build, path="/labeling")


@pages.post("/labeling/projects/{name}/exports", response_model=None)
def export_form(
    request: Request,
    name: str,
    format: str = Form(...),
    dataset: str = Form(""),
    label: str = Form(""),
    majority: str = Form(""),
) -> Response:
    """Export from the page's form, then show the page again (POST-redirect-GET)."""

    def build() -> Response:
        if format not in tuple(ExportFormat):
            raise BadRequest(f"format {format!r} is not one of {', '.join(ExportFormat)}")
        body = ExportIn(
            format=ExportFormat(format), name=dataset or None, label=label or None, majority=bool(majority)
        )
        authorize(request, ActionValues.EXPORT, labeling_project=name, format=body.format.value)
        if body.format is ExportFormat.DATASET:
            version = _export_dataset(request, name, body)
            made = "made" if version.created else "already there (the same content)"
            message = f"Data set {version.name} version {version.version} {made}: {version.item_count} images"
        else:
            job = _submit_files(request, name, body)
            message = f"Export {job.id[:8]} ({body.format.value}) queued"
        target = f"/labeling/projects/{quote(name)}?{urlencode({'done': message})}"
        return RedirectResponse(target, status_code=303)

    return page_or_error(request, "Labeling", build, path="/labeling")

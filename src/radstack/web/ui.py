"""The worklist UI: server-rendered HTML pages at ``/`` (worklist) and ``/jobs`` (``/models`` is
:mod:`radstack.web.models`, ``/labeling`` :mod:`radstack.web.labeling`).

No JavaScript: the filter form is a GET form, paging is links, requeue is a POST form (the auth
middleware's same-origin check makes a cookie POST from these pages safe). Pages are Jinja2
templates under ``web/templates`` with autoescaping on; a refused or malformed request is answered
with the same layout and the error's status, so a browser user sees what went wrong.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from radstack.errors import NotFound, RadstackError
from radstack.ingest.importjobs import IMPORT_KIND
from radstack.ingest.watch import INBOX_KIND
from radstack.jobs.records import JobState
from radstack.security.audit import AuditActionValues
from radstack.security.policy import ActionValues
from radstack.store.models import StudyStatus
from radstack.store.worklist import UNREAD, WorklistFilters, WorklistPage, worklist_page
from radstack.web.deps import authorize, page_or_error, platform_of, principal_of, signed_in_page, view_of

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

#: Studies per worklist page.
PAGE_SIZE = 50
#: Refused files listed on a job's page (all of them are in its failure manifest).
REFUSED_SHOWN = 1000
#: Modalities offered by the filter (PS3.3 §C.7.3.1.1.1 defined terms most often read).
MODALITIES = ("CR", "CT", "DX", "MG", "MR", "NM", "OT", "PT", "RF", "SEG", "SR", "US", "XA")
_STATUSES = (UNREAD, *(s.value for s in StudyStatus))


def _page_link(filters: dict[str, str], offset: int) -> str:
    params = {key: value for key, value in filters.items() if value}
    if offset:
        params["offset"] = str(offset)
    return "/?" + urlencode(params) if params else "/"


@router.get("/")
def worklist(
    request: Request,
    patient: str = "",
    patient_id: str = "",
    modality: str = "",
    date_from: str = "",
    date_to: str = "",
    status: str = "",
    ai_positive: str = "",
    offset: int = 0,
) -> HTMLResponse:
    """The worklist: studies by AI priority then date, filtered (``ai_positive``: AI priority high or
    urgent) and paged in SQL."""
    form = {
        "patient": patient,
        "patient_id": patient_id,
        "modality": modality,
        "date_from": date_from,
        "date_to": date_to,
        "status": status,
        "ai_positive": "1" if ai_positive else "",
    }
    filters = WorklistFilters(
        patient, patient_id, modality, date_from, date_to, status, ai_positive=bool(ai_positive)
    )

    def build() -> HTMLResponse:
        authorize(request, ActionValues.READ_METADATA, audit=AuditActionValues.QUERY)
        platform = platform_of(request)
        view = view_of(request)
        context: dict[str, Any] = {
            "form": form,
            "modalities": MODALITIES,
            "statuses": _STATUSES,
            "deidentified": view.deid is not None,
        }
        try:
            page: WorklistPage | None = worklist_page(
                platform.store,
                view,
                filters,
                offset=max(offset, 0),
                limit=PAGE_SIZE,
                scope=platform.policy.study_condition(principal_of(request)),
                ai_hidden=platform.blinding.ai_hidden_condition(principal_of(request)),
            )
        except RadstackError as error:
            if error.http_status != 400:
                raise
            return signed_in_page(request, "worklist.html", 400, page=None, error=error.message, **context)
        assert page is not None
        previous = _page_link(form, max(page.offset - page.limit, 0)) if page.offset > 0 else None
        following = _page_link(form, page.offset + page.limit) if page.has_more else None
        return signed_in_page(
            request,
            "worklist.html",
            page=page,
            error=None,
            previous=previous,
            next=following,
            **context,
        )

    return page_or_error(request, "Worklist", build)


@router.get("/jobs")
def jobs(request: Request, requeued: str = "") -> HTMLResponse:
    """Import-job progress and outcomes, the drop folder's refusals, and the dead letters (each with a
    requeue button)."""

    def build() -> HTMLResponse:
        authorize(request, ActionValues.MANAGE_SYSTEM)
        records = platform_of(request).jobs.records
        return signed_in_page(
            request,
            "jobs.html",
            imports=records.find(kind=IMPORT_KIND, limit=50),
            inbox_refused=records.find(kind=INBOX_KIND, state=JobState.DONE_WITH_ERRORS, limit=50),
            dead=records.find(state=JobState.DEAD, limit=100),
            requeued=requeued,
        )

    return page_or_error(request, "Jobs", build)


@router.get("/jobs/{job_id}/refused")
def refused_files(request: Request, job_id: str) -> HTMLResponse:
    """The files an import job refused, with the DICOM status and the reason of each (paths only)."""

    def build() -> HTMLResponse:
        authorize(request, ActionValues.MANAGE_SYSTEM, job=job_id)
        records = platform_of(request).jobs.records
        job = records.get(job_id)
        if job.kind != IMPORT_KIND:
            raise NotFound(f"job {job_id!r} is not an import job")
        imports = platform_of(request).import_items
        total = imports.counts(job.id).get("failed", (0, 0))[0]
        items = imports.items(job.id, failed=True, limit=REFUSED_SHOWN)
        return signed_in_page(request, "jobs_refused.html", job=job, items=items, total=total)

    return page_or_error(request, "Jobs", build)


@router.post("/jobs/{job_id}/requeue", response_model=None)
def requeue(request: Request, job_id: str) -> Response:
    """Requeue a FAILED or DEAD job from the jobs page, then show the page again (POST-redirect-GET)."""

    def requeue_and_show() -> Response:
        authorize(request, ActionValues.MANAGE_SYSTEM, job=job_id)
        platform_of(request).jobs.requeue(job_id)
        return RedirectResponse(f"/jobs?{urlencode({'requeued': job_id})}", status_code=303)

    return page_or_error(request, "Jobs", requeue_and_show)

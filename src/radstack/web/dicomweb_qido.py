"""QIDO-RS routes (PS3.18 §10.6): parse the query, call :mod:`radstack.dicomweb.qido`, serialise."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import ColumnElement, and_

from radstack.dicomweb.accept import parse_accept
from radstack.errors import NotAcceptable
from radstack.security.audit import AuditActionValues
from radstack.security.policy import ActionValues
from radstack.store import search as qido
from radstack.store.matching import Query, QueryLevelValues, parse_query
from radstack.store.models import InstanceRow, SeriesRow
from radstack.web.deps import (
    authorize,
    base_url,
    check_path_uids,
    dicom_json,
    note,
    platform_of,
    principal_of,
    view_of,
    warning_header,
)

__all__ = ["router"]

router = APIRouter(tags=["DICOMweb"])
_JSON_TYPES = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})


def _query(request: Request, level: QueryLevelValues) -> Query:
    """Check the Accept header (PS3.18 §8.7.3) and parse the query keys, repeated ones kept."""
    if not any(item.media_type in _JSON_TYPES for item in parse_accept(request.headers.get("accept"))):
        raise NotAcceptable(
            f"QIDO-RS answers in application/dicom+json, not {request.headers.get('accept')!r} (PS3.18 §10.6.3)"
        )
    return parse_query(view_of(request).query(request.query_params.multi_items()), level)


def _scope(request: Request, study: str | None, series: str | None = None) -> ColumnElement[bool] | None:
    """Authorise the search (a study outside the caller's scope is a 404); the SQL scope condition."""
    check_path_uids(study, series)
    authorize(request, ActionValues.READ_METADATA, study=study, series=series, audit=AuditActionValues.QUERY)
    platform = platform_of(request)
    return platform.policy.study_condition(principal_of(request))


def _unhidden(
    request: Request, scope: ColumnElement[bool] | None, study: str | None, level: QueryLevelValues
) -> ColumnElement[bool] | None:
    """``scope`` less the series or instances of ``study`` that blinding hides from the caller, so
    that a page holds as many matches as asked for (:meth:`View.blind` removes them from the answer
    in any case, also for searches across studies)."""
    hidden = view_of(request).hidden(study) if study is not None else None
    if not hidden:
        return scope
    excluded = (
        SeriesRow.series_uid.not_in(hidden.series)
        if level is QueryLevelValues.SERIES
        else and_(InstanceRow.series_uid.not_in(hidden.series), InstanceRow.sop_uid.not_in(hidden.instances))
    )
    return excluded if scope is None else and_(scope, excluded)


def _respond(
    request: Request, result: qido.SearchResult, level: QueryLevelValues, study: str | None = None
) -> Response:
    """The matches as the caller sees them: without what blinding hides from it, and shaped by its
    role (PS3.15 Annex E for a de-identified one)."""
    view = view_of(request)
    matches = view.blind(result.matches, level)
    note(
        request,
        AuditActionValues.QUERY,
        matches=len(matches),
        keys=sorted(request.query_params.keys()),
    )
    if view.shapes:
        matches = [view.json(m, study) for m in matches]
    return dicom_json(matches, 200, warning_header(list(result.warnings)))


@router.get("/studies", summary="QIDO-RS: search for studies (PS3.18 §10.6)")
def search_studies(request: Request) -> Response:
    scope = _scope(request, None)
    query = _query(request, QueryLevelValues.STUDY)
    platform = platform_of(request)
    return _respond(
        request,
        qido.search_studies(
            platform.store,
            query,
            base_url=base_url(request),
            max_limit=platform.settings.qido_max_limit,
            scope=scope,
        ),
        QueryLevelValues.STUDY,
    )


def _series(request: Request, study: str | None) -> Response:
    scope = _scope(request, study)
    query = _query(request, QueryLevelValues.SERIES)
    platform = platform_of(request)
    return _respond(
        request,
        qido.search_series(
            platform.store,
            query,
            study_uid=study,
            base_url=base_url(request),
            max_limit=platform.settings.qido_max_limit,
            scope=_unhidden(request, scope, study, QueryLevelValues.SERIES),
        ),
        QueryLevelValues.SERIES,
        study,
    )


@router.get("/series", summary="QIDO-RS: search for series of all studies (PS3.18 §10.6)")
def search_all_series(request: Request) -> Response:
    return _series(request, None)


@router.get("/studies/{study}/series", summary="QIDO-RS: search for series of a study (PS3.18 §10.6)")
def search_study_series(request: Request, study: str) -> Response:
    return _series(request, study)


def _instances(request: Request, study: str | None, series: str | None) -> Response:
    scope = _scope(request, study, series)
    query = _query(request, QueryLevelValues.IMAGE)
    platform = platform_of(request)
    return _respond(
        request,
        qido.search_instances(
            platform.store,
            query,
            study_uid=study,
            series_uid=series,
            base_url=base_url(request),
            max_limit=platform.settings.qido_max_limit,
            scope=_unhidden(request, scope, study, QueryLevelValues.IMAGE),
        ),
        QueryLevelValues.IMAGE,
        study,
    )


@router.get("/instances", summary="QIDO-RS: search for instances of all studies (PS3.18 §10.6)")
def search_all_instances(request: Request) -> Response:
    return _instances(request, None, None)


@router.get("/studies/{study}/instances", summary="QIDO-RS: search for instances of a study (PS3.18 §10.6)")
def search_study_instances(request: Request, study: str) -> Response:
    return _instances(request, study, None)


@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="QIDO-RS: search for instances of a series (PS3.18 §10.6)",
)
def search_series_instances(request: Request, study: str, series: str) -> Response:
    return _instances(request, study, series)

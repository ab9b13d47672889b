"""The OHIF viewer at ``/viewer/``: the cached build (:mod:`radstack.web.ohif`) and its ``app-config.js``.

OHIF is a single-page app: a path under ``/viewer/`` that is not a file of the build (a client-side
route such as ``/viewer/viewer?StudyInstanceUIDs=…``) gets ``index.html``. Opening the viewer
(``index.html``, ``app-config.js``) needs the read-pixels action; the build's static files only need
an authenticated caller (the middleware's session cookie or bearer token), like any other path.

``app-config.js`` is generated per request, not the build's own: one DICOMweb data source at this
server's ``/dicomweb`` (same origin, so the browser sends the session cookie with every request),
STOW on so OHIF saves measurements as SR, and an Accept header for frames that prefers the HTJ2K the
store holds (OHIF decodes it with OpenJPH) and falls back to the stored transfer syntax. After the
configuration's JSON comes :data:`AI_RESULTS_SCRIPT` (``viewer_ai.js``): the few lines of JavaScript
that make OHIF open a study on its AI result, the radiograph with the AI's boxes and their text
(:mod:`radstack.ai.results`), without a prompt to answer; then :data:`LABELING_SCRIPT`
(``viewer_labeling.js``).

A labeling task's viewer URL (:attr:`radstack.labeling.projects.Task.viewer_url`) names
``/viewer/tasks/<id>.jsonc`` as OHIF's ``customization``: :func:`task_customization`, the project's
labels as OHIF's forced-choice list and how AI results are shown (docs/viewer.md, "Labeling tasks").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from radstack.errors import NotFound, RadstackError
from radstack.labeling.projects import VIEWER_TASK_PREFIX, Project, Task
from radstack.security.policy import ActionValues
from radstack.web.deps import authorize, base_url, platform_of, principal_of
from radstack.web.ohif import OHIF_VERSION, VIEWER_PREFIX, installed, viewer_dir

__all__ = [
    "AI_RESULTS_SCRIPT",
    "LABELING_SCRIPT",
    "ViewerNotInstalled",
    "app_config",
    "app_config_js",
    "router",
    "task_customization",
]

router = APIRouter(include_in_schema=False)

#: Frames as stored HTJ2K first (PS3.18 Table 8.7.3-5: image/jphc), then anything as stored, which is
#: what OHIF asks for by default. OHIF joins the list with commas into one Accept header.
FRAME_ACCEPT = [
    "multipart/related; type=image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202",
    "multipart/related; type=image/jphc; transfer-syntax=1.2.840.10008.1.2.4.201; q=0.9",
    "multipart/related; type=application/octet-stream; transfer-syntax=*; q=0.5",
]

#: webpack's content-hashed file names (``app.bundle.0f6159c501addfe9.js``, ``0ddf166f7a343eda.wasm``):
#: their content never changes under the same name.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16}\.[a-z0-9]+$")
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
    ".onnx": "application/octet-stream",
}
#: Appended to ``window.config``: AI results hung first, shown without a hydration prompt (functions,
#: which JSON cannot hold; the file's comment says what and why).
AI_RESULTS_SCRIPT = Path(__file__).with_name("viewer_ai.js").read_text(encoding="utf-8")
#: Appended after it: a labeling task's measurements are tracked without asking (``viewer_labeling.js``).
LABELING_SCRIPT = Path(__file__).with_name("viewer_labeling.js").read_text(encoding="utf-8")
#: Where OHIF fetches a task's customization (``<task id>.jsonc``), relative to the viewer's root.
TASK_CUSTOMIZATIONS = "tasks/"
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"


class ViewerNotInstalled(RadstackError):
    """503: the OHIF build has not been fetched into the cache directory."""

    title = "Service unavailable"
    http_status = 503
    dicom_status = 0xA700


def _dist(request: Request) -> Path:
    directory = viewer_dir(platform_of(request).settings.ohif_dir)
    if not installed(directory):
        raise ViewerNotInstalled(
            f"the OHIF viewer {OHIF_VERSION} is not in {directory}: run 'radstack viewer fetch' "
            "(or 'make run'), then reload"
        )
    return directory


def app_config(dicomweb_root: str) -> dict[str, Any]:
    """OHIF 3.13's ``window.config`` for one DICOMweb data source at ``dicomweb_root``.

    The keys are those of OHIF's ``platform/app/public/config/default.js`` and of the ``dicomweb``
    data source (``extensions/default/src/DicomWebDataSource``), checked against the 3.13.2 build.

    As a product that bundles OHIF would, the first visit opens straight on the images: no
    investigational-use dialog (``investigationalUseDialog.option``: ``never``; OHIF's
    ``InvestigationalUseDialog`` reads it) and no Shepherd onboarding tour (the ``ohif.tours``
    customization, which the viewer layout hands to ``Onboarding``, set to no tours in the
    ``global`` phase of the customizations; a plain value replaces the mode's default).
    :data:`AI_RESULTS_SCRIPT` adds to this, in JavaScript, an extension and a ``mode`` phase block.

    ``customizationUrlPrefixes`` lets a viewer URL's ``customization`` load a labeling task's module
    (``/task/<id>``) or one of the build's own ``customizations/<name>.jsonc``; OHIF refuses to start
    on any other value.
    """
    return {
        "name": "radstack",
        "routerBasename": VIEWER_PREFIX.rstrip("/"),
        "extensions": [],
        "modes": [],
        # The phased form (OHIF 3.13 CustomizationService: requires, bootstrap, global, mode):
        # AI_RESULTS_SCRIPT adds a `mode` block.
        "customizationService": {"global": {"ohif.tours": []}},
        "investigationalUseDialog": {"option": "never"},
        # `?customization=/task/<id>` (a labeling task's viewer URL) loads /viewer/tasks/<id>.jsonc,
        # the task's label list (task_customization); `?customization=<name>` one of the build's own
        # customizations/<name>.jsonc (segmentation/binary: SEG saved as bitmap). Nothing else.
        "customizationUrlPrefixes": {
            "default": "./customizations/",
            VIEWER_TASK_PREFIX: f"./{TASK_CUSTOMIZATIONS}",
        },
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 75, "prefetch": 25},
        "showErrorDetails": "dev",
        "defaultDataSourceName": "radstack",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "radstack",
                "configuration": {
                    "friendlyName": "radstack",
                    "name": "radstack",
                    "qidoRoot": dicomweb_root,
                    "wadoRoot": dicomweb_root,
                    "wadoUriRoot": dicomweb_root,
                    "qidoSupportsIncludeField": True,
                    "supportsReject": False,
                    "supportsStow": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": True,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                    "acceptHeader": FRAME_ACCEPT,
                },
            }
        ],
    }


def app_config_js(dicomweb_root: str) -> str:
    """The body of ``/viewer/app-config.js``: :func:`app_config` as ``window.config``, then
    :data:`AI_RESULTS_SCRIPT` and :data:`LABELING_SCRIPT`."""
    return (
        f"/** radstack: OHIF {OHIF_VERSION} */\nwindow.config = "
        f"{json.dumps(app_config(dicomweb_root), indent=2)};\n\n{AI_RESULTS_SCRIPT}\n{LABELING_SCRIPT}"
    )


def task_customization(project: Project, task: Task) -> dict[str, Any]:
    """The OHIF customization module a labeling task's viewer URL loads (``/viewer/tasks/<id>.jsonc``).

    Its ``global`` phase sets, for the whole page:

    * ``measurementLabels``, OHIF's forced-choice label list: every new measurement asks for one of
      the project's labels (``labelOnMeasure``), and only those (``exclusive``). Each item's value is
      the label's code meaning, the text OHIF then writes into the SR as the measurement's label
      (a TID 1500 Comment) and by which :func:`radstack.labeling.schema.LabelSchema.find` knows it;
    * ``radstack.labelingTask``: the task (``viewer_labeling.js``: its measurements are tracked without
      asking whether to);
    * ``radstack.aiResults``: ``proposals`` when the project shows AI proposals (an AI result is loaded
      as editable measurements, each labelled from the list by its finding), else ``hidden`` (AI results
      are neither hung nor listed); ``viewer_ai.js`` reads it.
    """
    items = [{"value": label.code.meaning, "label": label.code.meaning} for label in project.schema.labels]
    task_info = {"id": task.id, "project": project.name, "kind": task.kind.value}
    return {
        "global": {
            "measurementLabels": {"$set": {"labelOnMeasure": True, "exclusive": True, "items": items}},
            "radstack.labelingTask": {"$set": task_info},
            "radstack.aiResults": {"$set": "proposals" if project.show_ai else "hidden"},
        }
    }


@router.get("/viewer")
def viewer_root(request: Request) -> Response:
    query = request.url.query
    return RedirectResponse(VIEWER_PREFIX + (f"?{query}" if query else ""), status_code=308)


@router.get("/viewer/app-config.js")
def viewer_app_config(request: Request) -> Response:
    """The generated configuration (never the build's own ``app-config.js``)."""
    authorize(request, ActionValues.READ_PIXELS, resource="viewer")
    _dist(request)
    return Response(
        app_config_js(base_url(request)),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": _REVALIDATE},
    )


@router.get("/viewer/tasks/{task_id}.jsonc")
def viewer_task_customization(request: Request, task_id: int) -> Response:
    """The customization OHIF loads for a labeling task (its viewer URL's ``customization=/task/<id>``),
    for whoever may see the task: its reader, a reviewer or the project's owner."""
    authorize(request, ActionValues.READ_PIXELS, resource="viewer")
    service, principal = platform_of(request).labeling, principal_of(request)
    task = service.task(principal, task_id)
    project = service.get(principal, task.project)
    return Response(
        json.dumps(task_customization(project, task), indent=2),
        media_type="application/json",
        headers={"Cache-Control": _REVALIDATE},
    )


@router.get("/viewer/{path:path}")
def viewer_file(request: Request, path: str) -> Response:
    """A file of the build, or ``index.html`` for a client-side route."""
    name = path.rsplit("/", 1)[-1]
    if path and "." in name:
        dist = _dist(request)
        file = (dist / path).resolve()
        if file.is_relative_to(dist.resolve()) and file.is_file() and not name.startswith("."):
            if file.name == "index.html":
                authorize(request, ActionValues.READ_PIXELS, resource="viewer")
            return FileResponse(
                file,
                media_type=_MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream"),
                headers={"Cache-Control": _IMMUTABLE if _HASHED.search(name) else _REVALIDATE},
            )
        raise NotFound(f"{VIEWER_PREFIX}{path} not found: the OHIF {OHIF_VERSION} build has no such file")
    authorize(request, ActionValues.READ_PIXELS, resource="viewer")
    return FileResponse(
        _dist(request) / "index.html",
        media_type=_MEDIA_TYPES[".html"],
        headers={"Cache-Control": _REVALIDATE},
    )

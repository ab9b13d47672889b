"""Who may do what: every role × every kind of endpoint (DICOMweb, API, UI, DICOM network), study
scoping (404, never 403), that nothing but /healthz, /readyz, the login page and the favicon answers
without credentials, and that /metrics answers only roles with ``read-metrics`` (admin, monitoring)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset

from radstack.security.policy import DEFAULT_ROLES, ActionValues, ViewValues
from radstack.web.app import create_app
from tests.conftest import RunningServer, server_settings, start_server
from tests.dimse.helpers import EXPLICIT_LE, STUDY_FIND, STUDY_GET, Context, association, query
from tests.helpers import DICOM_MULTIPART, dicom_body, synthetic_ct

pytestmark = pytest.mark.timeout(300)

REFERRER = "Referrer^Rita"
ROLES = sorted(DEFAULT_ROLES)


@dataclass
class Stored:
    server: RunningServer
    ds: Dataset
    #: Role → its API token; "referring-physician" refers the stored study, "other-referrer" not.
    tokens: dict[str, str]

    @property
    def study(self) -> str:
        return str(self.ds.StudyInstanceUID)

    @property
    def instance_path(self) -> str:
        return self.instance_path_for("admin")

    def seen(self, role: str, uid: str) -> str:
        """``uid`` as ``role`` knows it: its pseudonym in a de-identified view."""
        if DEFAULT_ROLES[role].view is ViewValues.DEIDENTIFIED:
            return self.server.platform.deidentifier.uid(uid)
        return uid

    def instance_path_for(self, role: str) -> str:
        study, series, sop = (
            self.seen(role, str(uid))
            for uid in (self.ds.StudyInstanceUID, self.ds.SeriesInstanceUID, self.ds.SOPInstanceUID)
        )
        return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    settings = server_settings(
        tmp_path_factory.mktemp("access") / "data",
        no_workers=True,
        dicom_default_role="",
    )
    for server in start_server(settings):
        ds = synthetic_ct(patient_name="Leak^Lisa", patient_id="PID-ACCESS")
        ds.ReferringPhysicianName = REFERRER
        response = httpx.post(
            f"{server.dicomweb}/studies",
            content=dicom_body(ds),
            headers={
                **server.auth,
                "Content-Type": DICOM_MULTIPART,
            },
        )
        assert response.status_code == 200, response.text
        tokens = {}
        for role in ROLES:
            extra = {"referring_name": REFERRER} if role == "referring-physician" else {}
            tokens[role] = server.token_for(role, ae_title=f"AE-{role[:12]}".upper(), **extra)
        tokens["other-referrer"] = server.token_for("referring-physician", referring_name="Other^Olga")
        yield Stored(server, ds, tokens)


def call(stored: Stored, role: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stored.tokens[role]}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.request(method, f"{stored.server.url}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


# (endpoint kind, method, path, the action it needs, expected status when allowed)
ENDPOINTS = [
    ("dicomweb", "GET", "/dicomweb/studies", ActionValues.READ_METADATA, 200),
    ("dicomweb", "GET", "/dicomweb/studies/{study}/metadata", ActionValues.READ_METADATA, 200),
    ("dicomweb", "GET", "{instance}", ActionValues.READ_PIXELS, 200),
    ("dicomweb", "GET", "{instance}/frames/1", ActionValues.READ_PIXELS, 200),
    ("dicomweb", "GET", "{instance}/rendered", ActionValues.READ_PIXELS, 200),
    ("api", "GET", "/api/v1/studies/{study}/versions", ActionValues.READ_METADATA, 200),
    ("api", "GET", "/api/v1/jobs", ActionValues.MANAGE_SYSTEM, 200),
    ("api", "GET", "/api/v1/peers", ActionValues.MANAGE_SYSTEM, 200),
    ("api", "GET", "/api/v1/routing-rules", ActionValues.MANAGE_SYSTEM, 200),
    ("api", "GET", "/api/v1/users", ActionValues.MANAGE_USERS, 200),
    ("api", "GET", "/api/v1/audit", ActionValues.READ_AUDIT, 200),
    ("api", "GET", "/api/v1/models", ActionValues.READ_MODELS, 200),
]


def _path(stored: Stored, role: str, template: str) -> str:
    return template.format(study=stored.seen(role, stored.study), instance=stored.instance_path_for(role))


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("kind", "method", "template", "action", "ok"), ENDPOINTS, ids=lambda v: str(v))
def test_role_by_endpoint(
    stored: Stored, role: str, kind: str, method: str, template: str, action: ActionValues, ok: int
) -> None:
    response = call(stored, role, method, _path(stored, role, template))
    if action in DEFAULT_ROLES[role].actions:
        assert response.status_code == ok, f"{role} {method} {template}: {response.text}"
    else:
        assert response.status_code == 403, f"{role} {method} {template}: {response.status_code}"
        assert response.headers["content-type"] == "application/problem+json"
        assert "may not" in response.json()["detail"]


def _stow_status(actions: frozenset[ActionValues]) -> int:
    """A CT image STOWed: 200 with ``ingest``; with ``label`` alone the instance is refused (409, its
    Failure Reason 0x0124: such a role stores only a reader's SR or SEG for their labeling task);
    otherwise the whole request (403)."""
    if ActionValues.INGEST in actions:
        return 200
    return 409 if ActionValues.LABEL in actions else 403


@pytest.mark.parametrize("role", ROLES)
def test_role_writes(stored: Stored, role: str) -> None:
    """STOW, attribute update and delete, each on a study of its own that the referrer refers."""
    actions = DEFAULT_ROLES[role].actions
    ds = synthetic_ct(patient_name="Write^Wendy", patient_id=f"PID-{role}")
    ds.ReferringPhysicianName = REFERRER
    stow = call(
        stored,
        role,
        "POST",
        "/dicomweb/studies",
        content=dicom_body(ds),
        headers={"Content-Type": DICOM_MULTIPART},
    )
    assert stow.status_code == _stow_status(actions), stow.text
    if stow.status_code != 200:
        admin = httpx.post(
            f"{stored.server.dicomweb}/studies",
            content=dicom_body(ds),
            headers={
                **stored.server.auth,
                "Content-Type": DICOM_MULTIPART,
            },
        )
        assert admin.status_code == 200
    study = stored.seen(role, str(ds.StudyInstanceUID))
    patch = call(
        stored, role, "PATCH", f"/api/v1/studies/{study}", json={"attributes": {"StudyDescription": "x"}}
    )
    assert patch.status_code == (200 if ActionValues.UPDATE_METADATA in actions else 403), patch.text
    delete = call(stored, role, "DELETE", f"/dicomweb/studies/{study}")
    assert delete.status_code == (204 if ActionValues.DELETE in actions else 403), delete.text
    still = httpx.get(
        f"{stored.server.dicomweb}/studies/{ds.StudyInstanceUID}/metadata", headers=stored.server.auth
    )
    assert still.status_code == (404 if ActionValues.DELETE in actions else 200)


@pytest.mark.parametrize("role", ROLES)
def test_role_on_the_dicom_network(stored: Stored, role: str) -> None:
    """The calling AE title acts as the service account that names it; C-FIND, C-GET, C-STORE."""
    actions = DEFAULT_ROLES[role].actions
    calling = f"AE-{role[:12]}".upper()
    contexts: list[Context | str] = [STUDY_FIND, STUDY_GET, (str(stored.ds.SOPClassUID), [EXPLICIT_LE])]
    received: list[Dataset] = []
    study = stored.seen(role, stored.study)

    def on_store(event: object) -> int:
        received.append(event.dataset)  # type: ignore[attr-defined]
        return 0x0000

    from pynetdicom import evt

    with association(
        stored.server,
        contexts,
        calling=calling,
        roles=[str(stored.ds.SOPClassUID)],
        handlers=[(evt.EVT_C_STORE, on_store)],
    ) as assoc:
        found = list(
            assoc.send_c_find(
                query(QueryRetrieveLevel="STUDY", StudyInstanceUID=study, PatientName=""), STUDY_FIND
            )
        )
        final = found[-1][0]
        if ActionValues.READ_METADATA in actions:
            assert final.Status == 0x0000
            assert [str(i.StudyInstanceUID) for s, i in found if i is not None] == [study]
        else:
            assert final.Status == 0x0124, hex(final.Status)
            assert "may not" in str(final.ErrorComment)
        got = list(assoc.send_c_get(query(QueryRetrieveLevel="STUDY", StudyInstanceUID=study), STUDY_GET))
        if ActionValues.READ_PIXELS in actions:
            assert got[-1][0].Status == 0x0000
            assert [str(d.SOPInstanceUID) for d in received] == [
                stored.seen(role, str(stored.ds.SOPInstanceUID))
            ]
        else:
            assert got[-1][0].Status == 0x0124
            assert received == []
    new = synthetic_ct(patient_name="Net^Nora", patient_id=f"PID-NET-{role}")
    new.ReferringPhysicianName = REFERRER
    with association(stored.server, [(str(new.SOPClassUID), [EXPLICIT_LE])], calling=calling) as assoc:
        status = assoc.send_c_store(new)
    assert status.Status == (0x0000 if ActionValues.INGEST in actions else 0x0124), hex(status.Status)


def test_an_unknown_calling_ae_may_do_nothing_without_a_default_role(stored: Stored) -> None:
    with association(stored.server, [STUDY_FIND], calling="STRANGER") as assoc:
        found = list(assoc.send_c_find(query(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), STUDY_FIND))
    assert found[-1][0].Status == 0x0124
    assert "no service account" in str(found[-1][0].ErrorComment)


# ----------------------------------------------------------------------------- study scoping
def test_a_study_outside_the_scope_is_not_found(stored: Stored) -> None:
    mine = call(stored, "referring-physician", "GET", f"/dicomweb/studies/{stored.study}/metadata")
    assert mine.status_code == 200
    for path in (
        f"/dicomweb/studies/{stored.study}/metadata",
        f"{stored.instance_path}",
        f"{stored.instance_path}/frames/1",
        f"{stored.instance_path}/rendered",
        f"/dicomweb/studies/{stored.study}/series",
        f"/api/v1/studies/{stored.study}/versions",
    ):
        other = call(stored, "other-referrer", "GET", path)
        assert other.status_code == 404, path
        assert other.json()["detail"] == f"study {stored.study} not found"
    assert call(stored, "other-referrer", "GET", "/dicomweb/studies").json() == []
    assert call(stored, "other-referrer", "GET", "/dicomweb/instances").json() == []
    listed = call(stored, "referring-physician", "GET", "/dicomweb/studies").json()
    assert stored.study in [m["0020000D"]["Value"][0] for m in listed]
    assert all(m["00080090"]["Value"][0]["Alphabetic"] == REFERRER for m in listed)
    # Even an action the role lacks: outside the scope it is "not found", not "forbidden".
    assert call(stored, "other-referrer", "DELETE", f"/dicomweb/studies/{stored.study}").status_code == 404
    assert (
        call(stored, "referring-physician", "DELETE", f"/dicomweb/studies/{stored.study}").status_code == 403
    )


# ----------------------------------------------------------------------------- no credentials
def _all_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """Every route of the app: those in its OpenAPI document and those kept out of it."""
    schema = create_app(server_settings(tmp_path)).openapi()
    routes = [
        (method.upper(), re.sub(r"\{[^}]+\}", "1.2.3", path))
        for path, operations in schema["paths"].items()
        for method in operations
    ]
    hidden = [("GET", "/metrics"), ("GET", "/api/v1/openapi.json"), ("POST", "/logout")]
    hidden += [("GET", "/account/password"), ("POST", "/account/password")]
    return routes + hidden + [(method, path) for path in OPEN for method in ("GET", "POST")]


#: What answers without credentials: liveness, readiness (only "ready"), the login form, the icon.
OPEN = ("/healthz", "/readyz", "/login", "/favicon.ico", "/favicon.svg")


def test_nothing_but_the_open_paths_answers_without_credentials(stored: Stored, tmp_path: Path) -> None:
    routes = _all_routes(tmp_path)
    assert len(routes) > 50
    for method, path in routes:
        response = httpx.request(method, f"{stored.server.url}{path}", timeout=30)
        if path in OPEN:
            assert response.status_code in (200, 401, 405, 422, 400), (method, path)
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"].startswith("Bearer")
    bad = httpx.get(f"{stored.server.dicomweb}/studies", headers={"Authorization": "Bearer rst_not-a-token"})
    assert bad.status_code == 401
    assert httpx.get(f"{stored.server.url}/healthz").status_code == 200


def test_a_role_with_no_actions_is_refused_everywhere(stored: Stored, tmp_path: Path) -> None:
    """Every route asks the policy: a principal whose role allows nothing gets only 403/404."""
    from radstack.security.policy import RoleDef

    stored.server.platform.policy.roles["nobody"] = RoleDef("nobody", frozenset())
    stored.server.platform.accounts.roles.add("nobody")
    token = stored.server.token_for("nobody")
    exempt = {*OPEN, "/logout", "/api/v1/me", "/api/v1/tokens", "/account/password", "/api/v1/me/password"}
    exempt |= {"/api/v1/openapi.json", "/api/v1/docs", "/api/v1/docs/oauth2-redirect"}
    for method, path in _all_routes(tmp_path):
        if path in exempt or path.startswith("/api/v1/tokens/"):
            continue
        response = httpx.request(
            method, f"{stored.server.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert response.status_code in (400, 403, 404, 422), (
            method,
            path,
            response.status_code,
            response.text,
        )
        if response.status_code == 404:
            assert "not found" in response.text, (method, path)


@pytest.mark.parametrize("role", ROLES)
def test_role_through_the_login_page(stored: Stored, role: str) -> None:
    """The UI: a person of each role logs in with a password and acts with the session cookie."""
    actions = DEFAULT_ROLES[role].actions
    name = f"ui-{role}"
    referrer = REFERRER if role == "referring-physician" else None
    stored.server.platform.accounts.create_user(
        name, role, password="correct horse battery", referring_name=referrer
    )
    with httpx.Client(base_url=stored.server.url, timeout=30) as browser:
        login = browser.post("/login", data={"username": name, "password": "correct horse battery"})
        assert login.status_code == 303 and "radstack_session" in browser.cookies
        me = browser.get("/api/v1/me").json()
        assert (me["user"], me["role"], me["method"]) == (name, role, "session")
        studies = browser.get("/dicomweb/studies")
        assert studies.status_code == (200 if ActionValues.READ_METADATA in actions else 403)
        users = browser.get("/api/v1/users")
        assert users.status_code == (200 if ActionValues.MANAGE_USERS in actions else 403)
        ds = synthetic_ct(patient_name="Ui^Uma", patient_id=f"PID-UI-{role}")
        stow = browser.post(
            "/dicomweb/studies",
            content=dicom_body(ds),
            headers={"Content-Type": DICOM_MULTIPART, "Origin": stored.server.url},
        )
        assert stow.status_code == _stow_status(actions), stow.text


# ----------------------------------------------------------------------------- operations endpoints
def test_readyz_answers_anyone_and_says_nothing_more(stored: Stored) -> None:
    ready = httpx.get(f"{stored.server.url}/readyz")
    assert (ready.status_code, ready.text) == (200, "ready")


@pytest.mark.parametrize("role", ROLES)
def test_metrics_answer_only_roles_that_may_read_them(stored: Stored, role: str) -> None:
    assert httpx.get(f"{stored.server.url}/metrics").status_code == 401
    token = stored.server.token_for(role)
    response = httpx.get(f"{stored.server.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    if ActionValues.READ_METRICS in DEFAULT_ROLES[role].actions:
        assert response.status_code == 200 and "radstack_http_requests_total" in response.text
    else:
        assert response.status_code == 403 and "may not read metrics" in response.json()["detail"]
    assert {role for role, spec in DEFAULT_ROLES.items() if ActionValues.READ_METRICS in spec.actions} == {
        "admin",
        "monitoring",
    }
    # The monitoring role sees nothing else.
    if role == "monitoring":
        for path in ("/dicomweb/studies", "/api/v1/users", "/api/v1/audit"):
            refused = httpx.get(f"{stored.server.url}{path}", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 403, path


@pytest.mark.postgres
def test_readyz_is_503_while_the_database_is_unreachable(tmp_path: Path) -> None:
    """A server on its own PostgreSQL: stop the database, /readyz says "not ready" (503), nothing more."""
    from tests.conftest import free_port, require_binary
    from tests.postgres import PostgresServer, create_database

    database = PostgresServer(
        initdb=require_binary("initdb"), pg_ctl=require_binary("pg_ctl"), port=free_port()
    )
    database.start()
    try:
        settings = server_settings(
            tmp_path / "data", dicom_port=0, no_workers=True, database_url=create_database(database.url)
        )
        for server in start_server(settings):
            assert httpx.get(f"{server.url}/readyz").text == "ready"
            database.stop()
            response = httpx.get(f"{server.url}/readyz")
            assert (response.status_code, response.text) == (503, "not ready")
            assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, just not ready
    finally:
        database.stop()

"""Authentication: the first admin and its forced password change, the login and change-password
pages and the session cookie, the password policy, API tokens (expiry, revocation, the CLI), user
commands (passwd, disable, role, list), OIDC bearer tokens against a JWKS served by a fixture, rate
limits, the migration of the users table, and the audit records all of it leaves."""

from __future__ import annotations

import json
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from radstack.security.audit import verify
from radstack.security.authn import CREDENTIAL_FILE
from tests.conftest import RunningServer, server_settings, start_server
from tests.processes import RADSTACK

ISSUER = "https://login.hospital.example"
AUDIENCE = "radstack"


def _credential(server: RunningServer) -> tuple[str, str]:
    text = (server.platform.settings.data_dir / CREDENTIAL_FILE).read_text()
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return fields["username"], fields["password"]


def test_the_first_start_writes_a_one_time_admin_credential(server: RunningServer) -> None:
    path = server.platform.settings.data_dir / CREDENTIAL_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    username, password = _credential(server)
    assert username == "admin" and len(password) >= 20
    principal = server.platform.accounts.check_password("admin", password)
    assert principal.role == "admin" and principal.must_change_password


def test_the_first_admin_must_set_a_new_password_before_anything_else(server: RunningServer) -> None:
    username, initial = _credential(server)
    new = "staple the battery horse correctly"
    with httpx.Client(base_url=server.url, headers={"Accept": "text/html"}) as browser:
        login = browser.post("/login", data={"username": username, "password": initial, "next": "/jobs"})
        assert login.status_code == 303 and login.headers["location"] == "/account/password?next=/jobs"
        # Every page leads to the change-password page; API calls with the session are refused.
        assert browser.get("/").headers["location"] == "/account/password?next=/"
        api = browser.get("/api/v1/users", headers={"Accept": "application/json"})
        assert api.status_code == 403 and api.json()["title"] == "Password change required"
        assert browser.get("/api/v1/me", headers={"Accept": "application/json"}).json()[
            "must_change_password"
        ]
        # An API token made by the operator (radstack token create, file access) is not held back.
        assert httpx.get(f"{server.url}/api/v1/users", headers=server.auth).status_code == 200
        form = browser.get("/account/password?next=/jobs")
        assert form.status_code == 200 and 'name="confirm"' in form.text
        assert "Set a new password before you go on" in form.text
        origin = {"Origin": server.url}

        def change(current: str, new: str, confirm: str | None = None) -> httpx.Response:
            data = {"current": current, "new": new, "confirm": new if confirm is None else confirm}
            return browser.post("/account/password", data={**data, "next": "/jobs"}, headers=origin)

        refused = {
            "the two new passwords differ": change(initial, new, "something else entirely"),
            "the current password is wrong": change("not the password at all", new),
            "it must have at least 12": change(initial, "short one"),
            "must not contain the user name": change(initial, "my Admin account 2026"),
            "most common passwords found in breaches": change(initial, "QwertyUiop123"),
        }
        for reason, response in refused.items():
            assert response.status_code == 400, reason
            assert response.headers["content-type"].startswith("text/html"), reason
            assert reason in response.text.lower(), reason
        # A change made with the cookie from another site is refused (CSRF), as for every form.
        forged = browser.post(
            "/account/password",
            data={"current": initial, "new": new, "confirm": new},
            headers={"Origin": "https://evil.example"},
        )
        assert forged.status_code == 403
        done = change(initial, new)
        assert done.status_code == 303 and done.headers["location"] == "/jobs"
        assert browser.get("/jobs").status_code == 200
        assert not browser.get("/api/v1/me", headers={"Accept": "application/json"}).json()[
            "must_change_password"
        ]
    # The initial password stops working; the file says so and holds it no more.
    again = httpx.post(f"{server.url}/login", data={"username": username, "password": initial})
    assert again.status_code == 401
    text = (server.platform.settings.data_dir / CREDENTIAL_FILE).read_text()
    assert initial not in text and "no longer works" in text
    fresh = httpx.post(f"{server.url}/login", data={"username": username, "password": new})
    assert fresh.status_code == 303 and fresh.headers["location"] == "/"


def test_changing_the_password_ends_the_other_sessions(server: RunningServer) -> None:
    server.platform.accounts.create_user("dora", "radiologist", password="a long enough password")
    phone, desk = httpx.Client(base_url=server.url), httpx.Client(base_url=server.url)
    with phone, desk:
        for client in (phone, desk):
            client.post("/login", data={"username": "dora", "password": "a long enough password"})
        changed = httpx.post(
            f"{server.url}/api/v1/me/password",
            json={"current_password": "a long enough password", "new_password": "password"},
            cookies=desk.cookies,
            headers={"Origin": server.url},
        )
        assert changed.status_code == 400 and "at least 12 characters" in changed.json()["detail"]
        desk.headers["Origin"] = server.url
        ok = desk.post(
            "/api/v1/me/password",
            json={"current_password": "a long enough password", "new_password": "a new long secret for her"},
        )
        assert ok.status_code == 204
        assert desk.get("/api/v1/me").status_code == 200
        assert phone.get("/api/v1/me").status_code == 401


def test_login_page_session_cookie_and_logout(server: RunningServer) -> None:
    username, password = "erin", "a long password for her desk"
    server.platform.accounts.create_user(username, "admin", password=password)
    with httpx.Client(base_url=server.url) as browser:
        page = browser.get("/dicomweb/studies", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
        form = browser.get("/login")
        assert form.status_code == 200 and 'name="password"' in form.text
        assert '<link rel="icon"' in form.text and "<header>" in form.text  # the UI's layout
        wrong = browser.post("/login", data={"username": username, "password": "not the password"})
        assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
        assert wrong.headers["content-type"].startswith("text/html")
        assert "radstack_session" not in browser.cookies
        done = browser.post("/login", data={"username": username, "password": password, "next": "/api/v1/me"})
        assert done.status_code == 303 and done.headers["location"] == "/api/v1/me"
        cookie = done.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert browser.get("/api/v1/me").json()["user"] == username
        # A change made with the cookie must come from our own pages (CSRF).
        forged = browser.post(
            "/api/v1/tokens", json={"label": "x"}, headers={"Origin": "https://evil.example"}
        )
        assert forged.status_code == 403
        own = browser.post("/api/v1/tokens", json={"label": "x"}, headers={"Origin": server.url})
        assert own.status_code == 201
        # What Chromium sends for a form on our pages under Referrer-Policy: no-referrer: Origin null,
        # and Fetch Metadata that a page cannot forge; a cross-site form says so in the same header.
        ours = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
        assert browser.post("/api/v1/tokens", json={"label": "y"}, headers=ours).status_code == 201
        theirs = {"Origin": server.url, "Sec-Fetch-Site": "cross-site"}
        assert browser.post("/api/v1/tokens", json={"label": "z"}, headers=theirs).status_code == 403
        # An open redirect is not followed: next must be a path here.
        away = browser.post(
            "/login", data={"username": username, "password": password, "next": "//evil.example/"}
        )
        assert away.headers["location"] == "/"
        assert browser.post("/logout", headers={"Origin": server.url}).status_code == 303
        assert browser.get("/api/v1/me").status_code == 401


def test_an_expired_session_sends_the_browser_to_the_login_page_with_a_note(server: RunningServer) -> None:
    server.platform.accounts.create_user("fay", "radiologist", password="a long password of hers")
    with httpx.Client(base_url=server.url, headers={"Accept": "text/html"}) as browser:
        browser.post("/login", data={"username": "fay", "password": "a long password of hers"})
        assert browser.get("/?modality=CT").status_code == 200
        server.platform.accounts.end_session(browser.cookies["radstack_session"])
        page = browser.get("/?modality=CT")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=/%3Fmodality%3DCT&expired=1"
        assert 'radstack_session=""' in page.headers["set-cookie"]  # the stale cookie is dropped
        login = browser.get(page.headers["location"])
        assert login.status_code == 200 and "Your session expired" in login.text
        # An API client with the same stale cookie still gets a problem document, not a page.
        api = httpx.get(
            f"{server.url}/api/v1/me", cookies={"radstack_session": "stale"}, headers={"Accept": "*/*"}
        )
        assert api.status_code == 401 and api.headers["content-type"] == "application/problem+json"


def test_the_favicon(server: RunningServer) -> None:
    ico = httpx.get(f"{server.url}/favicon.ico")
    assert ico.status_code == 200 and ico.headers["content-type"] == "image/x-icon"
    assert ico.content[:4] == b"\x00\x00\x01\x00"  # an ICO directory
    svg = httpx.get(f"{server.url}/favicon.svg")
    assert svg.status_code == 200 and svg.text.startswith("<svg")


def test_tokens_expire_and_are_revoked(server: RunningServer) -> None:
    accounts = server.platform.accounts
    accounts.create_user("carol", "radiologist", password="a long enough password")
    short = accounts.create_token("carol", expires_in=timedelta(seconds=1))
    headers = {"Authorization": f"Bearer {short}"}
    assert httpx.get(f"{server.url}/api/v1/me", headers=headers).json()["role"] == "radiologist"
    time.sleep(1.2)
    accounts._forget()  # the 5-second cache of verified tokens; a new node would not have it
    expired = httpx.get(f"{server.url}/api/v1/me", headers=headers)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    made = httpx.post(
        f"{server.url}/api/v1/tokens",
        json={"label": "script"},
        headers={"Authorization": f"Bearer {accounts.create_token('carol')}"},
    ).json()
    headers = {"Authorization": f"Bearer {made['token']}"}
    assert httpx.get(f"{server.url}/dicomweb/studies", headers=headers).status_code == 200
    [listed] = [
        t for t in httpx.get(f"{server.url}/api/v1/tokens", headers=headers).json() if t["label"] == "script"
    ]
    assert "token" not in listed
    assert httpx.delete(f"{server.url}/api/v1/tokens/{listed['id']}", headers=headers).status_code == 204
    assert httpx.get(f"{server.url}/dicomweb/studies", headers=headers).status_code == 401
    # A radiologist cannot mint an admin token.
    other = accounts.create_token("carol")
    refused = httpx.post(
        f"{server.url}/api/v1/tokens", json={"role": "admin"}, headers={"Authorization": f"Bearer {other}"}
    )
    assert refused.status_code == 403


def test_token_create_on_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = subprocess.run(
        [RADSTACK, "token", "create", "--user", "admin", "--role", "ai-service", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.strip()
    assert token.startswith("rst_") and "initial-admin-credential.txt" in made.stderr
    settings = server_settings(data, dicom_port=0, no_workers=True)
    for server in start_server(settings):
        me = httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert (me["user"], me["role"]) == ("admin", "ai-service")
    unknown = subprocess.run(
        [RADSTACK, "token", "create", "--user", "nobody", "--data-dir", str(data)],
        capture_output=True,
        text=True,
    )
    assert unknown.returncode == 2 and "user 'nobody' not found" in unknown.stderr


def _cli(data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RADSTACK, "user", *args, "--data-dir", str(data)], input=stdin, capture_output=True, text=True
    )


def test_user_commands_on_the_command_line(server: RunningServer) -> None:
    data = server.platform.settings.data_dir
    accounts = server.platform.accounts
    made = _cli(
        data,
        "create",
        "gideon",
        "--role",
        "radiologist",
        "--password-stdin",
        stdin="his first long password\n",
    )
    assert made.returncode == 0, made.stderr
    weak = _cli(data, "passwd", "gideon", stdin="Gideon-2026-Gideon\n")
    assert weak.returncode == 2 and "must not contain the user name" in weak.stderr
    short = _cli(data, "create", "hal", "--role", "annotator", "--password-stdin", stdin="hal9000\n")
    assert short.returncode == 2 and "at least 12" in short.stderr
    changed = _cli(data, "passwd", "gideon", "--must-change", stdin="a temporary password, change it\n")
    assert changed.returncode == 0 and "must be changed at the next login" in changed.stdout
    login = httpx.post(
        f"{server.url}/login", data={"username": "gideon", "password": "a temporary password, change it"}
    )
    assert login.status_code == 303 and login.headers["location"].startswith("/account/password")
    assert _cli(data, "role", "gideon", "technologist").returncode == 0
    bad_role = _cli(data, "role", "gideon", "wizard")
    assert bad_role.returncode == 2 and "role 'wizard' does not exist" in bad_role.stderr
    token = accounts.create_token("gideon")
    me = httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["role"] == "technologist"
    assert _cli(data, "disable", "gideon").returncode == 0
    listed = _cli(data, "list").stdout.splitlines()
    assert listed[0].split() == ["USER", "ROLE", "STATE", "PASSWORD", "AE", "TITLE"]
    [gideon] = [line.split() for line in listed if line.startswith("gideon ")]
    assert gideon[:5] == ["gideon", "technologist", "disabled", "must", "change"]
    [admin] = [line.split() for line in listed if line.startswith("admin ")]
    assert admin[:5] == ["admin", "admin", "enabled", "must", "change"]
    accounts._forget()  # the 5-second cache of verified tokens; another process disabled the user
    refused = httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401
    again = httpx.post(
        f"{server.url}/login", data={"username": "gideon", "password": "a temporary password, change it"}
    )
    assert again.status_code == 401
    assert _cli(data, "enable", "gideon").returncode == 0
    accounts._forget()
    assert (
        httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    # An operator setting the first admin's password retires the initial credential too.
    _, initial = _credential(server)
    assert _cli(data, "passwd", "admin", stdin="an operator's chosen password\n").returncode == 0
    assert initial not in (data / CREDENTIAL_FILE).read_text()
    assert not accounts.user("admin").must_change_password


def test_bad_tokens_are_rate_limited(tmp_path: Path) -> None:
    settings = server_settings(
        tmp_path / "data",
        dicom_port=0,
        no_workers=True,
        token_failures_per_minute=5,
    )
    for server in start_server(settings):
        bad = {"Authorization": "Bearer rst_guess"}
        statuses = [httpx.get(f"{server.url}/api/v1/me", headers=bad).status_code for _ in range(8)]
        assert statuses[:5] == [401] * 5 and statuses[-1] == 429
        limited = httpx.get(f"{server.url}/api/v1/me", headers=bad)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["content-type"] == "application/problem+json"
        # A browser is shown a page that says how long to wait, never the JSON.
        page = httpx.get(f"{server.url}/", headers={**bad, "Accept": "text/html"})
        assert page.status_code == 429 and page.headers["content-type"].startswith("text/html")
        assert f"try again in {page.headers['retry-after']} seconds" in page.text


def test_login_attempts_are_rate_limited(server: RunningServer) -> None:
    responses = [
        httpx.post(f"{server.url}/login", data={"username": "admin", "password": f"guess {n}"})
        for n in range(12)
    ]
    assert [r.status_code for r in responses[:10]] == [401] * 10
    locked = responses[-1]
    assert locked.status_code == 429 and locked.headers["content-type"].startswith("text/html")
    wait = int(locked.headers["retry-after"])
    assert wait >= 1 and f"try again in {wait} seconds" in locked.text
    assert 'name="password"' in locked.text  # the form again, not a bare error


def test_a_disabled_user_cannot_log_in_and_its_sessions_and_tokens_stop(server: RunningServer) -> None:
    accounts = server.platform.accounts
    accounts.create_user("ivy", "radiologist", password="a long password of hers")
    token = accounts.create_token("ivy")
    with httpx.Client(base_url=server.url) as browser:
        browser.post("/login", data={"username": "ivy", "password": "a long password of hers"})
        assert browser.get("/api/v1/me").status_code == 200
        patched = httpx.patch(f"{server.url}/api/v1/users/ivy", json={"disabled": True}, headers=server.auth)
        assert patched.status_code == 200 and patched.json()["disabled"] is True
        assert browser.get("/api/v1/me").status_code == 401
    assert (
        httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )
    login = httpx.post(f"{server.url}/login", data={"username": "ivy", "password": "a long password of hers"})
    assert login.status_code == 401 and "Wrong user name or password" in login.text


def test_the_api_applies_the_password_policy(server: RunningServer) -> None:
    made = httpx.post(
        f"{server.url}/api/v1/users",
        json={"username": "jo", "role": "annotator", "password": "iloveyou1234"},
        headers=server.auth,
    )
    assert made.status_code == 400 and "most common passwords" in made.json()["detail"]
    assert made.json()["title"] == "Password refused by the policy"
    made = httpx.post(
        f"{server.url}/api/v1/users",
        json={"username": "jo", "role": "annotator", "password": "a long password of hers"},
        headers=server.auth,
    )
    assert made.status_code == 201 and made.json()["must_change_password"] is False
    temporary = httpx.post(
        f"{server.url}/api/v1/users",
        json={
            "username": "kim",
            "role": "annotator",
            "password": "kim, change this",
            "must_change_password": True,
        },
        headers=server.auth,
    )
    assert temporary.status_code == 201 and temporary.json()["must_change_password"] is True
    reset = httpx.patch(
        f"{server.url}/api/v1/users/jo",
        json={"password": "a temporary one for her", "must_change_password": True},
        headers=server.auth,
    )
    assert reset.status_code == 200 and reset.json()["must_change_password"] is True
    short = httpx.patch(f"{server.url}/api/v1/users/jo", json={"password": "short"}, headers=server.auth)
    assert short.status_code == 400 and "at least 12 characters" in short.json()["detail"]


# ----------------------------------------------------------------------------- migration 0009
def test_migration_0009_adds_the_password_columns_to_existing_users(database_url: str) -> None:
    """An index at 0008 with users gains ``must_change_password`` (false) and ``password_changed_at``;
    the migrated table is what :class:`UserRow` describes; the downgrade removes them again."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect, text

    from radstack.migrations import target_metadata
    from radstack.store.index import alembic_config, create_index_engine, migrate

    engine = create_index_engine(database_url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0008")
            connection.execute(
                text(
                    "INSERT INTO users (username, password_hash, role, institutions, disabled, created_at) "
                    "VALUES ('old', NULL, 'radiologist', '[]', false, CURRENT_TIMESTAMP)"
                )
            )
        migrate(engine)
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT must_change_password, password_changed_at FROM users WHERE username = 'old'")
            ).one()
            assert (bool(row[0]), row[1]) == (False, None)
            differences = compare_metadata(MigrationContext.configure(connection), target_metadata)
        assert [d for d in differences if "users" in repr(d)] == []
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0008")
        assert "must_change_password" not in {c["name"] for c in inspect(engine).get_columns("users")}
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- OIDC
class _Issuer:
    """A JWKS endpoint on loopback (what an identity provider publishes) and a key to sign with."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/jwks.json"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def token(self, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-17", "exp": now + 300, "iat": now, **claims}
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def oidc_server(tmp_path: Path) -> Iterator[tuple[RunningServer, _Issuer]]:
    issuer = _Issuer()
    settings = server_settings(
        tmp_path / "data",
        dicom_port=0,
        no_workers=True,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_url=issuer.url,
    )
    try:
        for server in start_server(settings):
            yield server, issuer
    finally:
        issuer.http.shutdown()


def test_oidc_bearer_tokens(oidc_server: tuple[RunningServer, _Issuer]) -> None:
    server, issuer = oidc_server

    def me(token: str) -> httpx.Response:
        return httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})

    good = me(issuer.token(roles=["staff", "radiologist"], preferred_username="dr.who"))
    assert good.status_code == 200
    assert (good.json()["user"], good.json()["role"], good.json()["method"]) == (
        "oidc:dr.who",
        "radiologist",
        "oidc",
    )
    assert (
        httpx.get(
            f"{server.dicomweb}/studies",
            headers={"Authorization": f"Bearer {issuer.token(roles='data-scientist')}"},
        ).status_code
        == 200
    )
    refused = {
        "expired": issuer.token(roles=["radiologist"], exp=int(time.time()) - 120),
        "wrong audience": issuer.token(roles=["radiologist"], aud="another-app"),
        "wrong issuer": issuer.token(roles=["radiologist"], iss="https://elsewhere.example"),
        "wrong signature": issuer.token(
            rsa.generate_private_key(public_exponent=65537, key_size=2048), roles=["radiologist"]
        ),
        "no role": issuer.token(roles=["staff"]),
        "unsigned": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "roles": ["admin"]}, "", algorithm="none"
        ),
    }
    for case, token in refused.items():
        response = me(token)
        assert response.status_code == 401, case
        assert response.json()["title"] == "Unauthorized", case


# ----------------------------------------------------------------------------- audit
def test_accesses_are_audited(server: RunningServer) -> None:
    from tests.helpers import DICOM_MULTIPART, dicom_body, synthetic_ct

    ds = synthetic_ct(patient_name="Audit^Anna", patient_id="PID-AUDIT")
    headers = server.auth
    assert (
        httpx.post(
            f"{server.dicomweb}/studies",
            content=dicom_body(ds),
            headers={**headers, "Content-Type": DICOM_MULTIPART},
        ).status_code
        == 200
    )
    study = str(ds.StudyInstanceUID)
    httpx.get(f"{server.dicomweb}/studies/{study}/metadata", headers=headers)
    httpx.get(f"{server.dicomweb}/studies", params={"PatientID": "PID-AUDIT"}, headers=headers)
    httpx.post(f"{server.url}/login", data={"username": "admin", "password": "wrong password!"})
    httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": "Bearer rst_forged"})
    records = httpx.get(f"{server.url}/api/v1/audit", headers=headers).json()
    kinds = [(r["action"], r["outcome"]) for r in records]
    assert ("write", "success") in kinds and ("read", "success") in kinds and ("query", "success") in kinds
    assert kinds.count(("authenticate", "failure")) == 2
    read = next(r for r in records if r["action"] == "read")
    assert read["actor"] == "admin" and read["role"] == "admin" and read["source"] == "127.0.0.1"
    assert read["resource"]["study"] == study
    write = next(r for r in records if r["action"] == "write")
    assert write["resource"]["studies"] == [study] and write["resource"]["stored"] == 1
    text = json.dumps(records)
    assert "Audit^Anna" not in text and "PID-AUDIT" not in text  # query values are not recorded
    assert verify(server.platform.store.engine, server.platform.audit.log.key).ok


def test_audit_records_go_to_syslog_as_dicom_audit_messages(tmp_path: Path) -> None:
    """PS3.15 A.5: an RFC 5424 message per record, its XML an AuditMessage with DCM event codes."""
    import socket
    from xml.etree import ElementTree as ET

    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(10)
    settings = server_settings(
        tmp_path / "data",
        dicom_port=0,
        no_workers=True,
        audit_syslog_url=f"udp://127.0.0.1:{collector.getsockname()[1]}",
    )
    with collector:
        for server in start_server(settings):
            httpx.get(f"{server.dicomweb}/studies", headers=server.auth)
            message = collector.recv(65536)
    header, _, xml = message.partition(b"\xef\xbb\xbf")
    assert header.startswith(b"<85>1 ") and b" IHE+RFC-3881 " in header
    root = ET.fromstring(xml)
    event = root.find("EventIdentification")
    assert event is not None and event.get("EventOutcomeIndicator") == "0"
    event_id = event.find("EventID")
    assert event_id is not None and (event_id.get("csd-code"), event_id.get("codeSystemName")) == (
        "110112",
        "DCM",
    )
    users = [p.get("UserID") for p in root.findall("ActiveParticipant")]
    assert "admin" in users


def test_a_user_with_an_invalid_ae_title_is_refused_naming_the_rule(server: RunningServer) -> None:
    body = {"username": "modality-op", "role": "radiologist", "password": "staple the battery horse"}
    answer = httpx.post(f"{server.url}/api/v1/users", json={**body, "ae_title": "A\\B"}, headers=server.auth)
    assert answer.status_code == 400, answer.text
    assert "AE title" in answer.json()["detail"] and "PS3.5" in answer.json()["detail"]
    assert "modality-op" not in {user.username for user in server.platform.accounts.users()}
    changed = httpx.patch(
        f"{server.url}/api/v1/users/admin", json={"ae_title": "x" * 17}, headers=server.auth
    )
    assert changed.status_code == 400 and "AE title" in changed.json()["detail"]

"""Authentication: the first admin, the login page and its session cookie, API tokens (expiry,
revocation, the CLI), OIDC bearer tokens against a JWKS served by a fixture, rate limits, and the
audit records all of it leaves."""

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
    assert server.platform.accounts.check_password("admin", password).role == "admin"


def test_login_page_session_cookie_and_logout(server: RunningServer) -> None:
    username, password = _credential(server)
    with httpx.Client(base_url=server.url) as browser:
        page = browser.get("/dicomweb/studies", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
        form = browser.get("/login")
        assert form.status_code == 200 and 'name="password"' in form.text
        wrong = browser.post("/login", data={"username": username, "password": "not the password"})
        assert wrong.status_code == 401 and "wrong username or password" in wrong.text
        assert "radstack_session" not in browser.cookies
        done = browser.post("/login", data={"username": username, "password": password, "next": "/api/v1/me"})
        assert done.status_code == 303 and done.headers["location"] == "/api/v1/me"
        cookie = done.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert browser.get("/api/v1/me").json()["user"] == "admin"
        # A change made with the cookie must come from our own pages (CSRF).
        forged = browser.post(
            "/api/v1/tokens", json={"label": "x"}, headers={"Origin": "https://evil.example"}
        )
        assert forged.status_code == 403
        own = browser.post("/api/v1/tokens", json={"label": "x"}, headers={"Origin": server.url})
        assert own.status_code == 201
        # An open redirect is not followed: next must be a path here.
        away = browser.post(
            "/login", data={"username": username, "password": password, "next": "//evil.example/"}
        )
        assert away.headers["location"] == "/"
        assert browser.post("/logout", headers={"Origin": server.url}).status_code == 303
        assert browser.get("/api/v1/me").status_code == 401


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


def test_login_attempts_are_rate_limited(server: RunningServer) -> None:
    statuses = [
        httpx.post(f"{server.url}/login", data={"username": "admin", "password": f"guess {n}"}).status_code
        for n in range(12)
    ]
    assert statuses[:10] == [401] * 10 and statuses[-1] == 429


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

"""Transport security: HTTPS checked with the real curl, DICOM over TLS with pynetdicom and dcmtk,
client certificates, security headers, CORS and the TLS settings' errors."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from radstack.config import Settings
from radstack.security.tls import TLSConfigurationError, server_ssl_context
from tests.conftest import RunningServer, free_port, require_binary, start_server
from tests.security.pki import CertificateAuthority, Issued

VERIFICATION = "1.2.840.10008.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
VIEWER_ORIGIN = "https://viewer.example.org"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_cert(ca: CertificateAuthority) -> Issued:
    return ca.issue("server", server=True)


def tls_settings(data_dir: Path, server_cert: Issued, **extra: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        http_port=free_port(),
        dicom_port=free_port(),
        dicom_tls_port=free_port(),
        tls_cert_file=server_cert.cert,
        tls_key_file=server_cert.key,
        ingest_processes=0,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, server_cert: Issued) -> Iterator[RunningServer]:
    """HTTPS, plain DIMSE and DICOM TLS (no client certificate asked), one CORS origin listed."""
    settings = tls_settings(tmp_path_factory.mktemp("tls"), server_cert, cors_origins=[VIEWER_ORIGIN])
    yield from start_server(settings)


@pytest.fixture(scope="module")
def mutual_tls_server(
    tmp_path_factory: pytest.TempPathFactory, ca: CertificateAuthority, server_cert: Issued
) -> Iterator[RunningServer]:
    """DICOM TLS that requires a client certificate issued by ``ca``."""
    settings = tls_settings(tmp_path_factory.mktemp("mtls"), server_cert, tls_client_ca_file=ca.cert)
    yield from start_server(settings)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("curl"), "--silent", "--show-error", "--max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def client_context(ca: CertificateAuthority, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.cert))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def associate(
    server: RunningServer, port: int, context: ssl.SSLContext | None, *contexts: tuple[str, str]
) -> Association:
    """An association (established or not) over TLS when ``context`` is given; ``contexts`` are
    (SOP class, transfer syntax) pairs, Verification by default."""
    ae = AE(ae_title="TLSSCU")
    ae.connection_timeout = ae.acse_timeout = 10
    for uid, syntax in contexts or ((VERIFICATION, EXPLICIT_LE),):
        ae.add_requested_context(uid, [syntax])
    tls_args = (context, "localhost") if context is not None else None
    return ae.associate("127.0.0.1", port, ae_title=server.platform.settings.ae_title, tls_args=tls_args)


def echo(server: RunningServer, port: int, context: ssl.SSLContext | None) -> int | None:
    """The C-ECHO status over a new association, or None when none could be established."""
    assoc = associate(server, port, context)
    if not assoc.is_established:
        return None
    try:
        status: int = assoc.send_c_echo().Status
        return status
    finally:
        assoc.release()


# ----------------------------------------------------------------------------- HTTPS (curl)
def test_https_with_curl_shows_hsts_and_security_headers(
    tls_server: RunningServer, ca: CertificateAuthority
) -> None:
    assert tls_server.url.startswith("https://")
    result = curl("--include", "--cacert", str(ca.cert), f"{tls_server.url}/healthz")
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition("\n\n")  # text mode: CRLF read as LF
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in head.splitlines()[1:])
    }
    assert head.startswith("HTTP/1.1 200"), head
    assert body == "ok", result.stdout
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"


def test_https_speaks_tls_1_2_with_forward_secret_aead(
    tls_server: RunningServer, ca: CertificateAuthority
) -> None:
    result = curl(
        "--tlsv1.2", "--tls-max", "1.2", "--verbose", "--cacert", str(ca.cert), f"{tls_server.url}/healthz"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok"
    assert "TLSv1.2 / ECDHE-RSA-AES" in result.stderr and "GCM" in result.stderr, result.stderr


def test_plain_http_to_the_https_port_fails(tls_server: RunningServer) -> None:
    result = curl(tls_server.url.replace("https://", "http://") + "/healthz")
    assert result.returncode != 0
    assert result.stdout != "ok"


def test_curl_without_the_ca_fails_verification(tls_server: RunningServer) -> None:
    result = curl(f"{tls_server.url}/healthz")
    assert result.returncode == 60, (result.returncode, result.stderr)  # CURLE_PEER_FAILED_VERIFICATION
    assert "certificate" in result.stderr


def test_cli_serve_over_https(tmp_path: Path, ca: CertificateAuthority, server_cert: Issued) -> None:
    """`radstack serve --tls-cert-file … --tls-key-file …` answers only HTTPS, verified by curl."""
    port = free_port()
    argv = [sys.executable, "-m", "radstack.cli", "serve", "--data-dir", str(tmp_path / "var")]
    argv += ["--http-port", str(port), "--dicom-port", "0", "--no-workers"]
    argv += ["--tls-cert-file", str(server_cert.cert), "--tls-key-file", str(server_cert.key)]
    env = {**os.environ, "RADSTACK_INGEST_PROCESSES": "0"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    httpx.get(f"https://127.0.0.1:{port}/healthz", verify=client_context(ca), timeout=2).text
                    == "ok"
                ):
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "radstack serve did not answer over HTTPS"
            time.sleep(0.1)
        result = curl("--include", "--cacert", str(ca.cert), f"https://localhost:{port}/healthz")
        assert result.returncode == 0, result.stderr
        assert "strict-transport-security: max-age=31536000; includeSubDomains" in result.stdout
    finally:
        process.terminate()
        out, _err = process.communicate(timeout=30)
    assert f"https://127.0.0.1:{port}/" in out


def test_cli_serve_refuses_an_unreadable_key(tmp_path: Path, server_cert: Issued) -> None:
    missing = tmp_path / "missing.key"
    argv = [sys.executable, "-m", "radstack.cli", "serve", "--data-dir", str(tmp_path / "var")]
    argv += ["--http-port", str(free_port()), "--dicom-port", "0", "--no-workers"]
    argv += ["--tls-cert-file", str(server_cert.cert), "--tls-key-file", str(missing)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"RADSTACK_TLS_KEY_FILE '{missing}' cannot be read" in result.stderr


# ----------------------------------------------------------------------------- security headers, CORS
def test_plain_http_has_no_hsts_but_the_other_headers(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/healthz")
    assert response.text == "ok"
    assert "strict-transport-security" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    # Errors carry them too; the viewer may be framed by its own origin.
    viewer = httpx.get(f"{server.url}/viewer/index.html")
    assert viewer.headers["x-frame-options"] == "SAMEORIGIN"
    assert viewer.headers["referrer-policy"] == "no-referrer"


def preflight(url: str, origin: str, verify: ssl.SSLContext | bool = True) -> httpx.Response:
    return httpx.options(
        f"{url}/dicomweb/studies",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        verify=verify,
    )


def test_cors_is_closed_by_default(server: RunningServer) -> None:
    response = preflight(server.url, VIEWER_ORIGIN)
    assert "access-control-allow-origin" not in response.headers
    simple = httpx.get(f"{server.url}/healthz", headers={"Origin": VIEWER_ORIGIN})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_a_listed_origin_with_credentials_only(
    tls_server: RunningServer, ca: CertificateAuthority
) -> None:
    listed = preflight(tls_server.url, VIEWER_ORIGIN, verify=client_context(ca))
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    assert listed.headers["access-control-allow-credentials"] == "true"
    assert "authorization" in listed.headers["access-control-allow-headers"].lower()
    other = preflight(tls_server.url, "https://evil.example", verify=client_context(ca))
    assert "access-control-allow-origin" not in other.headers
    assert other.headers["strict-transport-security"].startswith("max-age=")


@pytest.fixture
def any_origin_server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(
        data_dir=tmp_path / "data", http_port=free_port(), dicom_port=0, cors_origins="*", ingest_processes=0
    )
    yield from start_server(settings)


def test_cors_any_origin_never_with_credentials(any_origin_server: RunningServer) -> None:
    response = preflight(any_origin_server.url, "https://anyone.example")
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


# ----------------------------------------------------------------------------- DICOM over TLS
def test_c_echo_and_c_store_over_tls(tls_server: RunningServer, ca: CertificateAuthority) -> None:
    port = tls_server.platform.settings.dicom_tls_port
    assert echo(tls_server, port, client_context(ca)) == 0x0000
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    storage = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    assoc = associate(tls_server, port, client_context(ca), storage, (STUDY_FIND, EXPLICIT_LE))
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ds.StudyInstanceUID
        identifier.NumberOfStudyRelatedInstances = None
        answers = [
            found
            for status, found in assoc.send_c_find(identifier, STUDY_FIND)
            if status.Status == 0xFF00 and found is not None
        ]
    finally:
        assoc.release()
    assert [str(a.StudyInstanceUID) for a in answers] == [str(ds.StudyInstanceUID)]
    assert int(answers[0].NumberOfStudyRelatedInstances) == 1


def test_plain_dimse_to_the_tls_port_fails(tls_server: RunningServer, ca: CertificateAuthority) -> None:
    settings = tls_server.platform.settings
    assert echo(tls_server, settings.dicom_tls_port, None) is None
    # Both listeners still serve their own kind. (TLS to the plain port fails too, but pynetdicom
    # then waits ten seconds on the garbled association before the server can stop.)
    assert echo(tls_server, settings.dicom_port, None) == 0x0000
    assert echo(tls_server, settings.dicom_tls_port, client_context(ca)) == 0x0000


def test_a_server_the_client_does_not_trust_is_refused(tls_server: RunningServer, tmp_path: Path) -> None:
    stranger = CertificateAuthority(tmp_path / "other", "stranger-ca")
    assert echo(tls_server, tls_server.platform.settings.dicom_tls_port, client_context(stranger)) is None


def test_a_silent_client_does_not_hold_up_the_tls_listener(
    tls_server: RunningServer, ca: CertificateAuthority
) -> None:
    """The TLS handshake runs in the association's thread: a client that connects and sends nothing
    delays no one else."""
    port = tls_server.platform.settings.dicom_tls_port
    with socket.create_connection(("127.0.0.1", port)) as silent:
        silent.settimeout(30)
        start = time.monotonic()
        assert echo(tls_server, port, client_context(ca)) == 0x0000
        assert time.monotonic() - start < 5


def test_client_certificate_required_when_a_client_ca_is_set(
    mutual_tls_server: RunningServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    port = mutual_tls_server.platform.settings.dicom_tls_port
    assert echo(mutual_tls_server, port, client_context(ca)) is None
    stranger = CertificateAuthority(tmp_path / "other", "stranger-ca").issue("intruder", server=False)
    assert echo(mutual_tls_server, port, client_context(ca, stranger)) is None
    modality = ca.issue("modality", server=False)
    assert echo(mutual_tls_server, port, client_context(ca, modality)) == 0x0000
    # HTTPS asks browsers for no certificate.
    assert httpx.get(f"{mutual_tls_server.url}/healthz", verify=client_context(ca)).text == "ok"


def test_dcmtk_echoscu_over_tls_with_a_client_certificate(
    mutual_tls_server: RunningServer, ca: CertificateAuthority
) -> None:
    """dcmtk's default profile is Non-downgrading BCP 195 (PS3.15 §B.10)."""
    echoscu = require_binary("echoscu")
    modality = ca.issue("dcmtk", server=False)
    port = str(mutual_tls_server.platform.settings.dicom_tls_port)
    command = [echoscu, "-aet", "DCMTK", "-aec", "RADSTACK", "+tls", str(modality.key), str(modality.cert)]
    command += ["+cf", str(ca.cert), "127.0.0.1", port]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    without = subprocess.run(
        [echoscu, "-aec", "RADSTACK", "+tla", "+cf", str(ca.cert), "127.0.0.1", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert without.returncode != 0


# ----------------------------------------------------------------------------- settings
def test_certificate_and_key_go_together(server_cert: Issued) -> None:
    with pytest.raises(ValidationError, match="only RADSTACK_TLS_CERT_FILE is set"):
        Settings(tls_cert_file=server_cert.cert)
    with pytest.raises(ValidationError, match="only RADSTACK_TLS_KEY_FILE is set"):
        Settings(tls_key_file=server_cert.key)
    with pytest.raises(ValidationError, match="need a certificate"):
        Settings(dicom_tls_port=2762)
    with pytest.raises(ValidationError, match="a port of its own"):
        Settings(
            tls_cert_file=server_cert.cert, tls_key_file=server_cert.key, dicom_port=2762, dicom_tls_port=2762
        )
    assert not Settings().tls_enabled
    assert Settings(tls_cert_file=server_cert.cert, tls_key_file=server_cert.key).tls_enabled


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADSTACK_CORS_ORIGINS", "https://Viewer.example.org/, http://localhost:3000")
    assert Settings().cors_origins == ["https://viewer.example.org", "http://localhost:3000"]
    assert Settings(cors_origins=[]).cors_origins == []
    with pytest.raises(ValidationError, match="must be the only one"):
        Settings(cors_origins=["*", VIEWER_ORIGIN])
    with pytest.raises(ValidationError, match="must be scheme://host"):
        Settings(cors_origins=["https://viewer.example.org/path"])


def test_unusable_certificates_are_named(
    tmp_path: Path, ca: CertificateAuthority, server_cert: Issued
) -> None:
    def context(cert: Path, key: Path, **extra: object) -> ssl.SSLContext:
        settings = Settings(tls_cert_file=cert, tls_key_file=key, **extra)  # type: ignore[arg-type]
        return server_ssl_context(settings, verify_clients=True)

    good = context(server_cert.cert, server_cert.key)
    assert good.minimum_version is ssl.TLSVersion.TLSv1_2
    assert good.verify_mode is ssl.CERT_NONE
    missing = tmp_path / "nothing.pem"
    with pytest.raises(
        TLSConfigurationError, match=re.escape(f"RADSTACK_TLS_CERT_FILE '{missing}' cannot be read")
    ):
        context(missing, server_cert.key)
    shared = tmp_path / "shared.key"
    shared.write_bytes(server_cert.key.read_bytes())
    shared.chmod(0o644)
    with pytest.raises(TLSConfigurationError, match="has mode 0644; others must have no access"):
        context(server_cert.cert, shared)
    other = ca.issue("other", server=True)
    with pytest.raises(
        TLSConfigurationError, match="not a PEM certificate chain and its unencrypted private key"
    ):
        context(server_cert.cert, other.key)
    with pytest.raises(TLSConfigurationError, match=r"RADSTACK_TLS_CLIENT_CA_FILE .* holds no PEM CA"):
        context(server_cert.cert, server_cert.key, tls_client_ca_file=server_cert.key)
    assert (
        context(server_cert.cert, server_cert.key, tls_client_ca_file=ca.cert).verify_mode
        is ssl.CERT_REQUIRED
    )

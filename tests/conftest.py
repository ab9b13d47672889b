"""Shared fixtures: a real radstack server on a free loopback port, over SQLite or PostgreSQL; an S3 server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn

from radstack.config import Settings
from radstack.platform import Platform
from radstack.web.app import create_app
from radstack.web.connections import uvicorn_connection_options
from radstack.web.transport import uvicorn_tls_options
from tests import authed

if TYPE_CHECKING:
    from tests.s3 import MotoServer

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    """Path of a real binary; in CI a missing one fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (directory / name).exists():
                return str(directory / name)
        if IN_CI:
            pytest.fail(f"required binary {name!r} is not installed")
        pytest.skip(f"binary {name!r} is not installed")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    url: str
    platform: Platform
    #: An admin's API token; :mod:`tests.authed` sends it with every call to this server.
    token: str = ""

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of :attr:`token`, for clients such as dicomweb-client."""
        return {"Authorization": f"Bearer {self.token}"}

    def token_for(self, role: str, **user: Any) -> str:
        """An API token of a new user with ``role`` (and scope fields such as ``referring_name``)."""
        name = f"{role}-{len(self.platform.accounts.users())}"
        self.platform.accounts.create_user(name, role, **user)
        return self.platform.accounts.create_token(name)

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicomweb"

    @property
    def dicom_port(self) -> int:
        """Port of the server's DIMSE listener (AE title ``platform.settings.ae_title``)."""
        return self.platform.settings.dicom_port


def start_server(settings: Settings) -> Generator[RunningServer, None, None]:
    """Run ``create_app(settings)`` under uvicorn in a thread until the generator is closed.

    The app's lifespan also starts the DIMSE listener on ``settings.dicom_port`` (0: none).
    """
    platform = Platform.open(settings)
    app = create_app(settings, platform)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        **uvicorn_tls_options(settings),
        **uvicorn_connection_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("radstack server did not start")
        time.sleep(0.02)
    try:
        scheme = "https" if settings.tls_enabled else "http"
        url = f"{scheme}://127.0.0.1:{settings.http_port}"
        token = platform.accounts.create_token("admin", label="tests")
        authed.register(url, token)
        yield RunningServer(url=url, platform=platform, token=token)
    finally:
        authed.unregister(url)
        server.should_exit = True
        thread.join(timeout=20)
        platform.close()


def server_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings of a test server in ``data_dir`` on free ports; ``overrides`` as keyword settings."""
    # Ingest runs in the request thread here (starting worker processes costs a second per server);
    # the corpus test runs the same pipeline through the process pool. The shipped starter model is
    # installed only where a test asks for it (tests/ai/test_starter.py): it costs a test process's
    # first server about 2 s (loading onnxruntime), later ones a quarter second, and a model in the registry.
    defaults: dict[str, Any] = {
        "http_port": free_port(),
        "dicom_port": free_port(),
        "ingest_processes": 0,
        "starter_model": False,
    }
    return Settings(data_dir=data_dir, **(defaults | overrides))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return server_settings(tmp_path / "data")


@pytest.fixture
def server(settings: Settings) -> Iterator[RunningServer]:
    yield from start_server(settings)


# ----------------------------------------------------------------------------- Redis
@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    binary = require_binary("redis-server")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=20)


# ----------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (Debian's binaries); yields its maintenance DB URL."""
    from tests.postgres import PostgresServer

    server = PostgresServer(
        initdb=require_binary("initdb"), pg_ctl=require_binary("pg_ctl"), port=free_port()
    )
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def pg_database_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL, dropped after the test."""
    from tests.postgres import create_database, drop_database

    url = create_database(postgres_url)
    try:
        yield url
    finally:
        drop_database(postgres_url, url)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty index database: a SQLite file, then a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return str(request.getfixturevalue("pg_database_url"))


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for a fresh index on each backend: SQLite in the data dir, or a new PostgreSQL database."""
    database_url = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_database_url"))
    return Settings(
        data_dir=tmp_path / "data",
        http_port=free_port(),
        dicom_port=free_port(),
        database_url=database_url,
        ingest_processes=0,
    )


@pytest.fixture
def backend_server(backend_settings: Settings) -> Iterator[RunningServer]:
    """A running server over :func:`backend_settings` (one per backend)."""
    yield from start_server(backend_settings)


# ----------------------------------------------------------------------------- S3 (moto server)
@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """A real S3-protocol server (moto in server mode) in its own process for the session."""
    from tests.s3 import MotoServer

    server = MotoServer(port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh bucket on the session's S3 server, reached by boto3's standard environment variables
    (``AWS_ENDPOINT_URL_S3``, dummy credentials) set for this test only."""
    from tests.s3 import create_bucket, use_s3

    return create_bucket(use_s3(monkeypatch, s3_server.endpoint, tmp_path))


@pytest.fixture
def kms_key(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh symmetric key (its alias) on the session's moto server, which speaks KMS as well as S3,
    reached by ``AWS_ENDPOINT_URL_KMS`` and dummy credentials set for this test only."""
    from tests.kms import create_key, use_kms

    return create_key(use_kms(monkeypatch, s3_server.endpoint, tmp_path))

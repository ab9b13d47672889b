"""Operations endpoints and the CLI: what an imaging IT team checks first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from tests import authed
from tests.conftest import RunningServer, free_port


def test_health_ready_and_metrics(server: RunningServer) -> None:
    assert authed.get(f"{server.url}/healthz").text == "ok"
    assert authed.get(f"{server.url}/readyz").status_code == 200
    DICOMwebClient(server.dicomweb, headers=server.auth).store_instances(
        [pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))]
    )
    authed.get(f"{server.dicomweb}/studies")
    metrics = authed.get(f"{server.url}/metrics").text
    assert 'radstack_http_requests_total{method="POST",route="/studies",status="200"} 1.0' in metrics
    assert 'route="/studies",status="200"' in metrics
    # Route templates, never UIDs (which can identify patients), label the series.
    assert "1.3.6.1.4.1.5962" not in metrics


def test_openapi_document_lists_the_native_api(server: RunningServer) -> None:
    spec = authed.get(f"{server.url}/api/v1/openapi.json").json()
    assert "/api/v1/studies/{study}/versions" in spec["paths"]
    assert "/dicomweb/studies" in spec["paths"]


def test_unknown_route_is_a_problem_document(server: RunningServer) -> None:
    response = authed.get(f"{server.url}/dicomweb/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


def test_cli_serve_starts_on_the_embedded_defaults(tmp_path: Path) -> None:
    """`radstack serve` as `make run` starts it: SQLite and local blobs under the data dir."""
    port = free_port()
    env = {**os.environ, "RADSTACK_INGEST_PROCESSES": "0"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radstack.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "var"),
            "--http-port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if authed.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "radstack serve exited early"
            assert time.monotonic() < deadline, "radstack serve did not answer within 30 s"
            time.sleep(0.2)
        assert (tmp_path / "var" / "index.db").exists()
        assert (tmp_path / "var" / "blobs").is_dir()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)

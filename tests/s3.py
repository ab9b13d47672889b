"""A real S3-protocol server for tests: moto in server mode, as a separate process on loopback.

moto keeps buckets in memory and accepts any credentials, so tests give it dummy ones, and only
through the environment of the test that uses it (:func:`use_s3`); nothing here is a
secret. Each test makes its own bucket, so the one server serves the whole session.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3
import pytest

__all__ = ["MotoServer", "create_bucket", "use_s3"]

#: Dummy credentials that moto accepts; real ones never appear in tests.
_DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "radstack-test",
    "AWS_SECRET_ACCESS_KEY": "radstack-test-secret",
    "AWS_REGION": "us-east-1",
}
#: Variables of the developer's own AWS set-up that must not leak into a test.
_CLEARED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)


@dataclass
class MotoServer:
    """``python -m moto.server`` on ``127.0.0.1:port``; :meth:`start` waits until it answers."""

    port: int
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server; closed in stop)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/moto-api/", timeout=2):
                    return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self._log.seek(0)
                    output = self._log.read()[-2000:].decode(errors="replace")
                    self.stop()
                    raise RuntimeError(f"moto server on port {self.port} did not start:\n{output}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str, scratch: Path) -> Any:
    """Point boto3 at ``endpoint`` with dummy credentials, for this test only; returns a client.

    The developer's own AWS set-up is hidden (config files, profile, endpoint, retry settings), so
    only the standard variables set here reach the blob store, the spawned ingest workers and boto3.
    """
    for name in _CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        **_DUMMY_ENV,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_CONFIG_FILE": str(scratch / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3")


def create_bucket(client: Any) -> str:
    """A new, empty bucket with a unique name."""
    name = f"radstack-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name

"""``radstack serve`` and ``radstack worker`` as real child processes (kill -9, many nodes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests import authed
from tests.conftest import free_port

RADSTACK = str(Path(sys.executable).with_name("radstack"))


class ServerProcess:
    """``radstack serve`` on a data dir that outlives it; ``env`` adds ``RADSTACK_*`` settings."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, *, dicom: bool = False) -> None:
        self.data_dir = data_dir
        # No starter model unless a test asks for it (as server_settings does).
        self.env = {"RADSTACK_STARTER_MODEL": "off", **(env or {})}
        self.port = free_port()
        self.dicom_port = free_port() if dicom else 0
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self, *extra: str) -> None:
        if not self.token:
            self.token = admin_token(self.data_dir, self.env)
            authed.register(self.url, self.token)
        argv = [RADSTACK, "serve", "--data-dir", str(self.data_dir), "--http-port", str(self.port)]
        argv += ["--dicom-port", str(self.dicom_port), *extra]
        self.process = subprocess.Popen(
            argv, env={**os.environ, **self.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if authed.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, "radstack serve exited"
            assert time.monotonic() < deadline, "radstack serve did not become ready"
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def admin_token(data_dir: Path, env: dict[str, str]) -> str:
    """A new API token of the data dir's first admin, from ``radstack token create`` (which makes
    the index and the admin when there are none yet)."""
    done = subprocess.run(
        [RADSTACK, "token", "create", "--user", "admin", "--label", "tests", "--data-dir", str(data_dir)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def start_worker(data_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``radstack worker`` consuming the queue named in ``env``."""
    return subprocess.Popen(
        [RADSTACK, "worker", "--data-dir", str(data_dir)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


class Workers:
    """``radstack worker`` processes on a data dir (and the Redis queue ``queue_url``, else the data dir's
    own), with the ``plugins`` module loaded if given; each logs to its own file. ``stop`` ends them all."""

    def __init__(
        self, data_dir: Path, logs: Path, *, queue_url: str | None = None, plugins: str | None = None
    ) -> None:
        self.data_dir, self.logs = data_dir, logs
        self.queue_url, self.plugins = queue_url, plugins
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, **settings: str) -> subprocess.Popen[bytes]:
        """A worker with ``args`` (``--queues …``) and ``settings`` (``RADSTACK_<NAME>`` values)."""
        root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
            "RADSTACK_INGEST_PROCESSES": "0",
            **({"RADSTACK_QUEUE_URL": self.queue_url} if self.queue_url else {}),
            **({"RADSTACK_PLUGINS": self.plugins} if self.plugins else {}),
            **{f"RADSTACK_{name.upper()}": value for name, value in settings.items()},
        }
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"worker-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [RADSTACK, "worker", "--data-dir", str(self.data_dir), *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.processes.append(process)
        return process

    def log(self) -> str:
        """Every worker's log, for an assertion's message."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.send_signal(signal.SIGCONT)  # a paused one must run to handle SIGTERM
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

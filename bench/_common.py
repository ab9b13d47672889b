"""Helpers shared by the benchmarks in ``bench/``: free ports, child servers, timing statistics, tables.

Nothing here knows about DICOM; it is the plumbing that lets a benchmark start a server, wait for it, time
requests against it and stop it again on every exit path (normal end, error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

#: Seconds a child server gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 20.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def raise_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so ``finally`` blocks (which stop servers) run on ``kill``."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def _stop(process: subprocess.Popen[bytes]) -> None:
    # The child runs in its own session (process group), so one killpg reaches its helper processes
    # too (uvicorn, ingest pools) and nothing outlives the benchmark.
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def child_server(
    name: str,
    argv: Sequence[str],
    *,
    ready_url: str,
    log_path: Path,
    cwd: Path,
    timeout_s: float = 90.0,
    env: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until ``ready_url`` answers 200, yield it, and always stop it afterwards.

    Raises
    ------
    RuntimeError
        If the process exits or does not become ready within ``timeout_s``; the message carries the
        tail of its log.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
        try:
            _wait_ready(name, process, ready_url, timeout_s, log_path, headers or {})
            yield process
        finally:
            _stop(process)


def _wait_ready(
    name: str,
    process: subprocess.Popen[bytes],
    url: str,
    timeout_s: float,
    log_path: Path,
    headers: Mapping[str, str],
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with status {process.returncode} before it was ready:\n{log_tail(log_path)}"
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, headers=dict(headers), timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} was not ready at {url} after {timeout_s:.0f} s:\n{log_tail(log_path)}")


@dataclass(frozen=True)
class Timing:
    """Latencies of one timed step, in milliseconds, warm-up excluded."""

    samples_ms: tuple[float, ...]

    @property
    def p50(self) -> float:
        return float(np.percentile(self.samples_ms, 50))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.samples_ms, 95))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0])]
            + [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        )

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def radstack_token(binary: Path, data_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Authorization header of a new admin token for the radstack data dir (made if new)."""
    token = subprocess.run(
        [str(binary), "token", "create", "--user", "admin", "--label", "bench", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=dict(env) if env is not None else None,
    ).stdout.strip()
    return {"Authorization": f"Bearer {token}"}

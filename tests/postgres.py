"""A real PostgreSQL server for tests, started from Debian's binaries (``/usr/lib/postgresql/*/bin``).

PostgreSQL refuses to run as root, and tests here run as root, so ``initdb`` and ``pg_ctl`` run as
the ``postgres`` user (``runuser``) in a temporary directory that user owns. The server listens on
127.0.0.1 on a free port with its socket in that directory, trusts local connections, and trades
durability for speed (``fsync=off``): it holds nothing worth keeping.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

__all__ = ["PostgresServer", "create_database", "drop_database"]


@dataclass
class PostgresServer:
    """One throw-away PostgreSQL cluster; :meth:`start` it, make databases, then :meth:`stop` it."""

    initdb: str
    pg_ctl: str
    port: int
    root: Path | None = None

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root needs runuser to start PostgreSQL as 'postgres'")
            command = [runuser, "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            log = self.root / "server.log" if self.root else None
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr[-2000:]}\n{tail}")

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="radstack-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        self._run(
            self.initdb,
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=200"
        )
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            self._run(self.pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the maintenance database ``postgres``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


def _admin(server_url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(server_url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)


def create_database(server_url: str) -> str:
    """A new, empty database with a unique name on the server of ``server_url``; returns its URL."""
    name = f"radstack_{uuid.uuid4().hex[:16]}"
    with _admin(server_url) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')  # the name is ours: letters, digits, _
    return f"{server_url.rsplit('/', 1)[0]}/{name}"


def drop_database(server_url: str, url: str) -> None:
    """Drop the database of ``url``, closing any connection a test left open."""
    name = url.rsplit("/", 1)[1]
    with _admin(server_url) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

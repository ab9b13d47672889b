"""The SQL index: engine creation (SQLite in WAL mode, or PostgreSQL) and Alembic migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection

__all__ = ["create_index_engine", "migrate"]

_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def create_index_engine(url: str, key: bytes | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys, and with ``key`` it is
    a SQLCipher database encrypted under that raw 256-bit key (see :mod:`radstack.security.index_key`)."""
    if url.startswith("sqlite"):
        options: dict[str, Any] = {}
        if key is not None:
            import sqlcipher3

            options["module"] = sqlcipher3
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=16,
            **options,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: object, _record: object) -> None:
            cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
            if key is not None:
                cursor.execute(f"PRAGMA key = \"x'{key.hex()}'\"")  # first, before any page is read
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


#: PostgreSQL advisory lock key held while migrating, so nodes starting together migrate one at a time.
_MIGRATION_LOCK = 0x7261647374616B  # "radstak"


def migrate(engine: Engine) -> None:
    """Bring the index schema to the newest Alembic revision.

    On PostgreSQL the upgrade holds a transaction-level advisory lock: several ``radstack serve`` and
    ``radstack worker`` processes starting at once on a new database migrate one after the other
    (the later ones find the schema current). SQLite's own write lock serialises them there.
    """
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(alembic_config(connection), "head")

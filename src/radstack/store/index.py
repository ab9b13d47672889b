"""The SQL index: engine creation (SQLite in WAL mode, or PostgreSQL), Alembic migrations, and the one
way every package writes to it (:func:`write_transaction`)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

__all__ = ["create_index_engine", "migrate", "write_transaction"]

T = TypeVar("T")
#: Attempts of a write transaction before a busy database or a unique-key race is the caller's.
WRITE_ATTEMPTS = 5
_sqlite_writers: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_writers_guard = threading.Lock()

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


def write_transaction(engine: Engine, work: Callable[[Session], T], *, expire_on_commit: bool = True) -> T:
    """Run ``work`` in one write transaction on ``engine``; again after a busy database or a unique-key
    race (another writer inserted the same key first: the retry reads it).

    On SQLite, which has one writer at a time anyway, this process's writers (the store, AI results,
    labeling, every package) queue on one lock per engine, which spares them the busy handler and
    SQLite's lock-upgrade deadlocks; other processes wait in the busy handler.

    Raises
    ------
    sqlalchemy.exc.IntegrityError
        When the last attempt still breaks a unique key.
    sqlalchemy.exc.OperationalError
        When the last attempt still finds the database busy or unreachable.
    """  # noqa: DOC501 (its AssertionError marks the end of the retry loop as unreachable)
    lock = _sqlite_writer(engine)
    for attempt in range(WRITE_ATTEMPTS):
        try:
            if lock is not None:
                with lock, Session(engine, expire_on_commit=expire_on_commit) as session, session.begin():
                    return work(session)
            with Session(engine, expire_on_commit=expire_on_commit) as session, session.begin():
                return work(session)
        except (IntegrityError, OperationalError):
            if attempt == WRITE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _sqlite_writer(engine: Engine) -> threading.RLock | None:
    """The lock this process's writers of a SQLite ``engine`` share (re-entrant: a write may call one)."""
    if engine.dialect.name != "sqlite":
        return None
    with _writers_guard:
        lock = _sqlite_writers.get(engine)
        if lock is None:
            lock = _sqlite_writers[engine] = threading.RLock()
        return lock

"""The tamper-evident audit trail: an append-only, hash-chained log in the index database.

Every record carries the hash of the one before it (``prev_hash``) and its own ``hash``, a SHA-256
(or, with a key, an HMAC-SHA256) over a canonical encoding of all its fields, ``seq`` and
``prev_hash`` included. A single-row chain head (``audit_head``) holds the last sequence number and
hash and is updated in the same transaction as each append, which does two things:

* it serialises appends: each append starts with a conditional ``UPDATE`` of the head row, which
  takes PostgreSQL's row lock (other nodes wait until the append commits, then see its head) and
  SQLite's write lock (the ``BEGIN IMMEDIATE`` equivalent; other processes wait on the busy
  timeout). The sequence number is the primary key, so even a bug there cannot fork the chain;
* it lets :func:`verify` notice a truncated tail, which a chain alone cannot show.

With a key (``<data dir>/audit.key``, 0600, see :func:`load_audit_key`), someone who can write to
the database but cannot read the key cannot forge a record or rewrite the chain behind an edit.
Records hold only what callers pass (actor ids, UIDs); nothing here logs their contents.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, Engine, Integer, Row, String, Text, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Mapped, mapped_column

from radstack.errors import RadstackError
from radstack.store.models import Base

__all__ = [
    "GENESIS",
    "AuditActionValues",
    "AuditHeadRow",
    "AuditLog",
    "AuditOutcomeValues",
    "AuditRecord",
    "AuditRow",
    "ChainFault",
    "ChainProblem",
    "VerifyReport",
    "load_audit_key",
    "record_hash",
    "verify",
]

#: The ``prev_hash`` of the first record (there is none before it); also the head of an empty log.
GENESIS = "0" * 64

#: Name of the HMAC key file in the data directory.
KEY_FILE = "audit.key"

_HEAD_ID = 1


class AuditActionValues(StrEnum):
    """What was done; :mod:`radstack.security.atna` maps each to a DICOM audit event (PS3.15 §A.5)."""

    AUTHENTICATE = "authenticate"
    QUERY = "query"
    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    EXPORT = "export"
    DEPLOY = "deploy"
    ADMIN = "admin"


class AuditOutcomeValues(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class AuditRow(Base):
    """One audit record. Never updated or deleted by radstack."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    #: Canonical JSON of what was acted on (study/series/SOP UIDs, a job id, …), hashed as stored.
    resource: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The chain head: one row (id 1) with the last sequence number and hash, made by migration 0005."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: datetime
    actor: str
    role: str
    source: str
    action: AuditActionValues
    resource: dict[str, Any]
    outcome: AuditOutcomeValues
    reason: str | None
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: AuditRow | Row[Any]) -> AuditRecord:
        return cls(
            seq=row.seq,
            at=_utc(row.at),
            actor=row.actor,
            role=row.role,
            source=row.source,
            action=AuditActionValues(row.action),
            resource=json.loads(row.resource),
            outcome=AuditOutcomeValues(row.outcome),
            reason=row.reason,
            prev_hash=row.prev_hash,
            hash=row.hash,
        )


class AuditChainBroken(RadstackError):
    """The chain head row is gone: the log cannot be appended to until someone looks at it."""


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(fields: Mapping[str, Any], key: bytes | None = None) -> str:
    """The hex SHA-256 (HMAC-SHA256 with ``key``) of one record's canonical encoding.

    Parameters
    ----------
    fields
        The record's columns as stored (``seq``, ``at``, ``actor``, ``role``, ``source``, ``action``,
        ``resource`` as its stored JSON text, ``outcome``, ``reason``, ``prev_hash``); ``hash`` is
        ignored.
    key
        The audit key, or None for a plain SHA-256 chain.

    Returns
    -------
    str
        64 lower-case hex digits.
    """
    canonical = {
        "seq": int(fields["seq"]),
        "at": _utc(fields["at"]).isoformat(timespec="microseconds"),
        "actor": fields["actor"],
        "role": fields["role"],
        "source": fields["source"],
        "action": str(fields["action"]),
        "resource": fields["resource"],
        "outcome": str(fields["outcome"]),
        "reason": fields["reason"],
        "prev_hash": fields["prev_hash"],
    }
    message = _canonical_json(canonical).encode("utf-8")
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def load_audit_key(data_dir: Path, *, create: bool = True) -> bytes | None:
    """The audit HMAC key from ``<data_dir>/audit.key``, made (32 random bytes, 0600) if missing.

    Parameters
    ----------
    data_dir
        The data directory.
    create
        Make the key when there is none; otherwise return None (a plain SHA-256 chain).

    Raises
    ------
    RadstackError
        The key file can be read by group or others, or is not 32 bytes.
    """
    path = data_dir / KEY_FILE
    if create and not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
                handle.flush()
                os.fsync(handle.fileno())
    if not path.exists():
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise RadstackError(f"audit key {path} has mode {mode:04o}; it must be 0600 (chmod 600 {path})")
    key = path.read_bytes()
    if len(key) != 32:
        raise RadstackError(f"audit key {path} holds {len(key)} bytes; a key is 32 random bytes")
    return key


class AuditLog:
    """Appends to and reads the audit trail; safe to share between threads, processes and nodes.

    Parameters
    ----------
    engine
        The index database (migrated to revision 0005 or later).
    key
        HMAC key (see :func:`load_audit_key`), or None for a plain SHA-256 chain. Every writer and
        the verifier must use the same key.
    """

    def __init__(self, engine: Engine, key: bytes | None = None) -> None:
        self.engine = engine
        self.key = key
        self._sqlite = engine.dialect.name == "sqlite"
        # SQLite has one writer at a time anyway; queueing threads here spares them the busy handler.
        self._lock = threading.Lock()

    def append(
        self,
        *,
        actor: str,
        role: str,
        source: str,
        action: AuditActionValues,
        resource: Mapping[str, Any],
        outcome: AuditOutcomeValues = AuditOutcomeValues.SUCCESS,
        reason: str | None = None,
    ) -> AuditRecord:
        """Record one action; returns the record with its sequence number and hash.

        Parameters
        ----------
        actor, role, source
            Who (user or service id), in which role, from which address.
        action
            What kind of action.
        resource
            What it was done to: JSON-serialisable, e.g. ``{"study": "1.2.3", "series": [...]}``.
        outcome, reason
            Success or failure, and why it failed.
        """
        resource_json = _canonical_json(dict(resource))
        for attempt in range(5):
            try:
                if self._sqlite:
                    with self._lock, self.engine.begin() as connection:
                        return self._append(
                            connection, actor, role, source, action, resource_json, outcome, reason
                        )
                with self.engine.begin() as connection:
                    return self._append(
                        connection, actor, role, source, action, resource_json, outcome, reason
                    )
            except (IntegrityError, OperationalError):
                # A busy SQLite past its timeout, a dropped connection: nothing was committed.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _append(
        self,
        connection: Connection,
        actor: str,
        role: str,
        source: str,
        action: AuditActionValues,
        resource_json: str,
        outcome: AuditOutcomeValues,
        reason: str | None,
    ) -> AuditRecord:
        head = AuditHeadRow.__table__.c
        # The write comes first so the transaction holds the lock before it reads the head:
        # PostgreSQL's row lock (a second writer blocks here, then re-reads the committed head)
        # and SQLite's write lock (a deferred transaction that read first could not upgrade).
        bumped = connection.execute(
            update(AuditHeadRow).where(head.id == _HEAD_ID).values(seq=head.seq + 1)
        ).rowcount
        if bumped != 1:
            raise AuditChainBroken("the audit chain head row is missing; run 'radstack audit verify'")
        seq, prev_hash = connection.execute(select(head.seq, head.hash).where(head.id == _HEAD_ID)).one()
        fields: dict[str, Any] = {
            "seq": seq,
            "at": datetime.now(UTC),
            "actor": actor,
            "role": role,
            "source": source,
            "action": AuditActionValues(action).value,
            "resource": resource_json,
            "outcome": AuditOutcomeValues(outcome).value,
            "reason": reason,
            "prev_hash": prev_hash,
        }
        fields["hash"] = record_hash(fields, self.key)
        connection.execute(insert(AuditRow).values(**fields))
        connection.execute(update(AuditHeadRow).where(head.id == _HEAD_ID).values(hash=fields["hash"]))
        return AuditRecord(
            seq=seq,
            at=fields["at"],
            actor=actor,
            role=role,
            source=source,
            action=AuditActionValues(action),
            resource=json.loads(resource_json),
            outcome=AuditOutcomeValues(outcome),
            reason=reason,
            prev_hash=prev_hash,
            hash=fields["hash"],
        )

    def records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Up to ``limit`` records with a sequence number above ``after``, oldest first."""
        table = AuditRow.__table__
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(table).where(table.c.seq > after).order_by(table.c.seq).limit(limit)
            ).all()
        return [AuditRecord.from_row(row) for row in rows]


class ChainFault(StrEnum):
    EDITED = "edited"  # a record's hash does not match its fields
    MISSING = "missing"  # sequence numbers skip: records were deleted
    RELINKED = "relinked"  # prev_hash is not the previous record's hash: inserted or reordered
    TRUNCATED = "truncated"  # the chain ends before the head's last sequence number
    BEYOND_HEAD = "beyond-head"  # records after the head's last sequence number
    HEAD = "head"  # the head row is missing or its hash is not the last record's


@dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int
    fault: ChainFault
    message: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :func:`verify` found: ``ok`` when the chain is intact."""

    records: int
    head_seq: int | None
    problems: tuple[ChainProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        return self.problems[0].seq if self.problems else None

    def summary(self) -> str:
        if self.ok:
            return f"audit trail intact: {self.records} records, head at sequence {self.head_seq}"
        first = self.problems[0]
        more = f" ({len(self.problems) - 1} more problems after it)" if len(self.problems) > 1 else ""
        return f"audit trail TAMPERED at sequence {first.seq}: {first.message}{more}"


def _rows(connection: Connection, batch: int = 2000) -> Iterator[Row[Any]]:
    table = AuditRow.__table__
    after = -(2**62)
    while True:
        rows = connection.execute(
            select(table).where(table.c.seq > after).order_by(table.c.seq).limit(batch)
        ).all()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].seq


def verify(engine: Engine, key: bytes | None = None) -> VerifyReport:
    """Walk the audit chain from the first record and check every link, hash and the head.

    Parameters
    ----------
    engine
        The index database.
    key
        The HMAC key the log was written with, or None for a plain SHA-256 chain.

    Returns
    -------
    VerifyReport
        Every problem found, in sequence order; after one, checking carries on from the record
        that follows, so an edit and a deletion further on are both reported.
    """
    problems: list[ChainProblem] = []
    count = 0
    expected_seq, prev_hash = 1, GENESIS
    # One read transaction: a consistent snapshot on PostgreSQL and in SQLite's WAL mode, so
    # appends committing meanwhile are either wholly seen (head included) or not at all.
    with engine.connect() as connection, connection.begin():
        head_table = AuditHeadRow.__table__
        head = connection.execute(select(head_table).where(head_table.c.id == _HEAD_ID)).one_or_none()
        for row in _rows(connection):
            count += 1
            seq = row.seq
            if seq != expected_seq:
                if seq > expected_seq:
                    gap = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}–{seq - 1}"
                    problems.append(
                        ChainProblem(expected_seq, ChainFault.MISSING, f"record(s) {gap} deleted")
                    )
                else:  # only a negative or zero sequence number can get here
                    problems.append(
                        ChainProblem(seq, ChainFault.RELINKED, f"unexpected sequence number {seq}")
                    )
            elif row.prev_hash != prev_hash:
                problems.append(
                    ChainProblem(
                        seq,
                        ChainFault.RELINKED,
                        f"prev_hash does not match record {seq - 1}'s hash "
                        "(a record was inserted, replaced or reordered)",
                    )
                )
            if not hmac.compare_digest(record_hash(dict(row._mapping), key), row.hash):
                problems.append(
                    ChainProblem(seq, ChainFault.EDITED, "hash does not match the record's fields (edited)")
                )
            expected_seq, prev_hash = seq + 1, row.hash
    last_seq = expected_seq - 1
    if head is None:
        problems.append(ChainProblem(last_seq + 1, ChainFault.HEAD, "the chain head row is missing"))
        return VerifyReport(records=count, head_seq=None, problems=tuple(problems))
    if head.seq > last_seq:
        problems.append(
            ChainProblem(
                last_seq + 1,
                ChainFault.TRUNCATED,
                f"the chain ends at sequence {last_seq} but the head records {head.seq}: "
                "records at the end were deleted",
            )
        )
    elif head.seq < last_seq:
        problems.append(
            ChainProblem(
                head.seq + 1,
                ChainFault.BEYOND_HEAD,
                f"records after the head's last sequence {head.seq} (added outside the audit log)",
            )
        )
    elif head.hash != prev_hash:
        problems.append(
            ChainProblem(last_seq, ChainFault.HEAD, "the head's hash is not the last record's hash")
        )
    problems.sort(key=lambda problem: problem.seq)
    return VerifyReport(records=count, head_seq=head.seq, problems=tuple(problems))

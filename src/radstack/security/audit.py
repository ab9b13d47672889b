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
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Row, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from radstack.errors import RadstackError
from radstack.security.keyfile import load_secret
from radstack.security.models import AuditHeadRow, AuditRow

if TYPE_CHECKING:
    from radstack.security.policy import Principal

__all__ = [
    "GENESIS",
    "AuditActionValues",
    "AuditEntry",
    "AuditLog",
    "AuditOutcomeValues",
    "AuditRecord",
    "AuditWriter",
    "ChainFault",
    "ChainProblem",
    "VerifyReport",
    "audit_entry",
    "audited",
    "load_audit_key",
    "record_hash",
    "verify",
]

#: The ``prev_hash`` of the first record (there is none before it); also the head of an empty log.
GENESIS = "0" * 64

#: Name of the HMAC key file in the data directory.
KEY_FILE = "audit.key"

_HEAD_ID = 1

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One action to record (the record gets its sequence number, time and hashes when appended)."""

    actor: str
    role: str
    source: str
    action: AuditActionValues
    resource: dict[str, Any]
    outcome: AuditOutcomeValues = AuditOutcomeValues.SUCCESS
    reason: str | None = None


def audit_entry(
    by: Principal, action: AuditActionValues, resource: Mapping[str, Any], error: RadstackError | None = None
) -> AuditEntry:
    """The entry of ``by`` doing ``action`` to ``resource``: a success, or a failure with ``error``'s message."""
    if error is None:
        return AuditEntry(by.subject, by.role, by.source, action, dict(resource))
    return AuditEntry(
        by.subject, by.role, by.source, action, dict(resource), AuditOutcomeValues.FAILURE, error.message
    )


@contextmanager
def audited(
    submit: Callable[[AuditEntry], None], by: Principal, action: AuditActionValues, resource: dict[str, Any]
) -> Iterator[None]:
    """Record what the block does as ``by``: its success, or its refusal with the reason.

    The block may add to ``resource`` (the version it made, the job it queued) before it ends; the
    entry is made from ``resource`` as it is then.

    Raises
    ------
    RadstackError
        Whatever the block raised, re-raised once its refusal is recorded.
    """
    try:
        yield
    except RadstackError as error:
        submit(audit_entry(by, action, resource, error))
        raise
    submit(audit_entry(by, action, resource))


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
    return load_secret(data_dir / KEY_FILE, "audit key", create=create)


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

        Raises
        ------
        AuditChainBroken
            The chain's head row is missing (run ``radstack audit verify``).
        sqlalchemy.exc.OperationalError
            The database stayed busy or unreachable through five attempts; nothing was recorded.
        sqlalchemy.exc.IntegrityError
            Five attempts in a row collided with other writers; nothing was recorded.
        """
        entry = AuditEntry(actor, role, source, AuditActionValues(action), dict(resource), outcome, reason)
        return self.append_many([entry])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Record several actions, chained in order, in one transaction.

        Raises
        ------
        AuditChainBroken
            The chain's head row is missing (run ``radstack audit verify``).
        sqlalchemy.exc.OperationalError
            The database stayed busy or unreachable through five attempts; nothing was recorded.
        sqlalchemy.exc.IntegrityError
            Five attempts in a row collided with other writers; nothing was recorded.
        """  # noqa: DOC501 (its AssertionError marks the end of the retry loop as unreachable)
        if not entries:
            return []
        for attempt in range(5):
            try:
                if self._sqlite:
                    with self._lock, self.engine.begin() as connection:
                        return self._append(connection, entries)
                with self.engine.begin() as connection:
                    return self._append(connection, entries)
            except (IntegrityError, OperationalError):
                # A busy SQLite past its timeout, a dropped connection: nothing was committed.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _append(self, connection: Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        head = AuditHeadRow.__table__.c
        # The write comes first so the transaction holds the lock before it reads the head:
        # PostgreSQL's row lock (a second writer blocks here, then re-reads the committed head)
        # and SQLite's write lock (a deferred transaction that read first could not upgrade).
        bumped = connection.execute(
            update(AuditHeadRow).where(head.id == _HEAD_ID).values(seq=head.seq + len(entries))
        ).rowcount
        if bumped != 1:
            raise AuditChainBroken("the audit chain head row is missing; run 'radstack audit verify'")
        last_seq, prev_hash = connection.execute(select(head.seq, head.hash).where(head.id == _HEAD_ID)).one()
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        for seq, entry in enumerate(entries, start=last_seq - len(entries) + 1):
            fields: dict[str, Any] = {
                "seq": seq,
                "at": now,
                "actor": entry.actor,
                "role": entry.role,
                "source": entry.source,
                "action": AuditActionValues(entry.action).value,
                "resource": _canonical_json(entry.resource),
                "outcome": AuditOutcomeValues(entry.outcome).value,
                "reason": entry.reason,
                "prev_hash": prev_hash,
            }
            fields["hash"] = prev_hash = record_hash(fields, self.key)
            rows.append(fields)
        connection.execute(insert(AuditRow), rows)
        connection.execute(update(AuditHeadRow).where(head.id == _HEAD_ID).values(hash=prev_hash))
        return [
            AuditRecord(
                seq=row["seq"],
                at=now,
                actor=row["actor"],
                role=row["role"],
                source=row["source"],
                action=AuditActionValues(row["action"]),
                resource=json.loads(row["resource"]),
                outcome=AuditOutcomeValues(row["outcome"]),
                reason=row["reason"],
                prev_hash=row["prev_hash"],
                hash=row["hash"],
            )
            for row in rows
        ]

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


class AuditWriter:
    """Appends records in the background, many per transaction, so a request never waits on the chain.

    :meth:`submit` only queues; a thread appends what has queued (up to ``batch`` records per
    transaction) as soon as it can. :meth:`close` writes what is left. Records queued by a
    process that is killed before they are written are lost, which is why changes (ingest,
    delete, admin actions) are also recorded in the index's own history (study versions, jobs).
    """

    def __init__(
        self,
        log: AuditLog,
        *,
        batch: int = 500,
        linger: float = 0.25,
        forward: Callable[[list[AuditEntry], datetime], None] | None = None,
    ) -> None:
        self.log = log
        self.batch = batch
        #: Seconds to gather more records after the first before writing: one transaction (and its
        #: fsync) per burst instead of per request, off the CPU that answers requests.
        self.linger = linger
        #: Also hands every appended batch on (DICOM audit messages to syslog, PS3.15 A.5).
        self.forward = forward
        self._queue: queue.SimpleQueue[AuditEntry | threading.Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def submit(self, entry: AuditEntry) -> None:
        self._queue.put(entry)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted before this call is written."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            entries: list[AuditEntry] = []
            waiting: list[threading.Event] = []
            item = self._queue.get()
            deadline = time.monotonic() + self.linger
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    entries.append(item)
                if stop or waiting or len(entries) >= self.batch:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            try:
                records = self.log.append_many(entries)
                if self.forward is not None and records:
                    self.forward(entries, records[0].at)
            except Exception:
                log.exception("could not append %d audit records", len(entries))
            for event in waiting:
                event.set()

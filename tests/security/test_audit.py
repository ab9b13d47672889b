"""The audit trail (security/audit.py): concurrent appends, and verify catching edits, deletions,
insertions and a truncated tail on SQLite and PostgreSQL; the ``radstack audit verify`` command."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from radstack.config import Settings
from radstack.errors import RadstackError
from radstack.security.audit import (
    GENESIS,
    AuditActionValues,
    AuditLog,
    AuditOutcomeValues,
    ChainFault,
    load_audit_key,
    record_hash,
    verify,
)
from radstack.security.index_key import open_index_engine
from radstack.store.index import create_index_engine, migrate


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_index_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _append(log: AuditLog, n: int) -> None:
    log.append(
        actor=f"user-{n % 7}",
        role="radiologist",
        source="10.0.0.8",
        action=AuditActionValues.READ,
        resource={"study": f"1.2.826.0.1.{n}", "series": ["1.2.3.4"]},
        outcome=AuditOutcomeValues.SUCCESS if n % 5 else AuditOutcomeValues.FAILURE,
        reason=None if n % 5 else "not allowed",
    )


def _fill(engine: Engine, count: int = 20, key: bytes | None = None) -> AuditLog:
    log = AuditLog(engine, key)
    for n in range(count):
        _append(log, n)
    return log


def test_concurrent_appends_from_two_nodes_make_one_gap_free_chain(database_url: str) -> None:
    """Eight threads over two engines (two 'nodes', each with its own pool and lock) never fork."""
    engines = [create_index_engine(database_url) for _ in range(2)]
    migrate(engines[0])
    logs = [AuditLog(engine) for engine in engines]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda n: _append(logs[n % 2], n), range(200)))
        report = verify(engines[0])
        records = logs[1].records(limit=1000)
    finally:
        for engine in engines:
            engine.dispose()
    assert report.ok, report.summary()
    assert report.records == 200 and report.head_seq == 200
    assert [record.seq for record in records] == list(range(1, 201))
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in pairwise(records))
    assert sorted(record.resource["study"] for record in records) == sorted(
        f"1.2.826.0.1.{n}" for n in range(200)
    )


def test_record_fields_round_trip(engine: Engine) -> None:
    log = AuditLog(engine)
    made = log.append(
        actor="svc:router",
        role="service",
        source="::1",
        action=AuditActionValues.EXPORT,
        resource={"study": "1.2.3", "peer": "PACS"},
        outcome=AuditOutcomeValues.FAILURE,
        reason="association rejected",
    )
    (read,) = log.records()
    assert read == made
    assert read.at.utcoffset() is not None and read.at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert verify(engine).summary() == "audit trail intact: 1 records, head at sequence 1"


def test_empty_log_verifies(engine: Engine) -> None:
    report = verify(engine)
    assert report.ok and report.records == 0 and report.head_seq == 0


def test_one_edited_byte_is_caught_at_its_sequence(engine: Engine) -> None:
    _fill(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET actor = 'user-9' WHERE seq = 7"))
    report = verify(engine)
    assert not report.ok
    assert report.first_bad_seq == 7
    assert report.problems[0].fault is ChainFault.EDITED
    assert "sequence 7" in report.summary() and "edited" in report.summary()


def test_an_edited_resource_uid_is_caught(engine: Engine) -> None:
    _fill(engine)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_log SET resource = REPLACE(resource, '1.2.826.0.1.11', '1.2.826.0.1.12')")
        )
    report = verify(engine)
    assert [(p.seq, p.fault) for p in report.problems] == [(12, ChainFault.EDITED)]


def test_a_deleted_record_is_caught(engine: Engine) -> None:
    _fill(engine)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_log WHERE seq = 5"))
    report = verify(engine)
    assert report.first_bad_seq == 5
    assert report.problems[0].fault is ChainFault.MISSING
    assert "record(s) 5 deleted" in report.summary()


def test_a_truncated_tail_is_caught(engine: Engine) -> None:
    """Deleting the newest records leaves a valid chain: only the head row shows what went."""
    _fill(engine)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_log WHERE seq > 17"))
    report = verify(engine)
    assert [(p.seq, p.fault) for p in report.problems] == [(18, ChainFault.TRUNCATED)]
    assert "ends at sequence 17 but the head records 20" in report.summary()


def _forge(engine: Engine, seq: int, prev_hash: str) -> None:
    """What an attacker with database access but without the key can do: a plain SHA-256 record."""
    fields = {
        "seq": seq,
        "at": "2026-01-01 00:00:00",
        "actor": "attacker",
        "role": "admin",
        "source": "10.6.6.6",
        "action": "read",
        "resource": "{}",
        "outcome": "success",
        "reason": None,
        "prev_hash": prev_hash,
    }
    hashed = record_hash({**fields, "at": datetime(2026, 1, 1)})
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO audit_log (seq, at, actor, role, source, action, resource, outcome, reason,"
                " prev_hash, hash) VALUES (:seq, :at, :actor, :role, :source, :action, :resource,"
                " :outcome, :reason, :prev_hash, :hash)"
            ),
            {**fields, "hash": hashed},
        )


def test_a_record_inserted_mid_chain_is_caught(engine: Engine) -> None:
    """Inserting at 10 means renumbering 10… upwards; the old record 10 no longer links or hashes."""
    log = _fill(engine)
    prev = log.records(after=8, limit=1)[0].hash
    with engine.begin() as connection:
        for seq in range(20, 9, -1):  # one at a time, from the top, so the primary key never clashes
            connection.execute(text("UPDATE audit_log SET seq = seq + 1 WHERE seq = :s"), {"s": seq})
        connection.execute(text("UPDATE audit_head SET seq = 21"))
    _forge(engine, 10, prev)
    report = verify(engine)
    assert report.first_bad_seq == 11
    assert {p.fault for p in report.problems if p.seq == 11} == {ChainFault.RELINKED, ChainFault.EDITED}


def test_a_forged_record_is_caught_by_the_key(engine: Engine, tmp_path: Path) -> None:
    """Appended at the end with a correct link and even a matching head, only the key shows it."""
    key = load_audit_key(tmp_path / "data")
    log = _fill(engine, key=key)
    last = log.records(after=19)[0]
    _forge(engine, 21, last.hash)
    with engine.begin() as connection:
        forged = connection.execute(text("SELECT hash FROM audit_log WHERE seq = 21")).scalar_one()
        connection.execute(text("UPDATE audit_head SET seq = 21, hash = :h"), {"h": forged})
    assert all(p.seq != 21 for p in verify(engine).problems)  # a perfect forgery without the key
    report = verify(engine, key)
    assert [(p.seq, p.fault) for p in report.problems] == [(21, ChainFault.EDITED)]


def test_a_keyed_chain_does_not_verify_without_its_key(engine: Engine) -> None:
    _fill(engine, count=3, key=b"k" * 32)
    assert verify(engine, b"k" * 32).ok
    assert verify(engine).first_bad_seq == 1
    assert verify(engine, b"x" * 32).first_bad_seq == 1


def test_audit_key_file_is_private_and_stable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert load_audit_key(data, create=False) is None
    key = load_audit_key(data)
    assert key is not None and len(key) == 32
    assert stat.S_IMODE((data / "audit.key").stat().st_mode) == 0o600
    assert load_audit_key(data) == key
    os.chmod(data / "audit.key", 0o644)
    with pytest.raises(RadstackError, match="chmod 600"):
        load_audit_key(data)


def test_hash_is_sha256_of_sorted_key_json() -> None:
    """The canonical encoding is documented (docs/security.md) so others can verify the chain."""
    fields = {
        "seq": 1,
        "at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "actor": "a",
        "role": "r",
        "source": "s",
        "action": "read",
        "resource": '{"study":"1.2"}',
        "outcome": "success",
        "reason": None,
        "prev_hash": GENESIS,
    }
    encoded = (
        '{"action":"read","actor":"a","at":"2026-01-02T03:04:05.000006+00:00","outcome":"success",'
        f'"prev_hash":"{GENESIS}","reason":null,"resource":"{{\\"study\\":\\"1.2\\"}}","role":"r",'
        '"seq":1,"source":"s"}'
    )
    assert record_hash(fields) == hashlib.sha256(encoded.encode()).hexdigest()


def test_cli_audit_verify_exit_codes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    engine = open_index_engine(Settings(data_dir=data))  # encrypted, as the server keeps it
    migrate(engine)
    _fill(engine, count=5, key=load_audit_key(data))
    radstack = str(Path(sys.executable).with_name("radstack"))

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [radstack, "audit", "verify", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    intact = run()
    assert intact.returncode == 0, intact.stderr
    assert "audit trail intact: 5 records" in intact.stdout
    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET source = '10.0.0.9' WHERE seq = 3"))
    engine.dispose()
    tampered = run()
    assert tampered.returncode == 1
    assert "TAMPERED at sequence 3" in tampered.stdout

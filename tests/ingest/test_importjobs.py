"""Import jobs through the API and the CLI: recursive scan, progress, manifests, idempotence, and a
``kill -9`` of the server in the middle of a 1,000-file import."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests import authed
from tests.conftest import RunningServer
from tests.helpers import part10, synthetic_ct
from tests.processes import ServerProcess

TERMINAL = {"SUCCEEDED", "DONE_WITH_ERRORS", "FAILED", "DEAD"}


def start_import(server_url: str, source: Path | str, token: str | None = None) -> httpx.Response:
    body = {"source": str(source), **({"client_token": token} if token else {})}
    return authed.post(f"{server_url}/api/v1/import-jobs", json=body, timeout=30)


def wait_done(server_url: str, job_id: str, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, object] = authed.get(f"{server_url}/api/v1/import-jobs/{job_id}", timeout=30).json()
        if job["state"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"import job {job_id} did not finish: {job}"
        time.sleep(0.1)


def manifest(server_url: str, job_id: str, name: str) -> list[dict[str, object]]:
    response = authed.get(f"{server_url}/api/v1/import-jobs/{job_id}/{name}.ndjson", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A small archive: real files in nested folders, a synthetic series, a garbage file, a DICOMDIR."""
    root = tmp_path / "archive"
    (root / "ct" / "day1").mkdir(parents=True)
    (root / "mr").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm") or "", root / "ct" / "day1" / "IM0001")
    shutil.copy(get_testdata_file("MR_small.dcm") or "", root / "mr" / "IM0001.dcm")
    for n in range(3):
        (root / "ct" / f"synthetic-{n}.dcm").write_bytes(
            part10(synthetic_ct(seed=n, study="1.2.826.0.1.3680043.8.498.7"))
        )
    (root / "notes.txt").write_text("not DICOM at all")
    shutil.copy(get_testdata_file("DICOMDIR") or "", root / "DICOMDIR")
    return root


def test_import_job_stores_a_tree_reports_progress_and_manifests(
    server: RunningServer, archive: Path
) -> None:
    response = start_import(server.url, archive, token="nightly-2024-01-02")
    assert response.status_code == 202, response.text
    job = wait_done(server.url, response.json()["id"])
    # Two of its files were refused: the job ran to its end, but it did not simply succeed.
    assert job["state"] == "DONE_WITH_ERRORS", job
    assert job["last_error"] == (
        f"2 of 7 files were refused (reasons: /api/v1/import-jobs/{job['id']}/failure.ndjson)"
    )
    progress = job["progress"]
    assert isinstance(progress, dict)
    sizes = sum(p.stat().st_size for p in archive.rglob("*") if p.is_file())
    assert progress["files_total"] == progress["files_done"] == 7
    assert progress["bytes_total"] == progress["bytes_done"] == sizes
    assert (progress["stored"], progress["duplicate"], progress["refused"]) == (5, 0, 2)

    success = manifest(server.url, str(job["id"]), "success")
    assert {line["path"] for line in success} == {
        "ct/day1/IM0001",
        "mr/IM0001.dcm",
        "ct/synthetic-0.dcm",
        "ct/synthetic-1.dcm",
        "ct/synthetic-2.dcm",
    }
    ct = pydicom.dcmread(archive / "ct" / "day1" / "IM0001")
    assert {"path": "ct/day1/IM0001", "sop_uid": ct.SOPInstanceUID, "outcome": "stored"}.items() <= next(
        line for line in success if line["path"] == "ct/day1/IM0001"
    ).items()
    failures = {line["path"]: line for line in manifest(server.url, str(job["id"]), "failure")}
    assert set(failures) == {"notes.txt", "DICOMDIR"}
    assert "not a DICOM Part-10 file" in str(failures["notes.txt"]["reason"])
    assert "force=True" not in str(failures["notes.txt"]["reason"]), "no advice about pydicom's options"
    assert failures["notes.txt"]["status"] == 0xC000
    assert "DICOMDIR" in str(failures["DICOMDIR"]["reason"])

    studies = authed.get(f"{server.dicomweb}/studies").json()
    assert len(studies) == 3

    # A retry of the same request (same client token) gets the same job back, not a new import.
    again = start_import(server.url, archive, token="nightly-2024-01-02")
    assert again.status_code == 200 and again.json()["id"] == job["id"]

    # Importing the same folder again stores nothing twice.
    second = wait_done(server.url, start_import(server.url, archive).json()["id"])
    assert second["progress"]["duplicate"] == 5 and second["progress"]["stored"] == 0  # type: ignore[index]
    assert (
        sum(
            len(authed.get(f"{server.dicomweb}/studies/{s['0020000D']['Value'][0]}/instances").json())
            for s in studies
        )
        == 5
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [("relative/path", "must be an absolute directory path"), ("/no/such/archive", "is not a directory")],
)
def test_a_bad_source_is_a_problem_naming_it(server: RunningServer, source: str, reason: str) -> None:
    response = start_import(server.url, source)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert source in response.json()["detail"] and reason in response.json()["detail"]


def run_cli_import(
    source: Path | str, data: Path, *, stderr: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("radstack")), "import", str(source), "--data-dir", str(data)],
        capture_output=stderr is None,
        stdout=subprocess.PIPE if stderr is not None else None,
        stderr=stderr,
        text=True,
        env={**os.environ, "RADSTACK_INGEST_PROCESSES": "1"},
        timeout=120,
    )


def test_cli_import_lists_the_refused_files_and_exits_1(tmp_path: Path, archive: Path) -> None:
    # Good files (one of them twice), a DICOMDIR and twelve garbage files: more than the ten listed.
    shutil.copy(archive / "mr" / "IM0001.dcm", archive / "mr" / "copy-of-IM0001.dcm")
    for n in range(11):
        (archive / "junk" / f"part-{n:02d}.bin").parent.mkdir(exist_ok=True)
        (archive / "junk" / f"part-{n:02d}.bin").write_bytes(b"\x00" * (100 + n))
    sizes = sum(p.stat().st_size for p in archive.rglob("*") if p.is_file())
    assert 10_000 < sizes < 1_000_000  # well under a megabyte: "0.0/0.0 MB" before

    first = run_cli_import(archive, tmp_path / "data")
    assert first.returncode == 1, first.stderr  # files were refused
    total = f"{sizes / 1000:.1f} kB"
    assert f"19/19 files, {total} of {total}, 13 refused" in first.stderr
    assert "[##############################]" in first.stderr
    out = first.stdout.splitlines()
    assert out[0] == (
        f"DONE_WITH_ERRORS: 19 of 19 files ({total}); 5 stored, 1 already stored, 0 replaced, 13 refused"
    )
    assert out[1] == "refused files:"
    listed = out[2:12]
    assert listed[0].startswith("  DICOMDIR: a DICOMDIR (PS3.10 §8) indexes media; not imported")
    assert all(
        ": not a DICOM Part-10 file" in line and line.endswith("(status 0xC000)") for line in listed[1:]
    )
    assert out[12] == "  … and 3 more"
    assert "/failure.ndjson" in out[13] and "/refused" in out[13]
    assert "radstack import: 13 of 19 files refused" in first.stderr
    # Log lines and the bar are whole lines of their own.
    for line in first.stderr.splitlines():
        assert not ("[#" in line and " INFO " in line), line

    second = run_cli_import(archive, tmp_path / "data")
    assert second.returncode == 1
    assert "0 stored, 6 already stored, 0 replaced, 13 refused" in second.stdout


def test_cli_import_of_good_files_exits_0(tmp_path: Path) -> None:
    source = tmp_path / "good"
    source.mkdir()
    for n in range(3):
        (source / f"{n}.dcm").write_bytes(part10(synthetic_ct(seed=n, rows=8, columns=8)))
    done = run_cli_import(source, tmp_path / "data")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SUCCEEDED: 3 of 3 files (") and "3 stored" in done.stdout
    assert "refused files" not in done.stdout


def test_cli_imports_a_bucket_prefix(tmp_path: Path, s3_bucket: str) -> None:
    from radstack.store.blobs import S3BlobStore

    bucket = S3BlobStore(s3_bucket, "exports")
    for n in range(2):
        bucket.put(f"day1/{n}.dcm", part10(synthetic_ct(seed=n, rows=8, columns=8)))
    done = run_cli_import(f"s3://{s3_bucket}/exports", tmp_path / "data")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SUCCEEDED: 2 of 2 files (") and "2 stored" in done.stdout


def terminal_screen(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: carriage returns, erase-to-end-of-line, newlines."""
    lines: list[str] = []
    line: list[str] = []
    column = 0
    index = 0
    while index < len(raw):
        if raw.startswith("\x1b[K", index):
            del line[column:]
            index += 3
            continue
        char = raw[index]
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("".join(line))
            line, column = [], 0
        else:
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
        index += 1
    return [*lines, "".join(line)] if line else lines


def test_cli_import_on_a_terminal_never_mixes_log_lines_into_the_bar(tmp_path: Path, archive: Path) -> None:
    primary, secondary = pty.openpty()
    try:
        done = run_cli_import(archive, tmp_path / "data", stderr=secondary)
        os.close(secondary)
        secondary = -1
        raw = b""
        while select.select([primary], [], [], 0)[0]:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal's other end is closed: everything was read
                break
            if not chunk:
                break
            raw += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert done.returncode == 1
    screen = terminal_screen(raw.decode())
    logged = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) ")
    log_lines = [line for line in screen if logged.search(line)]
    assert any("done with errors: 2 of 7 files were refused" in line for line in log_lines), screen
    for line in log_lines:
        assert logged.match(line) and "[#" not in line and " files, " not in line, line
    bars = [line for line in screen if line.startswith("[")]
    assert bars and bars[-1].startswith("[##############################] 7/7 files,"), screen
    assert bars[-1].endswith(", 2 refused")


# ------------------------------------------------------------------------------------ kill -9
@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path / "data", {"RADSTACK_JOB_LEASE_SECONDS": "2", "RADSTACK_INGEST_PROCESSES": "1"}
    )
    try:
        yield server
    finally:
        server.stop()


def test_kill_9_in_the_middle_of_an_import_loses_and_doubles_nothing(
    tmp_path: Path, served: ServerProcess
) -> None:
    source = tmp_path / "big-archive"
    expected = set()
    for n in range(1000):
        folder = source / f"series-{n // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        ds = synthetic_ct(seed=n, rows=16, columns=16, study=f"1.2.826.0.1.3680043.8.498.9.{n // 250}")
        (folder / f"{n:04d}.dcm").write_bytes(part10(ds))
        expected.add(str(ds.SOPInstanceUID))

    served.start()
    job_id = start_import(served.url, source).json()["id"]
    deadline = time.monotonic() + 120
    while True:  # let it get well into the import, then kill the server outright
        progress = authed.get(f"{served.url}/api/v1/import-jobs/{job_id}").json()["progress"]
        if progress.get("files_done", 0) >= 200:
            break
        assert time.monotonic() < deadline, "the import made no progress"
        time.sleep(0.02)
    served.kill()
    assert progress["files_done"] < 1000, "the server was killed in the middle of the import"

    served.start()
    job = wait_done(served.url, job_id, timeout=240)
    assert job["state"] == "SUCCEEDED", job
    progress = job["progress"]
    assert isinstance(progress, dict)
    assert progress["files_done"] == 1000 and progress["refused"] == 0
    assert progress["stored"] + progress["duplicate"] == 1000
    stored: list[str] = []
    for study in range(4):
        instances = authed.get(
            f"{served.url}/dicomweb/studies/1.2.826.0.1.3680043.8.498.9.{study}/instances",
            params={"limit": 1000},
        ).json()
        stored += [i["00080018"]["Value"][0] for i in instances]
    assert len(stored) == len(set(stored)) == 1000, "every instance stored exactly once"
    assert set(stored) == expected
    assert len(manifest(served.url, job_id, "success")) == 1000


def test_import_from_a_bucket_prefix(server: RunningServer, archive: Path, s3_bucket: str) -> None:
    from radstack.store.blobs import S3BlobStore

    bucket = S3BlobStore(s3_bucket, "exports/2024")
    for path in sorted(p for p in archive.rglob("*") if p.is_file()):
        bucket.put(path.relative_to(archive).as_posix(), path.read_bytes())
    S3BlobStore(s3_bucket, "exports/2025").put("other.dcm", part10(synthetic_ct(seed=99)))

    response = start_import(server.url, f"s3://{s3_bucket}/exports/2024/")
    assert response.status_code == 202, response.text
    job = wait_done(server.url, response.json()["id"])
    assert job["state"] == "DONE_WITH_ERRORS", job
    params = job["params"]
    assert isinstance(params, dict)
    assert params["source"] == f"s3://{s3_bucket}/exports/2024"
    assert params["submitted_by"] == {"subject": "admin", "role": "admin"}
    progress = job["progress"]
    assert isinstance(progress, dict)
    assert (progress["files_total"], progress["stored"], progress["refused"]) == (7, 5, 2)
    paths = {line["path"] for line in manifest(server.url, str(job["id"]), "success")}
    assert "ct/day1/IM0001" in paths and "other.dcm" not in paths

    missing = start_import(server.url, "s3://no-such-bucket/x")
    assert missing.status_code == 400 and "no-such-bucket" in missing.json()["detail"]


def test_a_file_that_vanishes_during_the_import_is_in_the_failure_manifest(
    server: RunningServer, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radstack.ingest import importjobs

    doomed = archive / "ct" / "synthetic-1.dcm"
    scan = importjobs._Directory.scan

    def scan_then_delete(self: importjobs._Directory) -> Iterator[importjobs._File]:
        files = list(scan(self))  # listed with its size, then gone before it is read
        doomed.unlink()
        yield from files

    monkeypatch.setattr(importjobs._Directory, "scan", scan_then_delete)
    job = wait_done(server.url, start_import(server.url, archive).json()["id"])
    assert job["state"] == "DONE_WITH_ERRORS"
    failures = {line["path"]: line for line in manifest(server.url, str(job["id"]), "failure")}
    assert failures["ct/synthetic-1.dcm"]["reason"] == "the file vanished before it was read"
    assert job["progress"]["stored"] == 4  # type: ignore[index]

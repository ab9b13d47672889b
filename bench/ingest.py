"""Ingest benchmark: C-STORE from dcmtk's storescu into radstack and Orthanc, import jobs, study.stable.

Uses the CT slices (512², int16) of the DICOMweb benchmark's cohort (generated once, cached under
``bench/out/data``). For each server, on a fresh data directory each time:

* C-STORE every CT slice with ``storescu`` on 1 association, then (fresh server) split over 4
  associations at once, and report instances/s. radstack stores HTJ2K; Orthanc stores the files as
  received.
* radstack only: an import job of 1,000 files (the slices copied with new UIDs) through
  ``POST /api/v1/import-jobs``, files/s; and the time from the end of the last C-STORE to the
  ``study.stable`` event on ``/api/v1/events`` with ``RADSTACK_STABLE_SECONDS`` set to 2 s.

Run: ``.venv/bin/python bench/ingest.py [--ct 200] [--no-orthanc]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests
from pydicom.uid import generate_uid

from _common import child_server, format_table, free_port, radstack_token, raise_on_sigterm
from dicomweb import ORTHANC_BINARY, OUT_DIR, Kind, environment, load_or_generate, orthanc_plugin

IMPORT_FILES = 1000
STABLE_SECONDS = 2.0


@dataclass(frozen=True)
class Dicom:
    """A running server as storescu sees it."""

    name: str
    host: str
    port: int
    ae_title: str
    http: str
    headers: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def radstack(extra_env: dict[str, str] | None = None) -> Iterator[Dicom]:
    work = Path(tempfile.mkdtemp(prefix="radstack-ingest-", dir=OUT_DIR))
    http, dicom = free_port(), free_port()
    binary = Path(sys.executable).with_name("radstack")
    argv = [str(binary), "serve", "--data-dir", str(work / "data"), "--http-port", str(http)]
    argv += ["--dicom-port", str(dicom)]
    env = {**os.environ, **(extra_env or {})}
    headers = radstack_token(binary, work / "data", env)
    try:
        with child_server(
            "radstack",
            argv,
            ready_url=f"http://127.0.0.1:{http}/readyz",
            log_path=work / "server.log",
            cwd=work,
            env=env,
            headers=headers,
        ):
            yield Dicom("radstack", "127.0.0.1", dicom, "RADSTACK", f"http://127.0.0.1:{http}", headers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def orthanc() -> Iterator[Dicom]:
    work = Path(tempfile.mkdtemp(prefix="orthanc-ingest-", dir=OUT_DIR))
    http, dicom = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": http,
        "DicomServerEnabled": True,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageCompression": False,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    try:
        with child_server(
            "orthanc",
            [str(ORTHANC_BINARY), str(work / "orthanc.json")],
            ready_url=f"http://127.0.0.1:{http}/system",
            log_path=work / "server.log",
            cwd=work,
        ):
            yield Dicom("orthanc", "127.0.0.1", dicom, "ORTHANC", f"http://127.0.0.1:{http}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def storescu(server: Dicom, files: Sequence[Path]) -> None:
    binary = shutil.which("storescu")
    if binary is None:
        raise SystemExit("storescu (Debian package dcmtk) is not installed")
    result = subprocess.run(
        [binary, "-aet", "BENCH", "-aec", server.ae_title, server.host, str(server.port), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {server.name} failed: {result.stderr[-2000:]}")


def c_store_rate(server: Dicom, files: Sequence[Path], associations: int) -> float:
    """Instances/s storing ``files`` split over ``associations`` concurrent storescu processes."""
    groups = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    threads = [threading.Thread(target=storescu, args=(server, group)) for group in groups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(files) / (time.perf_counter() - started)


def import_rate(server: Dicom, source: Path) -> float:
    started = time.perf_counter()
    job = requests.post(
        f"{server.http}/api/v1/import-jobs", json={"source": str(source)}, headers=server.headers, timeout=30
    ).json()
    while job["state"] not in ("SUCCEEDED", "DONE_WITH_ERRORS", "FAILED", "DEAD"):
        time.sleep(0.1)
        job = requests.get(
            f"{server.http}/api/v1/import-jobs/{job['id']}", headers=server.headers, timeout=30
        ).json()
    elapsed = time.perf_counter() - started
    if job["state"] != "SUCCEEDED" or job["progress"]["stored"] != IMPORT_FILES:
        raise RuntimeError(f"import job ended {job['state']}: {job['progress']} {job['last_error']}")
    return IMPORT_FILES / elapsed


def time_to_stable(server: Dicom, files: Sequence[Path]) -> float:
    """Seconds from the end of the last C-STORE to the study.stable event on the SSE stream."""
    arrived: list[float] = []
    stream = requests.get(f"{server.http}/api/v1/events", headers=server.headers, stream=True, timeout=120)

    def listen() -> None:
        for line in stream.iter_lines():
            if line.startswith(b"event: study.stable"):
                arrived.append(time.perf_counter())
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    storescu(server, files)
    sent = time.perf_counter()
    listener.join(timeout=120)
    stream.close()
    if not arrived:
        raise RuntimeError("no study.stable event within 120 s")
    return arrived[0] - sent


def copies(files: Sequence[Path], count: int, into: Path) -> list[Path]:
    """``count`` files made from ``files`` with new Study/Series/SOP Instance UIDs (per round)."""
    into.mkdir(parents=True, exist_ok=True)
    renamed: dict[tuple[int, str], str] = {}
    out = []
    for n in range(count):
        ds = pydicom.dcmread(files[n % len(files)])
        round_ = n // len(files)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            old = str(ds[keyword].value)
            setattr(ds, keyword, renamed.setdefault((round_, old), generate_uid()))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = into / f"{n:05d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ct", type=int, default=200, help="CT slices of 512² to C-STORE (default 200)")
    parser.add_argument("--no-orthanc", action="store_true", help="measure radstack only")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    print("environment")
    print(environment())
    cohort = load_or_generate(args.ct, 0, max(1, args.ct // 10))
    files = [cohort.root / i.path for i in cohort.of_kind(Kind.CT)]
    print(f"\ndata: {len(files)} CT slices (512², explicit VR little endian) in {cohort.root}")

    servers: list[Callable[[], contextlib.AbstractContextManager[Dicom]]] = [radstack]
    if args.no_orthanc:
        print("orthanc: skipped (--no-orthanc)")
    elif orthanc_plugin() is None:
        print("orthanc: not installed (Debian packages orthanc, orthanc-dicomweb); radstack only")
    else:
        servers.append(orthanc)
    rates: dict[tuple[str, int], float] = {}
    for start in servers:
        for associations in (1, 4):
            with start() as server:
                rates[(server.name, associations)] = c_store_rate(server, files, associations)
                print(
                    f"  {server.name}: C-STORE, {associations} association(s): "
                    f"{rates[(server.name, associations)]:.1f} inst/s"
                )

    scratch = Path(tempfile.mkdtemp(prefix="ingest-data-", dir=OUT_DIR))
    try:
        archive = copies(files, IMPORT_FILES, scratch / "archive")
        stable_series = copies(files[:20], 20, scratch / "stable")
        with radstack() as server:
            imported = import_rate(server, archive[0].parent)
        with radstack({"RADSTACK_STABLE_SECONDS": str(STABLE_SECONDS)}) as server:
            stable = time_to_stable(server, stable_series)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows = []
    for associations in (1, 4):
        ours = rates[("radstack", associations)]
        theirs = rates.get(("orthanc", associations))
        ratio = f"{ours / theirs:.2f}×" if theirs else "-"
        met = ("yes" if ours >= theirs else "NO") if theirs else "?"
        rows.append(
            [
                f"C-STORE inst/s, {associations} assoc.",
                f"{ours:.1f}",
                f"{theirs:.1f}" if theirs else "-",
                ratio,
                "≥1×",
                met,
            ]
        )
    rows.append([f"import job, {IMPORT_FILES} files, files/s", f"{imported:.1f}", "-", "-", "info", ""])
    rows.append(
        [
            f"last C-STORE → study.stable, s (stable {STABLE_SECONDS:.0f} s)",
            f"{stable:.2f}",
            "-",
            "-",
            "info",
            "",
        ]
    )
    print("\nresults (radstack stores HTJ2K; ratio = radstack / orthanc)")
    print(format_table(["step", "radstack", "orthanc", "ratio", "target", "met?"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

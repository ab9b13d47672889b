"""AI in the clinical flow: how soon a radiograph sent by C-STORE has its AI result, and inference rates.

A fresh ``radstack serve`` (a child process, on the embedded defaults of ``make run``: SQLite, local
files, in-process workers, the shipped starter model and its ``ai-fracture`` rule) receives full-size
2500 × 2048 synthetic DX radiographs from dcmtk's ``storescu``, one study per association, and the
benchmark times:

1. **C-STORE → SR**: from the end of ``storescu`` (the association released) until QIDO-RS finds the
   study's SR series (``/dicomweb/studies/{uid}/series?Modality=SR``, polled every 20 ms), ``--count``
   radiographs one after another, nothing else running: p50 and p95.
2. The same while another ``storescu`` sends a 200-slice CT (512², new UIDs each time) over and over.
3. **Real-time endpoint**: ``POST /api/v1/models/fracture/infer`` on a stored radiograph, p50 and p95.
4. **Batch**: an ``infer-batch`` job (``force``) over every radiograph stored, images per second.

Targets (issue 13): C-STORE → SR p50 ≤ 1.5 s and p95 ≤ 3 s on 2 cores, alone and under the CT load.

Run: ``.venv/bin/python bench/ai_clinical.py [--count 30] [--ct 200]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import requests

from _common import format_table, raise_on_sigterm
from dicomweb import OUT_DIR, Kind, environment, load_or_generate
from ingest import Dicom, copies, radstack, storescu
from radstack.ai.synthetic import generate, to_dataset

#: Data set and image of the radiograph sent (2500 × 2048, a comminuted fracture).
SEED, INDEX = 4242, 6


def _sr_found(server: Dicom, study: str) -> bool:
    response = requests.get(
        f"{server.http}/dicomweb/studies/{study}/series",
        params={"Modality": "SR"},
        headers=server.headers,
        timeout=10,
    )
    return response.status_code == 200 and bool(response.json())


def _study_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def c_store_to_sr(server: Dicom, files: Sequence[Path], timeout: float = 60.0) -> list[float]:
    """Seconds from each storescu's end to its SR found by QIDO-RS."""
    out = []
    for path in files:
        study = _study_of(path)
        storescu(server, [path])
        sent = time.perf_counter()
        while not _sr_found(server, study):
            if time.perf_counter() - sent > timeout:
                raise RuntimeError(f"no SR for study {study} after {timeout:.0f} s")
            time.sleep(0.02)
        out.append(time.perf_counter() - sent)
    return out


class Background:
    """storescu of a CT series with new UIDs, again and again, until stopped."""

    def __init__(self, server: Dicom, series: Sequence[Path], scratch: Path) -> None:
        self.server, self.series, self.scratch = server, series, scratch
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        round_ = 0
        while not self.stop.is_set():
            files = copies(self.series, len(self.series), self.scratch / f"ct-{round_}")
            storescu(self.server, files)
            self.sent += len(files)
            shutil.rmtree(self.scratch / f"ct-{round_}", ignore_errors=True)
            round_ += 1

    def __enter__(self) -> Background:
        self.thread.start()
        time.sleep(2.0)  # the CT is arriving
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=300)


def endpoint_latency(server: Dicom, studies: Sequence[str], repeat: int) -> list[float]:
    out = []
    for n in range(repeat):
        t0 = time.perf_counter()
        response = requests.post(
            f"{server.http}/api/v1/models/fracture/infer",
            json={"study": studies[n % len(studies)]},
            headers=server.headers,
            timeout=60,
        )
        response.raise_for_status()
        out.append(time.perf_counter() - t0)
    return out


def batch_rate(server: Dicom, studies: Sequence[str]) -> float:
    response = requests.post(
        f"{server.http}/api/v1/inference-jobs",
        json={"model": "fracture", "query": {"StudyInstanceUID": "\\".join(studies)}, "force": True},
        headers=server.headers,
        timeout=60,
    )
    response.raise_for_status()
    started = time.perf_counter()
    url = f"{server.http}{response.headers['Location']}"
    while True:
        job = requests.get(url, headers=server.headers, timeout=10).json()
        if job["state"] in ("SUCCEEDED", "DONE_WITH_ERRORS", "FAILED", "DEAD"):
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    if job["progress"].get("stored") != len(studies):
        raise RuntimeError(f"batch job ended {job['state']}: {job['progress']}")
    return len(studies) / elapsed


def _radiographs(count: int, into: Path) -> list[Path]:
    """``count`` copies of one full-size radiograph, each a study of its own (new UIDs)."""
    into.mkdir(parents=True, exist_ok=True)
    first = into / "radiograph.dcm"
    to_dataset(generate(SEED, INDEX), SEED).save_as(first, enforce_file_format=True)
    files = copies([first], count, into / "copies")
    first.unlink()
    return files


def _ms(values: Sequence[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.0f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=30, help="radiographs timed per phase")
    parser.add_argument("--ct", type=int, default=200, help="CT slices sent meanwhile in phase 2")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    print("environment")
    print(environment())
    cohort = load_or_generate(args.ct, 0, max(1, args.ct // 10))
    ct = [cohort.root / i.path for i in cohort.of_kind(Kind.CT)][: args.ct]
    scratch = Path(tempfile.mkdtemp(prefix="ai-clinical-", dir=OUT_DIR))
    try:
        files = _radiographs(2 * args.count + 1, scratch / "dx")
        with radstack() as server:
            c_store_to_sr(server, files[:1], timeout=120)  # the first start's model load, not timed
            alone = c_store_to_sr(server, files[1 : 1 + args.count])
            print(f"  C-STORE → SR, alone: p50 {_ms(alone, 50)}, p95 {_ms(alone, 95)}")
            with Background(server, ct, scratch) as load:
                busy = c_store_to_sr(server, files[1 + args.count :])
            print(
                f"  C-STORE → SR, with CT: p50 {_ms(busy, 50)}, p95 {_ms(busy, 95)} ({load.sent} CT slices sent)"
            )
            studies = [_study_of(p) for p in files]
            realtime = endpoint_latency(server, studies, args.count)
            rate = batch_rate(server, studies)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def met(value: float, target: float) -> str:
        return "yes" if value <= target else "NO"

    rows = [
        ["C-STORE → SR p50, alone", _ms(alone, 50), "≤ 1500 ms", met(np.percentile(alone, 50), 1.5)],
        ["C-STORE → SR p95, alone", _ms(alone, 95), "≤ 3000 ms", met(np.percentile(alone, 95), 3.0)],
        ["C-STORE → SR p50, with CT C-STORE", _ms(busy, 50), "≤ 1500 ms", met(np.percentile(busy, 50), 1.5)],
        ["C-STORE → SR p95, with CT C-STORE", _ms(busy, 95), "≤ 3000 ms", met(np.percentile(busy, 95), 3.0)],
        ["real-time endpoint p50 (stored study)", _ms(realtime, 50), "-", "-"],
        ["real-time endpoint p95 (stored study)", _ms(realtime, 95), "-", "-"],
        ["batch inference, stored SRs", f"{rate:.1f} images/s", "-", "-"],
    ]
    print()
    print(format_table(["figure (2500 × 2048 DX, one per study)", "measured", "target", "met"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

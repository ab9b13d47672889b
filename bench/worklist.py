"""Time the worklist page (``GET /``) over 10,000 studies: p50 and p95 of each query.

    .venv/bin/python -m bench.worklist [--studies 10000] [--runs 50]

Study rows are written straight to the index (:func:`tests.web.test_ui.add_studies`), some with an
AI priority, so the measured part is the SQL (filter, order, page, capped count) and the rendering.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from tests.conftest import server_settings, start_server
from tests.web.test_ui import add_studies

QUERIES = {
    "first page": "/",
    "page 100": "/?offset=5000",
    "patient prefix": "/?patient=bulk%5E01",
    "modality + dates": "/?modality=CT&date_from=2015-01-01&date_to=2016-12-31",
    "status unread": "/?status=unread",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = server_settings(Path(tmp) / "data", dicom_port=0, no_workers=True)
        for server in start_server(settings):
            add_studies(
                server.platform.store.engine, args.studies, priority=lambda n: n % 100 if n % 7 == 0 else None
            )
            headers = {**server.auth, "Accept": "text/html"}
            print(f"{'query':<20} {'p50 ms':>8} {'p95 ms':>8}  ({args.studies} studies, {args.runs} runs)")
            with httpx.Client(base_url=server.url, headers=headers) as client:
                for label, path in QUERIES.items():
                    assert client.get(path).status_code == 200
                    times = []
                    for _ in range(args.runs):
                        start = time.perf_counter()
                        response = client.get(path)
                        times.append((time.perf_counter() - start) * 1000)
                        assert response.status_code == 200
                    times.sort()
                    p95 = times[int(len(times) * 0.95) - 1]
                    print(f"{label:<20} {statistics.median(times):>8.1f} {p95:>8.1f}")


if __name__ == "__main__":
    main()

"""Ingest processes: the CPU-bound half of ingest (parse, decode, HTJ2K encode) off the GIL.

Parsing with pydicom and building DICOM JSON hold the GIL; in worker processes they run on every
core, and a codec that crashes on hostile input kills a worker, not the server.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from radstack.errors import ProcessingFailure
from radstack.ingest.pipeline import IngestResult, Prepared, analyse_file

__all__ = ["IngestPool"]


def _warm_up() -> None:
    """Import the codecs once per worker so the first instance does not pay for it."""
    import imagecodecs  # noqa: F401
    import pydicom.pixels  # noqa: F401


class IngestPool:
    """An :class:`~radstack.ingest.pipeline.Analyser` backed by a pool of worker processes."""

    def __init__(self, processes: int) -> None:
        self.processes = processes if processes > 0 else (os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.processes, mp_context=context, initializer=_warm_up)

    def __call__(
        self, data: bytes, expected_study: str | None, encode: bool
    ) -> tuple[IngestResult, Prepared | None]:
        executor = self._executor
        try:
            return executor.submit(analyse_file, data, expected_study, encode).result()
        except BrokenProcessPool:
            with self._lock:
                if self._executor is executor:
                    self._executor = self._start()
            failure = ProcessingFailure(
                "the ingest process died while analysing this instance; nothing was stored"
            )
            return IngestResult(error=failure), None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

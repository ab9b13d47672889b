"""Ingest processes: the CPU-bound half of ingest (parse, decode, HTJ2K encode) off the GIL.

Parsing with pydicom and building DICOM JSON hold the GIL; in worker processes they run on every
core, and a codec that crashes on hostile input kills a worker, not the server. Workers also write
the blobs they produce, so frames are never copied back to the server process; only the index row
to be travels back, and the server commits it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from radstack.dicom.config import configure_pydicom
from radstack.errors import ProcessingFailure
from radstack.ingest.pipeline import IngestResult, stage_file
from radstack.security.crypto import KeyConfig, open_encrypted_blob_store
from radstack.store.blobs import BlobStore
from radstack.store.records import InstanceRecord

__all__ = ["IngestPool"]

_blobs: BlobStore | None = None


def _start_worker(blob_url: str, keys: KeyConfig, parent: int) -> None:
    """Open the (encrypted) blob store once per worker and import the codecs, so the first instance
    is not slower; end with the server, even one that was killed."""
    global _blobs
    import imagecodecs  # noqa: F401
    import pydicom.pixels  # noqa: F401

    configure_pydicom()
    _blobs = open_encrypted_blob_store(blob_url, keys)
    threading.Thread(target=_follow_parent, args=(parent,), name="follow-parent", daemon=True).start()


def _follow_parent(parent: int) -> None:
    """Exit when the server process is gone (a ``kill -9`` leaves its pool's workers orphaned)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _ready() -> None:
    """Nothing: submitted once per worker at start, so every worker is spawned and warm."""


def _stage(
    data: bytes, expected_study: str | None, encode: bool
) -> tuple[IngestResult, InstanceRecord | None]:
    assert _blobs is not None, "the worker initialiser opens the blob store"
    return stage_file(_blobs, data, expected_study, encode)


class IngestPool:
    """An :class:`~radstack.ingest.pipeline.Analyser` backed by a pool of worker processes."""

    def __init__(self, processes: int, blob_url: str, keys: KeyConfig) -> None:
        self.processes = processes if processes > 0 else (os.cpu_count() or 1)
        self.blob_url = blob_url
        self.keys = keys
        self._lock = threading.Lock()
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        """Start every worker now: spawning one and importing the codecs takes about a second, which
        the first instances of a STOW request would otherwise wait for."""
        context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(
            self.processes,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self.blob_url, self.keys, os.getpid()),
        )
        for future in [executor.submit(_ready) for _ in range(self.processes)]:
            future.result()
        return executor

    def __call__(
        self, data: bytes, expected_study: str | None, encode: bool
    ) -> tuple[IngestResult, InstanceRecord | None]:
        executor = self._executor
        try:
            return executor.submit(_stage, data, expected_study, encode).result()
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

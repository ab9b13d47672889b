"""A background thread that runs one function every few seconds until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Periodic"]

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``work`` every ``seconds`` in a daemon thread; a failing run is logged and retried at
    the next tick (the database may be away for a moment)."""

    def __init__(self, name: str, seconds: float, work: Callable[[], object]) -> None:
        self.name = name
        self.seconds = seconds
        self.work = work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.seconds + 10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.work()
            except Exception:
                log.exception("%s failed; trying again in %.0f s", self.name, self.seconds)
            self._stop.wait(self.seconds)

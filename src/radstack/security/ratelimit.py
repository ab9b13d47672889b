"""Rate limiting of login attempts and failed token use: a token bucket per key.

A key is any string that names what is limited, e.g. ``"login:<client address>"``,
``"login:<user name>"`` or ``"token:<client address>"``. Each key may spend ``burst`` attempts at
once and earns them back at ``per_minute``; an attempt without a token left is refused with the
seconds until one is earned. State lives in this process: a node limits what it sees.

Memory is bounded: a key untouched for long enough to have refilled its bucket is forgotten (it
would behave as a new key anyway), and beyond ``max_keys`` the least recently used key goes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from radstack.config import Settings
from radstack.errors import RateLimited

__all__ = ["RateLimited", "RateLimiter", "RateLimits"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A thread-safe token bucket per key.

    Parameters
    ----------
    per_minute
        Attempts earned back per minute.
    burst
        Attempts a fresh key may make at once; ``per_minute`` when not given.
    max_keys
        Most keys remembered; the least recently used one is forgotten beyond this.
    clock
        Seconds from an arbitrary start (tests pass a fake one); ``time.monotonic`` by default.

    Raises
    ------
    ValueError
        When ``per_minute`` is not positive, or ``burst`` or ``max_keys`` is below 1.

    Examples
    --------
    >>> limiter = RateLimiter(per_minute=10)
    >>> limiter.hit("login:alice") is None
    True
    """

    def __init__(
        self,
        per_minute: float,
        burst: int | None = None,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0:
            raise ValueError(f"rate {per_minute!r} per minute must be positive")
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, round(per_minute)))
        if self.burst < 1:
            raise ValueError(f"burst {burst!r} must be at least 1")
        if max_keys < 1:
            raise ValueError(f"max_keys {max_keys!r} must be at least 1")
        self.max_keys = max_keys
        self._clock = clock
        #: Seconds after which an untouched bucket is full again.
        self._refill_seconds = self.burst / self.rate
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Keys currently remembered."""
        with self._lock:
            return len(self._buckets)

    def _tokens(self, bucket: _Bucket | None, now: float) -> float:
        if bucket is None:
            return self.burst
        return min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)

    def _forget_full(self, now: float) -> None:
        """Drop the least recently used keys whose buckets have refilled (amortised O(1))."""
        while self._buckets:
            bucket = next(iter(self._buckets.values()))
            if now - bucket.stamp < self._refill_seconds:
                return
            self._buckets.popitem(last=False)

    def hit(self, key: str) -> float | None:
        """Spend one attempt of ``key``.

        Returns
        -------
        float or None
            None when the attempt is allowed; otherwise the seconds until the next one is (the
            refused attempt spends nothing).
        """
        now = self._clock()
        with self._lock:
            self._forget_full(now)
            bucket = self._buckets.pop(key, None)
            tokens = self._tokens(bucket, now)
            wait: float | None = None
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = _Bucket(tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait

    def peek(self, key: str) -> float | None:
        """Like :meth:`hit` without spending: None when an attempt of ``key`` would be allowed now."""
        now = self._clock()
        with self._lock:
            tokens = self._tokens(self._buckets.get(key), now)
        return None if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def check(self, key: str) -> None:
        """Spend one attempt of ``key``, or raise :class:`~radstack.errors.RateLimited`.

        Raises
        ------
        RateLimited
            No attempt is left; ``retry_after`` says when the next one is (HTTP 429, ``Retry-After``).
        """
        wait = self.hit(key)
        if wait is not None:
            raise RateLimited(wait)

    def reset(self, key: str) -> None:
        """Forget ``key`` (e.g. a user name after a successful login)."""
        with self._lock:
            self._buckets.pop(key, None)


@dataclass(frozen=True)
class RateLimits:
    """The limiters of one server, on ``app.state.rate_limits`` (:func:`radstack.web.transport.install_transport`).

    Attributes
    ----------
    login
        Login attempts, keyed ``"login:<client address>"`` and ``"login:<user name>"``
        (``login_rate_per_minute``).
    token_failures
        Requests with a wrong, expired or revoked token, keyed ``"token:<client address>"``
        (``token_failures_per_minute``): hit on failure, :meth:`RateLimiter.peek` before checking.
    """

    login: RateLimiter
    token_failures: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        return cls(
            login=RateLimiter(settings.login_rate_per_minute),
            token_failures=RateLimiter(settings.token_failures_per_minute),
        )

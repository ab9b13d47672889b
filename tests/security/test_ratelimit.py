"""The login and token rate limiter: bursts, refill, independent keys, bounded memory, threads, and
the 429 problem response with Retry-After."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from radstack.config import Settings
from radstack.errors import RateLimited
from radstack.security.ratelimit import RateLimiter, RateLimits
from radstack.web.app import create_app
from radstack.web.deps import problem_response


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_burst_then_one_attempt_per_interval() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=10, clock=clock)  # burst 10, one back every 6 s
    assert [limiter.hit("login:10.0.0.1") for _ in range(10)] == [None] * 10
    assert limiter.hit("login:10.0.0.1") == pytest.approx(6.0)
    clock.advance(2.0)
    # A refused attempt spends nothing: the wait only shrinks with time.
    assert limiter.hit("login:10.0.0.1") == pytest.approx(4.0)
    clock.advance(4.0)
    assert limiter.hit("login:10.0.0.1") is None
    assert limiter.hit("login:10.0.0.1") == pytest.approx(6.0)
    clock.advance(60.0)
    assert [limiter.hit("login:10.0.0.1") for _ in range(10)] == [None] * 10  # never more than the burst
    assert limiter.hit("login:10.0.0.1") is not None


def test_keys_are_independent_and_reset_forgets_one() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=2, burst=2, clock=clock)
    assert limiter.hit("login:alice") is None
    assert limiter.hit("login:alice") is None
    assert limiter.hit("login:alice") == pytest.approx(30.0)
    assert limiter.hit("login:bob") is None
    assert limiter.peek("login:alice") == pytest.approx(30.0)
    limiter.reset("login:alice")
    assert limiter.peek("login:alice") is None
    assert limiter.hit("login:alice") is None


def test_peek_spends_nothing() -> None:
    limiter = RateLimiter(per_minute=60, burst=1, clock=FakeClock())
    assert limiter.peek("token:10.0.0.9") is None
    assert limiter.peek("token:10.0.0.9") is None
    assert limiter.hit("token:10.0.0.9") is None
    assert limiter.peek("token:10.0.0.9") == pytest.approx(1.0)


def test_check_raises_rate_limited_with_whole_seconds() -> None:
    limiter = RateLimiter(per_minute=25, burst=1, clock=FakeClock())  # 2.4 s per attempt
    limiter.check("login:carol")
    with pytest.raises(RateLimited) as raised:
        limiter.check("login:carol")
    assert raised.value.retry_after == 3
    assert raised.value.http_status == 429
    assert raised.value.headers() == {"Retry-After": "3"}


def test_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=6, burst=2, max_keys=100, clock=clock)
    for i in range(1000):
        limiter.hit(f"login:user{i}")
        limiter.hit("login:victim")  # used all along: never the least recently used
    assert len(limiter) == 100
    assert limiter.hit("login:victim") is not None
    # Keys whose buckets have refilled are forgotten: they would act as new keys anyway.
    clock.advance(20.0)  # 2 attempts back at 6 per minute
    limiter.hit("login:someone")
    assert len(limiter) == 1


def test_memory_bound_evicts_the_least_recently_used() -> None:
    limiter = RateLimiter(per_minute=1, burst=1, max_keys=2, clock=FakeClock())
    limiter.hit("a")
    limiter.hit("b")
    limiter.hit("a")
    limiter.hit("c")  # evicts b, the least recently used
    assert limiter.peek("a") is not None
    assert limiter.peek("b") is None
    assert limiter.peek("c") is not None


def test_threads_never_get_more_than_the_burst() -> None:
    limiter = RateLimiter(per_minute=1, burst=100, clock=FakeClock())  # time stands still
    allowed: list[int] = []
    lock = threading.Lock()

    def attempt() -> None:
        mine = sum(limiter.hit("token:10.0.0.7") is None for _ in range(200))
        with lock:
            allowed.append(mine)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 100


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        RateLimiter(per_minute=0)
    with pytest.raises(ValueError, match="at least 1"):
        RateLimiter(per_minute=5, burst=0)


def test_limits_from_settings(tmp_path: Path) -> None:
    limits = RateLimits.from_settings(
        Settings(data_dir=tmp_path, login_rate_per_minute=3, token_failures_per_minute=7)
    )
    assert [limits.login.hit("login:x") for _ in range(4)][-1] == pytest.approx(20.0, abs=0.5)
    assert limits.token_failures.burst == 7


def test_rate_limited_is_a_429_problem_with_retry_after(tmp_path: Path) -> None:
    response = problem_response(RateLimited(2.2))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["content-type"] == "application/problem+json"

    # The application's handler for every RadstackError answers with problem_response; its
    # limiters live on app.state for the login and token checks.
    app = create_app(Settings(data_dir=tmp_path, dicom_port=0))
    assert isinstance(app.state.rate_limits, RateLimits)

"""Client-side politeness and fault tolerance shared by every vendor connector.

``RequestBudget`` spaces calls to stay under a vendor's requests-per-second allowance (shared by all
threads of one client); ``retry_call`` retries a call a bounded number of times with capped
exponential backoff, honouring a server's ``Retry-After`` and "should retry" verdicts.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class RequestBudget:
    """At most ``per_second`` calls per second, spread evenly (a leaky bucket with no burst)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if per_second <= 0:
            raise ValueError("a request budget needs a positive number of requests per second")
        self.interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next_slot = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)


@dataclass(frozen=True)
class RetryVerdict:
    """How a failed attempt should be treated: retry or not, and how long the server asked us to wait."""

    retry: bool
    retry_after: Optional[float] = None


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        backoff = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        return backoff / 2 + random.uniform(0, backoff / 2)


def retry_call(
    call: Callable[[], T],
    classify: Callable[[BaseException], Optional[RetryVerdict]],
    policy: RetryPolicy,
    on_retry: Callable[[int, BaseException, float], None] = lambda attempt, exc, delay: None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call``; on an exception that ``classify`` calls retryable, wait and try again.

    ``classify`` returns ``None`` for exceptions it does not know (re-raised at once). After
    ``policy.max_attempts`` attempts the last exception is re-raised unchanged.
    """
    attempt = 1
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classification decides
            verdict = classify(exc)
            if verdict is None or not verdict.retry or attempt >= policy.max_attempts:
                raise
            delay = policy.delay(attempt, verdict.retry_after)
            on_retry(attempt, exc, delay)
            sleep(delay)
            attempt += 1


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a ``Retry-After`` header (delta-seconds form); ``None`` when absent or unusable."""
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None

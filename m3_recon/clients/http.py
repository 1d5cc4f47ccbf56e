"""The one HTTP policy every vendor client follows, and the one bearer-token cache.

* ``RequestBudget`` spaces calls to stay under a vendor's requests-per-second allowance (shared by all
  threads of one client); ``retry_call`` retries a call a bounded number of times with capped
  exponential backoff, honouring a server's ``Retry-After`` and "should retry" verdicts.
  ``retryable_status`` says which answers are worth another attempt (429 and 5xx).
* ``VendorSession`` (``requests``, for PayTrace, GP API and Infor M3) sends each request through the
  budget and ``retry_call``: 429, 5xx, timeouts and connection failures are retried (``Retry-After``
  honoured); a 401 first asks the ``authenticator`` for a fresh token once; what cannot succeed becomes
  a ``VendorAuthError`` / ``VendorRequestError`` / ``VendorUnavailableError`` whose message names the
  environment variables to check. The Stripe client applies the same budget and retries to its SDK.
* ``TokenCache`` keeps one bearer token until shortly before it expires and renews it on a 401; each
  vendor's client says only how to sign in.

Credentials never appear in messages.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, TypeVar

import requests

from m3_recon import decimal_json
from m3_recon.errors import VendorAuthError, VendorRequestError, VendorUnavailableError

T = TypeVar("T")
MAX_ERROR_TEXT = 300


# -- request budget and retries ---------------------------------------------------------------------
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


def retryable_status(status: int) -> bool:
    """An HTTP answer worth another attempt: rate limited (429) or a server error (5xx)."""
    return status == 429 or status >= 500


# -- requests sessions ----------------------------------------------------------------------------
class Authenticator(Protocol):
    """Supplies auth headers; ``refresh`` is called once when the vendor answers 401."""

    def headers(self, session: "VendorSession") -> dict[str, str]: ...

    def refresh(self, session: "VendorSession") -> None: ...


class NoAuth:
    def headers(self, session: "VendorSession") -> dict[str, str]:
        return {}

    def refresh(self, session: "VendorSession") -> None:
        return None


class _Retryable(Exception):
    """A response worth another attempt (429 / 5xx)."""

    def __init__(self, response: requests.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _classify(exc: BaseException) -> RetryVerdict | None:
    if isinstance(exc, _Retryable):
        return RetryVerdict(retry=True, retry_after=parse_retry_after(exc.response.headers.get("Retry-After")))
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        return RetryVerdict(retry=True)
    return None


def short_text(response: requests.Response) -> str:
    text = (response.text or "").strip().replace("\n", " ")
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + "…"


@dataclass
class VendorSession:
    vendor: str  # "PayTrace", "GP API", "M3"
    base_url: str
    credential_hint: str  # e.g. "PAYTRACE_USERNAME / PAYTRACE_PASSWORD"
    url_hint: str  # e.g. "PAYTRACE_API_BASE"
    requests_per_second: float = 10.0
    max_attempts: int = 5
    timeout_seconds: float = 30.0
    authenticator: Authenticator = field(default_factory=NoAuth)
    sleep: Callable[[float], None] | None = None

    def __post_init__(self):
        self.base_url = self.base_url.rstrip("/")
        self.http = requests.Session()
        self.budget = RequestBudget(self.requests_per_second)

    def request(self, method: str, path: str, *, authenticated: bool = True, **kwargs) -> requests.Response:
        """Send with budget, retries and one re-authentication; return a 2xx response or raise."""
        url = f"{self.base_url}{path}"
        endpoint = f"{method} {path}"
        reauthenticated = False
        policy = RetryPolicy(max_attempts=self.max_attempts)
        base_headers = dict(kwargs.pop("headers", None) or {})

        def attempt() -> requests.Response:
            self.budget.acquire()
            headers = dict(base_headers)
            if authenticated:
                headers.update(self.authenticator.headers(self))
            response = self.http.request(method, url, headers=headers, timeout=self.timeout_seconds, **kwargs)
            if retryable_status(response.status_code):
                raise _Retryable(response)
            return response

        extra = {} if self.sleep is None else {"sleep": self.sleep}
        while True:
            try:
                response = retry_call(attempt, _classify, policy, **extra)
            except _Retryable as exc:
                raise VendorUnavailableError(
                    self.vendor, f"{endpoint} kept failing after {self.max_attempts} attempts: "
                    f"{short_text(exc.response)}. Try again later.", status=exc.response.status_code) from None
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise VendorUnavailableError(
                    self.vendor, f"{endpoint} could not be reached after {self.max_attempts} attempts "
                    f"({type(exc).__name__}); check {self.url_hint} ({self.base_url}) and the network") from None
            if response.status_code == 401 and authenticated and not reauthenticated:
                self.authenticator.refresh(self)
                reauthenticated = True
                continue
            if response.status_code in (401, 403):
                raise VendorAuthError(self.vendor, f"{endpoint} refused the credentials: {short_text(response)}. "
                                      f"Check {self.credential_hint}.", status=response.status_code)
            if response.status_code >= 400:
                raise VendorRequestError(self.vendor, f"{endpoint} was rejected: {short_text(response)}",
                                         status=response.status_code)
            return response

    def json(self, method: str, path: str, **kwargs):
        """``request`` and ``decode`` its JSON."""
        return self.decode(f"{method} {path}", self.request(method, path, **kwargs))

    def decode(self, endpoint: str, response: requests.Response):
        """A response's JSON (fractional numbers as ``Decimal``, never floats); a body that is not JSON is a
        clear error, not a crash later."""
        return self.decode_listing(endpoint, response, None)[0]

    def decode_listing(self, endpoint: str, response: requests.Response, key: str | None) -> tuple[object, list[str]]:
        """``decode``, and the exact JSON text of each record of the body's top-level list ``key``
        (``decimal_json.loads_listing``), for storing records as the vendor sent them."""
        try:
            if key is None:
                return decimal_json.loads(response.content), []
            content = response.content
            return decimal_json.loads_listing(content.decode(json.detect_encoding(content)), key)
        except ValueError:
            raise VendorRequestError(self.vendor, f"{endpoint} answered with something that is not JSON: "
                                     f"{short_text(response)}", status=response.status_code) from None


# -- bearer tokens ---------------------------------------------------------------------------------
class TokenCache:
    """An ``Authenticator`` holding one bearer token, shared by the threads of one client.

    A vendor's client subclasses it with ``_sign_in`` (fetch a token; return it and its lifetime in
    seconds). The token is renewed ``min(margin_seconds, lifetime * margin_share)`` before it expires,
    counted from when the sign-in was sent, and at once when the vendor answers 401. ``clock`` is a
    monotonic clock in seconds.
    """

    def __init__(self, margin_seconds: float, margin_share: float, clock: Callable[[], float] = time.monotonic):
        self._margin_seconds, self._margin_share = margin_seconds, margin_share
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.sign_ins = 0

    def headers(self, session: VendorSession) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._renew(session)
            return {"Authorization": f"Bearer {self._token}"}

    def refresh(self, session: VendorSession) -> None:
        with self._lock:
            self._renew(session)

    def _renew(self, session: VendorSession) -> None:
        started = self._clock()
        token, lifetime = self._sign_in(session)
        self._token = token
        self._renew_at = started + lifetime - min(self._margin_seconds, lifetime * self._margin_share)
        self.sign_ins += 1

    def _sign_in(self, session: VendorSession) -> tuple[str, float]:
        raise NotImplementedError

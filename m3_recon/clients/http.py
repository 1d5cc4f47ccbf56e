"""``requests``-based plumbing for the vendors without an official SDK (PayTrace, GP API, Infor M3).

``VendorSession`` sends each request through the vendor's ``RequestBudget`` and ``retry_call``:
429, 5xx, timeouts and connection failures are retried with capped backoff (``Retry-After``
honoured); a 401 first asks the ``authenticator`` for a fresh token once; what cannot succeed
becomes a ``VendorAuthError`` / ``VendorRequestError`` / ``VendorUnavailableError`` whose message
names the environment variables to check. Credentials never appear in messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import requests

from m3_recon import decimal_json
from m3_recon.errors import VendorAuthError, VendorRequestError, VendorUnavailableError
from m3_recon.resilience import RequestBudget, RetryPolicy, RetryVerdict, parse_retry_after, retry_call

MAX_ERROR_TEXT = 300


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
            if response.status_code == 429 or response.status_code >= 500:
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
        """``request`` and decode JSON (fractional numbers as ``Decimal``, never floats); a body that is not
        JSON is a clear error, not a crash later."""
        response = self.request(method, path, **kwargs)
        try:
            return decimal_json.loads(response.content)
        except ValueError:
            raise VendorRequestError(self.vendor, f"{method} {path} answered with something that is not JSON: "
                                     f"{short_text(response)}", status=response.status_code) from None

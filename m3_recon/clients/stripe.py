"""The Stripe client (no Dagster): the official ``stripe`` SDK behind the shared request budget and retries.

Reads (and, only when asked, writes an M3 customer number into a customer's metadata). Every
request passes through one ``RequestBudget`` (Stripe allows 100 reads/s live, 25 in test mode) and
``retry_call`` (``m3_recon.clients.http``), which retries 429s, 5xx, lock conflicts (409) and network
timeouts with capped backoff, honours ``Stripe-Should-Retry`` and ``Retry-After``, and then gives up
with an actionable error.
Returns plain JSON objects exactly as Stripe sent them: list pages come through the SDK's
``raw_request`` (its auth, API version and error mapping, no ``StripeObject`` per row), and a day of
balance transactions is read as disjoint ``created`` slices paged concurrently (``list_created``),
either as objects or as the pages' own JSON text (for the warehouse to split, with no re-serialising).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import stripe
from stripe import StripeResponse

from m3_recon.clients.http import (RequestBudget, RetryPolicy, RetryVerdict, parse_retry_after, retry_call,
                                   retryable_status)
from m3_recon.errors import VendorAuthError, VendorRequestError, VendorUnavailableError

STRIPE_API_VERSION = "2026-10-28.endive"
DEFAULT_API_BASE = "https://api.stripe.com"
stripe.enable_telemetry = False


class BudgetedRequestsClient(stripe.RequestsClient):
    """The SDK's own requests-based HTTP client, waiting for the request budget before each call."""

    def __init__(self, budget: RequestBudget, **kwargs):
        super().__init__(**kwargs)
        self._budget = budget

    def request(self, method, url, headers, post_data=None):
        self._budget.acquire()
        return super().request(method, url, headers, post_data)


def classify_stripe_error(exc: BaseException) -> RetryVerdict | None:
    """Retry rate limits, server errors, lock conflicts and network failures, unless Stripe says not to."""
    if isinstance(exc, stripe.APIConnectionError):
        return RetryVerdict(retry=True)
    if not isinstance(exc, stripe.StripeError):
        return None
    headers = exc.headers or {}
    should_retry = headers.get("Stripe-Should-Retry") or headers.get("stripe-should-retry")
    retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    if should_retry == "false":
        return RetryVerdict(retry=False)
    status = exc.http_status or 0
    retryable = should_retry == "true" or status == 409 or retryable_status(status)
    return RetryVerdict(retry=retryable, retry_after=retry_after)


class StripeClient:
    """Read access to one Stripe account."""

    def __init__(self, api_key: str, *, api_base: str = DEFAULT_API_BASE, requests_per_second: float = 25.0,
                 max_attempts: int = 5, timeout_seconds: float = 30.0, page_size: int = 100, concurrency: int = 4,
                 window_slices: int = 8):
        self.api_key, self.api_base = api_key, api_base
        self.requests_per_second, self.max_attempts = requests_per_second, max_attempts
        self.page_size, self.concurrency, self.window_slices = page_size, concurrency, window_slices
        self.sdk = stripe.StripeClient(  # one SDK client (and one request budget) shared by every cursor chain
            api_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses={"api": api_base.rstrip("/")},
            max_network_retries=0,  # retries are ours: the SDK ignores Retry-After and plain 429s
            http_client=BudgetedRequestsClient(RequestBudget(requests_per_second), timeout=timeout_seconds),
        )

    # -- paging ---------------------------------------------------------------------------------
    def _list_page(self, service: str, params: dict) -> StripeResponse:
        """One list page as Stripe sent it (``body``, and ``data`` parsed): the SDK's ``raw_request`` (its
        requestor, auth, API version and error mapping) without turning every object into a ``StripeObject``."""
        endpoint = f"GET /v1/{service}"

        def call() -> StripeResponse:
            return self.sdk.raw_request("get", f"/v1/{service}", **params)

        try:
            return retry_call(call, classify_stripe_error, RetryPolicy(max_attempts=self.max_attempts))
        except stripe.AuthenticationError as exc:
            raise VendorAuthError(
                "Stripe", "refused the API key. Set STRIPE_API_KEY to a valid secret key (sk_live_… or "
                f"sk_test_…) for this account, and check STRIPE_API_BASE ({self.api_base}).",
                status=exc.http_status, request_id=exc.request_id) from None
        except stripe.PermissionError as exc:
            raise VendorAuthError(
                "Stripe", f"the key lacks a permission needed for {endpoint}; grant read access to balance "
                "transactions (and balance_transaction_source_read), payouts, customers and events to the key in "
                "STRIPE_API_KEY.", status=exc.http_status, request_id=exc.request_id) from None
        except stripe.APIConnectionError as exc:
            raise VendorUnavailableError(
                "Stripe", f"{endpoint} could not be reached after {self.max_attempts} attempts "
                f"({exc.user_message or type(exc).__name__}); check STRIPE_API_BASE ({self.api_base}) "
                "and the network, or raise STRIPE_TIMEOUT_SECONDS") from None
        except stripe.StripeError as exc:
            verdict = classify_stripe_error(exc)
            message = (exc.error.message if exc.error else None) or exc.user_message or str(exc)
            if verdict is not None and verdict.retry:
                raise VendorUnavailableError(
                    "Stripe", f"{endpoint} kept failing after {self.max_attempts} attempts: {message}. "
                    "Try again later or raise STRIPE_MAX_ATTEMPTS.",
                    status=exc.http_status, request_id=exc.request_id) from None
            raise VendorRequestError("Stripe", f"{endpoint} was rejected: {message}",
                                     status=exc.http_status, request_id=exc.request_id) from None

    def list_pages(self, service: str, params: dict, until: threading.Event | None = None) -> Iterator[StripeResponse]:
        """Every page of a list endpoint, newest first, following ``has_more`` with ``starting_after``
        (stopping early, incomplete, once ``until`` is set: a sibling chain failed and the caller raises)."""
        params = {**params, "limit": self.page_size}
        while until is None or not until.is_set():
            page = self._list_page(service, params)
            yield page
            objects = page.data["data"]
            if not page.data["has_more"] or not objects:
                return
            params = {**params, "starting_after": objects[-1]["id"]}

    def list_all(self, service: str, params: dict, until: threading.Event | None = None) -> Iterator[dict]:
        """Every object of a list endpoint, newest first (``list_pages``)."""
        for page in self.list_pages(service, params, until):
            yield from page.data["data"]

    def list_created(self, service: str, created_gte: int, created_lt: int, params: dict | None = None,
                     take: Callable[[StripeResponse], list] = lambda page: page.data["data"]) -> list:
        """What ``take`` takes from each page (by default its objects) of every object created in [gte, lt),
        newest first. The window is cut into ``window_slices`` disjoint sub-windows of whole seconds, each paged
        to its end by its own cursor chain, at most ``concurrency`` chains at once (never more than the request
        budget allows per second); each chain is complete on its own, so together they are the whole window
        exactly once."""
        bounds = _slices(created_gte, created_lt, self.window_slices)
        params = params or {}

        failed = threading.Event()  # one chain failed: the others ask for no further page

        def chain(bound: tuple[int, int]) -> list:
            try:
                return [item for page in self.list_pages(
                            service, {**params, "created": {"gte": bound[0], "lt": bound[1]}}, until=failed)
                        for item in take(page)]
            except BaseException:
                failed.set()
                raise

        workers = max(1, min(len(bounds), self.concurrency, int(self.requests_per_second)))
        if workers == 1:
            return [obj for bound in bounds for obj in chain(bound)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"stripe-{service}") as pool:
            return [obj for objects in pool.map(chain, bounds) for obj in objects]

    # -- what the assets read -------------------------------------------------------------------
    def balance_transactions(self, created_gte: int, created_lt: int) -> list[dict]:
        """Balance transactions created in [gte, lt), with their source (charge, refund…) expanded."""
        return self.list_created("balance_transactions", created_gte, created_lt, {"expand": ["data.source"]})

    def balance_transaction_pages(self, created_gte: int, created_lt: int) -> list[str]:
        """The same read as ``balance_transactions``, as the JSON text of each list page (objects under ``data``)."""
        return self.list_created("balance_transactions", created_gte, created_lt, {"expand": ["data.source"]},
                                 take=lambda page: [page.body])

    def payouts(self, created_gte: int, created_lt: int) -> list[dict]:
        """Payouts created in [gte, lt): about one a day, so one cursor chain."""
        return list(self.list_all("payouts", {"created": {"gte": created_gte, "lt": created_lt}}))

    def customers(self) -> list[dict]:
        """Every customer of the account (for the customer cross-reference)."""
        return list(self.list_all("customers", {}))

    def events(self, created_gte: int, types: list[str]) -> list[dict]:
        """Events created at or after ``created_gte`` of the given types (wildcards allowed), oldest first."""
        return list(reversed(list(self.list_all("events", {"created": {"gte": created_gte}, "types": types}))))

    def set_customer_metadata(self, customer_id: str, metadata: dict[str, str]) -> dict:
        """Set metadata keys on one customer (the only write this connector makes, and only when asked)."""
        return retry_call(lambda: self.sdk.v1.customers.update(customer_id, {"metadata": metadata}).to_dict(),
                          classify_stripe_error, RetryPolicy(max_attempts=self.max_attempts))

    def payout_lines(self, payout_id: str) -> list[dict]:
        """The balance transactions an automatic payout settled, including its own ``type=payout`` line."""
        return list(self.list_all("balance_transactions", {"payout": payout_id}))


def _slices(start: int, end: int, count: int) -> list[tuple[int, int]]:
    """[start, end) cut into at most ``count`` disjoint half-open windows of whole seconds, newest first."""
    count = max(1, min(count, end - start))
    edges = [start + (end - start) * i // count for i in range(count + 1)]
    return [(edges[i], edges[i + 1]) for i in reversed(range(count))]

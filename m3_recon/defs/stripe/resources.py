"""The Stripe connector: the official ``stripe`` SDK behind a request budget and bounded retries.

Reads (and, only when asked, writes an M3 customer number into a customer's metadata). Every
request passes through one ``RequestBudget`` (Stripe allows 100 reads/s live, 25 in test mode) and
``retry_call``, which retries 429s, 5xx and network timeouts with capped backoff, honours
``Stripe-Should-Retry`` and ``Retry-After``, and then gives up with an actionable error.
Returns plain JSON objects exactly as Stripe sent them.
"""

from __future__ import annotations

from typing import Iterator

import dagster as dg
import stripe
from pydantic import Field, PrivateAttr

from m3_recon.errors import VendorAuthError, VendorRequestError, VendorUnavailableError
from m3_recon.resilience import RequestBudget, RetryPolicy, RetryVerdict, parse_retry_after, retry_call

STRIPE_API_VERSION = "2026-10-28.endive"
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
    retryable = should_retry == "true" or status in (409, 429) or status >= 500
    return RetryVerdict(retry=retryable, retry_after=retry_after)


class StripeResource(dg.ConfigurableResource):
    """Read access to one Stripe account."""

    api_key: str = Field(description="Secret or restricted key (STRIPE_API_KEY); never logged.")
    api_base: str = Field(default="https://api.stripe.com", description="STRIPE_API_BASE")
    max_requests_per_second: float = Field(default=25.0, description="STRIPE_MAX_REQUESTS_PER_SECOND")
    max_attempts: int = Field(default=5, description="STRIPE_MAX_ATTEMPTS: tries per request")
    timeout_seconds: float = Field(default=30.0, description="STRIPE_TIMEOUT_SECONDS per request")
    page_size: int = Field(default=100, ge=1, le=100)

    _client: stripe.StripeClient | None = PrivateAttr(default=None)

    def client(self) -> stripe.StripeClient:
        if self._client is None:
            budget = RequestBudget(self.max_requests_per_second)
            self._client = stripe.StripeClient(
                self.api_key,
                stripe_version=STRIPE_API_VERSION,
                base_addresses={"api": self.api_base.rstrip("/")},
                max_network_retries=0,  # retries are ours: the SDK ignores Retry-After and plain 429s
                http_client=BudgetedRequestsClient(budget, timeout=self.timeout_seconds),
            )
        return self._client

    # -- paging ---------------------------------------------------------------------------------
    def _list_page(self, service: str, params: dict) -> dict:
        endpoint = f"GET /v1/{service}"
        list_method = getattr(self.client().v1, service).list

        def call() -> dict:
            return list_method(params).last_response.data

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

    def list_all(self, service: str, params: dict) -> Iterator[dict]:
        """Every object of a list endpoint, newest first, following ``has_more`` with ``starting_after``."""
        params = {**params, "limit": self.page_size}
        while True:
            page = self._list_page(service, params)
            yield from page["data"]
            if not page["has_more"] or not page["data"]:
                return
            params = {**params, "starting_after": page["data"][-1]["id"]}

    # -- what the assets read -------------------------------------------------------------------
    def balance_transactions(self, created_gte: int, created_lt: int) -> list[dict]:
        """Balance transactions created in [gte, lt), with their source (charge, refund…) expanded."""
        return list(self.list_all("balance_transactions", {
            "created": {"gte": created_gte, "lt": created_lt}, "expand": ["data.source"]}))

    def payouts(self, created_gte: int, created_lt: int) -> list[dict]:
        return list(self.list_all("payouts", {"created": {"gte": created_gte, "lt": created_lt}}))

    def customers(self) -> list[dict]:
        """Every customer of the account (for the customer cross-reference)."""
        return list(self.list_all("customers", {}))

    def events(self, created_gte: int, types: list[str]) -> list[dict]:
        """Events created at or after ``created_gte`` of the given types (wildcards allowed), oldest first."""
        return list(reversed(list(self.list_all("events", {"created": {"gte": created_gte}, "types": types}))))

    def set_customer_metadata(self, customer_id: str, metadata: dict[str, str]) -> dict:
        """Set metadata keys on one customer (the only write this connector makes, and only when asked)."""
        client = self.client()
        return retry_call(lambda: client.v1.customers.update(customer_id, {"metadata": metadata}).to_dict(),
                          classify_stripe_error, RetryPolicy(max_attempts=self.max_attempts))

    def payout_lines(self, payout_id: str) -> list[dict]:
        """The balance transactions an automatic payout settled, including its own ``type=payout`` line."""
        return list(self.list_all("balance_transactions", {"payout": payout_id}))

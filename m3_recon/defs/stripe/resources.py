"""Stripe as a Dagster resource: the settings of ``StripeClient`` (configured in definitions.py)."""

from __future__ import annotations

from pydantic import Field

from m3_recon.clients.stripe import DEFAULT_API_BASE, StripeClient
from m3_recon.defs.client_resource import ClientResource


class StripeResource(ClientResource):
    """Read access to one Stripe account."""

    api_key: str = Field(description="Secret or restricted key (STRIPE_API_KEY); never logged.")
    api_base: str = Field(default=DEFAULT_API_BASE, description="STRIPE_API_BASE")
    max_requests_per_second: float = Field(default=25.0, description="STRIPE_MAX_REQUESTS_PER_SECOND")
    max_attempts: int = Field(default=5, description="STRIPE_MAX_ATTEMPTS: tries per request")
    timeout_seconds: float = Field(default=30.0, description="STRIPE_TIMEOUT_SECONDS per request")
    page_size: int = Field(default=100, ge=1, le=100)
    concurrency: int = Field(default=4, ge=1, description="STRIPE_CONCURRENCY: list cursor chains paged at once "
                             "(never more than the request budget per second)")
    window_slices: int = Field(default=8, ge=1, description="sub-windows a created-time window is cut into")

    def _build(self) -> StripeClient:
        return StripeClient(self.api_key, api_base=self.api_base, requests_per_second=self.max_requests_per_second,
                            max_attempts=self.max_attempts, timeout_seconds=self.timeout_seconds,
                            page_size=self.page_size, concurrency=self.concurrency, window_slices=self.window_slices)

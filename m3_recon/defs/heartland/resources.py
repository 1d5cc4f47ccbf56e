"""Heartland (GP API) as a Dagster resource: the settings of ``HeartlandClient`` (configured in definitions.py)."""

from __future__ import annotations

from pydantic import Field

from m3_recon.clients.heartland import DEFAULT_API_BASE, HeartlandClient
from m3_recon.defs.client_resource import ClientResource


class HeartlandResource(ClientResource):
    """Read access to one Global Payments (Heartland) merchant's settlement reports on GP API."""

    app_id: str = Field(description="GP API app id (GP_API_APP_ID).")
    app_key: str = Field(description="GP API app key (GP_API_APP_KEY); never sent, logged or stored.")
    api_base: str = Field(default=DEFAULT_API_BASE, description="GP_API_BASE")
    account_name: str = Field(default="", description="GP_API_ACCOUNT_NAME: the DAA_ data account; "
                              "empty = the one the access token grants")
    merchant_id: str = Field(default="", description="HEARTLAND_MERCHANT_ID: only this MID (system.mid); "
                             "empty = every MID of the account")
    token_seconds_to_expire: int = Field(default=3_600, ge=60, le=604_800, description="GP_API_TOKEN_SECONDS")
    max_requests_per_second: float = Field(default=10.0, gt=0, description="GP_API_MAX_REQUESTS_PER_SECOND")
    max_attempts: int = Field(default=5, ge=1, description="GP_API_MAX_ATTEMPTS: tries per request")
    timeout_seconds: float = Field(default=30.0, gt=0, description="GP_API_TIMEOUT_SECONDS per request")
    page_size: int = Field(default=1_000, ge=1, le=1_000, description="rows per page (GP allows at most 1000)")
    concurrency: int = Field(default=4, ge=1, description="GP_API_CONCURRENCY: pages of one list read at once "
                             "once the first page has given the count (never more than the request budget per second)")

    def _build(self) -> HeartlandClient:
        return HeartlandClient(self.app_id, self.app_key, api_base=self.api_base, account_name=self.account_name,
                               merchant_id=self.merchant_id, token_seconds_to_expire=self.token_seconds_to_expire,
                               requests_per_second=self.max_requests_per_second, max_attempts=self.max_attempts,
                               timeout_seconds=self.timeout_seconds, page_size=self.page_size,
                               concurrency=self.concurrency)

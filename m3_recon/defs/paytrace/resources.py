"""PayTrace as a Dagster resource: the settings of ``PayTraceClient`` (configured in definitions.py)."""

from __future__ import annotations

from pydantic import Field

from m3_recon.clients.paytrace import DEFAULT_API_BASE, DEFAULT_TIMEZONE, PayTraceClient
from m3_recon.defs.client_resource import ClientResource


class PayTraceResource(ClientResource):
    """Read access to one PayTrace merchant account through the v1 JSON API."""

    username: str = Field(description="PAYTRACE_USERNAME: the API user; never logged.")
    password: str = Field(description="PAYTRACE_PASSWORD: the API user's password; never logged.")
    api_base: str = Field(default=DEFAULT_API_BASE, description="PAYTRACE_API_BASE")
    integrator_id: str = Field(default="", description="PAYTRACE_INTEGRATOR_ID, sent in every v1 body when set")
    time_zone: str = Field(default=DEFAULT_TIMEZONE,
                           description="PAYTRACE_TIMEZONE: the account's zone, in which PayTrace writes timestamps")
    max_requests_per_second: float = Field(default=5.0, description="PAYTRACE_MAX_REQUESTS_PER_SECOND")
    max_attempts: int = Field(default=5, description="PAYTRACE_MAX_ATTEMPTS: tries per request")
    timeout_seconds: float = Field(default=60.0, description="PAYTRACE_TIMEOUT_SECONDS per request")

    def _build(self) -> PayTraceClient:
        return PayTraceClient(self.username, self.password, api_base=self.api_base, integrator_id=self.integrator_id,
                              time_zone=self.time_zone, requests_per_second=self.max_requests_per_second,
                              max_attempts=self.max_attempts, timeout_seconds=self.timeout_seconds)

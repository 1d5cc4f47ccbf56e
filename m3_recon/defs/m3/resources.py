"""Infor M3 as a Dagster resource: the settings of ``M3Client`` for one company and division.

Configured from the environment by ``m3_resource_from_env`` (m3_recon/defs/m3/definitions.py): the
ION API route needs only ``M3_IONAPI_FILE`` (the file holds the keys, so no secret enters Dagster
config); the on-premise route takes ``M3_BASE_URL`` plus ``M3_USERNAME`` / ``M3_PASSWORD`` through
``dg.EnvVar``. The client is built on first use and shared by the threads of one run.
"""

from __future__ import annotations

from pydantic import Field

from m3_recon.clients.m3 import (DEFAULT_BULK_SIZE, DEFAULT_READ_CONCURRENCY, MAX_BULK_SIZE, OPEN_ITEMS_PAGING, VENDOR,
                                 M3Client)
from m3_recon.defs.client_resource import ClientResource
from m3_recon.errors import VendorAuthError


class M3Resource(ClientResource):
    """Read (and later post) access to one M3 company/division."""

    ionapi_file: str = Field(default="", description="M3_IONAPI_FILE: the backend-service .ionapi file (ION API)")
    base_url: str = Field(default="", description="M3_BASE_URL: on-premise M3 as https://host:port")
    username: str = Field(default="", description="M3_USERNAME (on-premise)")
    password: str = Field(default="", description="M3_PASSWORD (on-premise); never logged")
    cono: int = Field(default=0, description="M3_CONO: company number")
    divi: str = Field(default="", description="M3_DIVI: division")
    max_requests_per_second: float = Field(default=10.0, description="M3_MAX_REQUESTS_PER_SECOND")
    max_attempts: int = Field(default=5, description="M3_MAX_ATTEMPTS: tries per request")
    timeout_seconds: float = Field(default=60.0, description="M3_TIMEOUT_SECONDS per request")
    page_size: int = Field(default=500, ge=1, le=10_000, description="M3_PAGE_SIZE: maxrecs per list page")
    max_pages: int = Field(default=200, ge=1, description="M3_MAX_PAGES: list pages before giving up")
    bulk_size: int = Field(default=DEFAULT_BULK_SIZE, ge=1, le=MAX_BULK_SIZE, description="M3_BULK_SIZE: transactions per bulk call")
    open_items_paging: str = Field(default="payer", description=f"M3_OPEN_ITEMS_PAGING: how open items are read, "
                                   f"one of {', '.join(OPEN_ITEMS_PAGING)}")
    read_concurrency: int = Field(default=DEFAULT_READ_CONCURRENCY, ge=1,
                                  description="M3_READ_CONCURRENCY: read-only bulk calls in flight at once")

    def _build(self) -> M3Client:
        if self.cono <= 0:
            raise VendorAuthError(VENDOR, "set M3_CONO to the M3 company number (e.g. 100)")
        if not self.divi.strip():
            raise VendorAuthError(VENDOR, "set M3_DIVI to the M3 division whose customer ledger to read (e.g. AAA)")
        options = {"requests_per_second": self.max_requests_per_second, "max_attempts": self.max_attempts,
                   "timeout_seconds": self.timeout_seconds, "page_size": self.page_size,
                   "max_pages": self.max_pages, "bulk_size": self.bulk_size,
                   "open_items_paging": self.open_items_paging.strip().lower(),
                   "read_concurrency": self.read_concurrency}
        if self.ionapi_file:
            return M3Client.from_ionapi(self.ionapi_file, self.cono, self.divi.strip(), **options)
        return M3Client.on_premise(self.base_url, self.username, self.password, self.cono, self.divi.strip(),
                                   **options)

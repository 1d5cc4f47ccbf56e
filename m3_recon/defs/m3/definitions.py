"""Infor M3's assets, its resource (configured from the environment) and the M3 ingest job."""

from __future__ import annotations

import os

import dagster as dg

from m3_recon import settings
from m3_recon.clients.m3 import DEFAULT_BULK_SIZE, DEFAULT_READ_CONCURRENCY
from m3_recon.defs.m3.assets import core_open_invoices, raw_m3_customers, raw_m3_open_invoices
from m3_recon.defs.m3.resources import M3Resource

m3_ingest = dg.define_asset_job("m3_ingest", selection=dg.AssetSelection.groups("m3"),
                                description="Snapshot M3's open customer invoices and publish the latest one.")


def m3_resource_from_env() -> M3Resource:
    """ION API when ``M3_IONAPI_FILE`` is set, else on-premise ``M3_BASE_URL`` with Basic credentials."""
    credentials = {field: dg.EnvVar(variable) for field, variable in (("username", "M3_USERNAME"),
                                                                      ("password", "M3_PASSWORD"))
                   if os.environ.get(variable)}
    return M3Resource(
        ionapi_file=os.environ.get("M3_IONAPI_FILE", ""),
        base_url=os.environ.get("M3_BASE_URL", ""),
        cono=settings.int_setting("M3_CONO", 0),
        divi=os.environ.get("M3_DIVI", ""),
        max_requests_per_second=float(os.environ.get("M3_MAX_REQUESTS_PER_SECOND", "10")),
        max_attempts=settings.int_setting("M3_MAX_ATTEMPTS", 5, minimum=1),
        timeout_seconds=float(os.environ.get("M3_TIMEOUT_SECONDS", "60")),
        page_size=settings.int_setting("M3_PAGE_SIZE", 500, minimum=1),
        max_pages=settings.int_setting("M3_MAX_PAGES", 200, minimum=1),
        bulk_size=settings.int_setting("M3_BULK_SIZE", DEFAULT_BULK_SIZE, minimum=1),
        open_items_paging=os.environ.get("M3_OPEN_ITEMS_PAGING", "payer"),
        read_concurrency=settings.int_setting("M3_READ_CONCURRENCY", DEFAULT_READ_CONCURRENCY, minimum=1),
        **credentials,
    )


defs = dg.Definitions(
    assets=[raw_m3_open_invoices, core_open_invoices, raw_m3_customers],
    jobs=[m3_ingest],
    resources={"m3": m3_resource_from_env()},
)

"""Heartland's (GP API) assets, its resource configured from the environment, and its ingest job."""

from __future__ import annotations

import os

import dagster as dg

from m3_recon import settings
from m3_recon.clients.heartland import DEFAULT_API_BASE
from m3_recon.defs.heartland.assets import (
    raw_heartland_deposits, raw_heartland_disputes, raw_heartland_settlement_transactions,
)
from m3_recon.defs.heartland.resources import HeartlandResource

heartland_ingest = dg.define_asset_job(
    "heartland_ingest", selection=dg.AssetSelection.groups("heartland"),
    description="Pull GP API settlement transactions, disputes and deposits for Heartland, by deposit date.")


def heartland_resource_from_env() -> HeartlandResource:
    return HeartlandResource(
        app_id=dg.EnvVar("GP_API_APP_ID"),
        app_key=dg.EnvVar("GP_API_APP_KEY"),
        api_base=os.environ.get("GP_API_BASE", DEFAULT_API_BASE),
        account_name=os.environ.get("GP_API_ACCOUNT_NAME", ""),
        merchant_id=os.environ.get("HEARTLAND_MERCHANT_ID", ""),
        token_seconds_to_expire=settings.int_setting("GP_API_TOKEN_SECONDS", 3_600, minimum=60),
        max_requests_per_second=float(os.environ.get("GP_API_MAX_REQUESTS_PER_SECOND", "10")),
        max_attempts=settings.int_setting("GP_API_MAX_ATTEMPTS", 5, minimum=1),
        timeout_seconds=float(os.environ.get("GP_API_TIMEOUT_SECONDS", "30")),
        concurrency=settings.int_setting("GP_API_CONCURRENCY", 4, minimum=1),
    )


defs = dg.Definitions(
    assets=[raw_heartland_settlement_transactions, raw_heartland_disputes, raw_heartland_deposits],
    jobs=[heartland_ingest],
    resources={"heartland": heartland_resource_from_env()},
)

"""Stripe's assets, its ingest job and its resource (configured from the environment)."""

from __future__ import annotations

import os

import dagster as dg

from m3_recon import settings
from m3_recon.clients.stripe import DEFAULT_API_BASE
from m3_recon.defs.stripe.assets import (raw_stripe_balance_transactions, raw_stripe_customers, raw_stripe_payout_lines,
                                         raw_stripe_payouts)
from m3_recon.defs.stripe.resources import StripeResource
from m3_recon.defs.stripe.sensors import stripe_events_sensor

stripe_ingest = dg.define_asset_job("stripe_ingest", selection=dg.AssetSelection.groups("stripe"),
                                    description="Pull Stripe balance transactions, payouts and payout lines.")


def stripe_resource_from_env() -> StripeResource:
    return StripeResource(
        api_key=dg.EnvVar("STRIPE_API_KEY"),
        api_base=os.environ.get("STRIPE_API_BASE", DEFAULT_API_BASE),
        max_requests_per_second=float(os.environ.get("STRIPE_MAX_REQUESTS_PER_SECOND", "25")),
        max_attempts=settings.int_setting("STRIPE_MAX_ATTEMPTS", 5, minimum=1),
        timeout_seconds=float(os.environ.get("STRIPE_TIMEOUT_SECONDS", "30")),
        concurrency=settings.int_setting("STRIPE_CONCURRENCY", 4, minimum=1),
    )


defs = dg.Definitions(
    assets=[raw_stripe_balance_transactions, raw_stripe_payouts, raw_stripe_payout_lines, raw_stripe_customers],
    jobs=[stripe_ingest],
    sensors=[stripe_events_sensor],
    resources={"stripe": stripe_resource_from_env()},
)

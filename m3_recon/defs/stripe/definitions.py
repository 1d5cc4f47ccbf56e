"""Stripe's assets, its resource (configured from the environment) and its daily ingest schedule."""

from __future__ import annotations

import os
from datetime import timedelta, timezone

import dagster as dg

from m3_recon import settings
from m3_recon.defs.stripe.assets import raw_stripe_balance_transactions, raw_stripe_payout_lines, raw_stripe_payouts
from m3_recon.defs.stripe.resources import StripeResource

stripe_ingest = dg.define_asset_job("stripe_ingest", selection=dg.AssetSelection.groups("stripe"),
                                    description="Pull Stripe balance transactions, payouts and payout lines.")


@dg.schedule(job=stripe_ingest, cron_schedule="0 2 * * *", execution_timezone=settings.reporting_timezone(),
             default_status=dg.DefaultScheduleStatus.STOPPED)
def stripe_ingest_nightly(context: dg.ScheduleEvaluationContext):
    """At 02:00 in the reporting time zone, load the last UTC day that has fully ended."""
    day = (context.scheduled_execution_time.astimezone(timezone.utc) - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=f"stripe_ingest:{day}", partition_key=day)


def stripe_resource_from_env() -> StripeResource:
    return StripeResource(
        api_key=dg.EnvVar("STRIPE_API_KEY"),
        api_base=os.environ.get("STRIPE_API_BASE", "https://api.stripe.com"),
        max_requests_per_second=float(os.environ.get("STRIPE_MAX_REQUESTS_PER_SECOND", "25")),
        max_attempts=settings.int_setting("STRIPE_MAX_ATTEMPTS", 5, minimum=1),
        timeout_seconds=float(os.environ.get("STRIPE_TIMEOUT_SECONDS", "30")),
    )


defs = dg.Definitions(
    assets=[raw_stripe_balance_transactions, raw_stripe_payouts, raw_stripe_payout_lines],
    jobs=[stripe_ingest],
    schedules=[stripe_ingest_nightly],
    resources={"stripe": stripe_resource_from_env()},
)

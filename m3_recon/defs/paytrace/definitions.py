"""PayTrace's assets, its resource (configured from the environment) and its nightly ingest schedule."""

from __future__ import annotations

import os

import dagster as dg

from m3_recon import settings
from m3_recon.clients.paytrace import DEFAULT_API_BASE, DEFAULT_TIMEZONE, account_zone
from m3_recon.defs.paytrace.assets import raw_paytrace_batches, raw_paytrace_transactions
from m3_recon.defs.paytrace.resources import PayTraceResource

PAYTRACE_TIMEZONE = account_zone(os.environ.get("PAYTRACE_TIMEZONE", DEFAULT_TIMEZONE)).key

paytrace_ingest = dg.define_asset_job("paytrace_ingest", selection=dg.AssetSelection.groups("paytrace"),
                                      description="Pull PayTrace settlement batches and their transactions.")


@dg.schedule(job=paytrace_ingest, cron_schedule="30 21 * * *", execution_timezone=PAYTRACE_TIMEZONE,
             default_status=dg.DefaultScheduleStatus.STOPPED)
def paytrace_ingest_nightly(context: dg.ScheduleEvaluationContext):
    """At 9:30 p.m. in the account's zone, after the 8 p.m. auto-settlement, load that day's batch."""
    day = context.scheduled_execution_time.astimezone(account_zone(PAYTRACE_TIMEZONE)).date().isoformat()
    return dg.RunRequest(run_key=f"paytrace_ingest:{day}", partition_key=day)


def paytrace_resource_from_env() -> PayTraceResource:
    return PayTraceResource(
        username=dg.EnvVar("PAYTRACE_USERNAME"),
        password=dg.EnvVar("PAYTRACE_PASSWORD"),
        api_base=os.environ.get("PAYTRACE_API_BASE", DEFAULT_API_BASE),
        integrator_id=os.environ.get("PAYTRACE_INTEGRATOR_ID", ""),
        time_zone=PAYTRACE_TIMEZONE,
        max_requests_per_second=float(os.environ.get("PAYTRACE_MAX_REQUESTS_PER_SECOND", "5")),
        max_attempts=settings.int_setting("PAYTRACE_MAX_ATTEMPTS", 5, minimum=1),
        timeout_seconds=float(os.environ.get("PAYTRACE_TIMEOUT_SECONDS", "60")),
    )


defs = dg.Definitions(
    assets=[raw_paytrace_batches, raw_paytrace_transactions],
    jobs=[paytrace_ingest],
    schedules=[paytrace_ingest_nightly],
    resources={"paytrace": paytrace_resource_from_env()},
)

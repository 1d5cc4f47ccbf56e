"""Running the payout close in this process for one day or a period, on the persistent instance.

Used by ``m3-recon backfill`` and the demo. A period runs as one single-run backfill (every asset
reads the range once); the run is recorded in ``DAGSTER_HOME`` and shows in the UI like any other.
"""

from __future__ import annotations

from datetime import date

import dagster as dg


def run_payout_close(first_day: date, last_day: date, log_level: str = "WARNING") -> dg.ExecuteInProcessResult:
    from m3_recon.definitions import defs  # partitions are built from the environment at import

    if last_day < first_day:
        raise ValueError(f"the period ends ({last_day}) before it starts ({first_day})")
    return defs.resolve_job_def("payout_close").execute_in_process(
        instance=dg.DagsterInstance.get(),
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        tags={"dagster/asset_partition_range_start": first_day.isoformat(),
              "dagster/asset_partition_range_end": last_day.isoformat(),
              "m3_recon/trigger": "cli"},
        raise_on_error=False,
    )


def run_after_close(log_level: str = "WARNING") -> list[dg.ExecuteInProcessResult]:
    """What the sensors launch after a close: posting to M3, then alerts for new exceptions."""
    from m3_recon.definitions import defs

    return [defs.resolve_job_def(job).execute_in_process(
        instance=dg.DagsterInstance.get(), run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        tags={"m3_recon/trigger": "cli"}, raise_on_error=False) for job in ("m3_posting", "recon_alerts")]


def run_report(first_day: date, last_day: date, log_level: str = "WARNING") -> dg.ExecuteInProcessResult:
    """The reconciliation report for a period, after posting (what ``reconciliation_report_sensor`` launches)."""
    from m3_recon.definitions import defs

    return defs.resolve_job_def("reconciliation_report").execute_in_process(
        instance=dg.DagsterInstance.get(),
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        tags={"dagster/asset_partition_range_start": first_day.isoformat(),
              "dagster/asset_partition_range_end": last_day.isoformat(), "m3_recon/trigger": "cli"},
        raise_on_error=False)

"""Running the payout close in this process for one day or a period, on the persistent instance.

Used by ``m3-recon backfill`` and the demo. A period runs as one single-run backfill (every asset
reads the range once); the run is recorded in ``DAGSTER_HOME`` and shows in the UI like any other.
Each run is tagged with this process's identity, and runs left behind by a dead process are failed
and their pool slots freed before it starts (``run_guard``); ``out`` receives its progress.
"""

from __future__ import annotations

import sys
import uuid
from datetime import date
from typing import TextIO

import dagster as dg

from m3_recon.progress import RunWatch
from m3_recon.run_guard import process_tags, reap_dead_runs


def run_payout_close(first_day: date, last_day: date, log_level: str = "WARNING",
                     out: TextIO | None = None) -> dg.ExecuteInProcessResult:
    if last_day < first_day:
        raise ValueError(f"the period ends ({last_day}) before it starts ({first_day})")
    return _execute("payout_close", {"dagster/asset_partition_range_start": first_day.isoformat(),
                                     "dagster/asset_partition_range_end": last_day.isoformat()}, log_level, out)


def run_after_close(log_level: str = "WARNING", out: TextIO | None = None) -> list[dg.ExecuteInProcessResult]:
    """What the sensors launch after a close: posting to M3, then alerts for new exceptions."""
    return [_execute(job, {}, log_level, out) for job in ("m3_posting", "recon_alerts")]


def _execute(job: str, tags: dict[str, str], log_level: str, out: TextIO | None) -> dg.ExecuteInProcessResult:
    from m3_recon.definitions import defs  # partitions are built from the environment at import

    instance = dg.DagsterInstance.get()
    for line in reap_dead_runs(instance):
        print(f"before {job}: {line}", file=out or sys.stderr, flush=True)
    run_id = str(uuid.uuid4())  # known before the run starts, so its progress can be followed
    if out is not None:
        print(f"{job} (run {run_id[:8]})", file=out, flush=True)
    with RunWatch(instance, run_id, out):
        return defs.resolve_job_def(job).execute_in_process(
            instance=instance, run_id=run_id,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            tags={**tags, "m3_recon/trigger": "cli", **process_tags()}, raise_on_error=False)


def run_report(first_day: date, last_day: date, log_level: str = "WARNING",
               out: TextIO | None = None) -> dg.ExecuteInProcessResult:
    """The reconciliation report for a period, after posting (what ``reconciliation_report_sensor`` launches)."""
    return _execute("reconciliation_report", {"dagster/asset_partition_range_start": first_day.isoformat(),
                                              "dagster/asset_partition_range_end": last_day.isoformat()}, log_level, out)

"""Jobs, the nightly close schedule and the sensors that react to what a close produced.

* ``payout_close`` — everything from staging to journals for a day (or, as a backfill, a period);
* ``nightly_payout_close`` — at 02:00 in ``M3_RECON_TIMEZONE``, the last UTC day that has ended;
* ``m3_posting_sensor`` — after each new set of journals, a run of ``m3_posting`` (out_m3_postings);
* ``recon_alert_sensor`` — after each new exception register, a run of ``recon_alerts`` (out_alerts);
* ``reconciliation_report_sensor`` — after each posting run, the report for the last close's period
  (``reconciliation_report``), so the report states what M3 holds;
* ``resolve_exception`` — finance records a decision on an exception from the Launchpad (see
  ``m3_recon.defs.reconcile.resolve``);
* ``dead_run_reaper`` — runs the ``m3-recon`` command started on this host whose process died are marked
  failed and their pool slots freed, so runs the daemon launches never wait behind them.
Sensors only look at Dagster's instance (never at the warehouse), so they cannot contend with a run.
"""

from datetime import timedelta, timezone

import dagster as dg

from m3_recon import settings
from m3_recon.run_guard import reap_dead_runs

POSTING = dg.AssetSelection.assets("out_m3_postings")
ALERTS = dg.AssetSelection.assets("out_alerts")
REPORT = dg.AssetSelection.assets("out_reconciliation_report")
AFTER_CLOSE = POSTING | ALERTS | REPORT
PARTITION_RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")

payout_close = dg.define_asset_job(
    "payout_close", selection=dg.AssetSelection.all() - AFTER_CLOSE,
    description="The close for a day (or, as a backfill, a period): every processor's staging, M3's open "
                "invoices, the canonical model, matching, tie-out, exceptions and journals.")

recon_alerts = dg.define_asset_job("recon_alerts", selection=ALERTS,
                                   description="Raise (and deliver) alerts for newly opened exceptions.")

m3_posting = dg.define_asset_job("m3_posting", selection=POSTING,
                                 description="Post pending vouchers and cash applications to M3, exactly once.")

reconciliation_report = dg.define_asset_job(
    "reconciliation_report", selection=REPORT,
    description="The payout reconciliation report for a day or (as a backfill) a period, after posting.")


@dg.schedule(job=payout_close, cron_schedule="0 2 * * *", execution_timezone=settings.reporting_timezone(),
             default_status=dg.DefaultScheduleStatus.STOPPED)
def nightly_payout_close(context: dg.ScheduleEvaluationContext):
    """At 02:00 in the reporting time zone, close the last UTC day that has fully ended."""
    day = (context.scheduled_execution_time.astimezone(timezone.utc) - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=f"payout_close:{day}", partition_key=day)


@dg.asset_sensor(asset_key=dg.AssetKey("out_recon_exceptions"), job=recon_alerts, minimum_interval_seconds=60,
                 default_status=dg.DefaultSensorStatus.STOPPED)
def recon_alert_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """Every new materialisation of the exception register asks for one alert run (keyed by the event)."""
    yield dg.RunRequest(run_key=f"alerts:{asset_event.run_id}:{asset_event.timestamp}")


@dg.asset_sensor(asset_key=dg.AssetKey("core_gl_journal_lines"), job=m3_posting, minimum_interval_seconds=60,
                 default_status=dg.DefaultSensorStatus.STOPPED)
def m3_posting_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """New journals (vouchers that became ready) ask for one posting run (keyed by the event)."""
    yield dg.RunRequest(run_key=f"post:{asset_event.run_id}:{asset_event.timestamp}")


@dg.asset_sensor(asset_key=dg.AssetKey("out_m3_postings"), job=reconciliation_report, minimum_interval_seconds=60,
                 default_status=dg.DefaultSensorStatus.STOPPED)
def reconciliation_report_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """After posting, the report for the period of the last successful close (read from its run's tags)."""
    closes = context.instance.get_runs(filters=dg.RunsFilter(job_name="payout_close",
                                                             statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1)
    if not closes:
        return dg.SkipReason("no payout_close has succeeded yet")
    tags = closes[0].tags
    first, last = (tags.get(PARTITION_RANGE_TAGS[0], tags.get("dagster/partition")),
                   tags.get(PARTITION_RANGE_TAGS[1], tags.get("dagster/partition")))
    if not first:
        return dg.SkipReason(f"run {closes[0].run_id} of payout_close names no partition")
    return dg.RunRequest(run_key=f"report:{asset_event.run_id}:{first}:{last}",
                         tags=dict(zip(PARTITION_RANGE_TAGS, (first, last))))


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def dead_run_reaper(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Runs whose recorded process is gone (killed, out of memory, rebooted) are marked failed and their
    ``duckdb_writer`` slots freed; runs the daemon launched are watched by Dagster's run monitoring."""
    reaped = reap_dead_runs(context.instance)
    for line in reaped:
        context.log.warning(line)
    return dg.SkipReason("; ".join(reaped) or "no run left behind by a dead process")


defs = dg.Definitions(jobs=[payout_close, recon_alerts, m3_posting, reconciliation_report],
                      schedules=[nightly_payout_close],
                      sensors=[recon_alert_sensor, m3_posting_sensor, reconciliation_report_sensor, dead_run_reaper])

"""Schedules, sensors and alerts: the nightly close's partition, one alert run per new exception
register, alerts raised once and delivered to a webhook (with failures retried)."""

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pytest

from m3_recon.alerts import deliver_alerts, raise_alerts
from m3_recon.definitions import defs
from m3_recon.sandbox.server import Fault, Request, Response, SandboxClock, VendorApp, VendorServer


class WebhookReceiver(VendorApp):
    name = "webhook"

    def __init__(self):
        self.posts = []

    def handle(self, request: Request) -> Response:
        self.posts.append(request.json())
        return Response.json(200, {"ok": True})


@pytest.fixture
def receiver():
    app = WebhookReceiver()
    server = VendorServer(app, SandboxClock(0)).start()
    yield app, server
    server.stop()


def register(conn, rows):
    conn.execute("CREATE TABLE IF NOT EXISTS out_recon_exceptions (exception_id VARCHAR, reason_code VARCHAR, "
                 "processor VARCHAR, source_id VARCHAR, settlement_date DATE, currency VARCHAR, amount_minor BIGINT, "
                 "detail VARCHAR, status VARCHAR)")
    conn.executemany("INSERT INTO out_recon_exceptions VALUES (?, ?, 'stripe', ?, DATE '2026-10-05', 'USD', ?, ?, ?)", rows)


@pytest.mark.parametrize("tick,expected", [("2026-10-05T02:00:00", "2026-10-04"), ("2026-11-01T02:00:00", "2026-10-31")])
def test_nightly_close_requests_the_last_complete_utc_day(tick, expected):
    schedule = defs.resolve_schedule_def("nightly_payout_close")
    zone = ZoneInfo(schedule.execution_timezone)
    context = dg.build_schedule_context(scheduled_execution_time=datetime.fromisoformat(tick).replace(tzinfo=zone),
                                        repository_def=defs.get_repository_def())
    (request,) = schedule.evaluate_tick(context).run_requests
    assert (request.partition_key, request.run_key, request.job_name or "payout_close") == (
        expected, f"payout_close:{expected}", "payout_close")


def test_alert_sensor_asks_for_one_run_per_new_exception_register():
    sensor = defs.resolve_sensor_def("recon_alert_sensor")
    with dg.instance_for_test() as instance:
        for _ in range(2):
            instance.report_runless_asset_event(dg.AssetMaterialization("out_recon_exceptions"))
        context = dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
        first = sensor.evaluate_tick(context)
        assert len(first.run_requests) == 1  # the latest materialisation since the cursor
        context = dg.build_sensor_context(instance=instance, cursor=first.cursor, repository_def=defs.get_repository_def())
        assert sensor.evaluate_tick(context).run_requests == []  # nothing new: no duplicate run request
        instance.report_runless_asset_event(dg.AssetMaterialization("out_recon_exceptions"))
        context = dg.build_sensor_context(instance=instance, cursor=first.cursor, repository_def=defs.get_repository_def())
        (again,) = sensor.evaluate_tick(context).run_requests
        assert again.run_key != first.run_requests[0].run_key


def test_each_open_exception_is_alerted_once_and_delivered(receiver):
    app, server = receiver
    conn = duckdb.connect()
    register(conn, [("EX-AAA", "payout_mismatch", "po_1", 1234, "residue 12.34 USD", "open"),
                    ("EX-BBB", "no_reference", "txn_2", 500, "no reference", "open"),
                    ("EX-CCC", "no_reference", "txn_3", 700, "gone", "cleared")])
    now = datetime(2026, 10, 6, 2, 5)
    assert raise_alerts(conn, now) == 2
    assert raise_alerts(conn, now) == 0
    assert deliver_alerts(conn, server.url + "/hook", now) == {"delivered": 2, "failed": 0}
    (post,) = app.posts
    assert "2 new reconciliation exception(s)" in post["text"] and "po_1: payout_mismatch — residue 12.34 USD (12.34 USD)" in post["text"]
    assert deliver_alerts(conn, server.url + "/hook", now) == {"delivered": 0, "failed": 0}


def test_a_failed_delivery_is_kept_and_retried(receiver):
    app, server = receiver
    conn = duckdb.connect()
    register(conn, [("EX-AAA", "overpayment", "txn_1", 900, "excess", "open")])
    now = datetime(2026, 10, 6, 2, 5)
    raise_alerts(conn, now)
    server.faults.configure(faults=[Fault(status=503)])
    assert deliver_alerts(conn, server.url + "/hook", now) == {"delivered": 0, "failed": 1}
    assert conn.execute("SELECT delivery_error FROM out_alerts").fetchone() == ("webhook answered HTTP 503",)
    assert deliver_alerts(conn, server.url + "/hook", now) == {"delivered": 1, "failed": 0}
    assert len(app.posts) == 1 and json.dumps(app.posts[0]).count("EX-") == 0  # people read sources, not ids


def test_after_posting_the_report_is_requested_for_the_last_close_period():
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

    sensor = defs.resolve_sensor_def("reconciliation_report_sensor")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("out_m3_postings"))
        assert isinstance(sensor.evaluate_tick(dg.build_sensor_context(instance=instance)).skip_message, str)
        instance.add_run(DagsterRun(job_name="payout_close", run_id="close-1", status=DagsterRunStatus.SUCCESS,
                                    tags={"dagster/asset_partition_range_start": "2026-10-01",
                                          "dagster/asset_partition_range_end": "2026-10-31"}))
        instance.report_runless_asset_event(dg.AssetMaterialization("out_m3_postings"))
        result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    [request] = result.run_requests
    assert request.job_name in (None, "reconciliation_report")
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == ("2026-10-01", "2026-10-31")

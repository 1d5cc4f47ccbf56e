"""A run whose process died never blocks another: liveness from pid, host and process start time; dead runs are
marked failed and their pool slots freed before a run starts, or while one waits for the slot; doctor names the
holder; progress lines and the closing summary."""

import io
import socket
import subprocess
import sys

import dagster as dg
import pytest
from dagster._core.utils import make_new_run_id

from m3_recon import progress, run_guard
from m3_recon.defs.metadata import money_totals
from m3_recon.doctor import _check_held_slots

POOL = "duckdb_writer"


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        instance.event_log_storage.set_concurrency_slots(POOL, 1)
        yield instance


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def run_holding_the_slot(instance, tags: dict[str, str]) -> str:
    """A run marked started, holding the writer slot, as a close killed mid-step leaves it."""
    run_id = make_new_run_id()
    instance.add_run(dg.DagsterRun(job_name="payout_close", run_id=run_id, tags=tags,
                                   status=dg.DagsterRunStatus.STARTED))
    assert instance.event_log_storage.claim_concurrency_slot(POOL, run_id, "raw_stripe_payouts").is_claimed
    return run_id


def test_liveness_is_told_by_pid_host_and_process_start():
    mine = run_guard.process_tags()
    assert run_guard.process_alive(mine) is True
    assert run_guard.process_alive({**mine, run_guard.PID_TAG: str(dead_pid())}) is False
    assert run_guard.process_alive({**mine, run_guard.PROCESS_START_TAG: "1"}) is False  # the pid was reused
    assert run_guard.process_alive({**mine, run_guard.HOST_TAG: socket.gethostname() + "-elsewhere"}) is None
    assert run_guard.process_alive({}) is None  # launched by the daemon: not ours to judge


def test_a_dead_run_is_failed_and_its_slot_freed_and_a_live_one_is_left_alone(instance):
    dead = run_holding_the_slot(instance, {**run_guard.process_tags(), run_guard.PID_TAG: str(dead_pid())})
    lines = [check.line() for check in _check_held_slots(instance)]
    assert len(lines) == 1 and lines[0].startswith("FAIL") and dead[:8] in lines[0] and "DEAD" in lines[0]

    reaped = run_guard.reap_dead_runs(instance)
    assert any("marked failed" in line for line in reaped) and any("slots freed" in line for line in reaped)
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info(POOL).claimed_slots == []

    alive = run_holding_the_slot(instance, run_guard.process_tags())
    assert run_guard.reap_dead_runs(instance) == []
    assert instance.get_run_by_id(alive).status == dg.DagsterRunStatus.STARTED
    (check,) = _check_held_slots(instance)
    assert check.status == "ok" and "alive" in check.detail


@dg.asset(pool=POOL)
def writes_the_warehouse() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 1234, **money_totals("paid_out", [("JPY", 56789), ("USD", 56789)]),
                                          "fee_minor": 120, "fetch_window": "[a, b)"})


def test_a_run_waiting_for_a_dead_runs_slot_says_who_holds_it_and_goes_ahead(instance, monkeypatch):
    monkeypatch.setattr(progress, "WAIT_REPORT_SECONDS", 0.5)
    dead = run_holding_the_slot(instance, {**run_guard.process_tags(), run_guard.PID_TAG: str(dead_pid())})
    job = dg.Definitions(assets=[writes_the_warehouse],
                         jobs=[dg.define_asset_job("close", dg.AssetSelection.all())]).resolve_job_def("close")
    run_id, out = make_new_run_id(), io.StringIO()
    with progress.RunWatch(instance, run_id, out):
        result = job.execute_in_process(instance=instance, run_id=run_id, tags=run_guard.process_tags())
    assert result.success
    text = out.getvalue()
    assert f"waiting  for pool {POOL}: held by run {dead[:8]}" in text and "DEAD" in text
    assert f"run {dead[:8]} (payout_close): its process" in text and "marked failed" in text
    assert "started  writes_the_warehouse" in text and "done     writes_the_warehouse" in text
    # counts, and amounts as money in each currency's decimals; minor units (no currency) and other text left out
    assert "writes_the_warehouse: rows=1,234 paid_out=56,789 JPY; 567.89 USD\n" in text
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE


def test_the_summary_names_matches_exceptions_and_vouchers():
    @dg.asset(name="core_payment_allocations")
    def allocations():
        return dg.MaterializeResult(metadata={"payments": 97, "auto_matched": 84, "suggested": 0, "unmatched": 13})

    @dg.asset(name="out_recon_exceptions")
    def exceptions():
        return dg.MaterializeResult(metadata={"new": 16, "cleared": 2, "open": 16})

    @dg.asset(name="out_m3_postings")
    def postings():
        return dg.MaterializeResult(metadata={"posted": 34, "verified": 33, "held": 1, "failed": 0})

    result = dg.materialize([allocations, exceptions, postings])
    assert progress.summary([result]).splitlines() == [
        "  payments: 97 in the period, 84 matched, 0 suggested, 13 unmatched",
        "  exceptions: 16 opened, 2 cleared, 16 open",
        "  M3: 34 posted, 33 verified, 1 held, 0 failed"]


def test_the_daemon_reaps_a_dead_cli_run_so_its_queued_runs_go_ahead(instance):
    from m3_recon.definitions import defs

    dead = run_holding_the_slot(instance, {**run_guard.process_tags(), run_guard.PID_TAG: str(dead_pid())})
    sensor = defs.resolve_sensor_def("dead_run_reaper")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    skip = sensor.evaluate_tick(dg.build_sensor_context(instance=instance)).skip_message
    assert dead[:8] in skip and "marked failed" in skip
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info(POOL).claimed_slots == []
    assert sensor.evaluate_tick(dg.build_sensor_context(instance=instance)).skip_message == \
        "no run left behind by a dead process"

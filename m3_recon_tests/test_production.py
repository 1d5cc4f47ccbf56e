"""Production mode on a real PostgreSQL: the Dagster instance from deploy/dagster.postgres.yaml, parallel
runs through a real ``dagster-daemon``, history surviving a restart, and the DuckLake warehouse.

Every test that needs PostgreSQL gets a fresh database, dropped afterwards. The server is
``M3_RECON_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``; the role must
be allowed to CREATE DATABASE). When it is unreachable the tests skip and say how to enable them;
when ``CI`` is set they fail instead, so CI never skips them silently.

The daemon test drives Dagster the way production does: ``dagster-daemon run`` serves the code
location in m3_recon_tests/production_location.py, dequeues runs submitted to the PostgreSQL run
queue, fires the real nightly schedule and the posting sensor. Creating a queued run from a test needs
Dagster's internal ``_create_run`` (what ``dagster job launch`` calls), and starting a schedule just
before its last tick needs an internal ``InstigatorState``; both are pinned by dagster==1.13.27.
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import psycopg2
import pytest
from dagster._core.scheduler.instigation import TickStatus
from dagster_duckdb import DuckDBResource
from sqlalchemy.engine import make_url

from m3_recon import settings, storage
from m3_recon.cli import INSTANCE_TEMPLATES, ensure_dagster_home
from m3_recon.sandbox import Sandbox
from m3_recon.sandbox.truth import judge
from m3_recon_tests.compare import M3_SNAPSHOTS, assert_same_rows, file_rows, m3_postings, warehouse_rows
from m3_recon_tests.conftest import close_definitions, run_close

ADMIN_URL = os.environ.get("M3_RECON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DAEMON = Path(sys.executable).with_name("dagster-daemon")
LOCATION = "m3_recon"
LOCK_ERRORS = ("Could not set lock on file", "database is locked")
HANG_CEILING_SECONDS = 1800  # only a hang gets here: a busy machine may take minutes, never this long
BACKFILL_DAYS = 4  # enough for parallel runs to queue behind the writer slot; more proves nothing more
TERMINAL = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


# -- PostgreSQL -----------------------------------------------------------------------------------------
def _admin_connection():
    try:
        connection = psycopg2.connect(ADMIN_URL, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())
        message = (f"PostgreSQL at {make_url(ADMIN_URL).render_as_string(hide_password=True)} is unreachable "
                   f"({reason}). To run the production tests, start PostgreSQL on 127.0.0.1:5432 with a role that "
                   "may CREATE DATABASE (trust auth is enough), or set M3_RECON_TEST_POSTGRES_URL to such a server.")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    connection.autocommit = True
    return connection


@pytest.fixture
def postgres_url():
    """A fresh database on the test server, as the SQLAlchemy URL the Dagster instance takes; dropped after."""
    admin = _admin_connection()
    name = f"m3recon_test_{uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(ADMIN_URL).set(drivername="postgresql+psycopg2", database=name).render_as_string(
            hide_password=False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def production_home(postgres_url, tmp_path, monkeypatch):
    """DAGSTER_HOME prepared by ``ensure_dagster_home`` with M3_RECON_INSTANCE=postgres, side files in tmp."""
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("M3_RECON_INSTANCE", "postgres")
    monkeypatch.setenv("M3_RECON_DAGSTER_POSTGRES_URL", postgres_url)
    monkeypatch.setenv("M3_RECON_DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("M3_RECON_ANALYST_DUCKDB_PATH", str(tmp_path / "analyst.duckdb"))
    monkeypatch.setenv("M3_RECON_REPORTS_PATH", str(tmp_path / "reports"))
    monkeypatch.setenv("M3_RECON_TIMEZONE", "UTC")
    ensure_dagster_home()
    assert (home / "dagster.yaml").read_bytes() == INSTANCE_TEMPLATES["postgres"].read_bytes()
    return home


def sandbox_environment_for(sandbox: Sandbox, monkeypatch) -> None:
    """Point this process, and the daemon and code servers it starts, at ``sandbox``."""
    for key, value in {**sandbox.env(), "M3_RECON_START_DATE": sandbox.period.start.isoformat()}.items():
        monkeypatch.setenv(key, value)


# -- 1. the close on the PostgreSQL instance ------------------------------------------------------------------
def test_close_and_backfill_run_on_the_postgres_instance(production_home, sandbox, monkeypatch):
    sandbox_environment_for(sandbox, monkeypatch)
    definitions = close_definitions(os.environ["M3_RECON_DUCKDB_PATH"])
    with dg.DagsterInstance.get() as instance:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        backfill = run_close(definitions, "2026-10-01", "2026-10-07", instance=instance)
        nightly = run_close(definitions, "2026-10-08", "2026-10-08", instance=instance)
    assert backfill.success and nightly.success

    with dg.DagsterInstance.get() as reopened:  # what a webserver or daemon process reads
        for result in (backfill, nightly):
            assert reopened.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
        closed = reopened.get_materialized_partitions(dg.AssetKey("core_payout_reconciliation"))
        assert closed == {f"2026-10-{day:02d}" for day in range(1, 9)}
        checks = [e.dagster_event.event_specific_data for e in reopened.all_logs(backfill.run_id)
                  if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert checks and all(check.passed for check in checks)
    with duckdb.connect(os.environ["M3_RECON_DUCKDB_PATH"], read_only=True) as conn:
        for processor in ("stripe", "paytrace", "heartland"):
            judged, misses = judge(conn, sandbox.world, processor, "core_payment_allocations", "core_match_exceptions")
            assert judged > 10 and misses == [], processor


# -- 2. parallel runs through the daemon, and a restart ----------------------------------------------------
class Deployment:
    """One m3-recon deployment on the test database: DAGSTER_HOME, a workspace serving production_location,
    and ``dagster-daemon run`` started and stopped like its systemd unit would be."""

    def __init__(self, home: Path):
        self.home = home
        self.workspace = home / "workspace.yaml"
        self.workspace.write_text(json.dumps({"load_from": [{"python_module": {
            "module_name": "m3_recon_tests.production_location", "attribute": "location",
            "location_name": LOCATION, "working_directory": str(settings.PROJECT_ROOT)}}]}))
        self.starts = 0

    @contextmanager
    def daemon(self):
        """The daemon (and the code server and runs it starts) with this process's environment."""
        self.starts += 1
        with open(self.home / f"daemon-{self.starts}.log", "w") as log:
            process = subprocess.Popen([str(DAEMON), "run", "-w", str(self.workspace)], cwd=settings.PROJECT_ROOT,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                yield process
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    @contextmanager
    def workspace_context(self, instance: dg.DagsterInstance):
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(self.workspace)])) as context:
            yield context.create_request_context()

    @staticmethod
    def repository(workspace):
        return next(iter(workspace.get_code_location(LOCATION).get_repositories().values()))

    def submit(self, instance, workspace, job: str, day: date | None = None) -> str:
        """Queue a run of ``job`` (for one day), as `dagster job launch` or the UI's Materialize would."""
        from dagster._cli.job import _create_run

        repository = self.repository(workspace)
        tags = {"m3_recon/trigger": "test"}
        if day is not None:
            tags.update({"dagster/asset_partition_range_start": day.isoformat(),
                         "dagster/asset_partition_range_end": day.isoformat()})
        run = _create_run(instance=instance, code_location=workspace.get_code_location(LOCATION),
                          remote_repo=repository, remote_job=repository.get_full_job(job), run_config={}, tags=tags,
                          op_selection=None, run_id=None)
        return instance.submit_run(run.run_id, workspace).run_id


def wait_for_runs(instance: dg.DagsterInstance, run_ids, deadline: float) -> list[dg.DagsterRun]:
    while True:
        runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
        if all(run.status in TERMINAL for run in runs):
            return runs
        assert time.monotonic() < deadline, f"runs still going: {[(r.run_id[:8], r.status.value) for r in runs]}"
        time.sleep(0.5)


def runs_tagged(instance: dg.DagsterInstance, tag: str, value: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={tag: value})))


def step_failures(instance: dg.DagsterInstance, runs) -> list[str]:
    """What failed in each run that did not succeed, for the assertion message."""
    found = []
    for run in runs:
        if run.status != dg.DagsterRunStatus.SUCCESS:
            found.extend(f"{run.run_id[:8]} {entry.step_key}: {entry.message[:500]}"
                         for entry in instance.all_logs(run.run_id)
                         if entry.dagster_event and entry.dagster_event.is_failure)
    return found


def lock_failures(instance: dg.DagsterInstance, run_ids) -> list[str]:
    found = []
    for run_id in run_ids:
        for entry in instance.all_logs(run_id):
            text = entry.message + (str(entry.dagster_event.event_specific_data) if entry.dagster_event else "")
            found.extend(f"{run_id[:8]}: {error}" for error in LOCK_ERRORS if error in text)
    return found


def overlapping_runs(instance: dg.DagsterInstance, run_ids) -> list[tuple[str, str]]:
    records = sorted((instance.get_run_record_by_id(run_id) for run_id in run_ids), key=lambda r: r.start_time)
    return [(a.dagster_run.run_id[:8], b.dagster_run.run_id[:8]) for a, b in zip(records, records[1:])
            if b.start_time < a.end_time]


def last_tick(cron_hour: int, now: datetime) -> datetime:
    """The latest daily tick at ``cron_hour``:00 (in ``now``'s zone) not after ``now``."""
    tick = now.replace(hour=cron_hour, minute=0, second=0, microsecond=0)
    return tick if tick <= now else tick - timedelta(days=1)


def afternoon_zone(now: datetime) -> str:
    """A fixed-offset zone where it is about 14:00 now, so the schedule's 02:00 tick is ~12 hours away either side:
    the test never has to wait for a tick to pass, whenever it runs."""
    offset = (14 - now.astimezone(timezone.utc).hour + 12) % 24 - 12  # -12 .. +11 hours from UTC
    return f"Etc/GMT{-offset:+d}"  # the Etc zones count the other way: Etc/GMT-13 is UTC+13


def start_schedule_before(instance, remote_schedule, moment: datetime) -> None:
    """Switch the schedule on as if an operator had done so just before ``moment`` (its last tick)."""
    from dagster._core.scheduler.instigation import (InstigatorState, InstigatorStatus, InstigatorType,
                                                     ScheduleInstigatorData)

    started = moment.timestamp() - 60
    instance.add_instigator_state(InstigatorState(
        remote_schedule.get_remote_origin(), InstigatorType.SCHEDULE, InstigatorStatus.RUNNING,
        ScheduleInstigatorData(remote_schedule.cron_schedule, start_timestamp=started,
                               last_iteration_timestamp=started)))


def instigator_cursor(instance, instigator) -> str | None:
    state = instance.get_instigator_state(instigator.get_remote_origin_id(), instigator.selector_id)
    return state.instigator_data.cursor


def acted_on_latest(instance, asset_sensor, asset_key: dg.AssetKey) -> bool:
    """Whether an asset sensor's cursor (the storage id of the last event it handled) reached the newest event."""
    latest = instance.fetch_materializations(asset_key, limit=1).records
    return not latest or int(instigator_cursor(instance, asset_sensor) or 0) >= latest[0].storage_id


def test_parallel_backfill_equals_sequential_while_schedule_and_sensor_fire_and_history_survives_restart(
        production_home, monkeypatch, capsys):
    # The nightly schedule closes the last UTC day ended at its tick (real time); the backfill is the days ending
    # there, so the schedule's run overlaps the backfill's last day, as when a backfill catches up on the last week.
    zone = afternoon_zone(datetime.now(timezone.utc))
    monkeypatch.setenv("M3_RECON_TIMEZONE", zone)  # read by the code server the daemon starts
    tick = last_tick(2, datetime.now(ZoneInfo(zone))).astimezone(timezone.utc)
    days = [(tick - timedelta(days=n)).date() for n in range(BACKFILL_DAYS, 0, -1)]
    sandbox_start = days[-1] - timedelta(days=13)
    warehouse = os.environ["M3_RECON_DUCKDB_PATH"]
    deployment = Deployment(production_home)
    instance = dg.DagsterInstance.get()

    # Sequential: each day's close launched when the previous one has finished, then the posting.
    with Sandbox(start=sandbox_start, days=14) as vendors:
        sandbox_environment_for(vendors, monkeypatch)
        with deployment.workspace_context(instance) as workspace, deployment.daemon():
            began = time.monotonic()
            sequential_runs = []
            for day in days:
                run_id = deployment.submit(instance, workspace, "payout_close", day)
                sequential_runs.extend(wait_for_runs(instance, [run_id], time.monotonic() + HANG_CEILING_SECONDS))
            sequential_seconds = time.monotonic() - began
            posting = deployment.submit(instance, workspace, "m3_posting")
            sequential_runs.extend(wait_for_runs(instance, [posting], time.monotonic() + HANG_CEILING_SECONDS))
        sequential_postings = m3_postings(vendors)
    assert {run.status for run in sequential_runs} == {dg.DagsterRunStatus.SUCCESS}, \
        step_failures(instance, sequential_runs)
    sequential = file_rows(warehouse, skip_tables=M3_SNAPSHOTS)
    for path in (warehouse, warehouse + ".wal"):
        if os.path.exists(path):
            os.remove(path)

    # Parallel: all at once, fresh vendors in the same state, the nightly schedule and the sensors on.
    with Sandbox(start=sandbox_start, days=14) as vendors:
        sandbox_environment_for(vendors, monkeypatch)
        with deployment.workspace_context(instance) as workspace:
            repository = deployment.repository(workspace)
            schedule = repository.get_schedule("nightly_payout_close")
            assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == zone
            posting_sensor, counter = repository.get_sensor("m3_posting_sensor"), repository.get_sensor(
                "evaluation_counter")
            start_schedule_before(instance, schedule, tick)
            instance.start_sensor(posting_sensor)
            instance.start_sensor(counter)
            with deployment.daemon():
                began = time.monotonic()
                parallel_runs = [deployment.submit(instance, workspace, "payout_close", day) for day in days]
                finished = wait_for_runs(instance, parallel_runs, began + HANG_CEILING_SECONDS)
                parallel_seconds = time.monotonic() - began
                deadline = time.monotonic() + HANG_CEILING_SECONDS
                while not (runs_tagged(instance, "dagster/schedule_name", schedule.name)
                           and runs_tagged(instance, "dagster/sensor_name", posting_sensor.name)):
                    assert time.monotonic() < deadline, "the schedule or the posting sensor never launched a run"
                    time.sleep(0.5)
                posting = deployment.submit(instance, workspace, "m3_posting")
                finished.extend(wait_for_runs(instance, [posting], deadline))
                fired = wait_for_runs(instance, [run.run_id for run in runs_tagged(
                    instance, "dagster/schedule_name", schedule.name)], deadline)
                # A close that ended after the sensor's last tick is still owed a posting run; the daemon stays
                # up until the sensor has acted on the last journals, so nothing is left over for the restart.
                while not acted_on_latest(instance, posting_sensor, dg.AssetKey("core_gl_journal_lines")):
                    assert time.monotonic() < deadline, "the posting sensor never acted on the last journals"
                    time.sleep(0.5)
                fired.extend(wait_for_runs(instance, [run.run_id for run in runs_tagged(
                    instance, "dagster/sensor_name", posting_sensor.name)], deadline))
        parallel_postings = m3_postings(vendors)
        ticks_before_restart = {sensor.name: len(instance.get_ticks(sensor.get_remote_origin_id(),
                                                                    sensor.selector_id))
                                for sensor in (posting_sensor, counter)}
        counted_before_restart = int(instigator_cursor(instance, counter))

    with capsys.disabled():
        print(f"\n{BACKFILL_DAYS}-day backfill as separate runs: one after another {sequential_seconds:.1f} s, "
              f"submitted at once "
              f"{parallel_seconds:.1f} s (max_concurrent_runs 4, pool duckdb_writer 1)")
    every_run = [*(run.run_id for run in sequential_runs), *(run.run_id for run in finished + fired)]
    assert {run.status for run in finished + fired} == {dg.DagsterRunStatus.SUCCESS}, \
        step_failures(instance, finished + fired)
    scheduled = [run for run in fired if run.tags.get("dagster/schedule_name") == schedule.name]
    assert [run.tags["dagster/partition"] for run in scheduled] == [days[-1].isoformat()]
    assert [run for run in fired if run.tags.get("dagster/sensor_name") == posting_sensor.name]
    assert lock_failures(instance, every_run) == []
    assert overlapping_runs(instance, every_run) == []  # the duckdb_writer pool let one writer run at a time
    assert_same_rows(file_rows(warehouse, skip_tables=M3_SNAPSHOTS), sequential, at_least=200)  # M3 itself: below
    assert parallel_postings == sequential_postings and sequential_postings[0]

    # Restart: a new process sees every run, tick and cursor; the daemon carries on from them.
    with dg.DagsterInstance.get() as reopened:
        assert {reopened.get_run_by_id(run_id).status for run_id in every_run} == {dg.DagsterRunStatus.SUCCESS}
        schedule_ticks = reopened.get_ticks(schedule.get_remote_origin_id(), schedule.selector_id)
        assert [(t.status, t.run_ids) for t in schedule_ticks] == [(TickStatus.SUCCESS, [scheduled[0].run_id])]
        for sensor in (posting_sensor, counter):
            assert len(reopened.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id)) == \
                ticks_before_restart[sensor.name]
        assert instigator_cursor(reopened, posting_sensor)  # the last journals event it acted on
        runs_before = reopened.get_runs_count()
        with deployment.daemon():
            deadline = time.monotonic() + HANG_CEILING_SECONDS
            while int(instigator_cursor(reopened, counter)) <= counted_before_restart + 2:
                assert time.monotonic() < deadline, "the sensor did not evaluate again after the restart"
                time.sleep(0.5)
        assert reopened.get_runs_count() == runs_before  # no schedule tick fired twice, no run key reused
        assert len(reopened.get_ticks(schedule.get_remote_origin_id(), schedule.selector_id)) == 1
    instance.dispose()


# -- 3. DuckLake: concurrent writers --------------------------------------------------------------------
STAGING = dg.AssetSelection.groups("stripe", "paytrace", "heartland", "m3")
CONFLICT_RETRIES = dg.RetryPolicy(max_retries=10, delay=0.2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def warehouse_definitions() -> dg.Definitions:
    """The close and the staging loads on the warehouse the environment selects, steps retried after a write
    conflict (what a DuckLake with several writers needs: a conflicting commit fails whole, then succeeds)."""
    from m3_recon.defs.automation import payout_close

    close = close_definitions(settings.duckdb_path())
    return dg.Definitions(assets=list(close.assets), jobs=[
        dg.define_asset_job("payout_close", selection=payout_close.selection, op_retry_policy=CONFLICT_RETRIES),
        dg.define_asset_job("staging", selection=STAGING, op_retry_policy=CONFLICT_RETRIES),
    ], resources={**close.resources, "duckdb": storage.warehouse_resource_from_env()})


ANALYST_SESSION = """
import time
from m3_recon.storage import warehouse_resource_from_env
with warehouse_resource_from_env().get_connection() as conn:
    conn.execute("BEGIN TRANSACTION")
    conn.execute("SELECT count(*) FROM duckdb_tables()").fetchall()
    print("reading", flush=True)
    time.sleep(300)
"""


def _load_staging_day(day: str) -> tuple[str, bool, int, list[str]]:
    """One process loading every source's staging tables for ``day`` into the warehouse of the environment."""
    with dg.DagsterInstance.get() as instance:
        result = warehouse_definitions().resolve_job_def("staging").execute_in_process(
            tags={"dagster/asset_partition_range_start": day, "dagster/asset_partition_range_end": day},
            instance=instance, raise_on_error=False)
    events = [e.event_type_value for e in result.all_events]
    failures = [_error_chain(e.event_specific_data.error) for e in result.all_events
                if e.event_type_value in ("STEP_FAILURE", "STEP_UP_FOR_RETRY") and e.event_specific_data.error]
    return day, result.success, events.count("STEP_UP_FOR_RETRY"), failures


def _error_chain(error) -> str:
    """An error with the errors it was raised from or during (a failed COMMIT surfaces under a ROLLBACK's)."""
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause or error.context
    return " <- ".join(messages)


def test_ducklake_takes_concurrent_writers_and_holds_what_the_duckdb_file_holds(
        production_home, postgres_url, sandbox, tmp_path, monkeypatch, capsys):
    sandbox_environment_for(sandbox, monkeypatch)
    for vendor in ("STRIPE", "PAYTRACE", "GP_API", "M3"):  # vendors at their production pace, as in a deployment:
        monkeypatch.delenv(f"{vendor}_MAX_REQUESTS_PER_SECOND")  # the loads' commits interleave as they would there
    days = ["2026-10-08", "2026-10-09", "2026-10-10", "2026-10-11"]
    reference_file = str(tmp_path / "reference.duckdb")
    monkeypatch.setenv("M3_RECON_DUCKDB_PATH", reference_file)
    monkeypatch.delenv(storage.WAREHOUSE_VARIABLE, raising=False)
    reference = warehouse_definitions()  # the DuckDB file
    began = time.monotonic()
    for day in days:
        staged = reference.resolve_job_def("staging").execute_in_process(
            tags={"dagster/asset_partition_range_start": day, "dagster/asset_partition_range_end": day})
        assert staged.success
    sequential_seconds = time.monotonic() - began
    expected_staging = file_rows(reference_file)

    monkeypatch.setenv(storage.WAREHOUSE_VARIABLE, "ducklake")
    monkeypatch.setenv(storage.CATALOG_VARIABLE, postgres_url)  # the instance's URL serves the catalog too
    monkeypatch.setenv(storage.METADATA_SCHEMA_VARIABLE, "lake")
    monkeypatch.setenv(storage.DATA_PATH_VARIABLE, str(tmp_path / "lake"))
    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots("duckdb_writer", len(days))
    # An analyst session stays attached, inside a read transaction, while the loads write: nothing waits for it.
    analyst = subprocess.Popen([sys.executable, "-c", ANALYST_SESSION], stdout=subprocess.PIPE, text=True)
    try:
        assert analyst.stdout.readline().strip() == "reading"
        began = time.monotonic()
        # concurrent.futures, not multiprocessing.Pool: Pool.terminate() on leaving its block can wait forever
        # on a worker it never signalled (seen on a busy machine); the executor just ends its idle workers.
        with ProcessPoolExecutor(len(days), mp_context=multiprocessing.get_context("spawn")) as pool:
            outcomes = list(pool.map(_load_staging_day, days, timeout=HANG_CEILING_SECONDS))
        parallel_seconds = time.monotonic() - began
        assert analyst.poll() is None
    finally:
        analyst.kill()
        analyst.wait()
    retried = sum(count for _, _, count, _ in outcomes)
    with capsys.disabled():
        print(f"\nDuckLake staging loads of {len(days)} days: {len(days)} processes at once {parallel_seconds:.1f} s "
              f"({retried} step(s) retried after a write conflict); one after another into a DuckDB file "
              f"{sequential_seconds:.1f} s")
    assert [(day, success) for day, success, _, _ in outcomes] == [(day, True) for day in days], outcomes
    failures = [failure for _, _, _, found in outcomes for failure in found]
    assert all("Transaction conflict" in failure for failure in failures), failures
    lake = storage.warehouse_resource_from_env()
    with lake.get_connection() as conn:
        assert_same_rows(warehouse_rows(conn), expected_staging)

    # The whole close over the period, one run per backend: the same pipeline code, the same rows.
    assert run_close(warehouse_definitions(), days[0], days[-1]).success
    monkeypatch.setenv(storage.WAREHOUSE_VARIABLE, "duckdb")
    assert run_close(warehouse_definitions(), days[0], days[-1]).success
    with lake.get_connection() as conn:
        assert_same_rows(warehouse_rows(conn), file_rows(reference_file))


# -- the resource and the instance switch (no PostgreSQL needed) ---------------------------------------------
def test_the_warehouse_backend_is_chosen_by_one_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(storage.WAREHOUSE_VARIABLE, raising=False)
    monkeypatch.setenv("M3_RECON_DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    embedded = storage.warehouse_resource_from_env()
    assert type(embedded) is storage.WarehouseFileResource and embedded.database == str(tmp_path / "w.duckdb")

    monkeypatch.setenv(storage.WAREHOUSE_VARIABLE, "ducklake")
    monkeypatch.delenv(storage.CATALOG_VARIABLE, raising=False)
    with pytest.raises(settings.SettingsError, match=storage.CATALOG_VARIABLE):
        storage.warehouse_resource_from_env()
    monkeypatch.setenv(storage.CATALOG_VARIABLE, "postgresql://lake:s3cret@127.0.0.1:9/lake")
    monkeypatch.setenv(storage.DATA_PATH_VARIABLE, "relative/lake")
    lake = storage.warehouse_resource_from_env()
    assert isinstance(lake, DuckDBResource) and lake.data_path == os.path.join(os.path.abspath("relative/lake"), "")

    monkeypatch.setenv(storage.WAREHOUSE_VARIABLE, "motherduck")
    with pytest.raises(settings.SettingsError, match=storage.WAREHOUSE_VARIABLE):
        storage.warehouse_resource_from_env()


def test_an_unreachable_lake_names_the_variable_and_never_the_password(tmp_path):
    lake = storage.DuckLakeResource(catalog="postgresql+psycopg2://lake:s3cret@127.0.0.1:9/lake",
                                    data_path=str(tmp_path / "lake") + "/")
    with pytest.raises(storage.WarehouseUnavailableError) as failure:
        with lake.get_connection():
            pass
    assert storage.CATALOG_VARIABLE in str(failure.value) and "s3cret" not in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


def test_the_instance_switch_writes_the_chosen_configuration_and_keeps_an_edited_one(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("M3_RECON_INSTANCE", raising=False)
    ensure_dagster_home()
    assert (home / "dagster.yaml").read_bytes() == INSTANCE_TEMPLATES["embedded"].read_bytes()

    monkeypatch.setenv("M3_RECON_INSTANCE", "postgres")
    monkeypatch.delenv("M3_RECON_DAGSTER_POSTGRES_URL", raising=False)
    with pytest.raises(settings.SettingsError, match="M3_RECON_DAGSTER_POSTGRES_URL"):
        ensure_dagster_home()
    monkeypatch.setenv("M3_RECON_DAGSTER_POSTGRES_URL", "postgresql://dagster@db/dagster")
    with pytest.raises(settings.SettingsError, match="postgresql\\+psycopg2://"):
        ensure_dagster_home()
    monkeypatch.setenv("M3_RECON_DAGSTER_POSTGRES_URL", "postgresql+psycopg2://dagster@db/dagster")
    ensure_dagster_home()
    assert (home / "dagster.yaml").read_bytes() == INSTANCE_TEMPLATES["postgres"].read_bytes()

    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("M3_RECON_INSTANCE", "embedded")
    ensure_dagster_home()
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"

"""A close killed with SIGKILL never wedges the next one: ``m3-recon backfill`` in a subprocess against a sandbox of
its own, killed while ingesting, while matching, while posting GL vouchers and while applying cash; each rerun gets
past the dead run's pool slot by itself, and the last one leaves M3 and the warehouse as an uninterrupted run does.

Kills happen when a condition is seen (a step-start event in the run's instance, a voucher arriving in the
sandbox's M3), never after a fixed sleep. The only deadline is a ceiling that catches a hang.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import duckdb
import pytest

from m3_recon.cli import INSTANCE_TEMPLATES
from m3_recon.sandbox import Sandbox
from m3_recon_tests.compare import M3_SNAPSHOTS, assert_same_rows, file_rows, m3_postings
from m3_recon_tests.conftest import close_definitions, run_close

DAYS = 5  # the size proves nothing here; each stage needs a few vouchers
HANG_CEILING_SECONDS = 900  # only a hang gets here
# The outbox records how a voucher got to M3 (attempts, resumed after a crash); what M3 holds is compared instead.
HOW_IT_GOT_THERE = frozenset({"attempts", "last_error"})


def comparable_rows(path: str) -> dict:
    return file_rows(path, HOW_IT_GOT_THERE, M3_SNAPSHOTS)


class World:
    """A sandbox of its own, a DAGSTER_HOME and a warehouse under ``root``, and the backfill command pointed at them."""

    def __init__(self, root, sandbox: Sandbox):
        self.root, self.sandbox = root, sandbox
        self.home = root / "dagster_home"
        self.home.mkdir()
        shutil.copyfile(INSTANCE_TEMPLATES["embedded"], self.home / "dagster.yaml")
        self.instance = dg.DagsterInstance.from_config(str(self.home))
        self.warehouse = str(root / "warehouse.duckdb")
        self.env = {**os.environ, **sandbox.env(), "DAGSTER_HOME": str(self.home), "M3_RECON_INSTANCE": "embedded",
                    "M3_RECON_DUCKDB_PATH": self.warehouse,
                    "M3_RECON_ANALYST_DUCKDB_PATH": str(root / "analyst.duckdb"),
                    "M3_RECON_REPORTS_PATH": str(root / "reports"),
                    "M3_RECON_DECISIONS_FILE": str(root / "decisions.jsonl"),
                    "M3_MAX_REQUESTS_PER_SECOND": "10"}  # M3's production pace: posting takes a few seconds to kill in
        self.command = [sys.executable, "-m", "m3_recon.cli", "backfill", "--start", sandbox.period.start.isoformat(),
                        "--end", sandbox.period.end.isoformat()]
        self.runs = 0

    def start(self) -> subprocess.Popen:
        self.runs += 1
        log = open(self.root / f"backfill-{self.runs}.log", "w")
        try:
            return subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def log(self) -> str:
        return (self.root / f"backfill-{self.runs}.log").read_text()

    def finish(self) -> int:
        process = self.start()
        try:
            return process.wait(HANG_CEILING_SECONDS)
        finally:
            process.kill()
            process.wait()

    def kill_when(self, condition) -> None:
        """Start the backfill and SIGKILL it the moment ``condition()`` holds; it must still be running then."""
        process = self.start()
        deadline = time.monotonic() + HANG_CEILING_SECONDS
        try:
            while not condition():
                assert process.poll() is None, f"the backfill ended before the moment to kill it:\n{self.log()}"
                assert time.monotonic() < deadline, f"the moment to kill never came:\n{self.log()}"
                time.sleep(0.05)
            assert process.poll() is None, "the backfill finished before it could be killed"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def step_started(self, step_key: str):
        """A condition: a run started after this call has started ``step_key``."""
        earlier = {run.run_id for run in self.instance.get_runs()}

        def started() -> bool:
            return any(record.event_log_entry.dagster_event.step_key == step_key
                       for run in self.instance.get_runs(limit=3) if run.run_id not in earlier
                       for record in self.instance.get_records_for_run(
                           run.run_id, of_type=dg.DagsterEventType.STEP_START).records)
        return started


def gl_vouchers(sandbox: Sandbox) -> int:
    return len({line.batch_key for line in sandbox.m3.gl_lines(sandbox.clock.now())})


def payment_batch_sent(sandbox: Sandbox) -> threading.Event:
    """Set when the first ARS040MI payment batch reaches the sandbox's M3 (which then books it as usual)."""
    sent, add_payment_batch = threading.Event(), sandbox.m3.add_payment_batch

    def noting_it(*args, **kwargs):
        sent.set()
        return add_payment_batch(*args, **kwargs)
    sandbox.m3.add_payment_batch = noting_it
    return sent


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same world closed once without interruption (in this process: what the backfill command runs)."""
    with Sandbox(days=DAYS) as sandbox, pytest.MonkeyPatch.context() as environment:
        world = World(tmp_path_factory.mktemp("uninterrupted"), sandbox)
        for key, value in world.env.items():
            environment.setenv(key, value)
        definitions = close_definitions(world.warehouse)
        assert run_close(definitions, sandbox.period.start.isoformat(), sandbox.period.end.isoformat()).success
        for job in ("m3_posting", "recon_alerts"):
            assert definitions.resolve_job_def(job).execute_in_process(raise_on_error=False).success
        world.instance.dispose()
        return m3_postings(sandbox), comparable_rows(world.warehouse)


def test_a_close_killed_at_any_stage_finishes_on_rerun_and_m3_ends_as_if_never_killed(tmp_path, reference):
    with Sandbox(days=DAYS) as sandbox:
        world = World(tmp_path, sandbox)
        gl_in_the_end = len({batch for batch, *_ in reference[0][0]})
        gl_before = gl_vouchers(sandbox)
        world.kill_when(world.step_started("raw_stripe_balance_transactions"))  # ingesting
        world.kill_when(world.step_started("core_payment_allocations"))  # matching (it re-ingests first)
        world.kill_when(lambda: gl_vouchers(sandbox) > gl_before)  # posting GL vouchers
        assert gl_vouchers(sandbox) < gl_in_the_end  # killed half-way, not after
        # Applying cash: the batches go to M3 in bulk requests, so the kill lands between sending them and
        # recording M3's answer; the rerun has to find out from M3 what it already holds.
        world.kill_when(payment_batch_sent(sandbox).is_set)
        assert [run.status for run in world.instance.get_runs(limit=1)] == [dg.DagsterRunStatus.STARTED]
        assert world.finish() == 0, world.log()
        assert "marked failed" in world.log()  # the dead run was reaped before the rerun started
        statuses = [run.status for run in world.instance.get_runs()]
        assert statuses.count(dg.DagsterRunStatus.FAILURE) == 4 and set(statuses) == {
            dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}
        assert not world.instance.event_log_storage.get_concurrency_run_ids()  # no slot left held
        world.instance.dispose()
        assert m3_postings(sandbox) == reference[0]
    assert_same_rows(comparable_rows(world.warehouse), reference[1], at_least=100)
    with duckdb.connect(world.warehouse, read_only=True) as conn:
        assert conn.execute("SELECT DISTINCT status FROM out_m3_postings").fetchall() == [("verified",)]

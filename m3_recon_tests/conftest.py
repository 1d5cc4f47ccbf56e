"""Shared fixtures: one seeded sandbox for the session, DuckDB files in tmp, resources pointed at them.

The suite never touches the working copy's state: before any test is collected, every path setting
(warehouse, analysts' copy, reports, decisions file, DuckLake data, DAGSTER_HOME) points into a temporary
directory (processes the tests start inherit it), and an audit hook fails any test that opens a file under
``data/`` (other than the configuration files in git) or ``.dagster_home/``. (Comparing the two
directories before and after would also flag a ``make demo`` running alongside.) No process
outlives the suite: the session fixture ``no_process_left_behind`` fails when a process it started is
still running at the end (orphans are re-parented to pytest, which is made a child subreaper).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("M3_RECON_START_DATE", "2026-10-01")  # before m3_recon.partitions is imported
import m3_recon.partitions  # noqa: E402,F401  fixed now, so no sandbox's M3_RECON_END_DATE set later can shorten them

import pytest
from dagster_duckdb import DuckDBResource

from m3_recon.defs.stripe.resources import StripeResource
from m3_recon.sandbox import SANDBOX_STRIPE_KEY, Sandbox
from m3_recon.sandbox.world import build_world
from m3_recon.settings import PROJECT_ROOT

WORKING_STATE = (PROJECT_ROOT / "data", PROJECT_ROOT / ".dagster_home")
CONFIGURATION = {PROJECT_ROOT / name for name in subprocess.run(
    ["git", "ls-files", "data"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.split()}
HANG_CEILING_SECONDS = 60  # a process still running this long after the suite is not winding down
_opened_working_state: list[str] = []


def _watch_opens(event: str, args: tuple) -> None:
    if event != "open" or not isinstance(args[0], (str, os.PathLike)):
        return
    path = Path(os.path.abspath(args[0]))
    if path not in CONFIGURATION and any(path.is_relative_to(root) for root in WORKING_STATE):
        _opened_working_state.append(str(path))


SUITE_STATE = Path(tempfile.gettempdir())  # the session's own directory, made by pytest_configure


def pytest_configure(config):
    """Point every path setting into the session's directory and watch what tests open. Here rather than at
    import: processes a test starts import this module too (for its helpers) and inherit the settings instead."""
    global SUITE_STATE
    SUITE_STATE = Path(tempfile.mkdtemp(prefix="m3-recon-tests-"))
    isolated = {"DAGSTER_HOME": "dagster_home", "M3_RECON_DUCKDB_PATH": "m3_recon.duckdb",
                "M3_RECON_ANALYST_DUCKDB_PATH": "m3_recon_analyst.duckdb", "M3_RECON_REPORTS_PATH": "reports",
                "M3_RECON_DECISIONS_FILE": "exception_decisions.jsonl", "M3_RECON_DUCKLAKE_DATA_PATH": "lake"}
    for variable, name in isolated.items():
        os.environ[variable] = str(SUITE_STATE / name)
    (SUITE_STATE / "dagster_home").mkdir()
    # The sandbox on loopback has no rate limit: clients built from the environment need not pace themselves
    # (tests of pacing build their budgets explicitly).
    for vendor in ("STRIPE", "PAYTRACE", "GP_API", "M3"):
        os.environ[f"{vendor}_MAX_REQUESTS_PER_SECOND"] = "1000"
    sys.addaudithook(_watch_opens)


def _descendants() -> dict[int, str]:
    """Processes below this one (orphans included, as it is their subreaper), zombies reaped first."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                break
        except ChildProcessError:
            break
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    mine, todo = {}, [os.getpid()]
    while todo:
        parent = todo.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in mine:
                mine[pid] = commands[pid]
                todo.append(pid)
    # multiprocessing's resource tracker lives exactly as long as this process.
    return {pid: command for pid, command in mine.items() if "resource_tracker" not in command}


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fails the session if a process started by a test is still running after every test has finished."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us, not to init
    before = set(_descendants())
    yield
    deadline = time.monotonic() + HANG_CEILING_SECONDS
    while (left := {p: c for p, c in _descendants().items() if p not in before}) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    _descendants()
    assert not left, f"processes outlived the suite (now killed): {left}"


@pytest.fixture(scope="session", autouse=True)
def _suite_state_removed():
    yield
    shutil.rmtree(SUITE_STATE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_working_state_opened():
    del _opened_working_state[:]
    yield
    assert not _opened_working_state, f"the test opened the working copy's state: {sorted(set(_opened_working_state))}"


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox() as running:
        yield running


@pytest.fixture(scope="module")
def world(request):
    """The sandbox world of the test module's ``SEED`` and ``PERIOD``."""
    return build_world(request.module.SEED, request.module.PERIOD)


@pytest.fixture(autouse=True)
def _clear_faults(request):
    yield
    if "sandbox" in request.fixturenames:
        for server in request.getfixturevalue("sandbox").servers.values():
            server.faults.clear()


def stripe_resource_for(sandbox: Sandbox, **overrides) -> StripeResource:
    settings = {"api_key": SANDBOX_STRIPE_KEY, "api_base": sandbox.url("stripe"),
                "max_requests_per_second": 1000.0, "timeout_seconds": 2.0, **overrides}
    return StripeResource(**settings)


@pytest.fixture
def stripe_resource(sandbox):
    return stripe_resource_for(sandbox)


@pytest.fixture
def duckdb_resource(tmp_path):
    return DuckDBResource(database=str(tmp_path / "warehouse.duckdb"))


@pytest.fixture
def sandbox_environment(sandbox, monkeypatch, tmp_path):
    """The sandbox's variables in the environment, as `m3-recon demo` sets them; outputs under tmp."""
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("M3_RECON_ANALYST_DUCKDB_PATH", str(tmp_path / "analyst.duckdb"))
    monkeypatch.setenv("M3_RECON_REPORTS_PATH", str(tmp_path / "reports"))
    monkeypatch.setenv("M3_RECON_DECISIONS_FILE", str(tmp_path / "decisions.jsonl"))
    return sandbox


def close_definitions(database: str):
    """The whole code location's assets and the payout_close job, every vendor resource built from the
    environment (as in production) and the warehouse at ``database``."""
    import dagster as dg

    from m3_recon.definitions import defs, payout_close
    from m3_recon.defs.automation import m3_posting, recon_alerts, reconciliation_report
    from m3_recon.defs.heartland.definitions import heartland_resource_from_env
    from m3_recon.defs.reconcile.assets import AlertWebhook
    from m3_recon.defs.m3.definitions import m3_resource_from_env
    from m3_recon.defs.paytrace.definitions import paytrace_resource_from_env
    from m3_recon.defs.stripe.definitions import stripe_resource_from_env
    from m3_recon.storage import WarehouseFileResource

    return dg.Definitions(assets=list(defs.assets), jobs=[payout_close, recon_alerts, m3_posting, reconciliation_report],
                          resources={
        "alert_webhook": AlertWebhook(url=os.environ.get("M3_RECON_ALERT_WEBHOOK_URL")),
        "stripe": stripe_resource_from_env(), "paytrace": paytrace_resource_from_env(),
        "heartland": heartland_resource_from_env(), "m3": m3_resource_from_env(),
        "duckdb": WarehouseFileResource(database=database)})


def run_close(definitions, first_day: str, last_day: str, instance=None):
    import dagster as dg

    return definitions.resolve_job_def("payout_close").execute_in_process(
        tags={"dagster/asset_partition_range_start": first_day, "dagster/asset_partition_range_end": last_day},
        instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=False)


def run_job(definitions, job: str, first_day: str | None = None, last_day: str | None = None, instance=None):
    import dagster as dg

    tags = ({"dagster/asset_partition_range_start": first_day, "dagster/asset_partition_range_end": last_day}
            if first_day else {})
    return definitions.resolve_job_def(job).execute_in_process(
        tags=tags, instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=False)


class ClosedBooks:
    """A sandbox period closed, posted to M3 and reported (``closed_books``); ``use(monkeypatch)`` points the
    environment at its sandbox, warehouse, analysts' copy, reports and decisions file."""

    def __init__(self, sandbox: Sandbox, directory, first: str, last: str):
        self.sandbox, self.directory, self.first, self.last = sandbox, directory, first, last
        self.database = str(directory / "work.duckdb")
        self.env = {**sandbox.env(), "M3_RECON_DUCKDB_PATH": self.database,
                    "M3_RECON_ANALYST_DUCKDB_PATH": str(directory / "analyst.duckdb"),
                    "M3_RECON_REPORTS_PATH": str(directory / "reports"),
                    "M3_RECON_DECISIONS_FILE": str(directory / "decisions.jsonl")}

    def use(self, monkeypatch) -> "ClosedBooks":
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        return self

    def close_post_report(self):
        """The close, posting and report over the period; returns the three results."""
        definitions = close_definitions(self.database)
        return (run_close(definitions, self.first, self.last), run_job(definitions, "m3_posting"),
                run_job(definitions, "reconciliation_report", self.first, self.last))

    def copy(self, directory) -> "ClosedBooks":
        """The same closed books (warehouse and analysts' copy) in ``directory``, for a test that changes them; M3 is
        the shared sandbox's."""
        import shutil

        copied = ClosedBooks(self.sandbox, directory, self.first, self.last)
        for name in ("work.duckdb", "analyst.duckdb"):
            shutil.copyfile(self.directory / name, directory / name)
        return copied

    @property
    def report_directory(self):
        return self.directory / "reports" / f"{self.first}_{self.last}"


@pytest.fixture(scope="session")
def closed_books(tmp_path_factory):
    """Fourteen sandbox days closed, posted to an M3 of their own and reported, shared by the tests that read
    what a close leaves behind (the report, the analysts' views, the exception register). A test that changes the
    warehouse works on ``copy()``; a test that posts to M3 uses a sandbox of its own, never this one."""
    with Sandbox(days=14) as sandbox, pytest.MonkeyPatch.context() as monkeypatch:
        books = ClosedBooks(sandbox, tmp_path_factory.mktemp("closed_books"), "2026-10-01", "2026-10-14")
        books.use(monkeypatch)
        results = books.close_post_report()
        assert all(result.success for result in results)
        monkeypatch.undo()
        yield books

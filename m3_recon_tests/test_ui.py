"""The Dagster UI as finance sees it: the running webserver's GraphQL API shows the lineage from every
processor's raw assets to the journals and postings, grouped by stage, with the asset checks; and a decision
launched from the Launchpad (``resolve_exception``) is applied by the next close."""

import os
import signal
import socket
import subprocess
import sys
import time

import duckdb
import pytest
import requests

from m3_recon.settings import PROJECT_ROOT
from m3_recon_tests.conftest import close_definitions, run_close

HANG_CEILING_SECONDS = 600  # only a hang gets here; a busy machine may take minutes to load the code location

QUERY = """{ assetNodes { assetKey { path } groupName description
    dependencyKeys { path } assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }"""


# Runs launched from the UI start at once (dagster dev queues them for its daemon, which this test does not run).
IMMEDIATE_RUNS = """
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""


@pytest.fixture(scope="module")
def books(closed_books, tmp_path_factory):
    """A copy of the closed books the webserver's runs may change."""
    return closed_books.copy(tmp_path_factory.mktemp("ui_books"))


@pytest.fixture(scope="module")
def webserver(tmp_path_factory, books):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text() + IMMEDIATE_RUNS)
    env = {**os.environ, **books.env, "DAGSTER_HOME": str(home)}
    # Its own session: the webserver starts a code server process, and both are stopped together at the end.
    process = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", str(PROJECT_ROOT / "workspace.yaml"),
                                "-h", "127.0.0.1", "-p", str(port)], cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HANG_CEILING_SECONDS
    try:
        while True:
            assert process.poll() is None, f"the webserver exited with {process.returncode}"
            try:
                if requests.get(f"{url}/server_info", timeout=5).ok:
                    nodes = requests.post(f"{url}/graphql", json={"query": QUERY}, timeout=60).json()
                    if nodes.get("data", {}).get("assetNodes"):
                        break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the webserver did not serve the code location within {HANG_CEILING_SECONDS} s")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(HANG_CEILING_SECONDS)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is still there
            except ProcessLookupError:
                pass
            process.wait()


def graph(url):
    nodes = requests.post(f"{url}/graphql", json={"query": QUERY}, timeout=30).json()["data"]["assetNodes"]
    return {"/".join(n["assetKey"]["path"]): n for n in nodes}


def upstream(nodes, key):
    seen, todo = set(), [key]
    while todo:
        for dep in nodes[todo.pop()]["dependencyKeys"]:
            name = "/".join(dep["path"])
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_lineage_runs_from_every_processor_to_the_postings(webserver):
    nodes = graph(webserver)
    for downstream in ("core_gl_journal_lines", "core_cash_applications", "out_m3_postings"):
        ancestors = upstream(nodes, downstream)
        for raw in ("raw_stripe_balance_transactions", "raw_paytrace_transactions",
                    "raw_heartland_settlement_transactions", "raw_m3_open_invoices"):
            assert raw in ancestors, (raw, downstream)
    groups = {n["groupName"] for n in nodes.values()}
    assert groups >= {"stripe", "paytrace", "heartland", "m3", "reconcile", "post"}
    assert all(n["description"] for n in nodes.values())


def test_the_ledger_protecting_checks_are_visible_and_blocking(webserver):
    nodes = graph(webserver)
    checks = {(key, c["name"]): c["blocking"] for key, n in nodes.items()
              for c in (n["assetChecksOrError"] or {}).get("checks", [])}
    for expected in [("core_settlement_lines", "conforms_to_schema"), ("core_payouts", "conforms_to_schema"),
                     ("core_payment_allocations", "allocations_sum_to_payment"),
                     ("core_payment_allocations", "no_invoice_over_allocated"),
                     ("out_recon_exceptions", "every_payout_tied_or_excepted"),
                     ("core_gl_journal_lines", "vouchers_balance"),
                     ("core_gl_journal_lines", "clearing_nets_to_zero_per_payout")]:
        assert checks.get(expected) is True, expected


LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } } } }"""
STATUS = """query($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }"""


def launch_resolution(url, **config) -> str:
    params = {"selector": {"repositoryLocationName": "m3_recon", "repositoryName": "__repository__",
                           "jobName": "resolve_exception"},
              "runConfigData": {"ops": {"record_exception_decision": {"config": config}}}}
    answer = requests.post(f"{url}/graphql", json={"query": LAUNCH, "variables": {"params": params}}, timeout=30).json()
    launched = answer["data"]["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + HANG_CEILING_SECONDS
    while time.monotonic() < deadline:
        status = requests.post(f"{url}/graphql", json={"query": STATUS, "variables": {"runId": run_id}},
                               timeout=30).json()["data"]["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(0.5)
    pytest.fail(f"run {run_id} of resolve_exception did not finish within {HANG_CEILING_SECONDS} s")


def test_a_decision_launched_from_the_launchpad_is_applied_by_the_next_close(webserver, books, monkeypatch):
    truth = {t.payment_id: t for t in books.sandbox.world.payments}
    with duckdb.connect(books.database, read_only=True) as conn:
        register = conn.execute("SELECT exception_id, reason_code, source_id FROM out_recon_exceptions "
                                "WHERE status = 'open' ORDER BY 1").fetchall()
        applied = {r[0] for r in conn.execute("SELECT invoice_number FROM core_payment_allocations "
                                               "WHERE status = 'auto'").fetchall()}
    exception_id, _, source_id = next(r for r in register if r[1] == "no_reference" and truth[r[2]].kind == "full"
                                      and truth[r[2]].allocations[0].invoice not in applied)
    intended = truth[source_id].allocations[0]
    not_a_payment = next(r for r in register if r[1] == "reversal_of_unapplied_payment")
    assert launch_resolution(webserver, exception_id=not_a_payment[0], action="assign", invoice=intended.invoice,
                             why="test", by="controller") == "FAILURE"  # refused: nothing recorded
    assert launch_resolution(webserver, exception_id=exception_id, action="assign", invoice=intended.invoice,
                             why="remittance advice", by="controller") == "SUCCESS"
    decisions = (books.directory / "decisions.jsonl").read_text().splitlines()
    assert len(decisions) == 1 and exception_id in decisions[0]

    books.use(monkeypatch)
    assert run_close(close_definitions(books.database), books.first, books.last).success
    with duckdb.connect(books.database, read_only=True) as conn:
        assert conn.execute("SELECT invoice_number, allocated_minor, rule FROM core_payment_allocations "
                            "WHERE source_id = ?", [source_id]).fetchall() == [
            (intended.invoice, intended.amount_minor, "manual")]
        assert conn.execute("SELECT status, decided_by FROM out_recon_exceptions WHERE exception_id = ?",
                            [exception_id]).fetchall() == [("resolved", "controller")]

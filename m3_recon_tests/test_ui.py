"""The Dagster UI as finance sees it, checked on the code location in-process: the asset graph shows the lineage
from every processor's raw assets to the journals and postings, grouped by stage, with the blocking checks; and
a decision launched as ``resolve_exception`` (the Launchpad's job) is recorded and taken up by the next close's
allocation. That the workspace loads as the webserver loads it is test_definitions' job."""

from datetime import date, timedelta

import dagster as dg
import duckdb
import pytest

from m3_recon.definitions import defs
from m3_recon.reconcile.decisions import load_decisions
from m3_recon.reconcile.matching import MatchingRules
from m3_recon.reconcile.window import allocate_payments


@pytest.fixture(scope="module")
def asset_graph():
    return defs.resolve_asset_graph()


def upstream(asset_graph, key: str) -> set[str]:
    return {k.to_user_string() for k in asset_graph.get_ancestor_asset_keys(dg.AssetKey(key))}


def test_lineage_runs_from_every_processor_to_the_postings(asset_graph):
    for downstream in ("core_gl_journal_lines", "core_cash_applications", "out_m3_postings"):
        ancestors = upstream(asset_graph, downstream)
        for raw in ("raw_stripe_balance_transactions", "raw_paytrace_transactions",
                    "raw_heartland_settlement_transactions", "raw_m3_open_invoices"):
            assert raw in ancestors, (raw, downstream)
    nodes = [asset_graph.get(key) for key in asset_graph.get_all_asset_keys()]
    assert {n.group_name for n in nodes} >= {"stripe", "paytrace", "heartland", "m3", "reconcile", "post"}
    assert all(n.description for n in nodes)


def test_the_ledger_protecting_checks_are_visible_and_blocking(asset_graph):
    checks = {(spec.asset_key.to_user_string(), spec.name): spec.blocking
              for key in asset_graph.asset_check_keys for spec in [asset_graph.get_check_spec(key)]}
    for expected in [("core_settlement_lines", "conforms_to_schema"), ("core_payouts", "conforms_to_schema"),
                     ("core_payment_allocations", "allocations_sum_to_payment"),
                     ("core_payment_allocations", "no_invoice_over_allocated"),
                     ("out_recon_exceptions", "every_payout_tied_or_excepted"),
                     ("core_gl_journal_lines", "vouchers_balance"),
                     ("core_gl_journal_lines", "clearing_nets_to_zero_per_payout")]:
        assert checks.get(expected) is True, expected


def launch_resolution(**config) -> bool:
    run_config = {"ops": {"record_exception_decision": {"config": config}}}
    return defs.resolve_job_def("resolve_exception").execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False).success


def test_a_decision_launched_from_the_launchpad_is_applied_by_the_next_close(closed_books, tmp_path, monkeypatch):
    books = closed_books.copy(tmp_path).use(monkeypatch)
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
    assert not launch_resolution(exception_id=not_a_payment[0], action="assign", invoice=intended.invoice,
                                 why="test", by="controller")  # refused: nothing recorded
    assert launch_resolution(exception_id=exception_id, action="assign", invoice=intended.invoice,
                             why="remittance advice", by="controller")
    decisions = (books.directory / "decisions.jsonl").read_text().splitlines()
    assert len(decisions) == 1 and exception_id in decisions[0]

    first, end = date.fromisoformat(books.first), date.fromisoformat(books.last) + timedelta(days=1)
    with duckdb.connect(books.database) as conn:  # the next close's allocation step
        load_decisions(conn, into="decided")
        assert allocate_payments(conn, MatchingRules.load(), first, end, decisions="decided").decided == 1
        assert conn.execute("SELECT invoice_number, allocated_minor, rule FROM core_payment_allocations "
                            "WHERE source_id = ?", [source_id]).fetchall() == [
            (intended.invoice, intended.amount_minor, "manual")]

"""Stripe assets in Dagster: partitions into DuckDB equal the generator, idempotent, look-back, no secrets."""

from datetime import datetime, timezone

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from m3_recon.defs.stripe.assets import raw_stripe_balance_transactions, raw_stripe_payout_lines, raw_stripe_payouts
from m3_recon.sandbox import SANDBOX_STRIPE_KEY, Sandbox
from m3_recon.sandbox.stripe_ledger import RECONCILIATION_DELAY
from m3_recon.sandbox.world import day_start_epoch
from m3_recon_tests.conftest import stripe_resource_for

STRIPE_ASSETS = [raw_stripe_balance_transactions, raw_stripe_payouts, raw_stripe_payout_lines]


def run(sandbox, db, partition_key, lookback=0):
    config = {"ops": {a.key.to_python_identifier(): {"config": {"lookback_days": lookback}} for a in STRIPE_ASSETS}}
    return dg.materialize(STRIPE_ASSETS, partition_key=partition_key, run_config=config,
                          resources={"stripe": stripe_resource_for(sandbox), "duckdb": DuckDBResource(database=db)})


def day_bounds(day: str) -> tuple[int, int]:
    start = day_start_epoch(datetime.fromisoformat(day).date())
    return start, start + 86400


def rows(db, sql):
    with duckdb.connect(db, read_only=True) as conn:
        return conn.execute(sql).fetchall()


def test_a_partition_holds_exactly_the_generators_objects_for_that_day(sandbox, tmp_path):
    db = str(tmp_path / "w.duckdb")
    result = run(sandbox, db, "2026-10-15")
    assert result.success
    (identity,) = result.get_asset_check_evaluations()  # each itemised payout's lines net to zero
    assert (identity.check_name, identity.passed) == ("payout_lines_net_to_zero", True)
    assert identity.metadata["payouts_checked"].value > 0
    start, end = day_bounds("2026-10-15")
    ledger = sandbox.stripe
    expected_txns = {t.id: t for t in ledger.balance_transactions.values() if start <= t.created < end}
    loaded = {r[0]: r[1:] for r in rows(db, "SELECT id, amount, fee, net, m3_invoice FROM raw_stripe_balance_transactions")}
    assert set(loaded) == set(expected_txns)
    for txn_id, (amount, fee, net, _) in loaded.items():
        txn = expected_txns[txn_id]
        assert (amount, fee, net) == (txn.amount, txn.fee, txn.net)
    invoices = {r[0]: r[4] for r in rows(db, "SELECT id, amount, fee, net, m3_invoice FROM raw_stripe_balance_transactions")}
    for txn in expected_txns.values():
        if txn.type == "charge":
            assert invoices[txn.id] == ledger.charges[txn.source].metadata.get("m3_invoice")
    payouts = {r[0] for r in rows(db, "SELECT id FROM raw_stripe_payouts")}
    assert payouts == {p.id for p in ledger.payouts.values() if start <= p.created < end}
    lines = rows(db, "SELECT payout_id, balance_transaction_id FROM raw_stripe_payout_lines")
    assert {b for _, b in lines} == {t.id for t in ledger.balance_transactions.values() if t.payout in payouts}


def test_rematerialising_a_day_replaces_it_without_duplicates(sandbox, tmp_path):
    db = str(tmp_path / "w.duckdb")
    assert run(sandbox, db, "2026-10-20").success
    first = rows(db, "SELECT id, amount, net, status FROM raw_stripe_balance_transactions ORDER BY id")
    assert run(sandbox, db, "2026-10-20").success
    assert run(sandbox, db, "2026-10-20", lookback=3).success  # overlapping windows too
    second = rows(db, "SELECT id, amount, net, status FROM raw_stripe_balance_transactions WHERE created_at_utc >= "
                      "'2026-10-20' ORDER BY id")
    assert first == second
    for table, key in [("raw_stripe_balance_transactions", "id"), ("raw_stripe_payouts", "id"),
                       ("raw_stripe_payout_lines", "balance_transaction_id")]:
        total, distinct = rows(db, f"SELECT count(*), count(DISTINCT {key}) FROM {table}")[0]
        assert total == distinct


def test_whole_period_as_one_backfill_run_equals_the_generator(sandbox, tmp_path):
    db = str(tmp_path / "w.duckdb")
    definitions = dg.Definitions(
        assets=STRIPE_ASSETS, jobs=[dg.define_asset_job("stripe_backfill", selection=STRIPE_ASSETS)],
        resources={"stripe": stripe_resource_for(sandbox), "duckdb": DuckDBResource(database=db)})
    result = definitions.resolve_job_def("stripe_backfill").execute_in_process(
        tags={"dagster/asset_partition_range_start": "2026-10-01", "dagster/asset_partition_range_end": "2026-10-31"},
        instance=dg.DagsterInstance.ephemeral())
    assert result.success
    ledger = sandbox.stripe
    assert {r[0] for r in rows(db, "SELECT id FROM raw_stripe_balance_transactions")} == set(ledger.balance_transactions)
    assert {r[0] for r in rows(db, "SELECT id FROM raw_stripe_payouts")} == set(ledger.payouts)
    lines = rows(db, "SELECT balance_transaction_id FROM raw_stripe_payout_lines")
    assert len(lines) == len({r[0] for r in lines}) == sum(1 for t in ledger.balance_transactions.values() if t.payout)
    assert rows(db, "SELECT count(*) FROM (SELECT payout_id FROM raw_stripe_payout_lines GROUP BY 1 "
                    "HAVING sum(net) <> 0)") == [(0,)]
    assert rows(db, "SELECT count(*) FROM raw_stripe_payouts WHERE status = 'failed'") == [(1,)]


def test_lookback_catches_a_payout_that_failed_and_funds_that_became_available(tmp_path):
    with Sandbox(days=20) as sandbox:
        db = str(tmp_path / "w.duckdb")
        payout = next(p for p in sandbox.stripe.payouts.values() if p.failed_at)
        payout_day = datetime.fromtimestamp(payout.created, timezone.utc).date().isoformat()
        sandbox.clock.set(payout.created + RECONCILIATION_DELAY + 60)  # the day after: paid later, not yet failed
        assert run(sandbox, db, payout_day).success
        assert rows(db, f"SELECT status FROM raw_stripe_payouts WHERE id = '{payout.id}'") == [("in_transit",)]
        pending_before = rows(db, "SELECT count(*) FROM raw_stripe_balance_transactions WHERE status = 'pending'")[0][0]
        assert pending_before > 0
        sandbox.clock.set(payout.failed_at + 3600)
        later_day = datetime.fromtimestamp(payout.failed_at, timezone.utc).date().isoformat()
        assert run(sandbox, db, later_day, lookback=7).success
        assert rows(db, f"SELECT status, failure_code FROM raw_stripe_payouts WHERE id = '{payout.id}'") == [
            ("failed", "account_closed")]
        still_pending = rows(db, f"SELECT count(*) FROM raw_stripe_balance_transactions WHERE status = 'pending' "
                                 f"AND created_at_utc < '{payout_day}'::DATE + 1")[0][0]
        assert still_pending < pending_before


def test_a_bad_key_fails_the_run_with_an_actionable_message(sandbox, tmp_path):
    result = dg.materialize(
        [raw_stripe_payouts], partition_key="2026-10-05", raise_on_error=False,
        resources={"stripe": stripe_resource_for(sandbox, api_key="sk_test_wrong_key_000000000000"),
                   "duckdb": DuckDBResource(database=str(tmp_path / "w.duckdb"))})
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.to_string()
    assert "STRIPE_API_KEY" in message and "sk_test_wrong_key" not in message


def test_the_key_never_reaches_logs_or_metadata(sandbox, tmp_path):
    result = run(sandbox, str(tmp_path / "w.duckdb"), "2026-10-10")
    assert result.success
    events = "\n".join(str(event) for event in result.all_events)
    assert SANDBOX_STRIPE_KEY not in events
    metadata = [m.metadata for m in result.get_asset_materialization_events() for m in [m.materialization]]
    assert SANDBOX_STRIPE_KEY not in repr(metadata)
    assert all("rows" in m for m in metadata)

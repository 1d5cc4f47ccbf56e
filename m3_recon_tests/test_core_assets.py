"""The canonical layer end to end: sandbox → staging → core_settlement_lines equals the generator's movements."""

from collections import defaultdict

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from m3_recon.defs.core.assets import core_payouts, core_settlement_lines
from m3_recon_tests.test_stripe_assets import STRIPE_ASSETS
from m3_recon.sandbox.truth import truth_misses
from m3_recon_tests.conftest import stripe_resource_for


def close_period(sandbox, db):
    definitions = dg.Definitions(
        assets=[*STRIPE_ASSETS, core_settlement_lines, core_payouts],
        jobs=[dg.define_asset_job("close", dg.AssetSelection.all())],
        resources={"stripe": stripe_resource_for(sandbox), "duckdb": DuckDBResource(database=db)})
    period = sandbox.period
    return definitions.resolve_job_def("close").execute_in_process(
        tags={"dagster/asset_partition_range_start": period.start.isoformat(),
              "dagster/asset_partition_range_end": period.end.isoformat()},
        instance=dg.DagsterInstance.ephemeral())


def test_core_settlement_lines_sum_to_the_generators_totals(sandbox, tmp_path):
    db = str(tmp_path / "w.duckdb")
    result = close_period(sandbox, db)
    assert result.success
    expected = defaultdict(lambda: [0, 0, 0, 0])
    for txn in sandbox.stripe.balance_transactions.values():
        totals = expected[("stripe", txn.currency.upper())]
        totals[0] += 1
        totals[1] += txn.amount
        totals[2] += txn.fee
        totals[3] += txn.net
    with duckdb.connect(db, read_only=True) as conn:
        got = {(p, c): [n, a, f, t] for p, c, n, a, f, t in conn.execute(
            "SELECT processor, currency, count(*), sum(amount_minor), sum(fee_minor), sum(net_minor) "
            "FROM core_settlement_lines GROUP BY ALL").fetchall()}
        assert got == dict(expected)
        assert conn.execute("SELECT count(*) FROM core_quarantine").fetchone() == (0,)
        ids = {r[0] for r in conn.execute("SELECT source_id FROM core_settlement_lines").fetchall()}
        assert ids == set(sandbox.stripe.balance_transactions)
        payouts = dict(conn.execute("SELECT payout_id, status FROM core_payouts").fetchall())
        assert set(payouts) == set(sandbox.stripe.payouts)
        assert list(payouts.values()).count("failed") == 1
        # Every line that a payout settled carries that payout's id.
        settled = conn.execute("SELECT count(*) FROM core_settlement_lines WHERE payout_id IS NOT NULL").fetchone()[0]
        assert settled == sum(1 for t in sandbox.stripe.balance_transactions.values() if t.payout)
    checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert checks and all(e.event_specific_data.passed for e in checks)
    # The matching engine, fed the canonical lines, lands every generated Stripe payment as the generator says.
    with duckdb.connect(db) as conn:
        judged, misses = truth_misses(conn, sandbox.world, "stripe", "core_settlement_lines")
    assert judged == len(sandbox.stripe.charges) and misses == []

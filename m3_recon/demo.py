"""The demo: start the sandbox, run the pipeline over its whole period, print what was loaded.

Runs on the persistent instance in ``DAGSTER_HOME`` so the run shows up in the UI afterwards, and
checks what landed in DuckDB against the sandbox generator's own objects.
"""

from __future__ import annotations

import os
import time

import duckdb

from m3_recon.sandbox import Sandbox

STRIPE_TABLES = {
    "raw_stripe_balance_transactions": "id",
    "raw_stripe_payouts": "id",
    "raw_stripe_payout_lines": "balance_transaction_id",
}


def run_demo(seed: int, start, days: int) -> int:
    began = time.monotonic()
    with Sandbox(seed=seed, start=start, days=days) as sandbox:
        os.environ.update(sandbox.env())
        # Imported only now: partitions are defined from M3_RECON_START_DATE at import time.
        from m3_recon import settings
        from m3_recon.runs import run_payout_close

        period = sandbox.period
        print(f"Sandbox up: Stripe at {sandbox.url('stripe')}; period {period.start} .. {period.end} "
              f"(seed {seed})")
        result = run_payout_close(period.start, period.end)
        if not result.success:
            print("The run failed; see the errors above.")
            return 1
        expected = expected_stripe_ids(sandbox)
        ok = True
        with duckdb.connect(settings.duckdb_path(), read_only=True) as conn:
            print(f"\nDuckDB warehouse: {settings.duckdb_path()}")
            for table, key in STRIPE_TABLES.items():
                rows, distinct = conn.execute(f"SELECT count(*), count(DISTINCT {key}) FROM {table}").fetchone()
                found = {r[0] for r in conn.execute(f"SELECT {key} FROM {table}").fetchall()}
                same = found == expected[table] and rows == distinct
                ok &= same
                print(f"  {table:<34} {rows:>6} rows  "
                      f"{'= generator' if same else '!= generator (%d expected)' % len(expected[table])}")
            statuses = dict(conn.execute("SELECT status, count(*) FROM raw_stripe_payouts GROUP BY 1").fetchall())
            paid_out = conn.execute("SELECT sum(amount) FROM raw_stripe_payouts WHERE status <> 'failed'").fetchone()[0]
        print(f"  payouts found: {sum(statuses.values())} "
              f"({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}); "
              f"paid out {paid_out / 100:,.2f} USD")
    print(f"Run {result.run_id} finished in {time.monotonic() - began:.1f} s. Open the UI with `make ui`.")
    return 0 if ok else 1


def expected_stripe_ids(sandbox: Sandbox) -> dict[str, set[str]]:
    """The generator's own answer for the period, as of the sandbox clock."""
    ledger, now = sandbox.stripe, sandbox.clock.now()
    txns = {t.id for t in ledger.balance_transactions.values() if t.created <= now}
    completed = {p.id for p in ledger.payouts.values() if p.created + 12 * 3600 <= now}
    return {
        "raw_stripe_balance_transactions": txns,
        "raw_stripe_payouts": {p.id for p in ledger.payouts.values() if p.created <= now},
        "raw_stripe_payout_lines": {t.id for t in ledger.balance_transactions.values() if t.payout in completed},
    }

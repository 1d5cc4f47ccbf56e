"""The demo: start the sandbox, run the payout close over its whole period, print what a controller
would ask, and check every figure against the sandbox generator's own truth.

Runs on the persistent instance in ``DAGSTER_HOME`` so the run shows up in the UI afterwards. Exits
non-zero when the run fails or any figure disagrees with the generator.
"""

from __future__ import annotations

import os
import time

import duckdb

from m3_recon.sandbox import Sandbox
from m3_recon.sandbox.truth import expected_movements, judge

PROCESSORS = ("stripe", "paytrace", "heartland")


def run_demo(seed: int, start, days: int) -> int:
    began = time.monotonic()
    with Sandbox(seed=seed, start=start, days=days) as sandbox:
        os.environ.update(sandbox.env())
        # Imported only now: partitions are defined from M3_RECON_START_DATE at import time.
        from m3_recon import settings
        from m3_recon.runs import run_payout_close

        period = sandbox.period
        print(f"Sandbox up ({', '.join(f'{name} {sandbox.url(name)}' for name in sandbox.servers)}); "
              f"period {period.start} .. {period.end}, seed {seed}")
        result = run_payout_close(period.start, period.end)
        print(f"payout_close {period.start}..{period.end}: {'succeeded' if result.success else 'FAILED'} "
              f"(run {result.run_id}, {time.monotonic() - began:.1f} s)")
        if not result.success:
            return 1
        with duckdb.connect(settings.duckdb_path(), read_only=True) as conn:
            ok = report(conn, sandbox)
        print(f"\nWarehouse: {settings.duckdb_path()}. Total {time.monotonic() - began:.1f} s. "
              "Browse the run and lineage with `make ui`.")
    return 0 if ok else 1


def report(conn: duckdb.DuckDBPyConnection, sandbox: Sandbox) -> bool:
    ok = True
    print("\nSettlement lines (core_settlement_lines) against the generator's movements:")
    expected = expected_movements(sandbox)
    for processor in PROCESSORS:
        rows = conn.execute("SELECT source_id, currency, amount_minor, fee_minor, net_minor FROM core_settlement_lines "
                            "WHERE processor = ?", [processor]).fetchall()
        loaded = {r[0]: tuple(r[1:]) for r in rows}
        same = loaded == expected[processor] and len(rows) == len(loaded)
        ok &= same
        totals = {}
        for currency, amount, fee, net in loaded.values():
            total = totals.setdefault(currency, [0, 0])
            total[0] += amount
            total[1] += net
        money = "; ".join(f"{c} gross {a / 100:,.2f} net {n / 100:,.2f}" for c, (a, n) in sorted(totals.items()))
        print(f"  {processor:<10} {len(rows):>5} lines  {'= generator' if same else '!= GENERATOR'}  {money}")
    quarantined, without_reason = conn.execute(
        "SELECT count(*), count(*) FILTER (coalesce(reason, '') = '') FROM core_quarantine").fetchone()
    ok &= without_reason == 0
    print(f"  quarantined: {quarantined} (every one with a reason: {'yes' if without_reason == 0 else 'NO'})")

    payments, auto, suggested, unmatched = conn.execute("""
        SELECT count(DISTINCT (processor, source_id)), count(DISTINCT (processor, source_id)) FILTER (status = 'auto'),
               count(DISTINCT (processor, source_id)) FILTER (status = 'suggested'),
               count(DISTINCT (processor, source_id)) FILTER (status = 'unmatched')
        FROM core_payment_allocations WHERE line_type = 'charge'""").fetchone()
    print(f"\nPayments: {payments}; auto-matched {auto} ({auto / max(payments, 1):.1%}), suggested {suggested} "
          f"(never applied), excepted {unmatched}")
    for reason, count in conn.execute("SELECT reason_code, count(*) FROM out_recon_exceptions WHERE status = 'open' "
                                      "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall():
        print(f"  open exception {reason:<30} {count:>4}")
    for processor in PROCESSORS:
        judged, misses = judge(conn, sandbox.world, processor, "core_payment_allocations", "core_match_exceptions")
        ok &= not misses
        print(f"  {processor:<10} {judged - len(misses):>4}/{judged} payments land where the generator says")

    print("\nPayouts / deposits / batches (core_payout_reconciliation):")
    for processor, status, count, residue in conn.execute(
            "SELECT processor, status, count(*), sum(abs(difference_minor)) FROM core_payout_reconciliation "
            "GROUP BY ALL ORDER BY ALL").fetchall():
        print(f"  {processor:<10} {status:<9} {count:>4}" + (f"  residue {residue / 100:,.2f}" if residue else ""))
    mismatched_unexcepted = conn.execute("""
        SELECT count(*) FROM core_payout_reconciliation t WHERE status = 'mismatch' AND NOT EXISTS (
            SELECT 1 FROM out_recon_exceptions e WHERE e.source_id = t.payout_id AND e.status = 'open')""").fetchone()[0]
    ok &= mismatched_unexcepted == 0
    return ok

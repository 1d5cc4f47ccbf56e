"""The demo: start the sandbox, run the payout close over its whole period, post to M3 and raise alerts
(as the sensors would), print what a controller would ask, and check every figure against the sandbox
generator's truth and M3's resulting state.

Runs on the persistent instance in ``DAGSTER_HOME`` so the runs show up in the UI afterwards. The
sandbox's M3 ledger is kept in ``data/sandbox/`` (per seed and period) next to the warehouse, so running
the demo again re-closes the period against the same M3 — and posts nothing new (``make ui`` and
``m3-recon sandbox`` serve that same ledger; ``--reset`` starts over). A demo with quirks has
its own M3 ledger and its own warehouse (``data/m3_recon_quirks-<names>.duckdb``). Exits non-zero when a
run fails, any figure disagrees (M3's trial balance: each clearing account holds exactly the payouts
still in transit) or the posting summary it ends with names something a person must fix; when M3 and the
warehouse have drifted apart it says how to start both over. After posting it writes the reconciliation
report (as ``reconciliation_report_sensor`` would) and prints its clearing roll-forward.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict
import sys
import time
from pathlib import Path

import duckdb

from m3_recon.money import money, money_by_currency
from m3_recon.posting.summary import print_posting_summary
from m3_recon.preflight import PreflightError, input_problems, period_problems
from m3_recon.progress import summary
from m3_recon.sandbox import RECOVERY_HINT, Sandbox, Scale, persisted_ledger_path, reset_sandbox_state
from m3_recon.sandbox import flavour as sandbox_flavour
from m3_recon.sandbox.trial_balance import print_trial_balance
from m3_recon.sandbox.truth import expected_banking, expected_movements, judge
from m3_recon.settings import PROJECT_ROOT

PROCESSORS = ("stripe", "paytrace", "heartland")


def run_demo(seed: int, start, days: int, quirks: frozenset[str] = frozenset(), reset: bool = False,
             local_currency: str = "USD", scale: Scale = Scale()) -> int:
    began = time.monotonic()
    problems = input_problems()
    if problems:
        raise PreflightError(problems)
    flavour = sandbox_flavour(quirks, local_currency, scale)
    ledger = persisted_ledger_path(seed, start, days, quirks, local_currency, scale)
    if flavour:  # another world closes into its own warehouse, as it posts to its own M3 ledger
        os.environ.setdefault("M3_RECON_DUCKDB_PATH", str(PROJECT_ROOT / "data" / f"m3_recon{flavour}.duckdb"))
        os.environ.setdefault("M3_RECON_ANALYST_DUCKDB_PATH",
                              str(PROJECT_ROOT / "data" / f"m3_recon_analyst{flavour}.duckdb"))
        os.environ.setdefault("M3_RECON_REPORTS_PATH", str(PROJECT_ROOT / "data" / f"reports{flavour}"))
    if reset:
        print("Starting over: removed " + (", ".join(map(str, reset_sandbox_state(ledger))) or "nothing"))
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with Sandbox(seed=seed, start=start, days=days, m3_ledger_path=ledger, quirks=quirks,
                 local_currency=local_currency, **asdict(scale)) as sandbox:
        os.environ.update(sandbox.env())
        # Imported only now: partitions are defined from M3_RECON_START_DATE at import time.
        from m3_recon import settings
        from m3_recon.runs import run_after_close, run_payout_close

        period = sandbox.period
        problems = period_problems(period.start, period.end)
        if problems:
            raise PreflightError(problems)
        print(f"Sandbox up ({', '.join(f'{name} {sandbox.url(name)}' for name in sandbox.servers)}); "
              f"period {period.start} .. {period.end}, seed {seed}"
              + (f"; quirks: {', '.join(sorted(quirks))}" if quirks else "")
              + (f"; M3 keeps its books in {local_currency}" if local_currency != "USD" else "")
              + (f"; scaled world: {scale.charges_per_day or 'default'} payments a day, {scale.customers:,} customers, "
                 f"{scale.invoices or 15 * scale.customers:,} invoices" if scale != Scale() else ""))
        write_bank_statements(sandbox, ledger.parent / f"bank_seed{seed}_{start}_{days}d{flavour}")
        result = run_payout_close(period.start, period.end, out=sys.stdout)
        print(f"payout_close {period.start}..{period.end}: {'succeeded' if result.success else 'FAILED'} "
              f"(run {result.run_id}, {time.monotonic() - began:.1f} s)")
        if not result.success:
            print(f"If {settings.duckdb_path()} and the sandbox M3 ({ledger}) come from an earlier demo of another "
                  "version or world, start both over with `m3-recon demo --reset`.")
            return 1
        posting, alerts = run_after_close(out=sys.stdout)
        print(f"m3_posting: {'succeeded' if posting.success else 'FAILED'}; recon_alerts: "
              f"{'succeeded' if alerts.success else 'FAILED'}")
        print(summary([result, posting, alerts]))
        reported = posting.success and report_written(period)
        events = posting.get_asset_materialization_events()
        this_run = events[0].materialization.metadata if events else {}
        with duckdb.connect(settings.duckdb_path(), read_only=True) as conn:
            ok = report(conn, sandbox) & reported & report_loop(conn, sandbox)
            in_step = report_m3(conn, sandbox, {k: v.value for k, v in this_run.items()})
            in_step &= print_trial_balance(conn, sandbox)
        if not in_step:
            print("\n" + RECOVERY_HINT.format(ledger=ledger, warehouse=settings.duckdb_path()))
        ok &= in_step
        print(f"\nWarehouse: {settings.duckdb_path()}. Total {time.monotonic() - began:.1f} s. "
              "Browse the run and lineage with `make ui`.")
    postings_ok = print_posting_summary() == 0
    return 0 if ok and posting.success and alerts.success and postings_ok else 1


def report_written(period) -> bool:
    """The reconciliation report after posting (as the sensor would launch it), with its roll-forward."""
    from m3_recon.runs import run_report

    result = run_report(period.start, period.end)
    if not result.success:
        print(f"reconciliation_report: FAILED (run {result.run_id})")
        return False
    metadata = {k: v.value for k, v in result.get_asset_materialization_events()[-1].materialization.metadata.items()}
    print(f"\nPayout reconciliation report: {metadata['report']} (and report.xlsx beside it)")
    print(f"  {'processor':<10} {'opening':>16} {'charges':>18} {'refunds':>16} {'disputes':>14} {'fees':>16} "
          f"{'adjustments':>14} {'payouts':>18} {'closing':>16}  closes")
    csv_rows = Path(metadata["csv_roll_forward"]).read_text(encoding="utf-8").splitlines()
    for row in csv.DictReader(csv_rows):
        if row["processor"] == "Total":
            continue
        print(f"  {row['processor']:<10} " + " ".join(f"{row[c]:>{w}}" for c, w in (
            ("opening", 16), ("charges", 18), ("refunds", 16), ("disputes", 14), ("fees", 16), ("adjustments", 14),
            ("payouts", 18), ("closing", 16))) + ("  yes" if row["difference_minor"] == "0" else
                                                  f"  NO ({row['difference']})"))
    print(f"  vouchers by M3 status: {metadata['vouchers_by_m3_status']}")
    return bool(metadata["roll_forward_closes"])


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
        charged = conn.execute("SELECT currency, sum(amount_minor) FROM core_settlement_lines WHERE processor = ? "
                               "AND line_type = 'charge' GROUP BY 1 ORDER BY 1", [processor]).fetchall()
        shown = "charges " + "; ".join(money(a, c) for c, a in charged)  # the roll-forward has every movement
        print(f"  {processor:<10} {len(rows):>5} lines  {'= generator' if same else '!= GENERATOR'}  {shown}")
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
    for processor, status, count, residues in conn.execute(
            "SELECT processor, status, sum(n), list((currency, residue) ORDER BY currency) FILTER (residue <> 0) "
            "FROM (SELECT processor, status, currency, count(*) AS n, sum(abs(difference_minor)) AS residue "
            "FROM core_payout_reconciliation GROUP BY ALL) GROUP BY ALL ORDER BY ALL").fetchall():
        print(f"  {processor:<10} {status:<9} {count:>4}"
              + (f"  residue {money_by_currency([tuple(r) for r in residues])}" if residues else ""))
    mismatched_unexcepted = conn.execute("""
        SELECT count(*) FROM core_payout_reconciliation t WHERE status = 'mismatch' AND NOT EXISTS (
            SELECT 1 FROM out_recon_exceptions e WHERE e.source_id = t.payout_id AND e.status = 'open')""").fetchone()[0]
    ok &= mismatched_unexcepted == 0
    return ok


def report_m3(conn: duckdb.DuckDBPyConnection, sandbox: Sandbox, this_run: dict) -> bool:
    """M3's state after posting against what the pipeline says it posted."""
    now = sandbox.clock.now()
    print("\nM3 (sandbox ledger; GLS840MI → GLS200MI, ARS040MI → ARS200MI):")
    print(f"  this run: {this_run.get('posted', 0)} vouchers posted, {this_run.get('verified', 0)} verified, "
          f"{this_run.get('resumed', 0)} resumed, {this_run.get('failed', 0)} failed, {this_run.get('held', 0)} held")
    outbox = dict(conn.execute("SELECT route || ' ' || status, count(*) FROM out_m3_postings GROUP BY 1").fetchall())
    print("  outbox: " + ", ".join(f"{n} {k}" for k, n in sorted(outbox.items())))
    gl_sent = {k: d for k, d in conn.execute(
        "SELECT j.voucher_key, sum(j.amount_minor) FILTER (j.amount_minor > 0) FROM core_gl_journal_lines j "
        "JOIN out_m3_postings p ON p.voucher_key = j.voucher_key AND p.route = 'gl' AND p.status = 'verified' "
        "GROUP BY 1").fetchall()}
    in_m3: dict[str, int] = {}
    for line in sandbox.m3.gl_lines(now):
        if line.amount_minor > 0 and line.batch_key:  # GLS840 vouchers (payment vouchers have no batch key)
            in_m3[line.batch_key] = in_m3.get(line.batch_key, 0) + line.amount_minor
    gl_ok = in_m3 == gl_sent
    applied = dict(((n, y), a) for n, y, a in conn.execute(
        "SELECT c.invoice_number, c.invoice_year, sum(c.amount_minor) FROM core_cash_applications c "
        "JOIN out_m3_postings p ON p.voucher_key = c.voucher_key AND p.route = 'cash_application' "
        "AND p.status = 'verified' GROUP BY 1, 2").fetchall())
    totals = sandbox.m3.totals(now)
    cash_ok = all(t.paid_minor == applied.get((t.line.invoice, t.line.invoice_year), 0) for t in totals.values())
    paid = sum(1 for t in totals.values() if t.reco == 9)
    print(f"  GL vouchers in M3: {len(in_m3)}, debits equal to the verified journals: {'yes' if gl_ok else 'NO'}")
    print(f"  invoices with cash applied: {sum(1 for a in applied.values() if a)}, fully paid (RECO 9): {paid}; "
          f"every invoice's paid amount in M3 equals the verified applications: {'yes' if cash_ok else 'NO'}")
    return gl_ok and cash_ok and not this_run.get("failed", 0)


def write_bank_statements(sandbox: Sandbox, folder) -> None:
    """The sandbox bank's statements into the demo's own bank folder, which the close imports (M3_RECON_BANK_DIR)."""
    os.environ["M3_RECON_BANK_DIR"] = str(folder)
    written = sandbox.write_bank_statements(os.environ["M3_RECON_BANK_DIR"])
    kinds = {suffix: sum(1 for p in written if p.suffix == suffix) for suffix in (".bai2", ".xml")}
    print(f"Bank statements: {kinds['.bai2']} BAI2 and {kinds['.xml']} camt.053 files in "
          f"{os.environ['M3_RECON_BANK_DIR']}")


def report_loop(conn: duckdb.DuckDBPyConnection, sandbox: Sandbox) -> bool:
    """Bank receipt of every payout, and payments resolved through the customer cross-reference, against the
    generator."""
    ok = True
    banked, unexplained = expected_banking(sandbox)
    print("\nBank statements (core_payout_reconciliation.banked) against the sandbox bank:")
    for processor in PROCESSORS:
        rows = conn.execute("SELECT payout_id, banked, status FROM core_payout_reconciliation WHERE processor = ?",
                            [processor]).fetchall()
        got = {payout for payout, is_banked, _ in rows if is_banked}
        arrived = sum(1 for _, _, status in rows if status not in ("failed", "pending"))
        same = got == banked.get(processor, set()) and len(got) == arrived
        ok &= same
        print(f"  {processor:<10} {len(got):>4}/{arrived} arrived payouts banked  "
              f"{'= bank statements' if same else '!= BANK STATEMENTS'}")
    reasons = dict(conn.execute("SELECT reason_code, count(*) FROM out_recon_exceptions WHERE status = 'open' "
                                "GROUP BY 1").fetchall())
    stray = reasons.get("unexplained_bank_credit", 0)
    ok &= stray == unexplained and not reasons.get("payout_not_banked", 0)
    print(f"  unexplained bank credits: {stray} (generator: {unexplained}); payouts not banked: "
          f"{reasons.get('payout_not_banked', 0)}")

    master = sandbox.stripe.customer_master
    xref = dict(conn.execute("SELECT processor_customer_id, customer FROM core_customer_xref").fetchall())
    by = dict(conn.execute("SELECT matched_by, count(*) FROM core_customer_xref GROUP BY 1").fetchall())
    xref_ok = xref == master.expected_xref and reasons.get("customer_xref_conflict", 0) == len(master.conflicts)
    ok &= xref_ok
    print(f"\nCustomer cross-reference: {len(xref)} Stripe customers mapped ({by.get('metadata', 0)} by metadata, "
          f"{by.get('email', 0)} by e-mail), {reasons.get('customer_xref_conflict', 0)} conflicts  "
          f"{'= generator' if xref_ok else '!= GENERATOR'}")
    resolved = {r[0]: r[1] for r in conn.execute("""
        SELECT l.source_id, any_value(a.status) FROM core_settlement_lines l
        JOIN core_payment_allocations a USING (processor, source_id)
        WHERE l.processor = 'stripe' AND l.line_type = 'charge' AND l.customer_ref IS NULL AND l.invoice_ref IS NULL
          AND a.customer IS NOT NULL GROUP BY 1""").fetchall()}
    expected = {t.payment_id for t in sandbox.world.payments if t.customer_via_xref and not t.invoice_ref}
    same = set(resolved) == expected & {r[0] for r in conn.execute(
        "SELECT source_id FROM core_settlement_lines WHERE processor = 'stripe'").fetchall()}
    ok &= same
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(
        {s: sum(1 for v in resolved.values() if v == s) for s in set(resolved.values())}.items()))
    no_reference = reasons.get("no_reference", 0)
    expected_no_reference = conn.execute(
        "SELECT count(*) FROM core_settlement_lines WHERE line_type = 'charge' AND list_contains(?, source_id)",
        [[t.payment_id for t in sandbox.world.payments if t.expected_reason == "no_reference"]]).fetchone()[0]
    ok &= no_reference == expected_no_reference
    print(f"  payments resolved through it: {len(resolved)} ({statuses})  {'= generator' if same else '!= GENERATOR'}")
    print(f"  no_reference exceptions that remain: {no_reference} (generator: {expected_no_reference})")
    return ok

"""Judging the matching engine against the sandbox generator's truth (used by the demo and the tests)."""

from collections import defaultdict

import duckdb
import pandas as pd

from m3_recon.canonical.stripe import PAYERS_SQL
from m3_recon.reconcile.matching import ALLOCATION_COLUMNS, MatchingRules, fill_customers_from_xref, match_payments
from m3_recon.sandbox.customer_master import build_customer_master
from m3_recon.sandbox.world import World
from m3_recon.sql import column_list, nullable
from m3_recon.warehouse import table_exists


def invoices_frame(world: World) -> pd.DataFrame:
    """Every invoice as M3 shows it before any cash application: outstanding = original amount."""
    return pd.DataFrame([{"invoice_number": i.number, "invoice_year": i.year, "customer": i.customer,
                          "currency": i.currency, "outstanding_minor": i.amount_minor, "invoice_date": i.invoice_date}
                         for i in world.invoices])


def truth_misses(conn: duckdb.DuckDBPyConnection, world: World, processor: str, lines: str) -> tuple[int, list]:
    """Run the matcher over ``lines`` and return (payments judged, the ones that did not land as expected).
    Stripe payments that name no customer take the one the generator's customer cross-reference gives."""
    conn.register("truth_invoices", invoices_frame(world))
    columns = column_list({c: nullable(t) for c, t in ALLOCATION_COLUMNS.items()})
    conn.execute(f"CREATE OR REPLACE TEMP TABLE truth_earlier ({columns})")
    if table_exists(conn, "raw_stripe_balance_transactions"):
        conn.register("truth_xref", pd.DataFrame(
            [("stripe", stripe_id, number) for stripe_id, number in build_customer_master(world).expected_xref.items()],
            columns=["processor", "processor_customer_id", "customer"]))
        fill_customers_from_xref(conn, lines=lines, payers=f"({PAYERS_SQL})", xref="truth_xref", into="truth_lines")
        lines = "truth_lines"
    match_payments(conn, MatchingRules.load(), lines=lines, invoices="truth_invoices", earlier="truth_earlier")
    return judge(conn, world, processor, "match_allocations", "match_exceptions", lines)


def judge(conn: duckdb.DuckDBPyConnection, world: World, processor: str, allocations_table: str,
          exceptions_table: str, lines: str = "core_settlement_lines") -> tuple[int, list]:
    """Compare stored allocations and exceptions with what the generator says each payment in ``lines`` should get.

    Only payments whose line was loaded are judged (a sale deposited after the period belongs to the next
    close); that the loaded lines are exactly the generator's movements is checked separately.
    """
    loaded = {r[0] for r in conn.execute(f"SELECT source_id FROM {lines} WHERE processor = ? AND line_type = 'charge'",
                                         [processor]).fetchall()}
    allocations, exceptions = defaultdict(list), defaultdict(set)
    for source_id, invoice, amount, status in conn.execute(
            f"SELECT source_id, invoice_number, allocated_minor, status FROM {allocations_table} "
            "WHERE line_type = 'charge' AND processor = ?", [processor]).fetchall():
        allocations[source_id].append((invoice, amount, status))
    for source_id, code in conn.execute(f"SELECT source_id, reason_code FROM {exceptions_table} WHERE processor = ?",
                                        [processor]).fetchall():
        exceptions[source_id].add(code)
    judged, misses = 0, []
    for truth in (t for t in world.payments if t.processor == processor and t.payment_id in loaded):
        judged += 1
        rows = allocations[truth.payment_id]
        statuses = {status for _, _, status in rows}
        applied = {(invoice, amount) for invoice, amount, status in rows if status == "auto"}
        expected = {(a.invoice, a.amount_minor) for a in truth.allocations}
        reasons = exceptions[truth.payment_id]
        ok = (statuses == {truth.expected_status}
              and (truth.expected_status != "auto" or applied == expected)
              and (truth.expected_reason in reasons if truth.expected_reason else not reasons))
        if not ok:
            misses.append((truth, rows, sorted(reasons)))
    return judged, misses


Movement = tuple[str, int, int, int]  # currency, amount, fee, net (minor units)


def expected_movements(sandbox) -> dict[str, dict[str, Movement]]:
    """Every money movement the generator made that settles within the sandbox period, per processor,
    keyed by the canonical ``source_id`` (Stripe: UTC day; PayTrace: batch date; GP: deposit date)."""
    period, now = sandbox.period, sandbox.clock.now()
    in_period = lambda day: period.start <= day <= period.end  # noqa: E731
    stripe = {t.id: (t.currency.upper(), t.amount, t.fee, t.net) for t in sandbox.stripe.balance_transactions.values()
              if t.created <= now and period.start_epoch <= t.created < period.end_epoch}
    paytrace = {str(t.id): ("USD", t.signed_minor, 0, t.signed_minor) for t in sandbox.paytrace.transactions.values()
                if t.batch is not None and in_period(sandbox.paytrace.batches[t.batch].business_date)}
    gp = sandbox.heartland
    deposited = {d.id for d in gp.deposits.values() if in_period(d.deposit_date) and d.created <= now}
    heartland = {t.id: -t.amount if t.type == "REFUND" else t.amount
                 for t in gp.transactions.values() if t.deposit in deposited}
    heartland |= {f"{d.id}:{a.stage}": -d.amount if a.funding_type == "DEBIT" else d.amount
                  for d in gp.disputes.values() for a in d.adjustments if a.deposit in deposited}
    heartland |= {f"{d.id}:{suffix}": -amount for d in gp.deposits.values() if d.id in deposited
                  for suffix, amount in (("DISCOUNTS", d.discounts_amount), ("FEES", d.fees_amount)) if amount}
    return {"stripe": stripe, "paytrace": paytrace,
            "heartland": {source_id: (sandbox.heartland.currency, net, 0, net) for source_id, net in heartland.items()}}


def expected_banking(sandbox) -> tuple[dict[str, set[str]], int]:
    """Per processor, the period's payouts the sandbox's bank statements show (a deposit of the next period's
    first days is on the statements too, but belongs to the next close); and how many credits explain nothing."""
    from m3_recon.sandbox.bank_statements import bank_lines

    period = sandbox.period
    in_period = {"stripe": set(sandbox.stripe.payouts),
                 "paytrace": {str(b.number) for b in sandbox.paytrace.batches.values()
                              if period.start <= b.business_date <= period.end},
                 "heartland": {d.id for d in sandbox.heartland.deposits.values()
                               if period.start <= d.deposit_date <= period.end}}
    lines = bank_lines(sandbox)
    banked: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        if line.processor and line.payout_id in in_period[line.processor]:
            banked[line.processor].add(line.payout_id)
    return dict(banked), sum(1 for line in lines if line.processor is None and line.amount_minor > 0)

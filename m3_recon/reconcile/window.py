"""One window of the reconciliation, as plain functions over the warehouse (no Dagster).

``allocate_payments`` applies the window's payments to invoices, ``tie_out_payouts_and_bank`` ties its
payouts to their lines and to the bank, and ``register_window_exceptions`` merges everything a person must
decide into the exception register. Each takes the window's days [first_day, end_day) and binds them as
query parameters, names the relations it reads (finance's ``decisions``: ``load_decisions``) and the temp
tables it leaves behind, and replaces the window of its stored tables. The Dagster assets in
``m3_recon.defs.reconcile`` call these and only report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import duckdb

from m3_recon.canonical.stripe import CATEGORY_SQL as STRIPE_CATEGORIES
from m3_recon.canonical.stripe import PAYERS_SQL as STRIPE_PAYERS
from m3_recon.reconcile.anomalies import ANOMALY_REASONS, flag_anomalies
from m3_recon.reconcile.banking import (BANK_LINE_COLUMNS, BANK_REASONS, BANKING_COLUMNS, bank_exceptions, bank_status,
                                        match_bank_lines)
from m3_recon.reconcile.customers import XREF_REASONS, xref_exceptions
from m3_recon.reconcile.decisions import apply_decisions, decisions_m3_cannot_follow
from m3_recon.reconcile.matching import (ALLOCATION_COLUMNS, EXCEPTION_COLUMNS, REASON_CODES, MatchingRules,
                                         fill_customers_from_xref, match_payments)
from m3_recon.reconcile.posted import (applications_in_m3, book_local_values, check_local_currency,
                                       freeze_posted_payments, keep_frozen, matchable_invoices)
from m3_recon.reconcile.tieout import (RECONCILIATION_COLUMNS, payout_exceptions, record_decisions, register_exceptions,
                                      tie_out_payouts, unknown_category_exceptions)
from m3_recon.sql import create_table, nullable
from m3_recon.warehouse import replace_days, table_exists

REGISTER_REASONS = (*REASON_CODES, *ANOMALY_REASONS, *XREF_REASONS, *BANK_REASONS)


def days_of(conn: duckdb.DuckDBPyConnection, *, source: str, into: str, first_day: date, end_day: date,
            column: str = "settlement_date", unless: str | None = None) -> str:
    """Temp table ``into``: the rows of ``source`` whose ``column`` lies in [first_day, end_day), less the
    payments (processor, source_id) in ``unless``. Returns ``into``."""
    excluded = (f" AND (processor, source_id) NOT IN (SELECT (processor, source_id) FROM {unless})" if unless else "")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT * FROM {source} "
                 f"WHERE {column} >= $first AND {column} < $end{excluded}", {"first": first_day, "end": end_day})
    return into


@dataclass(frozen=True)
class Allocated:
    """What ``allocate_payments`` left: the window's allocations and match exceptions (temp tables, as stored),
    the allocations M3 already holds applied, and how many payments came by each road."""

    decided: int                # payments applied by finance's decision
    kept_as_posted: int         # payments M3 holds, whose stored allocations were kept
    customers_from_xref: int    # payments given their customer by the cross-reference
    allocations: str = "match_allocations"
    exceptions: str = "match_exceptions"
    applications: str = "applications_in_m3"


def customers_from_xref(conn: duckdb.DuckDBPyConnection, *, lines: str, into: str) -> int:
    """View ``into``: ``lines`` with payments that name no customer given the one the customer
    cross-reference maps their Stripe customer to (none without the tables). Returns how many."""
    if table_exists(conn, "core_customer_xref") and table_exists(conn, "raw_stripe_balance_transactions"):
        return fill_customers_from_xref(conn, lines=lines, payers=f"({STRIPE_PAYERS})", xref="core_customer_xref",
                                        into=into)
    conn.execute(f"CREATE OR REPLACE TEMP VIEW {into} AS SELECT * FROM {lines}")
    return 0


def allocate_payments(conn: duckdb.DuckDBPyConnection, rules: MatchingRules, first_day: date, end_day: date, *,
                      decisions: str, local_currency: str = "USD") -> Allocated:
    """Allocate the payments of [first_day, end_day) in ``core_settlement_lines`` to ``core_open_invoices`` and
    replace the window of ``core_payment_allocations`` and ``core_match_exceptions``.

    Payments M3 already holds keep their stored allocations unless finance decided otherwise; earlier
    allocations M3 does not hold yet still bind their invoices; ``decisions`` assign or accept payments;
    ``local_currency`` is M3's (it must be the one M3 reports), which allocations are valued in."""
    conn.execute(create_table("core_payment_allocations", ALLOCATION_COLUMNS))
    applications = applications_in_m3(conn)
    frozen = freeze_posted_payments(conn, first_day, end_day, decisions=decisions, into="frozen_payments")
    days_of(conn, source="core_settlement_lines", into="window_lines", first_day=first_day, end_day=end_day,
            unless="frozen_payments")
    before = {"first": first_day}
    conn.execute(f"CREATE OR REPLACE TEMP TABLE earlier_allocations AS SELECT * FROM core_payment_allocations "
                 f"WHERE settlement_date < $first AND (processor, source_id, invoice_number, invoice_year) "
                 f"NOT IN (SELECT (processor, source_id, invoice_number, invoice_year) FROM {applications})", before)
    conn.execute("CREATE OR REPLACE TEMP TABLE linkable_allocations AS SELECT * FROM core_payment_allocations "
                 "WHERE settlement_date < $first OR (processor, source_id) IN "
                 "(SELECT (processor, source_id) FROM frozen_payments)", before)
    matchable_invoices(conn)
    from_xref = customers_from_xref(conn, lines="window_lines", into="window_payments")
    match_payments(conn, rules, lines="window_payments", invoices="matchable_invoices",
                   earlier="earlier_allocations", history="linkable_allocations")
    decided = apply_decisions(conn, decisions=decisions, payments="window_payments", invoices="core_open_invoices",
                              earlier="earlier_allocations")
    book_local_values(conn, invoices="core_open_invoices", earlier="earlier_allocations",
                      local_currency=check_local_currency(conn, "core_open_invoices", local_currency))
    keep_frozen(conn, frozen="frozen_payments")
    result = Allocated(decided=decided, kept_as_posted=frozen, customers_from_xref=from_xref,
                       applications=applications)
    replace_days(conn, first_day=first_day, end_day=end_day, writes=[
        ("core_payment_allocations", ALLOCATION_COLUMNS, f"SELECT * FROM {result.allocations}"),
        ("core_match_exceptions", EXCEPTION_COLUMNS, f"SELECT * FROM {result.exceptions}"),
    ])
    return result


def bank_lines_relation(conn: duckdb.DuckDBPyConnection) -> str:
    """The imported bank statement lines, or an empty relation of their shape before the first import."""
    if table_exists(conn, "raw_bank_statement_lines"):
        return "raw_bank_statement_lines"
    columns = ", ".join(f"NULL::{nullable(t)} AS {c}" for c, t in BANK_LINE_COLUMNS.items())
    return f"(SELECT {columns} WHERE false)"


def tie_out_payouts_and_bank(conn: duckdb.DuckDBPyConnection, first_day: date, end_day: date, *,
                             descriptors: dict[str, str], business_days: int) -> str:
    """Tie every payout of [first_day, end_day) in ``core_payouts`` out against its lines and pair it with its bank
    line (``descriptors``: processor → bank text pattern; within ``business_days``), and replace the window of
    ``core_payout_reconciliation``. Returns the temp table of the window's rows (``payout_tieout``)."""
    payouts = days_of(conn, source="core_payouts", into="window_payouts", first_day=first_day, end_day=end_day)
    tie_out_payouts(conn, payouts=payouts, lines="core_settlement_lines")
    match_bank_lines(conn, payouts="core_payouts", bank_lines=bank_lines_relation(conn), descriptors=descriptors,
                     business_days=business_days)
    bank_status(conn, tieout="payout_tieout")
    replace_days(conn, first_day=first_day, end_day=end_day, writes=[
        ("core_payout_reconciliation", RECONCILIATION_COLUMNS | BANKING_COLUMNS, "SELECT * FROM payout_tieout")])
    return "payout_tieout"


def journal_exceptions(conn: duckdb.DuckDBPyConnection, first_day: date, end_day: date,
                       into: str = "journal_exceptions") -> str:
    """Temp table ``into``, in the exception register's shape: held vouchers, posted-voucher conflicts and vouchers
    M3 accepted but that were not read back (``posted_unverified``, alerted until verified) of [first_day, end_day).
    Returns ``into``."""
    parts = []
    if table_exists(conn, "core_gl_journal_lines"):
        parts.append("""
            SELECT 'EX-' || upper(substr(md5('voucher_held|' || voucher_key), 1, 12)) AS exception_id,
                   'voucher_held' AS reason_code, any_value(processor) AS processor, voucher_key AS source_id,
                   min(accounting_date) AS settlement_date, any_value(currency) AS currency,
                   sum(amount_minor) FILTER (amount_minor > 0) AS amount_minor, NULL::BIGINT AS unapplied_minor,
                   to_json([]) AS candidates, any_value(held_reason) AS detail
            FROM core_gl_journal_lines WHERE held_reason IS NOT NULL
              AND source_date >= $first AND source_date < $end GROUP BY voucher_key""")
    if table_exists(conn, "core_journal_conflicts"):
        parts.append("""
            SELECT 'EX-' || upper(substr(md5('posted_voucher_changed|' || voucher_key || '|' || source_id), 1, 12)),
                   'posted_voucher_changed', processor, source_id, accounting_date, currency, amount_minor, NULL,
                   to_json([voucher_key]), detail
            FROM core_journal_conflicts WHERE accounting_date >= $first AND accounting_date < $end""")
    if table_exists(conn, "out_m3_postings"):
        sources = [f"SELECT voucher_key, any_value(processor) AS processor FROM {t} GROUP BY 1"
                   for t in ("core_gl_journal_lines", "core_cash_applications") if table_exists(conn, t)]
        processors = " UNION ALL ".join(sources) or "SELECT NULL::VARCHAR AS voucher_key, NULL::VARCHAR AS processor"
        parts.append(f"""
            SELECT 'EX-' || upper(substr(md5('voucher_unverified|' || o.route || '|' || o.voucher_key), 1, 12))
                       AS exception_id, 'voucher_unverified' AS reason_code,
                   coalesce(p.processor, 'unknown') AS processor, o.voucher_key AS source_id,
                   o.accounting_date AS settlement_date, NULL::VARCHAR AS currency, NULL::BIGINT AS amount_minor,
                   NULL::BIGINT AS unapplied_minor, to_json([o.m3_batch]) AS candidates,
                   o.route || ' voucher ' || o.voucher_key || ' (M3 batch ' || o.m3_batch || '): '
                   || coalesce(o.last_error, 'accepted by M3, not read back yet') AS detail
            FROM out_m3_postings o LEFT JOIN ({processors}) p USING (voucher_key)
            WHERE o.status = 'posted_unverified'
              AND o.accounting_date >= $first AND o.accounting_date < $end""")
    if not parts:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT * FROM payout_exceptions WHERE false")
        return into
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS {' UNION ALL '.join(parts)}",
                 {"first": first_day, "end": end_day})
    return into


@dataclass(frozen=True)
class Registered:
    new: int          # exceptions opened by this run
    cleared: int      # exceptions of the window no longer found
    decided: int      # register rows carrying a decision
    tieout: str = "payout_tieout"  # the window's stored payout tie-out rows


def register_window_exceptions(conn: duckdb.DuckDBPyConnection, first_day: date, end_day: date, *, now: datetime,
                               decisions: str, suspense_account: str | None, descriptors: dict[str, str],
                               business_days: int) -> Registered:
    """Merge every exception of [first_day, end_day) into ``out_recon_exceptions`` (``register_exceptions``):
    match exceptions, mismatched payouts, anomalies, unknown categories, unbanked payouts and unexplained bank
    credits, customer cross-reference conflicts, voucher exceptions and dismissals M3 cannot follow; then mark
    what finance decided (``decisions``). Reads the stored allocations, tie-out and journals of the window."""
    window = {"first_day": first_day, "end_day": end_day}
    tieout = days_of(conn, source="core_payout_reconciliation", into="payout_tieout", **window)
    payout_exceptions(conn, tieout=tieout)
    flag_anomalies(conn, first_day, end_day)
    categories = (STRIPE_CATEGORIES if table_exists(conn, "raw_stripe_balance_transactions") else
                  "SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS source_id, NULL::VARCHAR AS category")
    unknown_category_exceptions(conn, lines=days_of(conn, source="core_settlement_lines", into="window_lines", **window),
                                categories=categories, suspense_account=suspense_account)
    bank_lines = bank_lines_relation(conn)
    match_bank_lines(conn, payouts="core_payouts", bank_lines=bank_lines, descriptors=descriptors,
                     business_days=business_days)
    bank_exceptions(conn, payouts=days_of(conn, source="core_payouts", into="window_payouts", **window),
                    bank_lines=bank_lines, first_day=first_day, end_day=end_day, business_days=business_days)
    xref_exceptions(conn, conflicts="core_customer_xref_conflicts" if table_exists(
        conn, "core_customer_xref_conflicts") else None, day=end_day - timedelta(days=1))
    found = [days_of(conn, source="core_match_exceptions", into="window_match_exceptions", **window),
             "payout_exceptions", "anomaly_exceptions", "category_exceptions", "xref_exceptions", "bank_exceptions",
             journal_exceptions(conn, first_day, end_day),
             decisions_m3_cannot_follow(conn, first_day, end_day, decisions=decisions)]
    conn.execute("CREATE OR REPLACE TEMP TABLE found_exceptions AS "
                 + " UNION ALL BY NAME ".join(f"SELECT * FROM {relation}" for relation in found))
    counts = register_exceptions(conn, found="found_exceptions", first_day=first_day, end_day=end_day,
                                 reason_codes=REGISTER_REASONS, now=now)
    return Registered(new=counts["new"], cleared=counts["cleared"],
                      decided=record_decisions(conn, decisions=decisions), tieout=tieout)

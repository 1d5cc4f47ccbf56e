"""The window's journals, as a plain function over the warehouse (no Dagster): ``run_window``.

It derives the GL lines and cash applications of the window's days [first_day, end_day) (bound as query
parameters) from the stored settlement lines, payouts and allocations, turns changes to what M3 already holds
into correction vouchers, replaces the window of ``core_gl_journal_lines``, ``core_cash_applications`` and
``core_journal_conflicts``, and records the processor-days a blocking check holds back (``core_posting_blocks``,
``m3_recon.posting.gates``). The ``journals`` asset of ``m3_recon.defs.post`` calls it and only reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import duckdb

from m3_recon.journals import AccountMap, clearing_by_payout, corrections, derive_journals
from m3_recon.posting.contract import CASH_APPLICATION_COLUMNS, GL_JOURNAL_LINE_COLUMNS
from m3_recon.posting.gates import BLOCK_COLUMNS, BLOCKS, posting_blocks
from m3_recon.reconcile.posted import applications_in_m3
from m3_recon.reconcile.window import days_of
from m3_recon.warehouse import replace_days

CONFLICT_COLUMNS = {"processor": "VARCHAR", "source_id": "VARCHAR", "voucher_key": "VARCHAR",
                    "accounting_date": "DATE", "currency": "VARCHAR", "amount_minor": "BIGINT", "detail": "VARCHAR"}


@dataclass(frozen=True)
class Journals:
    """What ``run_window`` left: the window's derived GL lines and cash applications (temp tables, as stored),
    the tied payouts whose clearing does not net to zero, and the processor-days held back."""

    corrections: int                        # correction vouchers for what M3 already holds
    lines: str = "journal_lines"
    cash_applications: str = "cash_applications"
    clearing_residue: str = "clearing_residue"
    blocks: str = "posting_blocks"


def clearing_residue(conn: duckdb.DuckDBPyConnection, first_day: date, end_day: date,
                     into: str = "clearing_residue") -> str:
    """Temp table ``into`` (processor, payout_id, payout_status, clearing_net_minor): every tied payout of
    [first_day, end_day) whose lines all lie in the window (so all its clearing movements were derived in this
    run) and whose clearing does not net to zero. A paid or failed one is a fault; one still in transit is not
    yet booked to the bank, so its amount is still on clearing. Needs ``derive_journals``' temp tables."""
    clearing_by_payout(conn)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE {into} AS
        SELECT t.processor, t.payout_id, t.payout_status, c.clearing_net_minor FROM core_payout_reconciliation t
        JOIN clearing_by_payout c USING (processor, payout_id)
        WHERE t.status = 'tied' AND c.clearing_net_minor <> 0
          AND t.settlement_date >= $first AND t.settlement_date < $end
          AND NOT EXISTS (SELECT 1 FROM core_settlement_lines l
                          WHERE l.processor = t.processor AND l.payout_id = t.payout_id
                            AND (l.settlement_date < $first OR l.settlement_date >= $end))""",
                 {"first": first_day, "end": end_day})
    return into


def run_window(conn: duckdb.DuckDBPyConnection, accounts: AccountMap, first_day: date, end_day: date, *,
               decisions: str, local_currency: str = "USD", rates: str | None = None) -> Journals:
    """Derive, correct and store the journals of [first_day, end_day), and record the posting blocks.
    ``decisions`` (``load_decisions``) says which overpayments finance wrote off; ``local_currency`` is M3's and
    ``rates`` (``load_exchange_rates``) its rates to it, for lines settled in another currency."""
    window = {"first_day": first_day, "end_day": end_day}
    conn.execute("CREATE OR REPLACE TEMP TABLE journal_overpaid AS "
                 "SELECT e.processor, e.source_id, d.action = 'write_off' AS written_off "
                 f"FROM core_match_exceptions e LEFT JOIN {decisions} d USING (exception_id) "
                 "WHERE e.reason_code = 'overpayment'")
    derive_journals(conn, accounts, lines=days_of(conn, source="core_settlement_lines", into="journal_window_lines",
                                                  **window),
                    payouts=days_of(conn, source="core_payouts", into="journal_window_payouts", **window),
                    allocations=days_of(conn, source="core_payment_allocations", into="journal_window_allocations",
                                        **window),
                    overpaid="journal_overpaid", local_currency=local_currency, rates=rates,
                    payout_lines="core_settlement_lines")
    result = Journals(corrections=corrections(conn))
    replace_days(conn, first_day=first_day, end_day=end_day, date_column="source_date", writes=[
        ("core_gl_journal_lines", GL_JOURNAL_LINE_COLUMNS, f"SELECT * FROM {result.lines}")])
    replace_days(conn, first_day=first_day, end_day=end_day, date_column="accounting_date", writes=[
        ("core_cash_applications", CASH_APPLICATION_COLUMNS, f"SELECT * FROM {result.cash_applications}"),
        ("core_journal_conflicts", CONFLICT_COLUMNS, "SELECT * FROM journal_conflicts")])
    clearing_residue(conn, first_day, end_day, into=result.clearing_residue)
    posting_blocks(conn, first_day, end_day, journal_lines=result.lines, clearing_residue=result.clearing_residue,
                   applications=applications_in_m3(conn), local_currency=local_currency)
    replace_days(conn, first_day=first_day, end_day=end_day, date_column="day", writes=[
        (BLOCKS, BLOCK_COLUMNS, f"SELECT * FROM {result.blocks}")])
    return result

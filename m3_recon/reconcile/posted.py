"""What M3 already holds is not re-decided: payments whose cash application or GL lines were sent to M3
keep their allocations on later runs (M3's outstanding amounts already reflect them, so re-matching
against the new balances would undo correct work). Only a decision by finance re-opens such a payment;
its difference then reaches M3 as a correction voucher (see ``m3_recon.journals.corrections``)."""

from __future__ import annotations

import duckdb


def _exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    return conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0] > 0


def freeze_posted_payments(conn: duckdb.DuckDBPyConnection, first: str, end: str) -> int:
    """Temp tables ``payments_in_m3`` (every payment with anything sent to M3), ``applications_in_m3`` (allocations
    whose cash application was sent) and ``frozen_payments`` (payments in [first, end) with something in M3 and
    no decision, whose allocations are kept). Needs ``exception_decisions`` loaded."""
    parts = []
    if _exists(conn, "out_m3_postings"):
        sent = "SELECT voucher_key, route FROM out_m3_postings WHERE sent_at_utc IS NOT NULL"
        if _exists(conn, "core_cash_applications"):
            parts.append(f"SELECT c.processor, c.source_id FROM core_cash_applications c JOIN ({sent}) p "
                         f"ON p.voucher_key = c.voucher_key AND p.route = 'cash_application'")
        if _exists(conn, "core_gl_journal_lines"):
            parts.append(f"SELECT j.processor, j.source_id FROM core_gl_journal_lines j JOIN ({sent}) p "
                         f"ON p.voucher_key = j.voucher_key AND p.route = 'gl' WHERE j.source_id IS NOT NULL")
    union = " UNION ".join(parts) or "SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS source_id WHERE false"
    conn.execute(f"CREATE OR REPLACE TEMP TABLE payments_in_m3 AS SELECT DISTINCT * FROM ({union})")
    applied = ("SELECT DISTINCT c.processor, c.source_id, c.invoice_number, c.invoice_year FROM core_cash_applications c "
               "JOIN out_m3_postings p ON p.voucher_key = c.voucher_key AND p.route = 'cash_application' "
               "AND p.sent_at_utc IS NOT NULL" if parts and _exists(conn, "core_cash_applications") else
               "SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS source_id, NULL::VARCHAR AS invoice_number, "
               "NULL::INTEGER AS invoice_year WHERE false")
    # Applications M3 already booked: its outstanding amounts include them, so they no longer bind invoices.
    conn.execute(f"CREATE OR REPLACE TEMP TABLE applications_in_m3 AS {applied}")
    decided = ("SELECT e.processor, e.source_id FROM core_match_exceptions e JOIN exception_decisions d "
               "USING (exception_id)" if _exists(conn, "core_match_exceptions")
               else "SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS source_id WHERE false")
    allocations = ("core_payment_allocations" if _exists(conn, "core_payment_allocations") else
                   "(SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS source_id, NULL::DATE AS settlement_date "
                   "WHERE false)")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE frozen_payments AS
        SELECT DISTINCT a.processor, a.source_id FROM {allocations} a
        JOIN payments_in_m3 m USING (processor, source_id)
        WHERE a.settlement_date >= DATE '{first}' AND a.settlement_date < DATE '{end}'
          AND (a.processor, a.source_id) NOT IN (SELECT (processor, source_id) FROM ({decided}))""")
    return conn.execute("SELECT count(*) FROM frozen_payments").fetchone()[0]


def book_local_values(conn: duckdb.DuckDBPyConnection, invoices: str) -> None:
    """Fix each new automatic allocation's value in M3's local currency while M3 still shows the invoice open:
    the whole remaining local amount when it settles the invoice, else the amount at the invoice's rate (as M3
    books a payment). Kept with the allocation, so later runs never recompute it from changed balances."""
    conn.execute(f"""
        UPDATE match_allocations a SET allocated_local_minor =
            CASE WHEN a.invoice_currency = a.payment_currency THEN a.allocated_minor
                 WHEN a.allocated_minor = i.outstanding_minor THEN i.outstanding_local_minor
                 ELSE CAST(round_even(a.allocated_minor * i.exchange_rate, 0) AS BIGINT) END
        FROM {invoices} i
        WHERE a.status = 'auto' AND a.invoice_number = i.invoice_number AND a.invoice_year = i.invoice_year""")


def keep_frozen(conn: duckdb.DuckDBPyConnection, first: str, end: str) -> None:
    """Put the frozen payments' stored allocations and exceptions back into this run's results."""
    if not conn.execute("SELECT count(*) FROM frozen_payments").fetchone()[0]:
        return
    frozen = "(processor, source_id) IN (SELECT (processor, source_id) FROM frozen_payments)"
    conn.execute(f"DELETE FROM match_allocations WHERE {frozen}")
    conn.execute(f"DELETE FROM match_exceptions WHERE {frozen}")
    conn.execute(f"INSERT INTO match_allocations BY NAME SELECT * FROM core_payment_allocations WHERE {frozen}")
    conn.execute(f"INSERT INTO match_exceptions BY NAME SELECT * FROM core_match_exceptions WHERE {frozen}")

"""What M3 already holds is not re-decided: payments whose cash application or GL lines were sent to M3
keep their allocations on later runs (M3's outstanding amounts already reflect them, so re-matching
against the new balances would undo correct work). Only a decision by finance re-opens such a payment;
its difference then reaches M3 as a correction voucher (see ``m3_recon.journals.corrections``). Also here: the
local value M3 books for each new allocation, and which invoices M3 no longer lists because they are paid."""

from __future__ import annotations

from datetime import date

import duckdb

from m3_recon.money import convert_sql, known_currency
from m3_recon.warehouse import table_exists


def applications_in_m3(conn: duckdb.DuckDBPyConnection, into: str = "applications_in_m3") -> str:
    """Temp table ``into`` (processor, source_id, invoice_number, invoice_year): allocations whose cash application
    was sent to M3. M3's outstanding amounts already include them, so they no longer bind invoices. Returns ``into``."""
    applied = ("SELECT DISTINCT c.processor, c.source_id, c.invoice_number, c.invoice_year FROM core_cash_applications c "
               "JOIN out_m3_postings p ON p.voucher_key = c.voucher_key AND p.route = 'cash_application' "
               "AND p.sent_at_utc IS NOT NULL"
               if table_exists(conn, "out_m3_postings") and table_exists(conn, "core_cash_applications") else
               "SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS source_id, NULL::VARCHAR AS invoice_number, "
               "NULL::INTEGER AS invoice_year WHERE false")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS {applied}")
    return into


def freeze_posted_payments(conn: duckdb.DuckDBPyConnection, first_day: date, end_day: date, *, decisions: str,
                           into: str = "frozen_payments") -> int:
    """Temp table ``into`` (processor, source_id): payments of [first_day, end_day) with anything sent to M3 (cash
    application or GL lines) and no decision in ``decisions`` (``load_decisions``), whose allocations are kept.
    Returns how many."""
    parts = []
    if table_exists(conn, "out_m3_postings"):
        sent = "SELECT voucher_key, route FROM out_m3_postings WHERE sent_at_utc IS NOT NULL"
        if table_exists(conn, "core_cash_applications"):
            parts.append(f"SELECT c.processor, c.source_id FROM core_cash_applications c JOIN ({sent}) p "
                         f"ON p.voucher_key = c.voucher_key AND p.route = 'cash_application'")
        if table_exists(conn, "core_gl_journal_lines"):
            parts.append(f"SELECT j.processor, j.source_id FROM core_gl_journal_lines j JOIN ({sent}) p "
                         f"ON p.voucher_key = j.voucher_key AND p.route = 'gl' WHERE j.source_id IS NOT NULL")
    in_m3 = " UNION ".join(parts) or "SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS source_id WHERE false"
    decided = (f"SELECT e.processor, e.source_id FROM core_match_exceptions e JOIN {decisions} d "
               "USING (exception_id)" if table_exists(conn, "core_match_exceptions")
               else "SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS source_id WHERE false")
    allocations = ("core_payment_allocations" if table_exists(conn, "core_payment_allocations") else
                   "(SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS source_id, NULL::DATE AS settlement_date "
                   "WHERE false)")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE {into} AS
        SELECT DISTINCT a.processor, a.source_id FROM {allocations} a
        JOIN ({in_m3}) m USING (processor, source_id)
        WHERE a.settlement_date >= $first AND a.settlement_date < $end
          AND (a.processor, a.source_id) NOT IN (SELECT (processor, source_id) FROM ({decided}))""",
                 {"first": first_day, "end": end_day})
    return conn.execute(f"SELECT count(*) FROM {into}").fetchone()[0]


def check_local_currency(conn: duckdb.DuckDBPyConnection, invoices: str, configured: str) -> str:
    """M3's local currency: ``configured`` (M3_LOCAL_CURRENCY), which must be a known ISO 4217 code and the one
    M3 itself reports on the open invoices (``GetInvTotInfo.LOCD``, column ``local_currency``) — local values
    booked in another currency than M3 keeps would be wrong by the exchange rate, so a mismatch stops the run."""
    local = known_currency(configured, "M3_LOCAL_CURRENCY")
    if "local_currency" not in {d[0] for d in conn.execute(f"SELECT * FROM {invoices} LIMIT 0").description}:
        return local  # invoices read without M3's LOCD: nothing to compare with
    reported = [c for (c,) in conn.execute(
        f"SELECT DISTINCT upper(trim(local_currency)) FROM {invoices} WHERE coalesce(trim(local_currency), '') <> '' "
        "ORDER BY 1").fetchall()]
    if reported and reported != [local]:
        raise ValueError(f"M3 keeps its books in {', '.join(reported)} (LOCD of its open invoices) but "
                         f"M3_LOCAL_CURRENCY is {local}: set M3_LOCAL_CURRENCY={reported[0]}")
    return local


def book_local_values(conn: duckdb.DuckDBPyConnection, invoices: str, earlier: str, local_currency: str) -> None:
    """Fix each new automatic allocation's value in M3's local currency as M3 books a payment: itself for an
    invoice in the local currency, else at the invoice's rate (ARAT, local per unit of the invoice currency, each
    currency's decimals, half-up), except the one that settles the invoice, which takes whatever local amount is left — so a fully paid
    foreign invoice leaves no local residue in M3, whether its instalments arrive night by night or in one
    backfill. What is left counts M3's outstanding local amount, ``earlier`` allocations M3 does not hold yet
    (their values are booked already) and this run's earlier instalments (oldest first). Kept with the
    allocation, so later runs never recompute it from changed balances."""
    local = known_currency(local_currency, "M3's local currency")
    conn.execute(f"""
        UPDATE match_allocations a SET allocated_local_minor = booked.local_minor
        FROM (
            WITH pending AS (
                SELECT invoice_number, invoice_year, sum(allocated_minor) AS minor,
                       sum(allocated_local_minor) AS local_minor
                FROM {earlier} WHERE status = 'auto' AND invoice_number IS NOT NULL GROUP BY ALL
            ), new AS (
                SELECT a.processor, a.source_id, a.invoice_number, a.invoice_year, a.settlement_date,
                       a.allocated_minor, a.invoice_currency = '{local}' AS same_currency,
                       i.outstanding_minor - coalesce(p.minor, 0) AS open_minor,
                       i.outstanding_local_minor - coalesce(p.local_minor, 0) AS open_local_minor,
                       {convert_sql('a.allocated_minor', 'a.invoice_currency', repr(local), 'i.exchange_rate')} AS at_rate
                FROM match_allocations a
                JOIN {invoices} i ON a.invoice_number = i.invoice_number AND a.invoice_year = i.invoice_year
                LEFT JOIN pending p ON a.invoice_number = p.invoice_number AND a.invoice_year = p.invoice_year
                WHERE a.status = 'auto'
            ), running AS (
                SELECT *, sum(allocated_minor) OVER instalments AS paid_minor,
                       coalesce(sum(at_rate) OVER (instalments ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                           AS paid_before_local_minor
                FROM new
                WINDOW instalments AS (PARTITION BY invoice_number, invoice_year
                                       ORDER BY settlement_date, processor, source_id)
            )
            SELECT processor, source_id, invoice_number, invoice_year,
                   CASE WHEN same_currency THEN allocated_minor
                        WHEN paid_minor = open_minor THEN open_local_minor - paid_before_local_minor
                        ELSE at_rate END AS local_minor
            FROM running
        ) booked
        WHERE a.status = 'auto' AND a.processor = booked.processor AND a.source_id = booked.source_id
          AND a.invoice_number = booked.invoice_number AND a.invoice_year = booked.invoice_year""")


def keep_frozen(conn: duckdb.DuckDBPyConnection, *, frozen: str) -> None:
    """Put the ``frozen`` payments' stored allocations and exceptions back into this run's results."""
    if not conn.execute(f"SELECT count(*) FROM {frozen}").fetchone()[0]:
        return
    kept = f"(processor, source_id) IN (SELECT (processor, source_id) FROM {frozen})"
    conn.execute(f"DELETE FROM match_allocations WHERE {kept}")
    conn.execute(f"DELETE FROM match_exceptions WHERE {kept}")
    conn.execute(f"INSERT INTO match_allocations BY NAME SELECT * FROM core_payment_allocations WHERE {kept}")
    conn.execute(f"INSERT INTO match_exceptions BY NAME SELECT * FROM core_match_exceptions WHERE {kept}")


def matchable_invoices(conn: duckdb.DuckDBPyConnection) -> None:
    """Temp view ``matchable_invoices``: the open invoices, plus those M3 no longer lists as open but that an
    earlier snapshot showed or that cash was applied to, with nothing outstanding. A payment naming one of
    them is "already paid", not "not found" — whether the close runs nightly or as one backfill."""
    known = ["SELECT invoice_number, invoice_year, customer, currency, invoice_date, snapshot_date AS seen "
             "FROM raw_m3_open_invoices"]
    if table_exists(conn, "core_cash_applications"):
        known.append("SELECT invoice_number, invoice_year, customer, currency, NULL, accounting_date "
                     "FROM core_cash_applications")
    conn.execute(f"""
        CREATE OR REPLACE TEMP VIEW matchable_invoices AS
        SELECT invoice_number, invoice_year, customer, currency, outstanding_minor, invoice_date FROM core_open_invoices
        UNION ALL
        SELECT invoice_number, invoice_year, arg_max(customer, seen), arg_max(currency, seen), 0,
               max(invoice_date)
        FROM ({" UNION ALL ".join(known)})
        WHERE (invoice_number, invoice_year) NOT IN (SELECT (invoice_number, invoice_year) FROM core_open_invoices)
        GROUP BY invoice_number, invoice_year""")

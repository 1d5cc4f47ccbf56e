"""The analysts' warehouse: a read-only copy of the reconciliation tables, published atomically.

The close writes to the working DuckDB file, which DuckDB locks for one writer; an analyst holding
that file open would block the close. Instead, each close ends by copying every table into a new
file, adding the views below, and renaming it over ``data/m3_recon_analyst.duckdb``. The rename is
atomic: a reader sees the previous close or the new one, never a half-written day, and a reader that
keeps a connection open all night keeps reading the copy it opened without holding any lock the
close needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

VIEWS = {
    "v_unmatched_payments": """
        SELECT a.processor, a.source_id, a.settlement_date, a.payment_currency AS currency, a.payment_amount_minor,
               a.status, a.customer, e.reason_code, e.detail, e.candidates, e.first_seen_at_utc
        FROM core_payment_allocations a
        LEFT JOIN out_recon_exceptions e ON e.processor = a.processor AND e.source_id = a.source_id AND e.status = 'open'
        WHERE a.line_type = 'charge' AND a.status <> 'auto'""",
    "v_payout_status": """
        SELECT processor, payout_id, settlement_date, arrival_date, currency, payout_amount_minor, lines_net_minor,
               difference_minor, status, residue FROM core_payout_reconciliation""",
    "v_open_exceptions_by_age": """
        SELECT reason_code, processor, count(*) AS exceptions, sum(amount_minor) AS amount_minor,
               max(date_diff('day', CAST(first_seen_at_utc AS DATE), current_date)) AS oldest_days,
               CASE WHEN max(date_diff('day', CAST(first_seen_at_utc AS DATE), current_date)) <= 2 THEN '0-2 days'
                    WHEN max(date_diff('day', CAST(first_seen_at_utc AS DATE), current_date)) <= 7 THEN '3-7 days'
                    ELSE 'over 7 days' END AS age_band
        FROM out_recon_exceptions WHERE status = 'open' GROUP BY ALL""",
    "v_gl_by_account_period": """
        SELECT strftime(accounting_date, '%Y-%m') AS period, ait1 AS account, currency,
               sum(amount_minor) FILTER (amount_minor > 0) AS debit_minor,
               -sum(amount_minor) FILTER (amount_minor < 0) AS credit_minor, sum(amount_minor) AS balance_minor,
               count(*) AS lines
        FROM core_gl_journal_lines WHERE held_reason IS NULL GROUP BY ALL""",
    "v_processor_fees_by_month": """
        SELECT processor, strftime(settlement_date, '%Y-%m') AS month, currency,
               sum(fee_minor) + coalesce(-sum(amount_minor) FILTER (line_type = 'fee'), 0) AS fees_minor,
               sum(amount_minor) FILTER (line_type = 'charge') AS charged_minor
        FROM core_settlement_lines GROUP BY ALL""",
}


def publish(conn: duckdb.DuckDBPyConnection, target: str | Path) -> dict[str, int]:
    """Copy every table of ``conn``'s database into a fresh file with the views, then rename it over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    source = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute(f"ATTACH '{staging}' AS analyst_snapshot")
    try:
        conn.execute(f"COPY FROM DATABASE \"{source}\" TO analyst_snapshot")
        tables = {name: conn.execute(f'SELECT count(*) FROM analyst_snapshot."{name}"').fetchone()[0]
                  for (name,) in conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                              "'analyst_snapshot' ORDER BY 1").fetchall()}
        for name, sql in VIEWS.items():
            needed = [t for t in ("core_payment_allocations", "out_recon_exceptions", "core_payout_reconciliation",
                                  "core_gl_journal_lines", "core_settlement_lines") if t in sql]
            if all(t in tables for t in needed):
                conn.execute(f"CREATE VIEW analyst_snapshot.{name} AS {sql}")
    finally:
        conn.execute("DETACH analyst_snapshot")
    os.replace(staging, target)
    return tables

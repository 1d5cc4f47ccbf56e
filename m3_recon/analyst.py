"""The analysts' warehouse: a read-only copy of the reconciliation tables, published atomically.

The close writes to the working DuckDB file, which DuckDB locks for one writer; an analyst holding
that file open would block the close. Instead, each close ends by copying every table into a new
file, adding the views below, and renaming it over ``data/m3_recon_analyst.duckdb``. A warehouse
that is a DuckDB file is checkpointed and copied as a file (bytes, no re-encoding of every column);
any other (a DuckLake) is copied table by table with ``COPY FROM DATABASE``. The rename is
atomic: a reader sees the previous close or the new one, never a half-written day, and a reader that
keeps a connection open all night keeps reading the copy it opened without holding any lock the
close needs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb

from m3_recon.journals import LEDGER_LINES, AccountMap

# Both routes (GLS840MI vouchers and ARS040MI cash applications), lines that can be posted (held ones cannot).
GL_BY_ACCOUNT_PERIOD = f"""
        SELECT strftime(l.accounting_date, '%Y-%m') AS period, l.account, coalesce(g.account_name, '') AS account_name,
               l.currency, coalesce(sum(l.amount_minor) FILTER (l.amount_minor > 0), 0) AS debit_minor,
               coalesce(-sum(l.amount_minor) FILTER (l.amount_minor < 0), 0) AS credit_minor,
               coalesce(sum(l.amount_minor), 0) AS balance_minor, count(*) AS lines,
               count(*) FILTER (l.route = 'ARS040MI') AS cash_application_lines
        FROM ({LEDGER_LINES}) l LEFT JOIN (SELECT DISTINCT account, account_name FROM gl_chart) g USING (account)
        WHERE l.held_reason IS NULL GROUP BY ALL"""

VIEWS = {
    # One row per payment not applied automatically, with every candidate invoice as a list.
    "v_unmatched_payments": """
        WITH payments AS (
            SELECT processor, source_id, any_value(settlement_date) AS settlement_date,
                   any_value(payment_currency) AS currency, any_value(payment_amount_minor) AS payment_amount_minor,
                   any_value(status) AS status, any_value(customer) AS customer,
                   coalesce(list(DISTINCT invoice_number ORDER BY invoice_number)
                            FILTER (invoice_number IS NOT NULL), []) AS candidates
            FROM core_payment_allocations WHERE line_type = 'charge' AND status <> 'auto' GROUP BY ALL
        ), exceptions AS (
            SELECT processor, source_id, string_agg(reason_code, ', ' ORDER BY reason_code) AS reason_codes,
                   string_agg(exception_id, ', ' ORDER BY exception_id) AS exception_ids,
                   any_value(detail) AS detail
            FROM out_recon_exceptions WHERE status = 'open' GROUP BY ALL
        )
        SELECT p.*, e.reason_codes, e.exception_ids, e.detail,
               date_diff('day', p.settlement_date, current_date) AS age_days
        FROM payments p LEFT JOIN exceptions e USING (processor, source_id)""",
    "v_payout_status": """
        SELECT processor, payout_id, settlement_date, arrival_date, currency, payout_amount_minor, lines_net_minor,
               difference_minor, status, residue FROM core_payout_reconciliation""",
    # Aged from the payment's (or payout's) settlement date, per currency.
    "v_open_exceptions_by_age": """
        WITH aged AS (
            SELECT *, date_diff('day', settlement_date, current_date) AS age_days FROM out_recon_exceptions
            WHERE status = 'open'
        )
        SELECT reason_code, processor, currency,
               CASE WHEN age_days <= 7 THEN '0-7 days' WHEN age_days <= 30 THEN '8-30 days'
                    WHEN age_days <= 60 THEN '31-60 days' ELSE 'over 60 days' END AS age_band,
               count(*) AS exceptions, coalesce(sum(amount_minor), 0) AS amount_minor, max(age_days) AS oldest_days
        FROM aged GROUP BY ALL""",
    "v_gl_by_account_period": GL_BY_ACCOUNT_PERIOD,
    # Per account and month: the month's movement and the balance at its end (every month of the ledger, zeros
    # included). A clearing account's balance is what the processor holds for us: lines not yet paid out to the bank.
    "v_trial_balance": f"""
        WITH movement AS ({GL_BY_ACCOUNT_PERIOD}),
        months AS (SELECT DISTINCT period FROM movement),
        accounts AS (SELECT DISTINCT account, account_name, currency FROM movement),
        grid AS (
            SELECT m.period, a.account, a.account_name, a.currency,
                   coalesce(v.debit_minor, 0) AS debit_minor, coalesce(v.credit_minor, 0) AS credit_minor,
                   coalesce(v.balance_minor, 0) AS movement_minor
            FROM months m CROSS JOIN accounts a
            LEFT JOIN movement v ON v.period = m.period AND v.account = a.account AND v.currency = a.currency
        )
        SELECT *, sum(movement_minor) OVER (PARTITION BY account, currency ORDER BY period) AS closing_balance_minor
        FROM grid""",
    "v_processor_fees_by_month": """
        SELECT processor, strftime(settlement_date, '%Y-%m') AS month, currency,
               sum(fee_minor) + coalesce(-sum(amount_minor) FILTER (line_type = 'fee'), 0) AS fees_minor,
               coalesce(sum(amount_minor) FILTER (line_type = 'charge'), 0) AS charged_minor
        FROM core_settlement_lines GROUP BY ALL""",
}
NEEDS = ("core_payment_allocations", "out_recon_exceptions", "core_payout_reconciliation", "core_gl_journal_lines",
         "core_cash_applications", "core_settlement_lines")


def publish(conn: duckdb.DuckDBPyConnection, target: str | Path, accounts: AccountMap | None = None) -> dict[str, int]:
    """Copy every table of ``conn``'s database into a fresh file with the views, then rename it over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    source, kind, path = conn.execute("SELECT database_name, type, path FROM duckdb_databases() "
                                      "WHERE database_name = current_database()").fetchone()
    accounts = accounts or AccountMap.load()
    one_file = kind == "duckdb" and bool(path)
    if one_file:
        conn.execute("CHECKPOINT")  # every committed table is now in the file itself, none only in its WAL
        shutil.copyfile(path, staging)
    conn.execute(f"ATTACH '{staging}' AS analyst_snapshot")
    try:
        if not one_file:
            conn.execute(f"COPY FROM DATABASE \"{source}\" TO analyst_snapshot")
        tables = {name: conn.execute(f'SELECT count(*) FROM analyst_snapshot."{name}"').fetchone()[0]
                  for (name,) in conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                              "'analyst_snapshot' ORDER BY 1").fetchall()}
        # The chart of accounts with names, in the copy and (so the views bind here) as a temp table.
        accounts.chart(conn, "analyst_snapshot.gl_chart")
        accounts.chart(conn)
        created = set(tables)
        for name, sql in VIEWS.items():
            if all(t in created for t in NEEDS if t in sql):
                conn.execute(f"CREATE VIEW analyst_snapshot.{name} AS {sql}")
                created.add(name)
    finally:
        conn.execute("DETACH analyst_snapshot")
    os.replace(staging, target)
    return tables

"""The period reconciliation report a controller can hand to an auditor, as CSV files and one HTML page.

For a period it states the control totals (lines per processor and currency), payments by match
status, every payout with its tie-out, the journals with their posting status and M3 voucher numbers
(when posted), and the open exceptions. Deterministic for the same warehouse state: rerunning it
produces the same figures, so it can serve as evidence of a control.
"""

from __future__ import annotations

import html
from datetime import date, datetime
from pathlib import Path

import duckdb

from m3_recon.warehouse import table_exists

SECTIONS = {
    "control_totals": ("Control totals: settlement lines", """
        SELECT processor, currency, count(*) AS lines, sum(amount_minor) AS amount_minor, sum(fee_minor) AS fee_minor,
               sum(net_minor) AS net_minor
        FROM core_settlement_lines WHERE settlement_date BETWEEN $first AND $last GROUP BY ALL ORDER BY ALL"""),
    "payments_by_status": ("Payments by match status", """
        SELECT processor, status, count(DISTINCT source_id) AS payments, sum(allocated_minor) AS allocated_minor
        FROM core_payment_allocations WHERE line_type = 'charge' AND settlement_date BETWEEN $first AND $last
        GROUP BY ALL ORDER BY ALL"""),
    "payouts": ("Payouts, deposits and batches with their tie-out", """
        SELECT processor, payout_id, settlement_date, arrival_date, currency, payout_amount_minor, lines_net_minor,
               difference_minor, status, residue
        FROM core_payout_reconciliation WHERE settlement_date BETWEEN $first AND $last ORDER BY processor, settlement_date, payout_id"""),
    "journals": ("Journals", """
        SELECT j.voucher_key, min(j.accounting_date) AS accounting_date, any_value(j.processor) AS processor,
               count(*) AS lines, sum(j.amount_minor) FILTER (j.amount_minor > 0) AS debits_minor,
               any_value(j.held_reason) AS held_reason, {posting_status} AS posting_status,
               {voucher_number} AS m3_voucher_number
        FROM core_gl_journal_lines j {posting_join}
        WHERE j.source_date BETWEEN $first AND $last GROUP BY j.voucher_key ORDER BY 2, 1"""),
    "open_exceptions": ("Open exceptions", """
        SELECT exception_id, reason_code, processor, source_id, settlement_date, currency, amount_minor, unapplied_minor,
               detail, first_seen_at_utc
        FROM out_recon_exceptions WHERE status = 'open' AND settlement_date BETWEEN $first AND $last
        ORDER BY settlement_date, exception_id"""),
}


def _sql(key: str, conn: duckdb.DuckDBPyConnection) -> str:
    sql = SECTIONS[key][1]
    if key != "journals":
        return sql
    if table_exists(conn, "out_m3_postings"):
        return sql.format(posting_status="any_value(p.status)", voucher_number="any_value(p.m3_voucher_number)",
                          posting_join="LEFT JOIN out_m3_postings p ON p.voucher_key = j.voucher_key AND p.route = 'gl'")
    return sql.format(posting_status="'not posted'", voucher_number="NULL", posting_join="")


def build_report(conn: duckdb.DuckDBPyConnection, first: date, last: date, directory: Path,
                 generated_at: datetime, run_id: str) -> dict[str, Path]:
    """Write ``<section>.csv`` for every section and ``report.html`` into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    params = {"first": first, "last": last}
    paths, parts = {}, []
    for key, (title, _) in SECTIONS.items():
        relation = conn.execute(_sql(key, conn), params)
        columns = [d[0] for d in relation.description]
        rows = relation.fetchall()
        path = directory / f"{key}.csv"
        conn.execute(f"COPY ({_sql(key, conn)}) TO '{path}' (HEADER, DELIMITER ',')", params)
        paths[key] = path
        parts.append(_html_table(title, columns, rows))
    page = directory / "report.html"
    page.write_text(_html_page(first, last, generated_at, run_id, parts), encoding="utf-8")
    paths["html"] = page
    return paths


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if column.endswith("_minor") and isinstance(value, int):
        return f"{value / 100:,.2f}"
    return html.escape(str(value))


def _html_table(title: str, columns: list[str], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(c.replace('_minor', ''))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c, v)}</td>" for c, v in zip(columns, row)) + "</tr>" for row in rows)
    return (f"<h2>{html.escape(title)} <small>({len(rows)} rows)</small></h2>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _html_page(first: date, last: date, generated_at: datetime, run_id: str, parts: list[str]) -> str:
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
             "margin-bottom:2em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Reconciliation {first} to {last}</title>"
            f"<style>{style}</style></head><body><h1>Card settlement reconciliation, {first} to {last}</h1>"
            f"<p>Generated {generated_at:%Y-%m-%d %H:%M} UTC by Dagster run {html.escape(run_id)}. Amounts in major "
            f"units of the currency shown; the CSV files beside this page carry the same rows in minor units.</p>"
            + "".join(parts) + "</body></html>")

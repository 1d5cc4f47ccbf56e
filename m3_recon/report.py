"""The payout reconciliation report a controller signs: one HTML page, one CSV per section and an Excel
workbook with one sheet per section, written after posting so it states what M3 holds.

Per processor and currency it opens with the clearing account's balance roll-forward for the period —
opening balance + charges − refunds − disputes − fees ± adjustments − payouts = closing balance, set
against the closing balance the ledger (both routes) shows — then itemises every payout and every line
paid out in it (with customer and invoice), the open exceptions aged from their payment date, the
vouchers and cash batches with their M3 status and voucher number, and the period's movement per GL
account with the account's name. Amounts read ``1,234.56 USD`` (each currency's own decimals); every
``*_minor`` column stays beside them in integer minor units; totals are per currency, never across
currencies. Deterministic for the same warehouse state, so it can serve as evidence of a control.
"""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import duckdb
from openpyxl import Workbook
from openpyxl.styles import Font

from m3_recon.journals import LEDGER_LINES, AccountMap
from m3_recon.money import exponent, major, money
from m3_recon.warehouse import table_exists

ROLL_FORWARD_ITEMS = (("opening_minor", "Opening clearing balance"), ("charges_minor", "+ charges"),
                      ("refunds_minor", "− refunds"), ("disputes_minor", "− disputes (net of reversals)"),
                      ("fees_minor", "− processor fees"), ("adjustments_minor", "± adjustments and reserves"),
                      ("payouts_minor", "− payouts to the bank (net of returned payouts)"),
                      ("closing_minor", "= closing clearing balance"),
                      ("ledger_closing_minor", "Closing balance on the ledger (GLS840MI + ARS040MI)"),
                      ("difference_minor", "Difference"))

_CLEARING = """
    WITH chart_clearing AS (SELECT substr(account_key, 10) AS processor, account FROM gl_chart
                            WHERE account_key LIKE 'clearing:%'),
    ledger AS (SELECT l.* FROM ({ledger}) l JOIN chart_clearing c USING (processor, account))
    SELECT processor, settlement_currency AS currency,
           coalesce(sum(settlement_minor) FILTER (accounting_date < $first), 0) AS opening_minor,
           coalesce(sum(settlement_minor) FILTER (accounting_date <= $last), 0) AS ledger_closing_minor
    FROM ledger GROUP BY ALL"""  # clearing in the settlement currency (an FX line in another one counts nothing)

SECTIONS = {
    "roll_forward": ("Clearing balance roll-forward per processor and currency", f"""
        WITH balances AS ({_CLEARING.format(ledger=LEDGER_LINES)}),
        moves AS (
            SELECT processor, currency,
                   coalesce(sum(amount_minor) FILTER (line_type = 'charge'), 0) AS charges_minor,
                   coalesce(sum(amount_minor) FILTER (line_type = 'refund'), 0) AS refunds_minor,
                   coalesce(sum(amount_minor) FILTER (line_type IN ('dispute', 'dispute_reversal')), 0) AS disputes_minor,
                   coalesce(sum(amount_minor) FILTER (line_type = 'fee'), 0) - sum(fee_minor) AS fees_minor,
                   coalesce(sum(amount_minor) FILTER (line_type IN ('adjustment', 'reserve_hold', 'reserve_release',
                                                                    'other', 'unknown_category')), 0) AS adjustments_minor,
                   coalesce(sum(amount_minor) FILTER (line_type = 'payout_failure'), 0) AS returned_minor,
                   count(*) AS lines
            FROM core_settlement_lines WHERE settlement_date BETWEEN $first AND $last AND line_type <> 'payout'
            GROUP BY ALL
        ), paid AS (
            SELECT processor, currency, -sum(amount_minor) AS paid_minor, count(*) AS payouts FROM core_payouts
            WHERE status IN ('paid', 'failed') AND coalesce(arrival_date, settlement_date) BETWEEN $first AND $last
            GROUP BY ALL
        ), joined AS (
            SELECT processor, currency, coalesce(b.opening_minor, 0) AS opening_minor,
                   coalesce(m.charges_minor, 0) AS charges_minor, coalesce(m.refunds_minor, 0) AS refunds_minor,
                   coalesce(m.disputes_minor, 0) AS disputes_minor, coalesce(m.fees_minor, 0) AS fees_minor,
                   coalesce(m.adjustments_minor, 0) AS adjustments_minor,
                   coalesce(p.paid_minor, 0) + coalesce(m.returned_minor, 0) AS payouts_minor,
                   coalesce(b.ledger_closing_minor, 0) AS ledger_closing_minor,
                   coalesce(m.lines, 0) AS lines, coalesce(p.payouts, 0) AS payouts
            FROM balances b FULL JOIN moves m USING (processor, currency) FULL JOIN paid p USING (processor, currency)
        )
        SELECT processor, currency, lines, payouts, opening_minor, charges_minor, refunds_minor, disputes_minor,
               fees_minor, adjustments_minor, payouts_minor,
               opening_minor + charges_minor + refunds_minor + disputes_minor + fees_minor + adjustments_minor
                   + payouts_minor AS closing_minor, ledger_closing_minor,
               opening_minor + charges_minor + refunds_minor + disputes_minor + fees_minor + adjustments_minor
                   + payouts_minor - ledger_closing_minor AS difference_minor
        FROM joined ORDER BY processor, currency"""),
    "payouts": ("Payouts, deposits and batches", """
        WITH lines AS (
            SELECT processor, payout_id, count(*) AS lines,
                   coalesce(sum(amount_minor) FILTER (line_type = 'charge'), 0) AS charges_minor,
                   coalesce(sum(amount_minor) FILTER (line_type = 'refund'), 0) AS refunds_minor,
                   coalesce(sum(amount_minor) FILTER (line_type IN ('dispute', 'dispute_reversal')), 0) AS disputes_minor,
                   coalesce(sum(amount_minor) FILTER (line_type = 'fee'), 0) - sum(fee_minor) AS fees_minor,
                   coalesce(sum(amount_minor) FILTER (line_type NOT IN ('charge', 'refund', 'dispute',
                                                                        'dispute_reversal', 'fee', 'payout')), 0)
                       AS other_minor
            FROM core_settlement_lines WHERE payout_id IS NOT NULL AND line_type <> 'payout' GROUP BY ALL
        )
        SELECT t.processor, t.payout_id, t.settlement_date, t.arrival_date, t.currency, coalesce(l.lines, 0) AS lines,
               coalesce(l.charges_minor, 0) AS charges_minor, coalesce(l.refunds_minor, 0) AS refunds_minor,
               coalesce(l.disputes_minor, 0) AS disputes_minor, coalesce(l.fees_minor, 0) AS fees_minor,
               coalesce(l.other_minor, 0) AS other_minor, t.lines_net_minor, t.payout_amount_minor,
               t.difference_minor, t.status, t.residue
        FROM core_payout_reconciliation t LEFT JOIN lines l USING (processor, payout_id)
        WHERE t.settlement_date BETWEEN $first AND $last ORDER BY t.processor, t.settlement_date, t.payout_id"""),
    "payout_lines": ("Every line of the period, by payout, with customer and invoice", """
        WITH applied AS (
            SELECT processor, source_id, any_value(status) AS match_status, any_value(customer) AS customer,
                   string_agg(invoice_number, ', ' ORDER BY invoice_number) FILTER (status = 'auto') AS invoices
            FROM core_payment_allocations GROUP BY ALL
        )
        SELECT l.processor, coalesce(l.payout_id, '(not yet paid out)') AS payout_id, l.settlement_date, l.line_type,
               l.source_id, coalesce(a.customer, l.customer_ref) AS customer, a.invoices AS invoice,
               a.match_status, l.currency, l.amount_minor, -l.fee_minor AS fee_minor, l.net_minor
        FROM core_settlement_lines l LEFT JOIN applied a USING (processor, source_id)
        WHERE l.settlement_date BETWEEN $first AND $last AND l.line_type <> 'payout'
        ORDER BY l.processor, l.payout_id NULLS LAST, l.settlement_date, l.source_id"""),
    "exceptions": ("Open exceptions, aged from the payment date", """
        SELECT exception_id, reason_code, processor, source_id, settlement_date,
               date_diff('day', settlement_date, $last) AS age_days,
               CASE WHEN date_diff('day', settlement_date, $last) <= 7 THEN '0-7 days'
                    WHEN date_diff('day', settlement_date, $last) <= 30 THEN '8-30 days'
                    WHEN date_diff('day', settlement_date, $last) <= 60 THEN '31-60 days'
                    ELSE 'over 60 days' END AS age_band,
               currency, amount_minor, unapplied_minor, detail
        FROM out_recon_exceptions WHERE status = 'open' AND settlement_date BETWEEN $first AND $last
        ORDER BY settlement_date, exception_id"""),
    "journals": ("Vouchers and cash batches with their status in M3", """
        WITH vouchers AS (
            SELECT route, voucher_key, min(accounting_date) AS accounting_date, any_value(processor) AS processor,
                   currency, count(*) AS lines, coalesce(sum(amount_minor) FILTER (amount_minor > 0), 0) AS debits_minor,
                   any_value(held_reason) AS held_reason
            FROM ({ledger}) WHERE accounting_date BETWEEN $first AND $last AND (route = 'GLS840MI' OR amount_minor > 0)
            GROUP BY route, voucher_key, currency
        )
        SELECT v.voucher_key, v.route, v.accounting_date, v.processor, v.currency, v.lines, v.debits_minor,
               coalesce(p.status, CASE WHEN v.held_reason IS NOT NULL THEN 'held' ELSE 'not sent' END) AS m3_status,
               p.m3_voucher_number, p.m3_batch, v.held_reason
        FROM vouchers v LEFT JOIN {postings} p ON p.voucher_key = v.voucher_key
             AND p.route = CASE v.route WHEN 'GLS840MI' THEN 'gl' ELSE 'cash_application' END
        ORDER BY v.accounting_date, v.route DESC, v.voucher_key"""),
    "accounts": ("Movement per GL account in the period (both routes)", """
        SELECT l.account, coalesce(g.account_name, '(not in data/gl_accounts.toml)') AS account_name, l.currency,
               coalesce(sum(l.amount_minor) FILTER (l.amount_minor > 0), 0) AS debits_minor,
               coalesce(-sum(l.amount_minor) FILTER (l.amount_minor < 0), 0) AS credits_minor,
               sum(l.amount_minor) AS net_minor, count(*) AS lines
        FROM ({ledger}) l LEFT JOIN (SELECT DISTINCT account, account_name FROM gl_chart) g USING (account)
        WHERE l.accounting_date BETWEEN $first AND $last GROUP BY ALL ORDER BY l.account, l.currency"""),
}
COUNTED = {"lines", "payouts"}  # integer columns that add up in a totals row besides the amounts
POSTINGS_COLUMNS = "SELECT NULL::VARCHAR AS voucher_key, NULL::VARCHAR AS route, NULL::VARCHAR AS status, " \
                   "NULL::VARCHAR AS m3_voucher_number, NULL::VARCHAR AS m3_batch WHERE false"
WRAPPED = {"detail", "residue", "held_reason"}  # free text: wraps in the HTML; every other cell stays on one line


@dataclass
class Section:
    key: str
    title: str
    columns: list[str]
    rows: list[tuple]

    @property
    def money_columns(self) -> list[str]:
        return [c for c in self.columns if c.endswith("_minor")]

    def totals(self) -> list[tuple]:
        """One row per currency: 'Total' in the first column, the amounts and counts summed, the rest blank."""
        if "currency" not in self.columns:
            return []
        currency = self.columns.index("currency")
        summed = {i for i, c in enumerate(self.columns) if c.endswith("_minor") or c in COUNTED}
        totals: dict[str, list] = {}
        for row in self.rows:
            total = totals.setdefault(row[currency], [0] * len(self.columns))
            for i in summed:
                total[i] += row[i] or 0
        return [tuple("Total" if i == 0 else cur if i == currency else (t[i] if i in summed else None)
                      for i in range(len(self.columns)))
                for cur, t in sorted(totals.items(), key=lambda item: item[0] or "")]

    def readable(self, row: tuple) -> list:
        """The row with every amount as ``1,234.56 USD`` in place, and the minor units appended."""
        record = dict(zip(self.columns, row))
        currency = record.get("currency")
        shown = [money(value, currency) if column.endswith("_minor") else value
                 for column, value in zip(self.columns, row)]
        return shown + [record[c] for c in self.money_columns]

    @property
    def readable_columns(self) -> list[str]:
        return [c.removesuffix("_minor") for c in self.columns] + self.money_columns


def _sql(key: str, conn: duckdb.DuckDBPyConnection) -> str:
    postings = "out_m3_postings" if table_exists(conn, "out_m3_postings") else f"({POSTINGS_COLUMNS})"
    return SECTIONS[key][1].replace("{ledger}", LEDGER_LINES).replace("{postings}", postings)


def report_sections(conn: duckdb.DuckDBPyConnection, first: date, last: date, accounts: AccountMap) -> list[Section]:
    accounts.chart(conn)
    sections = []
    for key, (title, _) in SECTIONS.items():
        relation = conn.execute(_sql(key, conn), {"first": first, "last": last})
        sections.append(Section(key, title, [d[0] for d in relation.description], relation.fetchall()))
    return sections


def build_report(conn: duckdb.DuckDBPyConnection, first: date, last: date, directory: Path,
                 generated_at: datetime, run_id: str, accounts: AccountMap | None = None
                 ) -> tuple[dict[str, Path], list[Section]]:
    """Write ``<section>.csv``, ``report.html`` and ``report.xlsx`` into ``directory``; return their paths and
    the sections (the roll-forward first)."""
    directory.mkdir(parents=True, exist_ok=True)
    sections = report_sections(conn, first, last, accounts or AccountMap.load())
    paths = {}
    for section in sections:
        path = paths[section.key] = directory / f"{section.key}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(section.readable_columns)
            writer.writerows(section.readable(row) for row in section.rows + section.totals())
    paths["xlsx"] = directory / "report.xlsx"
    _workbook(sections, first, last, generated_at, run_id).save(paths["xlsx"])
    paths["html"] = directory / "report.html"
    paths["html"].write_text(_html_page(first, last, generated_at, run_id, sections), encoding="utf-8")
    return paths, sections


def _workbook(sections: list[Section], first: date, last: date, generated_at: datetime, run_id: str) -> Workbook:
    """One sheet per section; amounts are numbers in major units shown as ``#,##0.00 "USD"`` so they add up in
    Excel, with the minor units in the trailing columns; totals rows in bold."""
    book = Workbook()
    book.remove(book.active)
    for section in sections:
        sheet = book.create_sheet(section.key[:31])
        sheet.append(section.readable_columns)
        for cell in sheet[1]:
            cell.font = Font(bold=True)
        totals = section.totals()
        for row in section.rows + totals:
            record = dict(zip(section.columns, row))
            currency = record.get("currency")
            values = [_excel(v) for v in row] + [record[c] for c in section.money_columns]
            for i, column in enumerate(section.columns):
                if column.endswith("_minor") and row[i] is not None and currency:
                    values[i] = major(row[i], currency)
            sheet.append(values)
            for i, column in enumerate(section.columns):
                if column.endswith("_minor") and currency:
                    decimals = "." + "0" * exponent(currency) if exponent(currency) else ""
                    sheet.cell(sheet.max_row, i + 1).number_format = f'#,##0{decimals} "{currency}"'
            if row in totals:
                for cell in sheet[sheet.max_row]:
                    cell.font = Font(bold=True)
        sheet.freeze_panes = "A2"
    book.properties.title = f"Payout reconciliation {first} to {last}"
    book.properties.description = f"Generated {generated_at:%Y-%m-%d %H:%M} UTC by Dagster run {run_id}"
    return book


def _excel(value):
    return value if value is None or isinstance(value, (int, float, str, date)) else str(value)


def _cell(value) -> str:
    return "" if value is None else html.escape(str(value))


def _roll_forward_html(section: Section) -> str:
    """The roll-forward as a statement: one column per processor and currency, one line per movement."""
    records = [dict(zip(section.columns, row)) for row in section.rows]
    head = "".join(f"<th class='n'>{html.escape(r['processor'])} {html.escape(r['currency'])}</th>" for r in records)
    body = []
    for column, label in ROLL_FORWARD_ITEMS:
        strong = column in ("opening_minor", "closing_minor", "difference_minor")
        cells = "".join(f"<td class='n'>{money(r[column], r['currency'])}</td>" for r in records)
        body.append(f"<tr{' class=strong' if strong else ''}><td>{html.escape(label)}</td>{cells}</tr>")
    closes = all(r["difference_minor"] == 0 for r in records)
    verdict = ("Every roll-forward closes to the cent on the ledger." if closes else
               "A roll-forward does NOT close on the ledger: see the difference line.")
    return (f"<h2 id='{section.key}'>{html.escape(section.title)}</h2>"
            f"<p class='{'ok' if closes else 'bad'}'>{verdict}</p>"
            f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _css(column: str) -> str:
    return " class=n" if column.endswith("_minor") else " class=w" if column in WRAPPED else ""


def _html_table(section: Section) -> str:
    shown = [c for c in section.columns]
    head = "".join(f"<th{' class=n' if c.endswith('_minor') else ''}>{html.escape(c.removesuffix('_minor'))}</th>"
                   for c in shown)

    def line(row, css=""):
        cells = section.readable(row)[:len(section.columns)]
        return (f"<tr{css}>" + "".join(f"<td{_css(c)}>{_cell(v)}</td>" for c, v in zip(shown, cells)) + "</tr>")

    body = "".join(line(row) for row in section.rows)
    foot = "".join(line(row, " class=strong") for row in section.totals())
    return (f"<h2 id='{section.key}'>{html.escape(section.title)} <small>({len(section.rows)} rows)</small></h2>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody><tfoot>{foot}</tfoot></table>")


def _html_page(first: date, last: date, generated_at: datetime, run_id: str, sections: list[Section]) -> str:
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
             "margin-bottom:2em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "th{background:#f3f3f3}td{white-space:nowrap;vertical-align:top}td.w{white-space:normal;min-width:28em}"
             "td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
             "tr.strong td{font-weight:600;background:#fafafa}p.ok{color:#17612b}p.bad{color:#b00020;font-weight:600}")
    parts = [_roll_forward_html(s) if s.key == "roll_forward" else _html_table(s) for s in sections]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Payout reconciliation {first} to {last}</title>"
            f"<style>{style}</style></head><body><h1>Payout reconciliation, {first} to {last}</h1>"
            f"<p>Generated {generated_at:%Y-%m-%d %H:%M} UTC by Dagster run {html.escape(run_id)}, after posting to "
            f"M3. Totals are per currency. The CSV files and report.xlsx beside this page carry the same rows, with "
            f"the amounts also in minor units.</p>" + "".join(parts) + "</body></html>")

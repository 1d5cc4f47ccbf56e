"""The posting summary ``m3-recon backfill`` and ``m3-recon demo`` end with: what the outbox holds, and
what a person must do about it.

``posting_report(conn)`` reads ``out_m3_postings`` with the journals behind it and gives, per route and
status, the vouchers and their amounts (GL: debits; cash application: amount applied) per currency;
the held vouchers grouped by reason ("17 vouchers held: no GL account mapped for refunds …"); and the
next step for every status that is not done. Anything ``failed``, ``posted_unverified``, ``held`` or
left ``sent`` needs a person (or at least a look), so the report is not ``ok`` and the commands exit
non-zero; ``pending`` only waits for the next posting run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

import duckdb

from m3_recon.money import money_by_currency
from m3_recon.posting.outbox import (CASH_SOURCE, FAILED, GL_SOURCE, HELD, OUTBOX, PENDING, POSTED_UNVERIFIED,
                                     ROUTE_CASH, ROUTE_GL, SENT, VERIFIED)
from m3_recon.warehouse import table_exists

STATUS_ORDER = (VERIFIED, POSTED_UNVERIFIED, SENT, PENDING, HELD, FAILED)
NEEDS_A_PERSON = (FAILED, POSTED_UNVERIFIED, HELD, SENT)
NEXT_STEP = {
    POSTED_UNVERIFIED: "M3 accepted these batches but they were not read back; they are never resent — the next "
                       "posting run looks for them again (GLS200MI / ARS200MI); if they stay, look the batch up in "
                       "M3 by its KEY1 / payment batch number (out_m3_postings.m3_batch)",
    FAILED: "M3 refused them or holds something else (out_m3_postings.last_error says what); fix the cause, then "
            "delete the row from out_m3_postings so the next posting run sends it again",
    SENT: "a posting run stopped before M3 confirmed them; the next posting run asks M3 and resumes or verifies "
          "them (never twice)",
    PENDING: "the next posting run (the m3_posting sensor, or `m3-recon backfill` without --no-post) sends them",
}
ROUTE_UNITS = {ROUTE_GL: ("voucher", "debits"), ROUTE_CASH: ("batch", "applied")}


@dataclass
class PostingReport:
    lines: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # status -> vouchers, both routes

    @property
    def ok(self) -> bool:
        """Nothing a person must act on: no failed, posted_unverified, held or stranded ``sent`` voucher."""
        return not any(self.counts.get(status) for status in NEEDS_A_PERSON)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("ch") else "s"))


def held_step(reason: str) -> str:
    if reason.startswith("blocking check"):
        return ("resolve what the check found (`m3-recon exceptions list`, the check's metadata in the UI) and "
                "rerun the close: the vouchers post by themselves once the check passes")
    if reason.startswith("no GL account"):
        return "map the account in data/gl_accounts.toml and rerun the close"
    return "fix the reason and rerun the close"


def posting_report(conn: duckdb.DuckDBPyConnection) -> PostingReport:
    report = PostingReport()
    if not table_exists(conn, OUTBOX):
        report.lines.append("Posting to M3: nothing in out_m3_postings yet")
        return report
    amounts = []
    if table_exists(conn, GL_SOURCE):
        amounts.append(f"SELECT voucher_key, '{ROUTE_GL}' AS route, currency, sum(amount_minor) FILTER "
                       f"(amount_minor > 0) AS amount FROM {GL_SOURCE} GROUP BY ALL")
    if table_exists(conn, CASH_SOURCE):
        amounts.append(f"SELECT voucher_key, '{ROUTE_CASH}', currency, sum(amount_minor) FROM {CASH_SOURCE} "
                       "GROUP BY ALL")
    amount_sql = " UNION ALL ".join(amounts) or ("SELECT NULL::VARCHAR AS voucher_key, NULL::VARCHAR AS route, "
                                                 "NULL::VARCHAR AS currency, NULL::BIGINT AS amount WHERE false")
    rows = conn.execute(f"""
        WITH amounts AS ({amount_sql}),
        per_status AS (
            SELECT o.route, o.status, count(DISTINCT o.voucher_key) AS vouchers FROM {OUTBOX} o GROUP BY ALL
        ), money AS (
            SELECT o.route, o.status, a.currency, sum(a.amount) AS amount
            FROM {OUTBOX} o JOIN amounts a ON a.voucher_key = o.voucher_key AND a.route = o.route GROUP BY ALL
        )
        SELECT p.route, p.status, p.vouchers,
               coalesce(list((m.currency, m.amount) ORDER BY m.currency) FILTER (m.currency IS NOT NULL), [])
        FROM per_status p LEFT JOIN money m USING (route, status) GROUP BY ALL""").fetchall()
    order = {status: i for i, status in enumerate(STATUS_ORDER)}
    rows.sort(key=lambda r: (r[0] != ROUTE_GL, order.get(r[1], len(order)), r[1]))
    report.lines.append("Posting to M3 (out_m3_postings; gl = GLS840MI vouchers, cash_application = ARS040MI batches):")
    for route, status, vouchers, money in rows:
        unit, what = ROUTE_UNITS.get(route, ("voucher", "amount"))
        report.counts[status] = report.counts.get(status, 0) + vouchers
        spent = money_by_currency([(c, int(a or 0)) for c, a in money]) if money else ""
        report.lines.append(f"  {route:<17} {status:<18} {_plural(vouchers, unit):>13}"
                            + (f"  {what} {spent}" if spent else ""))
    held = conn.execute(f"SELECT last_error, count(*) FROM {OUTBOX} WHERE status = ? GROUP BY 1", [HELD]).fetchall()
    groups: dict[str, int] = {}
    for reason, n in held:
        key = (reason or "no reason recorded").split(": ")[0]
        groups[key] = groups.get(key, 0) + n
    for reason, n in sorted(groups.items(), key=lambda item: (-item[1], item[0])):
        report.lines.append(f"  {_plural(n, 'voucher')} held: {reason} -> next: {held_step(reason)}")
    for status in (FAILED, POSTED_UNVERIFIED, SENT, PENDING):
        n = report.counts.get(status, 0)
        if n:
            example = conn.execute(f"SELECT voucher_key, last_error FROM {OUTBOX} WHERE status = ? "
                                   "ORDER BY accounting_date, voucher_key LIMIT 1", [status]).fetchone()
            why = f" (e.g. {example[0]}: {example[1]})" if example[1] else f" (e.g. {example[0]})"
            report.lines.append(f"  {_plural(n, 'voucher')} {status}{why} -> next: {NEXT_STEP[status]}")
    attention = {s: report.counts[s] for s in NEEDS_A_PERSON if report.counts.get(s)}
    report.lines.append("  posting: " + ("nothing for a person to do" if report.ok else "needs a person — "
                        + ", ".join(f"{n} {s}" for s, n in attention.items())))
    return report


def print_posting_summary(out: TextIO = sys.stdout) -> int:
    """Print the summary of the configured warehouse (DuckDB file or DuckLake); 0 when nothing needs a
    person, else 1."""
    from dagster import build_resources

    from m3_recon.storage import warehouse_resource_from_env

    with build_resources({"warehouse": warehouse_resource_from_env()}) as built:
        with built.warehouse.get_connection() as conn:
            report = posting_report(conn)
    print("\n" + "\n".join(report.lines), file=out)
    return 0 if report.ok else 1

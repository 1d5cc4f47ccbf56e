"""Payout tie-out and the exception register, as DuckDB SQL over canonical tables.

``tie_out_payouts`` compares each payout / deposit / batch with the sum of the settlement lines it
paid out: ``tied`` when they agree to the cent, ``mismatch`` with the residue named (which line
types it paid, how many itemised lines are missing), ``pending`` while the processor has not itemised
it, ``failed`` when the payout bounced. ``register_exceptions`` keeps ``out_recon_exceptions`` as a
register: an exception keeps its id and first-seen time across reruns, and one that no longer occurs
is marked ``cleared`` rather than deleted, so the audit trail survives.
"""

from __future__ import annotations

from datetime import date, datetime

import duckdb

from m3_recon.money import money_sql
from m3_recon.sql import ensure_table

RECONCILIATION_COLUMNS = {
    "processor": "VARCHAR NOT NULL", "payout_id": "VARCHAR NOT NULL", "currency": "VARCHAR NOT NULL",
    "settlement_date": "DATE NOT NULL", "arrival_date": "DATE", "payout_status": "VARCHAR NOT NULL",
    "payout_amount_minor": "BIGINT NOT NULL", "lines_net_minor": "BIGINT NOT NULL", "line_count": "BIGINT NOT NULL",
    "itemised_line_count": "BIGINT NOT NULL", "difference_minor": "BIGINT NOT NULL", "status": "VARCHAR NOT NULL",
    "net_by_line_type": "JSON", "residue": "VARCHAR",
}
REGISTER_COLUMNS = {
    "exception_id": "VARCHAR NOT NULL", "reason_code": "VARCHAR NOT NULL", "processor": "VARCHAR NOT NULL",
    "source_id": "VARCHAR NOT NULL", "settlement_date": "DATE NOT NULL", "currency": "VARCHAR",
    "amount_minor": "BIGINT", "unapplied_minor": "BIGINT", "candidates": "JSON", "detail": "VARCHAR NOT NULL",
    "status": "VARCHAR NOT NULL", "first_seen_at_utc": "TIMESTAMP NOT NULL", "last_seen_at_utc": "TIMESTAMP NOT NULL",
    "decision": "VARCHAR", "decided_by": "VARCHAR", "decided_at_utc": "TIMESTAMP", "decision_reason": "VARCHAR",
}


def tie_out_payouts(conn: duckdb.DuckDBPyConnection, *, payouts: str, lines: str) -> None:
    """Create temp table ``payout_tieout`` (RECONCILIATION_COLUMNS) for every payout in ``payouts``."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE payout_tieout AS
        WITH settled AS (
            SELECT processor, payout_id, line_type, sum(net_minor) AS net, count(*) AS n
            FROM {lines} WHERE payout_id IS NOT NULL AND line_type <> 'payout' GROUP BY ALL
        ), per_payout AS (
            SELECT processor, payout_id, sum(net) AS net, sum(n) AS n,
                   to_json(map_from_entries(list((line_type, net) ORDER BY line_type))) AS by_type
            FROM settled GROUP BY ALL
        ), compared AS (
            SELECT p.processor, p.payout_id, p.currency, p.settlement_date, p.arrival_date, p.status AS payout_status,
                   p.amount_minor AS payout_amount_minor, coalesce(s.net, 0) AS lines_net_minor,
                   coalesce(s.n, 0) AS line_count, p.line_count AS itemised_line_count,
                   p.amount_minor - coalesce(s.net, 0) AS difference_minor, p.itemised,
                   s.by_type AS net_by_line_type
            FROM {payouts} p LEFT JOIN per_payout s USING (processor, payout_id)
        )
        SELECT * EXCLUDE (itemised),
               CASE WHEN payout_status IN ('failed', 'canceled') THEN 'failed'
                    WHEN NOT itemised THEN 'pending'
                    WHEN difference_minor = 0 THEN 'tied' ELSE 'mismatch' END AS status,
               CASE WHEN difference_minor <> 0 AND itemised AND payout_status NOT IN ('failed', 'canceled') THEN
                   'payout ' || {money_sql('payout_amount_minor', 'currency')} || ' vs lines net '
                   || {money_sql('lines_net_minor', 'currency')} || ': residue '
                   || {money_sql('difference_minor', 'currency')}
                   || CASE WHEN itemised_line_count > line_count
                           THEN '; ' || (itemised_line_count - line_count) || ' itemised line(s) missing from core_settlement_lines'
                           ELSE '; every itemised line is present, so the residue is unexplained by the processor' END
               END AS residue
        FROM compared""")


def payout_exceptions(conn: duckdb.DuckDBPyConnection, *, tieout: str) -> None:
    """Create temp table ``payout_exceptions`` (exception columns) for every mismatched payout of ``tieout``."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE payout_exceptions AS
        SELECT 'EX-' || upper(substr(md5('payout_mismatch|' || processor || '|' || payout_id), 1, 12)) AS exception_id,
               'payout_mismatch' AS reason_code, processor, payout_id AS source_id, settlement_date, currency,
               payout_amount_minor AS amount_minor, difference_minor AS unapplied_minor,
               net_by_line_type AS candidates, residue AS detail
        FROM {tieout} WHERE status = 'mismatch'""")


def unknown_category_exceptions(conn: duckdb.DuckDBPyConnection, *, lines: str, categories: str,
                                suspense_account: str | None) -> None:
    """Create temp table ``category_exceptions`` (exception columns): one ``unknown_category`` exception per
    line of ``lines`` whose processor category the mapping does not know, saying where its amount went.

    ``categories``: SQL giving (processor, source_id, category), the processor's own name for it.
    """
    where = (f"booked to suspense account {suspense_account} so its payout ties; decide how it is booked, map the "
             "category and reclassify it" if suspense_account else
             "its voucher is held: map suspense under [accounts] in data/gl_accounts.toml (or map the category) "
             "and rerun")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE category_exceptions AS
        SELECT 'EX-' || upper(substr(md5('unknown_category|' || l.processor || '|' || l.source_id), 1, 12))
                   AS exception_id,
               'unknown_category' AS reason_code, l.processor, l.source_id, l.settlement_date, l.currency,
               l.amount_minor, NULL::BIGINT AS unapplied_minor, to_json([c.category]) AS candidates,
               l.processor || ' category ' || coalesce('''' || c.category || '''', '(not in the staging table)')
               || ' is not in the mapping: ' || {money_sql('l.amount_minor', 'l.currency')}
               || coalesce(' (payout ' || l.payout_id || ')', '') || ' ' || $where AS detail
        FROM {lines} l LEFT JOIN ({categories}) c USING (processor, source_id)
        WHERE l.line_type = 'unknown_category'""", {"where": where})


def register_exceptions(conn: duckdb.DuckDBPyConnection, *, found: str, first_day: date, end_day: date,
                        reason_codes: tuple[str, ...], now: datetime) -> dict[str, int]:
    """Merge ``found`` (exceptions for days [first_day, end_day) of the given reason codes) into the register.

    New ones open with first_seen = now; ones seen again keep their first_seen (and are reopened if they
    had cleared); ones in the window that are no longer found are marked cleared. Returns counts.
    """
    ensure_table(conn, "out_recon_exceptions", REGISTER_COLUMNS)
    scope = ("settlement_date >= $first AND settlement_date < $end AND list_contains($codes, reason_code)")
    params = {"first": first_day, "end": end_day, "codes": list(reason_codes), "now": now}
    new = conn.execute(f"SELECT count(*) FROM {found} f WHERE NOT EXISTS "
                       f"(SELECT 1 FROM out_recon_exceptions r WHERE r.exception_id = f.exception_id)").fetchone()[0]
    cleared = conn.execute(f"""
        UPDATE out_recon_exceptions SET status = 'cleared', last_seen_at_utc = $now
        WHERE {scope} AND status = 'open'
          AND exception_id NOT IN (SELECT exception_id FROM {found})""", params).fetchone()[0]
    conn.execute(f"""
        UPDATE out_recon_exceptions r SET amount_minor = f.amount_minor, unapplied_minor = f.unapplied_minor,
               candidates = f.candidates, detail = f.detail, last_seen_at_utc = $now,
               status = CASE WHEN r.status = 'cleared' THEN 'open' ELSE r.status END
        FROM {found} f WHERE r.exception_id = f.exception_id""", {"now": now})
    conn.execute(f"""
        INSERT INTO out_recon_exceptions
        SELECT f.exception_id, f.reason_code, f.processor, f.source_id, f.settlement_date, f.currency, f.amount_minor,
               f.unapplied_minor, f.candidates, f.detail, 'open', $now, $now, NULL, NULL, NULL, NULL
        FROM {found} f WHERE NOT EXISTS (SELECT 1 FROM out_recon_exceptions r WHERE r.exception_id = f.exception_id)""",
                 {"now": now})
    return {"new": new, "cleared": cleared}


def record_decisions(conn: duckdb.DuckDBPyConnection, *, decisions: str) -> int:
    """Mark exceptions finance decided on (``decisions``, ``load_decisions``) resolved or dismissed, with
    who, when and why. Returns how many register rows carry a decision."""
    conn.execute(f"""
        UPDATE out_recon_exceptions r
        SET status = CASE d.action WHEN 'dismiss' THEN 'dismissed' ELSE 'resolved' END, decision = d.action,
            decided_by = d.decided_by, decided_at_utc = d.decided_at_utc, decision_reason = d.reason
        FROM {decisions} d WHERE r.exception_id = d.exception_id""")
    return conn.execute("SELECT count(*) FROM out_recon_exceptions WHERE decision IS NOT NULL").fetchone()[0]

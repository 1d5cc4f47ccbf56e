"""Did the bank receive each payout? Bank statement lines against payouts / deposits / batches, in DuckDB SQL.

``match_bank_lines`` pairs a payout with a bank line of the same signed amount and currency whose
text carries the processor's descriptor (``DEFAULT_DESCRIPTORS``, regular expressions, configurable)
and whose booking date lies from one calendar day before the payout's arrival date (its settlement
date when the processor gives none) to ``business_days`` business days (Mon–Fri) after it. Each line
explains at most one payout and each payout is banked by at most one line: the closest date wins,
ties broken by the payout's and the line's ids, in rounds until nothing more pairs; a payout left
without its line because a nearer equal payout took it gets it back when that payout has another
line free (an augmenting swap).

``bank_exceptions`` raises ``payout_not_banked`` for a payout (neither failed nor pending) that no
line explains although the statements already run ``business_days`` business days past its arrival
(the latest booking date on file is the bank's "as of"; without statements nothing is raised), and
``unexplained_bank_credit`` for a credit no payout explains.
"""

from __future__ import annotations

import re
from datetime import date

import duckdb

from m3_recon.money import money_sql

DEFAULT_DESCRIPTORS = {"stripe": "STRIPE", "paytrace": "PAYTRACE", "heartland": "HEARTLAND|GLOBAL PAYMENTS"}
DEFAULT_BUSINESS_DAYS = 3
MAX_ROUNDS = 5
BANKING_COLUMNS = {"banked": "BOOLEAN", "banked_on": "DATE", "bank_line_ref": "VARCHAR"}
BANK_REASONS = {
    "payout_not_banked": "no bank statement line shows the payout although the statements run past its window",
    "unexplained_bank_credit": "a credit on the bank statement that no payout, deposit or batch explains",
}
BANK_LINE_COLUMNS = {
    "bank_account": "VARCHAR NOT NULL", "statement_id": "VARCHAR NOT NULL", "line_ref": "VARCHAR NOT NULL",
    "format": "VARCHAR NOT NULL", "booking_date": "DATE NOT NULL", "value_date": "DATE",
    "amount_minor": "BIGINT NOT NULL", "currency": "VARCHAR NOT NULL", "type_code": "VARCHAR",
    "description": "VARCHAR", "file_hash": "VARCHAR NOT NULL", "file_name": "VARCHAR NOT NULL",
    "loaded_at_utc": "TIMESTAMP NOT NULL",
}


def parse_descriptors(text: str | None) -> dict[str, str]:
    """``stripe=STRIPE;heartland=HEARTLAND|GLOBAL PAYMENTS`` (M3_RECON_BANK_DESCRIPTORS) over the defaults."""
    descriptors = dict(DEFAULT_DESCRIPTORS)
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        processor, _, pattern = part.partition("=")
        if not pattern.strip():
            raise ValueError(f"M3_RECON_BANK_DESCRIPTORS: {part!r} is not processor=PATTERN")
        try:
            re.compile(pattern.strip())
        except re.error as exc:
            raise ValueError(f"M3_RECON_BANK_DESCRIPTORS: {pattern.strip()!r} is not a regular expression ({exc})")
        descriptors[processor.strip().lower()] = pattern.strip().upper()
    return descriptors


def _calendar(dates_sql: str) -> str:
    """SQL: (day, bd) for every day spanned by ``dates_sql`` (one DATE column ``d``) with a week of slack on
    each side; ``bd`` counts business days up to and including the day, so business days between a and b
    is bd(b) - bd(a)."""
    return f"""
        SELECT day::DATE AS day, sum(CASE WHEN isodow(day) <= 5 THEN 1 ELSE 0 END) OVER (ORDER BY day) AS bd
        FROM (SELECT min(d) - INTERVAL 7 DAY AS lo, max(d) + INTERVAL 7 DAY AS hi FROM ({dates_sql})) span,
             range(span.lo, span.hi + INTERVAL 1 DAY, INTERVAL 1 DAY) t(day)"""


def match_bank_lines(conn: duckdb.DuckDBPyConnection, *, payouts: str, bank_lines: str,
                     descriptors: dict[str, str], business_days: int = DEFAULT_BUSINESS_DAYS) -> None:
    """Create temp table ``bank_matches`` (processor, payout_id, bank_account, statement_id, line_ref,
    booking_date) pairing ``payouts`` (core_payouts columns) with ``bank_lines`` (BANK_LINE_COLUMNS)."""
    conn.register("bank_descriptors", _descriptor_frame(descriptors))
    dates = (f"SELECT coalesce(arrival_date, settlement_date) AS d FROM {payouts} "
             f"UNION ALL SELECT booking_date FROM {bank_lines}")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE bank_calendar AS {_calendar(dates)}")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE bank_candidates AS
        WITH expected AS (
            SELECT p.processor, p.payout_id, p.currency, p.amount_minor,
                   coalesce(p.arrival_date, p.settlement_date) AS due, c.bd AS due_bd
            FROM {payouts} p JOIN bank_calendar c ON c.day = coalesce(p.arrival_date, p.settlement_date)
            WHERE p.status NOT IN ('failed', 'canceled') AND p.amount_minor <> 0
        )
        SELECT e.processor, e.payout_id, b.bank_account, b.statement_id, b.line_ref, b.booking_date,
               abs(date_diff('day', e.due, b.booking_date)) AS distance
        FROM expected e
        JOIN bank_descriptors d ON d.processor = e.processor
        JOIN {bank_lines} b ON b.amount_minor = e.amount_minor AND upper(b.currency) = e.currency
             AND regexp_matches(upper(coalesce(b.description, '')), d.pattern)
        JOIN bank_calendar c ON c.day = b.booking_date
        WHERE b.booking_date >= e.due - INTERVAL 1 DAY AND c.bd - e.due_bd <= {int(business_days)}""")
    conn.execute("CREATE OR REPLACE TEMP TABLE bank_matches AS SELECT * EXCLUDE (distance) FROM bank_candidates "
                 "WHERE false")
    for _ in range(MAX_ROUNDS):
        added = conn.execute(MUTUAL_BEST_SQL).fetchone()[0]
        swapped = _augment(conn)
        if not added and not swapped:
            break


LINE = "bank_account, statement_id, line_ref"
# Pairs that are each other's closest open candidate (ties: ids), added to bank_matches.
MUTUAL_BEST_SQL = f"""
    INSERT INTO bank_matches
    WITH open AS (
        SELECT * FROM bank_candidates c
        WHERE (processor, payout_id) NOT IN (SELECT (processor, payout_id) FROM bank_matches)
          AND ({LINE}) NOT IN (SELECT ({LINE}) FROM bank_matches)
    ), ranked AS (
        SELECT *, row_number() OVER (PARTITION BY processor, payout_id ORDER BY distance, booking_date, {LINE})
                      AS by_payout,
                  row_number() OVER (PARTITION BY {LINE} ORDER BY distance, processor, payout_id) AS by_line
        FROM open
    )
    SELECT processor, payout_id, {LINE}, booking_date FROM ranked WHERE by_payout = 1 AND by_line = 1"""


def _augment(conn: duckdb.DuckDBPyConnection) -> int:
    """Where an unbanked payout P's line L went to payout Q that has another free line L2, give L to P and L2
    to Q (e.g. two equal payouts two days apart whose lines were taken by the nearer one). Returns swaps."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE bank_swaps AS
        WITH unbanked AS (
            SELECT * FROM bank_candidates
            WHERE (processor, payout_id) NOT IN (SELECT (processor, payout_id) FROM bank_matches)
        ), taken AS (
            SELECT u.processor AS p_processor, u.payout_id AS p_payout, m.processor AS q_processor,
                   m.payout_id AS q_payout, m.bank_account, m.statement_id, m.line_ref, m.booking_date
            FROM unbanked u JOIN bank_matches m USING ({LINE})
        )
        SELECT t.*, c.bank_account AS alt_account, c.statement_id AS alt_statement, c.line_ref AS alt_line,
               c.booking_date AS alt_booking_date
        FROM taken t JOIN bank_candidates c ON c.processor = t.q_processor AND c.payout_id = t.q_payout
        WHERE (c.{LINE.replace(', ', ', c.')}) NOT IN (SELECT ({LINE}) FROM bank_matches)
        QUALIFY row_number() OVER (PARTITION BY p_processor, p_payout ORDER BY c.distance, alt_line) = 1
            AND row_number() OVER (PARTITION BY q_processor, q_payout ORDER BY c.distance, p_payout) = 1
            AND row_number() OVER (PARTITION BY t.{LINE.replace(', ', ', t.')} ORDER BY c.distance, p_payout) = 1
            AND row_number() OVER (PARTITION BY alt_account, alt_statement, alt_line ORDER BY p_payout) = 1""")
    swaps = conn.execute("SELECT count(*) FROM bank_swaps").fetchone()[0]
    if swaps:
        conn.execute("DELETE FROM bank_matches WHERE (processor, payout_id) IN "
                     "(SELECT (q_processor, q_payout) FROM bank_swaps)")
        conn.execute(f"""
            INSERT INTO bank_matches
            SELECT p_processor, p_payout, {LINE}, booking_date FROM bank_swaps
            UNION ALL
            SELECT q_processor, q_payout, alt_account, alt_statement, alt_line, alt_booking_date FROM bank_swaps""")
    return swaps


def bank_status(conn: duckdb.DuckDBPyConnection, *, tieout: str) -> None:
    """Replace temp table ``tieout`` (payout tie-out rows) with itself plus BANKING_COLUMNS from ``bank_matches``."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE {tieout} AS
        SELECT t.*, m.payout_id IS NOT NULL AS banked, m.booking_date AS banked_on,
               m.bank_account || '/' || m.statement_id || '/' || m.line_ref AS bank_line_ref
        FROM {tieout} t LEFT JOIN bank_matches m USING (processor, payout_id)""")


def bank_exceptions(conn: duckdb.DuckDBPyConnection, *, payouts: str, bank_lines: str, first_day: date, end_day: date,
                    business_days: int = DEFAULT_BUSINESS_DAYS) -> None:
    """Create temp table ``bank_exceptions`` (exception-register columns) for payouts of ``payouts`` and
    bank lines booked in [first_day, end_day). Needs ``bank_matches`` and ``bank_calendar``."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE bank_exceptions AS
        WITH as_of AS (SELECT max(booking_date) AS day FROM {bank_lines}),
        unbanked AS (
            SELECT p.*, coalesce(p.arrival_date, p.settlement_date) AS due, a.day AS as_of
            FROM {payouts} p CROSS JOIN as_of a
            JOIN bank_calendar due_bd ON due_bd.day = coalesce(p.arrival_date, p.settlement_date)
            JOIN bank_calendar as_of_bd ON as_of_bd.day = a.day
            WHERE p.status NOT IN ('failed', 'canceled', 'pending') AND p.amount_minor <> 0
              AND as_of_bd.bd - due_bd.bd > {int(business_days)}
              AND (p.processor, p.payout_id) NOT IN (SELECT (processor, payout_id) FROM bank_matches)
        )
        SELECT 'EX-' || upper(substr(md5('payout_not_banked|' || processor || '|' || payout_id), 1, 12))
                   AS exception_id,
               'payout_not_banked' AS reason_code, processor, payout_id AS source_id, settlement_date, currency,
               amount_minor, NULL::BIGINT AS unapplied_minor, to_json([]) AS candidates,
               processor || ' payout ' || payout_id || ' of ' || {money_sql('amount_minor', 'currency')} || ' due ' || due
               || ' is on no bank statement although the statements run to ' || as_of || ' (more than '
               || {int(business_days)} || ' business days later): ask the processor for its trace and the bank'
                   AS detail
        FROM unbanked
        UNION ALL
        SELECT 'EX-' || upper(substr(md5('unexplained_bank_credit|' || b.bank_account || '|' || b.statement_id || '|'
                                         || b.line_ref), 1, 12)),
               'unexplained_bank_credit', 'bank', b.bank_account || '/' || b.statement_id || '/' || b.line_ref,
               b.booking_date, b.currency, b.amount_minor, NULL, to_json([]),
               'credit of ' || {money_sql('b.amount_minor', 'b.currency')} || ' booked ' || b.booking_date || ' on account '
               || b.bank_account || ' (' || coalesce(nullif(b.description, ''), 'no text') || ') matches no payout, '
               || 'deposit or batch: find who paid it'
        FROM {bank_lines} b
        WHERE b.amount_minor > 0 AND b.booking_date >= $first AND b.booking_date < $end
          AND (b.bank_account, b.statement_id, b.line_ref) NOT IN
              (SELECT (bank_account, statement_id, line_ref) FROM bank_matches)""", {"first": first_day, "end": end_day})


def _descriptor_frame(descriptors: dict[str, str]):
    import pandas as pd

    return pd.DataFrame(sorted(descriptors.items()), columns=["processor", "pattern"])

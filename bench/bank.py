"""Bank receipt at scale: N payouts against N bank statement lines (plus noise), matched by
``m3_recon.reconcile.banking.match_bank_lines`` and checked by ``bank_exceptions``.

Generated inside DuckDB (not timed): three processors' payouts over a year, each banked by one line
0–2 days after its date (a weekend moved to Monday); 1 % of payouts (not in the last weeks) never
reach the bank, 1 % of lines are credits nobody explains, and amounts repeat (a tenth of the payouts share an amount with another of
the same processor weeks apart; random amounts collide now and then), so the assignment has to choose
by date. Fails unless every pair agrees in processor and amount with the payout the line really paid
(a line given to an indistinguishable twin — same processor, amount, nearby date — is counted) and
the exceptions are exactly the missing payouts and the stray credits.
"""

from __future__ import annotations

import argparse
import time

import duckdb

from m3_recon.reconcile.banking import DEFAULT_DESCRIPTORS, bank_exceptions, match_bank_lines


def generate(conn: duckdb.DuckDBPyConnection, n: int) -> None:
    conn.execute(f"""
        CREATE OR REPLACE TABLE payouts AS
        SELECT ['stripe', 'paytrace', 'heartland'][1 + i % 3] AS processor, 'po_' || i AS payout_id, 'USD' AS currency,
               CASE WHEN i % 10 = 0 THEN 100000 + (i // 10) % 5000 ELSE 1000 + (hash(i) % 10000000)::BIGINT END
                   AS amount_minor,
               DATE '2026-01-01' + CAST(i * 365 // {n} AS INTEGER) AS settlement_date,
               NULL::DATE AS arrival_date, 'paid' AS status,
               i % 100 = 7 AND i < {n} * 95 // 100 AS lost
        FROM range({n}) t(i)""")
    conn.execute("""
        CREATE OR REPLACE TABLE lines AS
        WITH due AS (
            SELECT *, settlement_date + CAST(hash(payout_id) % 3 AS INTEGER) AS raw_day FROM payouts WHERE NOT lost
        )
        SELECT 'acct' AS bank_account, 'S' || strftime(day, '%Y%m%d') AS statement_id, 'L' || payout_id AS line_ref,
               day AS booking_date, amount_minor, currency,
               upper(processor) || ' DEPOSIT ' || payout_id AS description, payout_id AS truth
        FROM (SELECT *, CASE isodow(raw_day) WHEN 6 THEN raw_day + 2 WHEN 7 THEN raw_day + 1 ELSE raw_day END AS day
              FROM due)
        UNION ALL
        SELECT 'acct', 'S' || strftime(DATE '2026-01-05' + CAST(i % 360 AS INTEGER), '%Y%m%d'), 'W' || i,
               DATE '2026-01-05' + CAST(i % 360 AS INTEGER), 777 + i, 'USD', 'WIRE IN CUSTOMER ' || i, NULL
        FROM range((SELECT count(*) // 100 FROM payouts)) t(i)""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    conn = duckdb.connect()
    generate(conn, args.n)
    began = time.perf_counter()
    match_bank_lines(conn, payouts="payouts", bank_lines="lines", descriptors=DEFAULT_DESCRIPTORS)
    matched = time.perf_counter() - began
    bank_exceptions(conn, payouts="payouts", bank_lines="lines", first_day="2026-01-01", end_day="2027-01-01")
    total = time.perf_counter() - began
    wrong, twins = conn.execute("""
        SELECT count(*) FILTER (t.processor IS DISTINCT FROM p.processor OR t.amount_minor <> p.amount_minor),
               count(*) FILTER (t.processor = p.processor AND t.amount_minor = p.amount_minor)
        FROM bank_matches m JOIN lines l USING (bank_account, statement_id, line_ref)
        JOIN payouts p ON p.payout_id = m.payout_id LEFT JOIN payouts t ON t.payout_id = l.truth
        WHERE l.truth IS DISTINCT FROM m.payout_id""").fetchone()
    unmatched = conn.execute("SELECT count(*) FROM payouts WHERE NOT lost AND payout_id NOT IN "
                             "(SELECT payout_id FROM bank_matches)").fetchone()[0]
    found = dict(conn.execute("SELECT reason_code, count(*) FROM bank_exceptions GROUP BY 1").fetchall())
    lost, stray = conn.execute("SELECT (SELECT count(*) FROM payouts WHERE lost), "
                               "(SELECT count(*) FROM lines WHERE truth IS NULL)").fetchone()
    lines = conn.execute("SELECT count(*) FROM lines").fetchone()[0]
    print(f"{args.n:,} payouts, {lines:,} bank lines: matched in {matched:.2f} s, with exceptions {total:.2f} s "
          f"({lines / total:,.0f} lines/s); wrong pairs {wrong}, lines given to an equal twin payout {twins}, "
          f"banked payouts left to a twin {unmatched}; "
          f"payout_not_banked {found.get('payout_not_banked', 0)} (lost {lost}), "
          f"unexplained_bank_credit {found.get('unexplained_bank_credit', 0)} (stray {stray})")
    ok = not wrong and found.get("payout_not_banked", 0) == lost \
        and found.get("unexplained_bank_credit", 0) == stray
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

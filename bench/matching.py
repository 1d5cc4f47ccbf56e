"""Benchmark: the matching engine on N settlement lines against N open invoices.

    .venv/bin/python bench/matching.py --n 1000000            # DuckDB engine and the pandas reference
    .venv/bin/python bench/matching.py --n 10000000 --no-pandas
    .venv/bin/python bench/matching.py --smoke                # seconds: proves it still runs (test suite)

Data is generated deterministically inside DuckDB with the product's mix of cases: ~78 % exact
reference, 8 % customer + amount only, 5 % partial payments, 3 % one payment for two invoices,
3 % overpayments, 3 % with no reference at all. Each engine runs in its own process so its peak
memory (max RSS) is its own; generation is not timed. The pandas implementation applies the same
rules 1-3 with merges and group-bys, and the two engines' auto allocations are compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import resource
import sys
import time
from queue import Empty
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from m3_recon.canonical.model import SETTLEMENT_LINE_COLUMNS  # noqa: E402
from m3_recon.reconcile.matching import ALLOCATION_COLUMNS, MatchingRules, match_payments  # noqa: E402
from m3_recon.sql import column_list, nullable  # noqa: E402


def generate(conn: duckdb.DuckDBPyConnection, n: int) -> None:
    customers = max(n // 5, 1)
    conn.execute(f"""
        CREATE MACRO amt(i) AS 1000 + CAST(hash(i * 7 + 1) % 500000 AS BIGINT);
        CREATE MACRO inv_day(i) AS DATE '2026-08-01' + CAST(hash(i * 7 + 2) % 60 AS INTEGER);
        CREATE TABLE invoices AS
            SELECT CAST(30000000 + i AS VARCHAR) AS invoice_number, 2026 AS invoice_year,
                   'C' || (i % {customers}) AS customer, 'USD' AS currency, amt(i) AS outstanding_minor,
                   inv_day(i) AS invoice_date
            FROM range({n}) t(i);
        CREATE TABLE lines AS
        WITH cases AS (SELECT j, CAST(hash(j * 7 + 3) % 100 AS INTEGER) AS c FROM range({n}) t(j))
        SELECT 'stripe' AS processor, 'txn_' || j AS source_id, 'charge' AS line_type,
               CAST(inv_day(j) + CAST(hash(j * 7 + 4) % 30 AS INTEGER) AS TIMESTAMP)
                   + to_seconds(CAST(hash(j * 7 + 5) % 86400 AS BIGINT)) AS occurred_at_utc,
               inv_day(j) + CAST(hash(j * 7 + 4) % 30 AS INTEGER) AS settlement_date,
               NULL::VARCHAR AS payout_id, 'USD' AS currency,
               CASE WHEN c < 86 THEN amt(j)
                    WHEN c < 91 THEN amt(j) * 6 // 10
                    WHEN c < 94 THEN amt(j) + amt(j + {customers})
                    WHEN c < 97 THEN amt(j) + 500
                    ELSE 777 + CAST(hash(j * 7 + 6) % 90000 AS BIGINT) END AS amount_minor,
               0 AS fee_minor, NULL::BIGINT AS net_minor, 'USD' AS presentment_currency,
               NULL::BIGINT AS presentment_amount_minor, NULL::DECIMAL(18, 8) AS fx_rate,
               CASE WHEN c < 97 THEN 'C' || (j % {customers}) END AS customer_ref,
               CASE WHEN c < 78 OR (c >= 86 AND c < 91) OR (c >= 94 AND c < 97) THEN 'INV-' || (30000000 + j) END
                   AS invoice_ref,
               NULL::VARCHAR AS original_source_id, 'visa' AS card_brand, '4242' AS card_last4,
               NULL::VARCHAR AS description
        FROM cases;
        UPDATE lines SET net_minor = amount_minor, presentment_amount_minor = amount_minor;
    """)
    conn.execute(f"CREATE TABLE earlier ({column_list({c: nullable(t) for c, t in ALLOCATION_COLUMNS.items()})})")
    assert [r[0] for r in conn.execute("DESCRIBE lines").fetchall()] == list(SETTLEMENT_LINE_COLUMNS)


def _connect(threads: int | None) -> duckdb.DuckDBPyConnection:
    """An in-memory connection; the progress bar is a session setting (not a global one in DuckDB 1.5)."""
    conn = duckdb.connect(config={"threads": threads} if threads else {})
    conn.execute("SET enable_progress_bar = false")
    return conn


def run_duckdb(n: int, threads: int) -> dict:
    conn = _connect(threads)
    generate(conn, n)
    started = time.perf_counter()
    match_payments(conn, MatchingRules.load(), lines="lines", invoices="invoices", earlier="earlier")
    seconds = time.perf_counter() - started
    summary = conn.execute("SELECT status, count(*), sum(allocated_minor) FROM match_allocations "
                           "GROUP BY ALL ORDER BY ALL").fetchall()
    return {"engine": "duckdb", "seconds": seconds, "summary": [list(map(int, r[1:])) + [r[0]] for r in summary],
            "auto": _auto(conn.execute("SELECT source_id, invoice_number, allocated_minor FROM match_allocations "
                                       "WHERE status = 'auto'").df())}


def _auto(frame: pd.DataFrame) -> list:
    """Row count, total and a digest of the sorted (payment, invoice, amount) triples."""
    rows = sorted(zip(frame["source_id"].astype(str), frame["invoice_number"].astype(str),
                      frame["allocated_minor"].astype("int64").tolist()))
    return [len(rows), int(frame["allocated_minor"].sum()), hashlib.sha256(repr(rows).encode()).hexdigest()[:16]]


def run_pandas(n: int) -> dict:
    conn = _connect(None)
    generate(conn, n)
    lines, invoices = conn.execute("SELECT * FROM lines").df(), conn.execute("SELECT * FROM invoices").df()
    conn.close()
    started = time.perf_counter()
    auto = pandas_matching(lines, invoices, MatchingRules.load())
    seconds = time.perf_counter() - started
    return {"engine": "pandas", "seconds": seconds, "auto": _auto(auto)}


def _norm(series: pd.Series, rules: MatchingRules) -> pd.Series:
    prefixes = "|".join(sorted(rules.strip_prefixes, key=len, reverse=True))
    cleaned = series.str.upper().str.replace(r"[^A-Z0-9]", "", regex=True)
    cleaned = cleaned.str.replace(f"^({prefixes})", "", regex=True).str.lstrip("0")
    return cleaned.replace("", None)


def pandas_matching(lines: pd.DataFrame, invoices: pd.DataFrame, rules: MatchingRules) -> pd.DataFrame:
    """Rules 1-3 as a straightforward pandas implementation (single-currency data): auto allocations."""
    key = ["processor", "source_id"]
    pay = lines[(lines.line_type == "charge") & (lines.amount_minor > 0)].copy()
    pay["ref_norm"] = _norm(pay.invoice_ref, rules)
    inv = invoices.copy()
    inv["ref_norm"] = _norm(inv.invoice_number, rules)
    inv["remaining"] = inv.outstanding_minor
    # Rule 1
    hits = pay.dropna(subset=["ref_norm"]).merge(inv, on="ref_norm", suffixes=("", "_inv"))
    hits["n_hits"] = hits.groupby(key)["invoice_number"].transform("size")
    ok = hits[(hits.n_hits == 1) & (hits.customer_ref.isna() | (hits.customer_ref == hits.customer))].copy()
    ok = ok.sort_values(["invoice_number", "occurred_at_utc", "processor", "source_id"])
    ok["before"] = ok.groupby("invoice_number")["amount_minor"].cumsum() - ok["amount_minor"]
    ok["allocated"] = np.maximum(np.minimum(ok.amount_minor, ok.remaining - ok.before), 0)
    r1 = ok[ok.allocated > 0]
    done = set(zip(hits.processor, hits.source_id))
    used = r1.groupby("invoice_number")["allocated"].sum()
    inv["rem"] = inv.remaining - inv.invoice_number.map(used).fillna(0).astype("int64")
    # Rule 2
    open_pay = pay[pay.customer_ref.notna() & ~pd.Series(list(zip(pay.processor, pay.source_id)), index=pay.index).isin(done)]
    cand = open_pay.merge(inv[inv.rem > 0], left_on=["customer_ref", "amount_minor"], right_on=["customer", "rem"],
                          suffixes=("", "_inv"))
    days = (cand.settlement_date - cand.invoice_date).dt.days if hasattr(cand.settlement_date, "dt") else \
        (pd.to_datetime(cand.settlement_date) - pd.to_datetime(cand.invoice_date)).dt.days
    cand = cand[(days <= rules.days_before_payment) & (days >= -rules.days_after_payment)].copy()
    cand["n_cand"] = cand.groupby(key)["invoice_number"].transform("size")
    single = cand[cand.n_cand == 1].sort_values(["invoice_number", "occurred_at_utc", "processor", "source_id"])
    r2 = single[single.groupby("invoice_number").cumcount() == 0].assign(allocated=lambda f: f.amount_minor)
    done |= set(zip(cand.processor, cand.source_id))
    used2 = r2.groupby("invoice_number")["allocated"].sum()
    inv["rem"] = inv.rem - inv.invoice_number.map(used2).fillna(0).astype("int64")
    # Rule 3
    open_pay = pay[pay.customer_ref.notna() & ~pd.Series(list(zip(pay.processor, pay.source_id)), index=pay.index).isin(done)]
    cand = open_pay.merge(inv[inv.rem > 0], left_on="customer_ref", right_on="customer", suffixes=("", "_inv"))
    days = (pd.to_datetime(cand.settlement_date) - pd.to_datetime(cand.invoice_date)).dt.days
    cand = cand[(days <= rules.days_before_payment) & (days >= -rules.days_after_payment) & (cand.amount_minor > cand.rem)]
    cand = cand.sort_values(key + ["invoice_date", "invoice_number"])
    cand["rk"] = cand.groupby(key).cumcount() + 1
    cand = cand[cand.rk <= rules.max_candidates][key + ["invoice_number", "rem", "rk", "amount_minor"]]
    groups = []
    pairs = cand.merge(cand, on=key + ["amount_minor"], suffixes=("_a", "_b"))
    pairs = pairs[pairs.rk_a < pairs.rk_b]
    groups.append(pairs[pairs.rem_a + pairs.rem_b == pairs.amount_minor].assign(
        members=lambda f: list(zip(f.invoice_number_a, f.invoice_number_b)))[key + ["members"]])
    if rules.max_invoices >= 3:
        partial = pairs[pairs.rem_a + pairs.rem_b < pairs.amount_minor]
        triples = partial.merge(cand.rename(columns={"invoice_number": "invoice_number_c", "rem": "rem_c", "rk": "rk_c"}),
                                on=key + ["amount_minor"])
        triples = triples[(triples.rk_b < triples.rk_c) & (triples.rem_a + triples.rem_b + triples.rem_c == triples.amount_minor)]
        groups.append(triples.assign(members=lambda f: list(zip(f.invoice_number_a, f.invoice_number_b, f.invoice_number_c)))
                      [key + ["members"]])
    found = pd.concat(groups, ignore_index=True)
    found["n_groups"] = found.groupby(key)["members"].transform("size")
    unique = found[found.n_groups == 1].explode("members").rename(columns={"members": "invoice_number"})
    unique = unique.merge(inv[["invoice_number", "rem"]], on="invoice_number")
    shared = unique.groupby("invoice_number")["source_id"].transform("nunique") > 1
    losers = set(zip(unique[shared].processor, unique[shared].source_id))
    unique = unique[~pd.Series(list(zip(unique.processor, unique.source_id)), index=unique.index).isin(losers)]
    r3 = unique.assign(allocated=unique.rem)
    out = pd.concat([r1[key + ["invoice_number", "allocated"]], r2[key + ["invoice_number", "allocated"]],
                     r3[key + ["invoice_number", "allocated"]]], ignore_index=True)
    return out.rename(columns={"allocated": "allocated_minor"})[["source_id", "invoice_number", "allocated_minor"]]


def _child(engine: str, n: int, threads: int, queue) -> None:
    result = run_duckdb(n, threads) if engine == "duckdb" else run_pandas(n)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def measure(engine: str, n: int, threads: int) -> dict:
    """Runs one engine in a fresh process; fails (never waits forever) when that process dies."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(engine, n, threads, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=0.5)
            break
        except Empty:
            if not process.is_alive() and queue.empty():
                raise SystemExit(f"FAILED: the {engine} process exited with code {process.exitcode} "
                                 "before reporting a result (its traceback is above)") from None
    process.join()
    return result


GOAL_SECONDS = {1_000_000: 3.0, 10_000_000: 30.0}  # issue 14: N = 1 M in <= 3 s, N = 10 M in <= 30 s
GOAL_PEAK_MIB = 2048  # at N = 1 M
GOAL_SPEEDUP = 10.0   # against pandas, same rules, same run
SMOKE_N = 2_000


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-pandas", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=f"N = {SMOKE_N:,}: proves the benchmark runs, in seconds")
    args = parser.parse_args()
    n = SMOKE_N if args.smoke else args.n
    duck = measure("duckdb", n, args.threads)
    print(f"duckdb  N={n:>11,}  {duck['seconds']:7.2f} s  {n / duck['seconds']:>12,.0f} lines/s  "
          f"peak {duck['peak_rss_mib']:,.0f} MiB")
    for count, total, status in duck["summary"]:
        print(f"        {status:<10} {count:>10,} allocation rows  {total:>16,} minor units")
    goal = GOAL_SECONDS.get(n)
    if goal:
        print(f"goal    N={n:,} in <= {goal:.0f} s: {duck['seconds']:.2f} s {_verdict(duck['seconds'] <= goal)}")
    if n == 1_000_000:
        print(f"goal    peak <= {GOAL_PEAK_MIB:,} MiB: {duck['peak_rss_mib']:,.0f} MiB "
              f"{_verdict(duck['peak_rss_mib'] <= GOAL_PEAK_MIB)}")
    if not args.no_pandas:
        panda = measure("pandas", n, args.threads)
        print(f"pandas  N={n:>11,}  {panda['seconds']:7.2f} s  {n / panda['seconds']:>12,.0f} lines/s  "
              f"peak {panda['peak_rss_mib']:,.0f} MiB")
        same = panda["auto"] == duck["auto"]
        ratio = panda["seconds"] / duck["seconds"]
        print(f"ratio   pandas / duckdb = {ratio:.1f}x (goal >= {GOAL_SPEEDUP:.0f}x at N >= 1,000,000: "
              f"{_verdict(ratio >= GOAL_SPEEDUP) if n >= 1_000_000 else 'not applicable'}); "
              f"auto allocations identical: {same} ({duck['auto'][0]:,} rows, {duck['auto'][1]:,} minor units)")
        if not same:
            print(json.dumps({"duckdb": duck["auto"], "pandas": panda["auto"]}))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

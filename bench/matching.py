"""Benchmark: the matching engine on N settlement lines against N open invoices.

    .venv/bin/python bench/matching.py --n 1000000            # DuckDB engine and the pandas reference
    .venv/bin/python bench/matching.py --n 10000000 --no-pandas
    .venv/bin/python bench/matching.py --smoke                # seconds: proves it still runs (test suite)

Data is generated deterministically inside DuckDB with the product's mix of cases: ~78 % exact
reference, 8 % customer + amount only, 5 % partial payments, 3 % one payment for two invoices,
3 % overpayments, 3 % with no reference at all. Each engine runs in its own process so its peak
memory (max RSS) is its own; generation is not timed. The pandas reference applies rules 1-3 and
produces every exception they leave, with merges and group-bys, as the engine does (rules 1b, 4 and 5
do not arise in this data: no reference lists, one currency, no refunds). The run fails unless both
produce the same auto allocations and the same exceptions (payment, reason, unapplied amount). A third
process then times the floor (``floor_statements``): what any engine that keeps the allocation table pays
at the least, and so how much of the 10x budget is left for deciding anything. Wall time is the figure;
CPU seconds and the load average are printed beside it because the machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
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
from m3_recon.reconcile.matching import _normalised_number, _normalised_reference, _short_reference  # noqa: E402
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


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_duckdb(n: int, threads: int) -> dict:
    conn = _connect(threads)
    generate(conn, n)
    started, cpu = time.perf_counter(), _cpu_seconds()
    match_payments(conn, MatchingRules.load(), lines="lines", invoices="invoices", earlier="earlier")
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    summary = conn.execute("SELECT status, count(*), sum(allocated_minor) FROM match_allocations "
                           "GROUP BY ALL ORDER BY ALL").fetchall()
    return {"engine": "duckdb", "seconds": seconds, "cpu_seconds": cpu,
            "summary": [list(map(int, r[1:])) + [r[0]] for r in summary],
            "auto": _digest(conn.execute("SELECT source_id, invoice_number, allocated_minor FROM match_allocations "
                                         "WHERE status = 'auto'").df(), "allocated_minor"),
            "exceptions": _digest(conn.execute("SELECT source_id, reason_code, unapplied_minor "
                                               "FROM match_exceptions").df(), "unapplied_minor")}


def floor_statements(rules: MatchingRules) -> tuple[str, str]:
    """What any engine that stores the allocation table does at the least, timed apart from the engine: rule 1
    alone and undecided — both sides' references normalised by the engine's own SQL, one join, every payment
    written as an 18-column allocation row (no ties, instalments or problems decided, no other rule, no
    exceptions) — and the same rows written again from that table (the write alone)."""
    reference = _normalised_reference("invoice_ref", "short_ref", rules)
    columns = {
        "processor": "p.processor", "source_id": "p.source_id", "line_type": "'charge'",
        "settlement_date": "p.settlement_date", "customer": "coalesce(i.customer, p.customer_ref)",
        "invoice_number": "i.invoice_number", "invoice_year": "CAST(i.invoice_year AS INTEGER)",
        "invoice_currency": "i.currency", "payment_currency": "p.currency", "payment_amount_minor": "p.amount_minor",
        "payment_invoice_amount_minor": "p.amount_minor",
        "allocated_minor": "coalesce(least(p.amount_minor, i.outstanding_minor), 0)",
        "allocated_settlement_minor": "coalesce(least(p.amount_minor, i.outstanding_minor), 0)",
        "rule": "'exact_reference'", "confidence": "CAST(1 AS DECIMAL(4, 3))",
        "status": "CASE WHEN i.invoice_number IS NULL THEN 'unmatched' ELSE 'auto' END",
        "linked_source_id": "CAST(NULL AS VARCHAR)", "allocated_local_minor": "CAST(NULL AS BIGINT)",
    }
    assert list(columns) == list(ALLOCATION_COLUMNS)
    projection = ", ".join(f"{expression} AS {column}" for column, expression in columns.items())
    return (f"""CREATE TEMP TABLE floor_allocations AS
                SELECT {projection}
                FROM (SELECT *, {reference} AS ref_norm FROM (
                          SELECT *, {_short_reference('invoice_ref', rules)} AS short_ref FROM lines
                          WHERE line_type = 'charge' AND amount_minor > 0)) p
                LEFT JOIN (SELECT *, {_normalised_number('invoice_number', rules)} AS ref_norm FROM invoices) i
                       USING (ref_norm)""",
            "CREATE TEMP TABLE floor_written AS SELECT * FROM floor_allocations")


def run_floor(n: int, threads: int) -> dict:
    conn = _connect(threads)
    generate(conn, n)
    seconds = []
    for statement in floor_statements(MatchingRules.load()):
        started = time.perf_counter()
        conn.execute(statement)
        seconds.append(time.perf_counter() - started)
    return {"engine": "floor", "seconds": seconds[0], "write_seconds": seconds[1]}


def _digest(frame: pd.DataFrame, amount: str) -> list:
    """Row count, total and a digest of the sorted (payment, invoice or reason, amount) triples."""
    first, second = frame.columns[0], frame.columns[1]
    rows = sorted(zip(frame[first].astype(str), frame[second].astype(str), frame[amount].astype("int64").tolist()))
    return [len(rows), int(frame[amount].sum()), hashlib.sha256(repr(rows).encode()).hexdigest()[:16]]


def run_pandas(n: int) -> dict:
    conn = _connect(None)
    generate(conn, n)
    lines, invoices = conn.execute("SELECT * FROM lines").df(), conn.execute("SELECT * FROM invoices").df()
    conn.close()
    started, cpu = time.perf_counter(), _cpu_seconds()
    auto, exceptions = pandas_matching(lines, invoices, MatchingRules.load())
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return {"engine": "pandas", "seconds": seconds, "cpu_seconds": cpu,
            "auto": _digest(auto[["source_id", "invoice_number", "allocated_minor"]], "allocated_minor"),
            "exceptions": _digest(exceptions, "unapplied_minor")}


def _norm(series: pd.Series, rules: MatchingRules) -> pd.Series:
    prefixes = "|".join(sorted(rules.strip_prefixes, key=len, reverse=True))
    cleaned = series.str.upper().str.replace(r"[^A-Z0-9]", "", regex=True)
    cleaned = cleaned.str.replace(f"^({prefixes})", "", regex=True).str.lstrip("0")
    return cleaned.replace("", None)


def _exceptions(frame: pd.DataFrame, reason, unapplied) -> pd.DataFrame:
    return pd.DataFrame({"source_id": frame.source_id, "reason_code": reason, "unapplied_minor": unapplied})


def pandas_matching(lines: pd.DataFrame, invoices: pd.DataFrame,
                    rules: MatchingRules) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rules 1-3 and every exception they leave, as a straightforward pandas implementation: the auto
    allocations and the exceptions (reason, unapplied amount). Amounts are compared in the settlement currency
    (the data are single-currency: rule 4 does not arise) and the data hold no reference lists (rule 1b)
    and no refunds (rule 5), so those are left out here; the engine runs them all."""
    order = ["occurred_at_utc", "processor", "source_id"]
    pay = lines[(lines.line_type == "charge") & (lines.amount_minor > 0)].reset_index(drop=True)
    pay["pid"] = pay.index
    pay["ref_norm"] = _norm(pay.invoice_ref, rules)
    inv = invoices.reset_index(drop=True)
    inv["iid"] = inv.index
    inv["ref_norm"] = _norm(inv.invoice_number, rules)
    inv["rem"] = inv.outstanding_minor
    exceptions = []
    # Rule 1: exact reference; a number of several invoices is decided by the named customer, else the open one
    hits = pay.dropna(subset=["ref_norm"]).merge(inv, on="ref_norm", suffixes=("", "_inv"))
    reused = hits.pid.duplicated(keep=False)
    if reused.any():
        tied = hits[reused].assign(own=lambda f: f.customer == f.customer_ref, open=lambda f: f.rem > 0)
        tied = tied[tied.own == tied.groupby("pid").own.transform("max")]
        tied = tied[tied.open == tied.groupby("pid").open.transform("max")]
        hits = pd.concat([hits[~reused], tied.drop(columns=["own", "open"])], ignore_index=True)
    hits["n_left"] = hits.groupby("pid").iid.transform("size")
    hits["problem"] = np.select(
        [hits.n_left > 1, hits.currency_inv != hits.currency,
         hits.customer_ref.notna() & (hits.customer_ref != hits.customer)],
        ["ambiguous_reference", "currency_mismatch", "customer_mismatch"], "")
    bad = hits[hits.problem != ""].drop_duplicates(["pid", "problem"])
    exceptions.append(_exceptions(bad, bad.problem, 0))
    ok = hits[hits.problem == ""].sort_values(["iid"] + order)
    ok["before"] = ok.groupby("iid").amount_minor.cumsum() - ok.amount_minor
    ok["allocated"] = np.maximum(np.minimum(ok.amount_minor, ok.rem - ok.before), 0)
    paid = ok[ok.allocated == 0]
    over = ok[(ok.allocated > 0) & (ok.allocated < ok.amount_minor)]
    exceptions += [_exceptions(paid, "invoice_already_paid", paid.amount_minor),
                   _exceptions(over, "overpayment", over.amount_minor - over.allocated)]
    r1 = ok[ok.allocated > 0]
    inv["rem"] -= inv.iid.map(ok.groupby("iid").allocated.sum()).fillna(0).astype("int64")
    decided = pay.pid.isin(hits.pid)
    # Rule 2: customer + exactly what is left of one invoice, dated within the window
    cand = pay[pay.customer_ref.notna() & ~decided].merge(
        inv[inv.rem > 0], left_on=["customer_ref", "amount_minor"], right_on=["customer", "rem"], suffixes=("", "_inv"))
    days = (pd.to_datetime(cand.settlement_date) - pd.to_datetime(cand.invoice_date)).dt.days
    cand = cand[(days <= rules.days_before_payment) & (days >= -rules.days_after_payment)].copy()
    cand["n_cand"] = cand.groupby("pid").iid.transform("size")
    ambiguous = cand[cand.n_cand > 1].drop_duplicates("pid")
    single = cand[cand.n_cand == 1].sort_values(["iid"] + order)
    first = single.groupby("iid").cumcount() == 0
    claimed = single[~first]
    exceptions += [_exceptions(ambiguous, "ambiguous_amount", 0), _exceptions(claimed, "invoice_claimed", 0)]
    r2 = single[first].assign(allocated=lambda f: f.amount_minor)
    inv["rem"] -= inv.iid.map(r2.groupby("iid").allocated.sum()).fillna(0).astype("int64")
    decided |= pay.pid.isin(cand.pid)
    # Rule 3: one payment, a unique group of 2..3 of the customer's oldest open invoices summing to it
    cand = pay[pay.customer_ref.notna() & ~decided].merge(inv[inv.rem > 0], left_on="customer_ref",
                                                          right_on="customer", suffixes=("", "_inv"))
    days = (pd.to_datetime(cand.settlement_date) - pd.to_datetime(cand.invoice_date)).dt.days
    cand = cand[(days <= rules.days_before_payment) & (days >= -rules.days_after_payment) & (cand.amount_minor > cand.rem)]
    cand = cand.sort_values(["pid", "invoice_date", "iid"])
    cand["rk"] = cand.groupby("pid").cumcount() + 1
    cand = cand[cand.rk <= rules.max_candidates][["pid", "iid", "rem", "rk", "amount_minor"]]
    pairs = cand.merge(cand, on=["pid", "amount_minor"], suffixes=("_a", "_b"))
    pairs = pairs[pairs.rk_a < pairs.rk_b]
    groups = [pairs[pairs.rem_a + pairs.rem_b == pairs.amount_minor].assign(
        members=lambda f: list(zip(f.iid_a, f.iid_b)))[["pid", "members"]]]
    if rules.max_invoices >= 3:
        partial = pairs[pairs.rem_a + pairs.rem_b < pairs.amount_minor]
        triples = partial.merge(cand.rename(columns={"iid": "iid_c", "rem": "rem_c", "rk": "rk_c"}),
                                on=["pid", "amount_minor"])
        triples = triples[(triples.rk_b < triples.rk_c)
                          & (triples.rem_a + triples.rem_b + triples.rem_c == triples.amount_minor)]
        groups.append(triples.assign(members=lambda f: list(zip(f.iid_a, f.iid_b, f.iid_c)))[["pid", "members"]])
    found = pd.concat(groups, ignore_index=True).merge(pay[["pid", "source_id"]], on="pid")
    found["n_groups"] = found.groupby("pid").members.transform("size")
    several = found[found.n_groups > 1].drop_duplicates("pid")
    unique = found[found.n_groups == 1].explode("members").rename(columns={"members": "iid"})
    competing = unique.pid.isin(unique[unique.groupby("iid").pid.transform("nunique") > 1].pid)
    exceptions += [_exceptions(several, "ambiguous_invoice_group", 0),
                   _exceptions(unique[competing].drop_duplicates("pid"), "competing_payments", 0)]
    r3 = unique[~competing].merge(inv[["iid", "rem"]], on="iid").rename(columns={"rem": "allocated"})
    decided |= pay.pid.isin(found.pid)
    # Payments no rule found anything for
    rest = pay[~decided]
    exceptions.append(_exceptions(rest, np.where(rest.ref_norm.notna(), "invoice_not_found", np.where(
        rest.customer_ref.isna(), "no_reference", "no_matching_invoice")), rest.amount_minor))
    auto = pd.concat([r[["pid", "iid", "allocated"]] for r in (r1, r2, r3)], ignore_index=True)
    auto = auto.merge(pay[["pid", "source_id"]], on="pid").merge(inv[["iid", "invoice_number"]], on="iid")
    return auto.rename(columns={"allocated": "allocated_minor"}), pd.concat(exceptions, ignore_index=True)


def _child(engine: str, n: int, threads: int, queue) -> None:
    result = {"duckdb": lambda: run_duckdb(n, threads), "floor": lambda: run_floor(n, threads),
              "pandas": lambda: run_pandas(n)}[engine]()
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
          f"peak {duck['peak_rss_mib']:,.0f} MiB  (cpu {duck['cpu_seconds']:.2f} s, {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.1f})")
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
              f"peak {panda['peak_rss_mib']:,.0f} MiB  (cpu {panda['cpu_seconds']:.2f} s; "
              f"load average {os.getloadavg()[0]:.1f})")
        same = panda["auto"] == duck["auto"] and panda["exceptions"] == duck["exceptions"]
        ratio = panda["seconds"] / duck["seconds"]
        print(f"ratio   pandas / duckdb = {ratio:.1f}x (goal >= {GOAL_SPEEDUP:.0f}x at N >= 1,000,000: "
              f"{_verdict(ratio >= GOAL_SPEEDUP) if n >= 1_000_000 else 'not applicable'}; CPU seconds "
              f"{panda['cpu_seconds'] / duck['cpu_seconds']:.1f}x); "
              f"auto allocations and exceptions identical: {same} ({duck['auto'][0]:,} allocations, "
              f"{duck['auto'][1]:,} minor units; {duck['exceptions'][0]:,} exceptions, "
              f"{duck['exceptions'][1]:,} minor units unapplied)")
        if not same:
            print(json.dumps({engine["engine"]: [engine["auto"], engine["exceptions"]] for engine in (duck, panda)}))
            return 1
        floor = measure("floor", n, args.threads)
        budget = panda["seconds"] / GOAL_SPEEDUP - floor["seconds"]
        print(f"floor   N={n:>11,}  {floor['seconds']:7.2f} s  rule 1 alone and undecided: references normalised, one "
              f"join, the allocation table written (writing alone {floor['write_seconds']:.2f} s); "
              f"pandas / floor = {panda['seconds'] / floor['seconds']:.1f}x")
        print(f"        the engine's other work (rule 1's decisions, rules 1b-5, exceptions) took "
              f"{duck['seconds'] - floor['seconds']:.2f} s; {GOAL_SPEEDUP:.0f}x would leave it {budget:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

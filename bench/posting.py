"""Benchmark: GL journal lines posted to the M3 sandbox through GLS840MI bulk calls, with network latency.

    .venv/bin/python bench/posting.py            # 10,000 lines, 100 ms per call, defaults, then the sequential reference
    .venv/bin/python bench/posting.py --lines 10000 --latency-ms 100 --bulk-size 500 --concurrency 4
    .venv/bin/python bench/posting.py --smoke    # seconds: proves it still runs (test suite)

The sandbox's M3 serves on 127.0.0.1 with a fixed injected latency on every call (token, bulk posts
and reads alike). ``core_gl_journal_lines`` is generated in an in-memory DuckDB: balanced vouchers
of ``--lines-per-voucher`` lines (clearing, fees, bank; one in ten in EUR) spread over the period.
Each run gets a fresh M3. The timed part is one ``post_pending`` call — enqueue, GLS840MI batches in bulk, GLS200MI
read-back and outbox writes — and the run fails unless every voucher ends ``verified`` and M3
holds exactly the generated lines. A second ``post_pending`` must post nothing. The same lines are then posted
the way the poster used to (bulk 150, strictly sequential) as the reference, and the ratio printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402

from m3_recon.clients.m3 import DEFAULT_BULK_SIZE, M3Client  # noqa: E402
from m3_recon.posting.config import DEFAULT_CONCURRENCY, posting_config_from_env  # noqa: E402
from m3_recon.posting.contract import GL_JOURNAL_LINE_COLUMNS  # noqa: E402
from m3_recon.posting.poster import post_pending  # noqa: E402
from m3_recon.sandbox.m3_api import (SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_PASSWORD,  # noqa: E402
                                     SANDBOX_M3_TENANT, SANDBOX_M3_USERNAME, M3App, write_ionapi_file)
from m3_recon.sandbox.m3_ledger import CONO, DIVI, M3Ledger  # noqa: E402
from m3_recon.sandbox.server import SandboxClock, VendorServer  # noqa: E402
from m3_recon.sandbox.world import Period, build_world  # noqa: E402
from m3_recon.sql import create_table  # noqa: E402

PERIOD = Period(date(2026, 10, 1), 31)


def generate(conn: duckdb.DuckDBPyConnection, lines: int, per_voucher: int) -> int:
    """Balanced vouchers totalling ``lines`` lines; returns the number of vouchers."""
    conn.execute(create_table("core_gl_journal_lines", GL_JOURNAL_LINE_COLUMNS))
    rows, voucher = [], 0
    while len(rows) < lines:
        size = min(per_voucher, lines - len(rows))
        if size < 2:  # a voucher needs two sides: grow the previous one instead
            break
        voucher += 1
        day = PERIOD.start + timedelta(days=voucher % PERIOD.days)
        currency = "EUR" if voucher % 10 == 0 else "USD"
        amounts = [1_000 + (voucher * 37 + i * 11) % 90_000 for i in range(size - 1)]
        for number, amount in enumerate(amounts + [-sum(amounts)], start=1):
            account = "1580" if number < size else "1930"
            rows.append((f"BJ{voucher:08d}", number, day, account, "STRIPE", currency, amount,
                         f"Payout po_{voucher:08d} line {number}", "stripe", f"po_{voucher:08d}", "payment", "gl"))
    conn.executemany("INSERT INTO core_gl_journal_lines (voucher_key, line_number, accounting_date, ait1, ait2, "
                     "currency, amount_minor, voucher_text, processor, payout_id, entry, route) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return voucher


GOAL_LINES_PER_SECOND = 1_000  # issue 14, at 100 ms per M3 call
REFERENCE_BULK_SIZE = 150  # the sequential reference: the poster as it was (bulk 150, send, read back, next)


def post_once(args, bulk_size: int, concurrency: int) -> dict:
    """A fresh M3 sandbox and journal; one timed ``post_pending``, checked to be exactly once."""
    world = build_world(7, PERIOD)
    clock = SandboxClock(PERIOD.end_epoch + 86_400)
    ledger = M3Ledger(world)
    app = M3App(ledger, clock, SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_USERNAME,
                SANDBOX_M3_PASSWORD, SANDBOX_M3_TENANT,
                quirks=frozenset({"m3_no_search_gen_ledger"} if args.no_search else ()))
    server = VendorServer(app, clock).start()
    server.faults.configure(latency_ms=args.latency_ms)
    conn = duckdb.connect()
    vouchers = generate(conn, args.lines, args.lines_per_voucher)
    try:
        with tempfile.TemporaryDirectory() as folder:
            ionapi = write_ionapi_file(Path(folder) / "sandbox.ionapi", server.url)
            client = M3Client.from_ionapi(ionapi, CONO, DIVI, bulk_size=bulk_size, requests_per_second=1_000,
                                          timeout_seconds=30)
            config = replace(posting_config_from_env({}), concurrency=concurrency)
            calls_before = server.faults.served
            started = time.perf_counter()
            summary = post_pending(conn, client, config)
            seconds = time.perf_counter() - started
            calls = server.faults.served - calls_before
            again = post_pending(conn, client, config)
    finally:
        server.stop()
    in_m3 = len(ledger.gl_lines(clock.now()))
    counts = summary.counts()
    label = f"bulk {bulk_size}, {concurrency} in flight" if concurrency > 1 else f"bulk {bulk_size}, sequential"
    print(f"{label:<24} {seconds:7.2f} s  {calls:>5} HTTP calls  {args.lines / seconds:>8,.0f} lines/s")
    print(f"{'':<24} outcomes {counts}; M3 holds {in_m3:,} GL lines; second run posted {again.posted}, "
          f"verified {again.verified}")
    if counts["verified"] != vouchers or counts["failed"] or in_m3 != args.lines or again.posted or again.verified:
        raise SystemExit("FAILED: not every voucher was posted exactly once and verified")
    return {"seconds": seconds, "rate": args.lines / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--bulk-size", type=int, default=DEFAULT_BULK_SIZE, help="transactions per bulk call (M3_BULK_SIZE)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="M3 exchanges in flight at once (M3_POSTING_CONCURRENCY)")
    parser.add_argument("--lines-per-voucher", type=int, default=8)
    parser.add_argument("--no-search", action="store_true",
                        help="M3 without GLS200MI/SearchGenLedger: verify by date and lines (quirk m3_no_search_gen_ledger)")
    parser.add_argument("--no-reference", action="store_true", help="skip the sequential reference run")
    parser.add_argument("--smoke", action="store_true", help="200 lines at 5 ms: proves the benchmark runs, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.lines, args.latency_ms = 200, 5
    print(f"{args.lines:,} GL lines, {args.lines_per_voucher} per voucher | latency {args.latency_ms} ms per M3 call"
          + (" | no SearchGenLedger" if args.no_search else ""))
    result = post_once(args, args.bulk_size, args.concurrency)
    verdict = "met" if result["rate"] >= GOAL_LINES_PER_SECOND else "NOT met"
    print(f"goal    >= {GOAL_LINES_PER_SECOND:,} lines/s at 100 ms per call: {result['rate']:,.0f} lines/s "
          + (verdict if args.latency_ms == 100 else f"(not applicable at {args.latency_ms} ms)"))
    if not args.no_reference:
        reference = post_once(args, REFERENCE_BULK_SIZE, 1)
        print(f"ratio   {result['rate'] / reference['rate']:.1f}x the sequential reference "
              f"(bulk {REFERENCE_BULK_SIZE}, send / read back / next, same run)")


if __name__ == "__main__":
    main()

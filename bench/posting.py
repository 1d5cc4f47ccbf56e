"""Benchmark: GL journal lines posted to the M3 sandbox through GLS840MI bulk calls, with network latency.

    .venv/bin/python bench/posting.py                          # 10,000 lines, 100 ms per call, M3_BULK_SIZE 150
    .venv/bin/python bench/posting.py --lines 10000 --latency-ms 100 --bulk-size 500 --lines-per-voucher 8

The sandbox's M3 serves on 127.0.0.1 with a fixed injected latency on every call (token, bulk posts
and reads alike). ``core_gl_journal_lines`` is generated in an in-memory DuckDB: balanced vouchers
of ``--lines-per-voucher`` lines (clearing, fees, bank; one in ten in EUR) spread over the period.
The timed part is one ``post_pending`` call — enqueue, GLS840MI batches in bulk, GLS200MI
read-back and outbox writes — and the run fails unless every voucher ends ``verified`` and M3
holds exactly the generated lines. A second ``post_pending`` must post nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402

from m3_recon.defs.m3.client import M3Client  # noqa: E402
from m3_recon.posting.config import posting_config_from_env  # noqa: E402
from m3_recon.posting.contract import GL_JOURNAL_LINE_COLUMNS  # noqa: E402
from m3_recon.posting.poster import post_pending  # noqa: E402
from m3_recon.sandbox.m3_api import (SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_PASSWORD,  # noqa: E402
                                     SANDBOX_M3_TENANT, SANDBOX_M3_USERNAME, M3App, write_ionapi_file)
from m3_recon.sandbox.m3_ledger import CONO, DIVI, M3Ledger  # noqa: E402
from m3_recon.sandbox.server import SandboxClock, VendorServer  # noqa: E402
from m3_recon.sandbox.world import Period, build_world  # noqa: E402

PERIOD = Period(date(2026, 10, 1), 31)


def generate(conn: duckdb.DuckDBPyConnection, lines: int, per_voucher: int) -> int:
    """Balanced vouchers totalling ``lines`` lines; returns the number of vouchers."""
    conn.execute(f"CREATE TABLE core_gl_journal_lines "
                 f"({', '.join(f'{c} {t}' for c, t in GL_JOURNAL_LINE_COLUMNS.items())})")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--bulk-size", type=int, default=150, help="transactions per bulk call (M3_BULK_SIZE)")
    parser.add_argument("--lines-per-voucher", type=int, default=8)
    parser.add_argument("--no-search", action="store_true",
                        help="M3 without GLS200MI/SearchGenLedger: verify by date and lines (quirk m3_no_search_gen_ledger)")
    args = parser.parse_args()

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
    with tempfile.TemporaryDirectory() as folder:
        ionapi = write_ionapi_file(Path(folder) / "sandbox.ionapi", server.url)
        client = M3Client.from_ionapi(ionapi, CONO, DIVI, bulk_size=args.bulk_size, requests_per_second=1_000,
                                      timeout_seconds=30)
        config = posting_config_from_env({})
        calls_before = server.faults.served
        started = time.perf_counter()
        summary = post_pending(conn, client, config)
        seconds = time.perf_counter() - started
        calls = server.faults.served - calls_before
        again = post_pending(conn, client, config)
    server.stop()

    in_m3 = len(ledger.gl_lines(clock.now()))
    counts = summary.counts()
    print(f"lines {args.lines:,} in {vouchers:,} vouchers | latency {args.latency_ms} ms/call | "
          f"bulk size {args.bulk_size}" + (" | no SearchGenLedger" if args.no_search else ""))
    print(f"posted and verified in {seconds:.2f} s with {calls} HTTP calls: {args.lines / seconds:,.0f} lines/s")
    print(f"outcomes {counts}; M3 holds {in_m3:,} GL lines; second run {again.counts()}")
    if counts["verified"] != vouchers or counts["failed"] or in_m3 != args.lines or again.posted or again.verified:
        raise SystemExit("FAILED: not every voucher was posted exactly once and verified")


if __name__ == "__main__":
    main()

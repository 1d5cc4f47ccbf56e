"""Benchmark: Stripe ingestion through the official SDK against the sandbox, with network latency and budget.

    .venv/bin/python bench/ingest.py                      # 20,000 charges in one UTC day, 50 ms, 25 requests/s
    .venv/bin/python bench/ingest.py --charges 50000 --latency-ms 50 --budget 25 --no-reference
    .venv/bin/python bench/ingest.py --smoke              # seconds: proves it still runs (test suite)

Then the PayTrace, GP API and M3 readers read the sandbox's 31-day period at the same latency and
their default budgets (5, 10 and 10 requests/s); each prints the requests/s it achieved as a share of
its budget (goal >= 80 %).

The Stripe sandbox runs in its own process (so its CPU is not the client's) with ``--charges``
charges in one UTC day (plus the refunds, disputes and payouts that follow them) and a fixed latency
on every request. The timed part is ``StripeClient.balance_transactions`` for that day, exactly as
the ``raw_stripe_balance_transactions`` asset calls it (source expanded, 100 per page, the request
budget of ``--budget`` requests/s): raw pages through the SDK's ``raw_request``, the day cut into
time slices paged concurrently. The run fails unless every balance transaction of the day arrives
exactly once. The reference, in the same run, is the SDK's object path the connector used before:
one cursor chain of ``client.v1.balance_transactions.list`` pages, every row a ``StripeObject``.
Physical limit: budget x 100 objects per page (2,500 objects/s at 25 requests/s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from m3_recon.clients.stripe import StripeClient  # noqa: E402
from m3_recon.sandbox import SANDBOX_STRIPE_KEY  # noqa: E402
from m3_recon.sandbox.server import SandboxClock, VendorServer  # noqa: E402
from m3_recon.sandbox.stripe_api import StripeApp  # noqa: E402
from m3_recon.sandbox.stripe_ledger import build_stripe_ledger  # noqa: E402
from m3_recon.sandbox.world import Period, build_world  # noqa: E402

DAY = Period(date(2026, 10, 5), 1)
GOAL_OBJECTS_PER_SECOND = 2_000  # issue 14, at 50 ms latency and 25 requests/s
SMOKE_CHARGES = 400


def serve(charges: int, latency_ms: int, pipe) -> None:
    """Child process: one day of Stripe activity behind a sandbox server until the parent says stop."""
    world = build_world(7, DAY)
    ledger = build_stripe_ledger(world, charges_per_day=charges)
    day_ids = sorted(t.id for t in ledger.balance_transactions.values()
                     if DAY.start_epoch <= t.created < DAY.end_epoch)
    server = VendorServer(StripeApp(ledger, SandboxClock(DAY.end_epoch + 3 * 86_400), SANDBOX_STRIPE_KEY),
                          SandboxClock(DAY.end_epoch + 3 * 86_400)).start()
    server.faults.configure(latency_ms=latency_ms)
    pipe.send((server.url, day_ids))
    pipe.recv()  # stop
    pipe.send(server.faults.served)
    server.stop()


def sdk_object_path(stripe: StripeClient) -> list[dict]:
    """The reference: one cursor chain through the SDK's list method, each page turned into StripeObjects."""
    service = stripe.sdk.v1.balance_transactions
    params = {"created": {"gte": DAY.start_epoch, "lt": DAY.end_epoch}, "expand": ["data.source"], "limit": 100}
    rows = []
    while True:
        page = service.list(params)
        data = page.last_response.data
        rows.extend(data["data"])
        if not data["has_more"] or not data["data"]:
            return rows
        params = {**params, "starting_after": data["data"][-1]["id"]}


def measure(label: str, read, expected: list[str]) -> float:
    started = time.perf_counter()
    rows = read()
    seconds = time.perf_counter() - started
    ids = [row["id"] for row in rows]
    if len(ids) != len(set(ids)) or sorted(ids) != expected:
        raise SystemExit(f"FAILED ({label}): {len(ids):,} rows, {len(set(ids)):,} distinct; expected exactly the "
                         f"{len(expected):,} balance transactions of the day")
    rate = len(ids) / seconds
    print(f"{label:<34} {len(ids):>8,} objects {seconds:7.2f} s {rate:>9,.0f} objects/s")
    return rate


READER_SHARE_GOAL = 0.80  # PayTrace, GP API and M3 readers: at least 80 % of their request budgets


def readers(latency_ms: int, days: int, m3_bulk_size: int) -> None:
    """PayTrace, GP API and M3 readers against the sandbox at their default budgets: requests/s achieved
    (every request the server saw, token calls included; (n - 1) / elapsed) against the budget. Small pages / bulks so each
    reader makes enough requests to show a rate; the code path is the assets' own."""
    from datetime import timedelta

    from m3_recon.clients.heartland import HeartlandClient
    from m3_recon.clients.m3 import M3Client
    from m3_recon.clients.paytrace import PayTraceClient
    from m3_recon.sandbox import Sandbox
    from m3_recon.sandbox.heartland_api import SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY
    from m3_recon.sandbox.paytrace_api import SANDBOX_PAYTRACE_PASSWORD, SANDBOX_PAYTRACE_USERNAME

    with Sandbox(days=days) as sandbox:
        for server in sandbox.servers.values():
            server.faults.configure(latency_ms=latency_ms)
        first, last = sandbox.period.start, sandbox.period.start + timedelta(days=days - 1)
        paytrace = PayTraceClient(SANDBOX_PAYTRACE_USERNAME, SANDBOX_PAYTRACE_PASSWORD,
                                  api_base=sandbox.url("paytrace"))
        gp = HeartlandClient(SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY, api_base=f"{sandbox.url('heartland')}/ucp",
                             page_size=20)
        m3 = M3Client.from_ionapi(sandbox.ionapi_path, 100, "AAA", bulk_size=m3_bulk_size)
        cases = [
            ("PayTrace", "paytrace", paytrace.session.requests_per_second,
             lambda: len(paytrace.batches(first, last)) + len(paytrace.transactions(first, last))),
            ("GP API", "heartland", gp.session.requests_per_second,
             lambda: sum(len(read(first, last)) for read in (gp.settlement_transactions, gp.deposits, gp.disputes))),
            ("M3", "m3", 10.0, lambda: len(m3.open_invoices())),
        ]
        for name, server, budget, read in cases:
            before = sandbox.servers[server].faults.served
            started = time.perf_counter()
            rows = read()
            seconds = time.perf_counter() - started
            requests = sandbox.servers[server].faults.served - before
            rate = (requests - 1) / seconds  # n requests span n - 1 budget intervals plus one round trip
            share = rate / budget
            print(f"{name:<9} {rows:>6,} rows {requests:>4} requests {seconds:6.2f} s {rate:5.1f} "
                  f"requests/s of {budget:g}: {share:.0%} (goal >= {READER_SHARE_GOAL:.0%}: "
                  f"{'met' if share >= READER_SHARE_GOAL else 'NOT met'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--charges", type=int, default=20_000, help="charges in the day")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--budget", type=float, default=25.0, help="requests/s (STRIPE_MAX_REQUESTS_PER_SECOND)")
    parser.add_argument("--concurrency", type=int, default=4, help="cursor chains at once (STRIPE_CONCURRENCY)")
    parser.add_argument("--no-reference", action="store_true", help="skip the SDK object-path reference")
    parser.add_argument("--no-readers", action="store_true", help="skip the PayTrace / GP API / M3 readers")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_CHARGES} charges: proves the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.charges = SMOKE_CHARGES
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(args.charges, args.latency_ms, child), daemon=True)
    server.start()
    if not parent.poll(300):
        raise SystemExit("FAILED: the Stripe sandbox did not start within 300 s")
    url, expected = parent.recv()
    limit = args.budget * 100
    print(f"Stripe: {len(expected):,} balance transactions in {DAY.start} ({args.charges:,} charges) | latency "
          f"{args.latency_ms} ms | budget {args.budget:g} requests/s | physical limit {limit:,.0f} objects/s")
    try:
        def client_() -> StripeClient:
            return StripeClient(SANDBOX_STRIPE_KEY, api_base=url, requests_per_second=args.budget,
                                concurrency=args.concurrency)
        stripe = client_()
        rate = measure(f"raw pages, {args.concurrency} chains x time slices",
                       lambda: stripe.balance_transactions(DAY.start_epoch, DAY.end_epoch), expected)
        applies = args.latency_ms == 50 and args.budget == 25 and len(expected) >= 10_000
        verdict = ("met" if rate >= GOAL_OBJECTS_PER_SECOND else "NOT met") if applies else \
            "not applicable (goal: 50 ms, 25 requests/s, >= 10,000 objects)"
        print(f"goal    >= {GOAL_OBJECTS_PER_SECOND:,} objects/s: {rate:,.0f} objects/s {verdict}; "
              f"{rate / limit:.0%} of the physical limit")
        if not args.no_reference:
            reference = measure("SDK objects, one chain (reference)", lambda: sdk_object_path(client_()),
                                expected)
            print(f"ratio   {rate / reference:.1f}x the SDK object path, same run")
    finally:
        parent.send("stop")
        served = parent.recv() if parent.poll(30) else None
        server.join(30)
    print(f"HTTP requests served: {served}; client peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    if not args.no_readers:
        readers(args.latency_ms, *((3, 100) if args.smoke else (31, 5)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

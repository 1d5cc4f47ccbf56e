"""Benchmark: one day at scale closed end to end against the sandbox — all three processors, matching,
journals and posting to M3 at 0 ms latency.

    .venv/bin/python bench/close.py                          # 100,000 payments in one day (10,000 customers)
    .venv/bin/python bench/close.py --charges-per-day 20000 --customers 2000 --invoices 30000
    .venv/bin/python bench/close.py --smoke                  # seconds: proves it still runs (test suite)

The sandbox (a scaled world: ``--charges-per-day`` payments on one UTC day split over Stripe, PayTrace and
Heartland as their customers are, ``--customers`` M3 customers, ``--invoices`` open invoices, the default
world's case mix) is generated and served in its own process, so neither its generation nor its servers'
CPU is the pipeline's. Timed: the wall time of the close as ``m3-recon backfill`` runs it for that day's
payments (partitions DAY..SETTLED: GP funds the day's batch the next business day) — the job
``payout_close`` (ingestion from the four vendors over loopback HTTP, canonical lines, matching, tie-out,
exceptions, journals, checks), then ``m3_posting`` (every voucher posted to the sandbox M3 and read
back) and ``recon_alerts`` — on a Dagster instance in a temporary directory. The vendors' request
budgets are lifted (1,000 requests/s, as in the test suite): on loopback with 0 ms latency the day
measures compute, not the vendors' rate limits (``bench/ingest.py`` measures those). Printed: the time
per asset from the runs' STEP_START / STEP_SUCCESS events, the pipeline process's CPU and peak RSS, the
sandbox servers' CPU during the close, and the outcome judged payment by payment against the
generator's truth (the run fails on any miss, a failed run or a voucher M3 refused).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DAY = date(2026, 10, 7)  # a Wednesday: the day's payments are generated on it
SETTLED = DAY + timedelta(days=1)  # the day's last settlement: GP funds the batch the next business day, PayTrace's
#                                    8 p.m. cut-off puts the evening's sales in the next batch date; nothing else
#                                    happens on it
GOAL_SECONDS = 60.0
GOAL_PAYMENTS = 100_000
SMOKE = (600, 60, 900)  # payments a day, customers, invoices: the default world's customers
HANDSHAKE_SECONDS = 1_800  # generating and judging a scaled world is slow, never endless
PROCESSORS = ("stripe", "paytrace", "heartland")


def serve(seed: int, payments: int, customers: int, invoices: int, pipe) -> None:
    """Child process: generate the scaled world, serve it until the close is done, then judge the close."""
    import duckdb

    from m3_recon.sandbox import Sandbox
    from m3_recon.sandbox.truth import judge

    began = time.perf_counter()
    sandbox = Sandbox(seed=seed, start=DAY, days=1, charges_per_day=payments, customers=customers,
                      invoices=invoices)
    generated = time.perf_counter() - began
    with sandbox:
        sandbox.write_bank_statements()
        statuses = {}
        for truth in sandbox.world.payments:
            statuses[truth.expected_status] = statuses.get(truth.expected_status, 0) + 1
        cpu = time.process_time()
        pipe.send((sandbox.env(), generated, statuses))
        warehouse = pipe.recv()  # the close is done (None: it failed, nothing to judge)
        served_cpu = time.process_time() - cpu
        if warehouse is None:
            pipe.send((served_cpu, {}))
            return
        with duckdb.connect(warehouse, read_only=True) as conn:
            judged = {p: judge(conn, sandbox.world, p, "core_payment_allocations", "core_match_exceptions")
                      for p in PROCESSORS}
    pipe.send((served_cpu, {p: (n, len(misses), [miss(*m) for m in misses[:3]]) for p, (n, misses) in judged.items()}))


def miss(truth, rows, reasons) -> str:
    """A payment that did not land where the generator says: what it meant, what the close made of it."""
    meant = [(a.invoice, a.amount_minor) for a in truth.allocations]
    return (f"{truth.payment_id} ({truth.kind}, customer {truth.customer}, reference {truth.invoice_ref}): expected "
            f"{truth.expected_status} {truth.expected_reason or ''} {meant}, got {rows} {reasons}")


def receive(pipe, child):
    """The child's next message; fails (never waits forever) when the child dies or stalls."""
    deadline = time.monotonic() + HANDSHAKE_SECONDS
    while not pipe.poll(1):
        if not child.is_alive():
            raise SystemExit(f"FAILED: the sandbox process died (exit code {child.exitcode})")
        if time.monotonic() > deadline:
            raise SystemExit("FAILED: the sandbox process did not answer")
    return pipe.recv()


def step_seconds(instance, run_ids: list[str]) -> dict[str, float]:
    """Seconds per step (asset) from the runs' STEP_START / STEP_SUCCESS events."""
    import dagster as dg

    started, seconds = {}, {}
    for run_id in run_ids:
        for entry in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START,
                                                        dg.DagsterEventType.STEP_SUCCESS}):
            if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                started[entry.step_key] = entry.timestamp
            else:
                seconds[entry.step_key] = entry.timestamp - started[entry.step_key]
    return seconds


def close_day() -> tuple[list, float, float]:
    """The timed part: the close of DAY's payments (partitions DAY..SETTLED), posting and alerts.
    Returns (results, wall seconds, CPU seconds)."""
    from m3_recon.cli import ensure_dagster_home
    from m3_recon.runs import run_after_close, run_payout_close

    ensure_dagster_home()
    began, cpu = time.perf_counter(), time.process_time()
    results = [run_payout_close(DAY, SETTLED), *run_after_close()]
    return results, time.perf_counter() - began, time.process_time() - cpu


def outcome(warehouse: str) -> tuple[dict, dict, dict]:
    import duckdb

    with duckdb.connect(warehouse, read_only=True) as conn:
        lines = dict(conn.execute("SELECT processor, count(*) FROM core_settlement_lines GROUP BY 1").fetchall())
        payments = dict(conn.execute("""
            SELECT status, count(DISTINCT (processor, source_id)) FROM core_payment_allocations
            WHERE line_type = 'charge' GROUP BY 1""").fetchall())
        postings = dict(conn.execute("SELECT route || ' ' || status, count(*) FROM out_m3_postings "
                                     "GROUP BY 1").fetchall())
    return lines, payments, postings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--charges-per-day", type=int, default=GOAL_PAYMENTS,
                        help="payments on the day across the three processors (default %(default)s)")
    parser.add_argument("--customers", type=int, help="M3 customers (default: one per 10 payments)")
    parser.add_argument("--invoices", type=int, help="invoices in M3 (default: 15 per customer)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="a small day, in seconds (test suite)")
    args = parser.parse_args()
    payments = SMOKE[0] if args.smoke else args.charges_per_day
    customers = SMOKE[1] if args.smoke else args.customers or max(payments // 10, 60)
    invoices = SMOKE[2] if args.smoke else args.invoices or 15 * customers

    with tempfile.TemporaryDirectory(prefix="m3-recon-close-bench-") as folder:
        folder = Path(folder)
        context = multiprocessing.get_context("spawn")
        pipe, child_end = context.Pipe()
        child = context.Process(target=serve, args=(args.seed, payments, customers, invoices, child_end),
                                daemon=True)
        child.start()
        env, generated, statuses = receive(pipe, child)
        os.environ.update(env)
        os.environ.update({"M3_RECON_END_DATE": SETTLED.isoformat(), "DAGSTER_HOME": str(folder / "dagster_home"),
                           "M3_RECON_DUCKDB_PATH": str(folder / "m3_recon.duckdb"),
                           "M3_RECON_ANALYST_DUCKDB_PATH": str(folder / "m3_recon_analyst.duckdb"),
                           "M3_RECON_REPORTS_PATH": str(folder / "reports"),
                           "M3_RECON_DECISIONS_FILE": str(folder / "exception_decisions.jsonl")})
        # The sandbox M3 reads LstInvByDivi's key inputs as start positions, so restart-key paging is complete
        # (and still proven so by LstInvoices per customer); pages as large as M3 answers (150,000 open items).
        os.environ.update({"M3_OPEN_ITEMS_PAGING": "restart", "M3_PAGE_SIZE": "10000"})
        for vendor in ("STRIPE", "PAYTRACE", "GP_API", "M3"):
            os.environ[f"{vendor}_MAX_REQUESTS_PER_SECOND"] = "1000"
        total = sum(statuses.values())
        print(f"Sandbox: {payments:,} payments on {DAY} ({customers:,} customers, {invoices:,} invoices), "
              f"generated in {generated:.1f} s (not timed); generator's mix "
              + ", ".join(f"{s} {n / total:.1%}" for s, n in sorted(statuses.items()))
              + " (default world: auto 87.1%, suggested 0.8%, unmatched 12.0%)")

        results, seconds, cpu = close_day()
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        import dagster as dg

        steps = step_seconds(dg.DagsterInstance.get(), [r.run_id for r in results])
        failed_runs = [r.run_id for r in results if not r.success]
        if failed_runs:
            lines, allocated, postings = {}, {}, {}
        else:
            lines, allocated, postings = outcome(os.environ["M3_RECON_DUCKDB_PATH"])
        print(f"\n{'asset (step)':<44} {'seconds':>8}")
        for step, took in sorted(steps.items(), key=lambda item: -item[1]):
            print(f"  {step:<42} {took:8.2f}")
        print(f"  {'(sum of steps)':<42} {sum(steps.values()):8.2f}")
        print("\nSettlement lines: " + ", ".join(f"{p} {lines.get(p, 0):,}" for p in PROCESSORS)
              + f"; payments: {sum(allocated.values()):,} ("
              + ", ".join(f"{s} {n:,}" for s, n in sorted(allocated.items())) + ")")
        print("Postings: " + ", ".join(f"{n:,} {k}" for k, n in sorted(postings.items())), flush=True)
        pipe.send(None if failed_runs else os.environ["M3_RECON_DUCKDB_PATH"])
        served_cpu, judged = receive(pipe, child)
        child.join(60)

    misses = 0
    for processor, (count, missed, examples) in judged.items():
        misses += missed
        print(f"  {processor:<10} {count - missed:>7,}/{count:,} payments land where the generator says"
              + "".join(f"\n    MISS {example}" for example in examples))
    refused = sum(n for k, n in postings.items() if k.endswith(" failed"))
    print(f"\nclose of {sum(allocated.values()):,} payments: {seconds:.1f} s wall (goal <= {GOAL_SECONDS:.0f} s at "
          f"{GOAL_PAYMENTS:,} payments); pipeline CPU {cpu:.1f} s; sandbox servers' CPU {served_cpu:.1f} s "
          f"(another process); pipeline peak RSS {peak_mib:,.0f} MiB")
    if failed_runs or misses or refused:
        print(f"FAILED: runs failed {failed_runs}, {misses} payments off the generator's truth, {refused} vouchers "
              "refused by M3")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

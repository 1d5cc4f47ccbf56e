"""``m3-recon exceptions list`` and ``m3-recon exceptions resolve``: finance works the exception register
without editing code. Reads the analysts' copy (never locks the working warehouse) and appends
decisions to the decisions file, which the next run honours."""

from __future__ import annotations

import getpass
import json
import sys

import duckdb

from m3_recon import settings
from m3_recon.journals import AccountMap
from m3_recon.money import money
from m3_recon.reconcile.anomalies import ANOMALY_REASONS
from m3_recon.reconcile.decisions import ACTIONS, DecisionError, decide, latest_decisions, new_decision
from m3_recon.reconcile.banking import BANK_REASONS
from m3_recon.reconcile.customers import XREF_REASONS
from m3_recon.reconcile.matching import REASON_CODES

STATUSES = ("open", "resolved", "dismissed", "cleared", "all")
KNOWN_REASONS = frozenset({*REASON_CODES, *ANOMALY_REASONS, *XREF_REASONS, *BANK_REASONS})


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("exceptions", help="list and resolve reconciliation exceptions")
    commands = parser.add_subparsers(dest="exceptions_command", required=True)
    listing = commands.add_parser("list", help="the exception register (from the analysts' copy)")
    listing.add_argument("--status", choices=STATUSES, default="open")
    listing.add_argument("--reason", help="only this reason code")
    listing.add_argument("--processor", choices=("stripe", "paytrace", "heartland"))
    listing.add_argument("--limit", type=int, default=50, help="show at most this many (default %(default)s)")
    listing.set_defaults(func=cmd_list)
    resolve = commands.add_parser("resolve", help="record a decision; the next run applies it")
    resolve.add_argument("exception_id")
    resolve.add_argument("--action", choices=ACTIONS, required=True)
    resolve.add_argument("--invoice", help="M3 invoice number (assign; or which candidate to accept)")
    resolve.add_argument("--year", type=int, help="M3 invoice year, when the number repeats across years")
    resolve.add_argument("--by", default=None, help="who decides (default: the login name)")
    resolve.add_argument("--why", required=True, help="the reason, kept with the decision")
    resolve.set_defaults(func=cmd_resolve)


def _register() -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(settings.analyst_duckdb_path(), read_only=True)
    except duckdb.IOException as exc:
        raise SystemExit(f"cannot open the analysts' copy at {settings.analyst_duckdb_path()} ({exc}); run the close "
                         "first (make demo, or m3-recon backfill) or set M3_RECON_ANALYST_DUCKDB_PATH") from None


def cmd_list(args) -> int:
    if args.reason and args.reason not in KNOWN_REASONS:
        print(f"unknown reason {args.reason!r}; one of: {', '.join(sorted(KNOWN_REASONS))}", file=sys.stderr)
        return 2
    if args.limit < 1:
        print("--limit must be at least 1", file=sys.stderr)
        return 2
    where = ("WHERE ($status = 'all' OR status = $status) AND ($reason IS NULL OR reason_code = $reason) "
             "AND ($processor IS NULL OR processor = $processor)")
    params = {"status": args.status, "reason": args.reason, "processor": args.processor}
    with _register() as conn:
        total = conn.execute(f"SELECT count(*) FROM out_recon_exceptions {where}", params).fetchone()[0]
        rows = conn.execute(
            "SELECT exception_id, status, reason_code, processor, source_id, settlement_date, amount_minor, currency, "
            "unapplied_minor, candidates, coalesce(decision || ' by ' || decided_by, '') FROM out_recon_exceptions "
            f"{where} ORDER BY settlement_date, exception_id LIMIT $limit", {**params, "limit": args.limit}).fetchall()
        in_register = dict(((e, str(at)) for e, at in conn.execute(
            "SELECT exception_id, strftime(decided_at_utc, '%Y-%m-%dT%H:%M:%SZ') FROM out_recon_exceptions "
            "WHERE decided_at_utc IS NOT NULL").fetchall()))
    print(f"{'exception':<15} {'status':<9} {'reason':<30} {'processor':<9} {'payment / payout':<34} {'day':<10} "
          f"{'amount':>18}  candidates / decision")
    for exception_id, status, reason, processor, source_id, day, amount, currency, unapplied, candidates, decided in rows:
        extra = f" unapplied {money(unapplied, currency)}" if unapplied else ""
        names = ", ".join(json.loads(candidates)) if candidates and candidates.startswith("[") else ""
        print(f"{exception_id:<15} {status:<9} {reason:<30} {processor:<9} {source_id:<34} {day!s:<10} "
              f"{money(amount, currency):>18}{extra}" + (f"  candidates: {names}" if names else "")
              + (f"  [{decided}]" if decided else ""))
    print(f"showing {len(rows)} of {total}" + (" (--limit)" if len(rows) < total else ""))
    waiting = [d for d in latest_decisions().values() if in_register.get(d.exception_id) != d.decided_at_utc]
    if waiting:
        print(f"\n{len(waiting)} decision(s) waiting for the next close:")
        for decision in waiting:
            print(f"  {decision.exception_id}  {decision.summary()}: {decision.reason}"
                  + (f"  (supersedes {decision.supersedes})" if decision.supersedes else ""))
    return 0


def cmd_resolve(args) -> int:
    decision = new_decision(args.exception_id, args.action, args.by or getpass.getuser(), args.why,
                            args.invoice, args.year)
    try:
        with _register() as conn:
            recorded = decide(conn, decision, AccountMap.load().write_off_limit_minor)
    except DecisionError as exc:
        print(f"Not recorded: {exc}")
        return 2
    print(f"Recorded {args.action} for {args.exception_id} (was {recorded.was}) in {recorded.path}.")
    for note in recorded.notes:
        print(f"  Note: it {note}." if note.startswith("supersedes") else f"  Note: {note}.")
    print("The next payout_close for its day (nightly, or `m3-recon backfill --start … --end …`) applies it and posts "
          "accordingly.")
    return 0

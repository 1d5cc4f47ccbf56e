"""``m3-recon exceptions list`` and ``m3-recon exceptions resolve``: finance works the exception register
without editing code. Reads the analysts' copy (never locks the working warehouse) and appends
decisions to the decisions file, which the next run honours."""

from __future__ import annotations

import getpass
import json

import duckdb

from m3_recon import settings
from m3_recon.journals import AccountMap
from m3_recon.reconcile.decisions import ACTIONS, DecisionError, new_decision, record

STATUSES = ("open", "resolved", "dismissed", "cleared", "all")


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("exceptions", help="list and resolve reconciliation exceptions")
    commands = parser.add_subparsers(dest="exceptions_command", required=True)
    listing = commands.add_parser("list", help="the exception register (from the analysts' copy)")
    listing.add_argument("--status", choices=STATUSES, default="open")
    listing.add_argument("--reason", help="only this reason code")
    listing.add_argument("--processor", choices=("stripe", "paytrace", "heartland"))
    listing.add_argument("--limit", type=int, default=50)
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
    with _register() as conn:
        rows = conn.execute(
            "SELECT exception_id, status, reason_code, processor, source_id, settlement_date, amount_minor, currency, "
            "unapplied_minor, candidates, coalesce(decision || ' by ' || decided_by, '') FROM out_recon_exceptions "
            "WHERE ($status = 'all' OR status = $status) AND ($reason IS NULL OR reason_code = $reason) "
            "AND ($processor IS NULL OR processor = $processor) ORDER BY settlement_date, exception_id LIMIT $limit",
            {"status": args.status, "reason": args.reason, "processor": args.processor, "limit": args.limit}).fetchall()
    for exception_id, status, reason, processor, source_id, day, amount, currency, unapplied, candidates, decided in rows:
        money = f"{amount / 100:,.2f} {currency}" if amount is not None else ""
        extra = f" unapplied {unapplied / 100:,.2f}" if unapplied else ""
        names = ", ".join(json.loads(candidates)) if candidates and candidates.startswith("[") else ""
        print(f"{exception_id}  {status:<9} {reason:<30} {processor:<9} {source_id}  {day}  {money}{extra}"
              + (f"  candidates: {names}" if names else "") + (f"  [{decided}]" if decided else ""))
    print(f"{len(rows)} exception(s)")
    return 0


def cmd_resolve(args) -> int:
    with _register() as conn:
        found = conn.execute("SELECT reason_code, status, unapplied_minor, candidates FROM out_recon_exceptions "
                             "WHERE exception_id = ?", [args.exception_id]).fetchone()
        # A suggested list of invoices (one reference naming several) is accepted as a whole: each number once.
        listed = conn.execute("SELECT count(*) > 0 AND count(*) = count(DISTINCT a.invoice_number) "
                              "FROM core_payment_allocations a JOIN out_recon_exceptions e USING (processor, source_id) "
                              "WHERE e.exception_id = ? AND a.rule = 'reference_list' AND a.status = 'suggested'",
                              [args.exception_id]).fetchone()[0]
        invoice = None
        if args.invoice:
            invoice = conn.execute("SELECT count(*) FROM core_open_invoices WHERE invoice_number = ? "
                                   "AND (? IS NULL OR invoice_year = ?)", [args.invoice, args.year, args.year]).fetchone()[0]
    try:
        if found is None:
            raise DecisionError(f"no exception {args.exception_id}; see `m3-recon exceptions list --status all`")
        reason, status, unapplied, candidates = found
        names = json.loads(candidates) if candidates and candidates.startswith("[") else []
        if args.invoice and not invoice:
            raise DecisionError(f"M3 shows no open invoice {args.invoice}; check the number (and --year)")
        if args.invoice and invoice > 1:
            raise DecisionError(f"invoice {args.invoice} is open in {invoice} invoice years; name one with --year")
        if args.action == "accept" and not (len(names) == 1 or (args.invoice and args.invoice in names)
                                            or (listed and not args.invoice)):
            raise DecisionError("accept takes the suggested invoice: this exception has "
                                f"{len(names)} candidate(s) {names}; name one with --invoice, or use assign")
        if args.action == "write_off":
            limit = AccountMap.load().write_off_limit_minor
            if reason != "overpayment":
                raise DecisionError(f"only an overpayment's unapplied excess can be written off, not {reason}")
            if unapplied is None or abs(unapplied) > limit:
                raise DecisionError(f"the excess ({(unapplied or 0) / 100:,.2f}) is over the write-off limit "
                                    f"({limit / 100:,.2f}, data/gl_accounts.toml write_off.limit_minor)")
        decision = new_decision(args.exception_id, args.action, args.by or getpass.getuser(), args.why,
                                args.invoice, args.year)
        path = record(decision)
    except DecisionError as exc:
        print(f"Not recorded: {exc}")
        return 2
    print(f"Recorded {args.action} for {args.exception_id} (was {status}) in {path}. The next payout_close for "
          f"its day (nightly, or `m3-recon backfill --start … --end …`) applies it and posts accordingly.")
    return 0

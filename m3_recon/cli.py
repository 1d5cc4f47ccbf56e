"""The ``m3-recon`` command: ``demo``, ``sandbox``, ``backfill``, ``ui``, ``exceptions``, ``doctor``, ``bank``,
``webhooks`` and ``customers``."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from datetime import date
from pathlib import Path

from m3_recon.exceptions_cli import add_commands as add_exception_commands
from m3_recon.loop_cli import add_commands as add_loop_commands
from m3_recon.settings import PROJECT_ROOT, SettingsError

SANDBOX_PORTS = {"stripe": 12111, "paytrace": 12112, "heartland": 12113, "m3": 12114}
INSTANCE_VARIABLE = "M3_RECON_INSTANCE"
POSTGRES_URL_VARIABLE = "M3_RECON_DAGSTER_POSTGRES_URL"
# The instance configurations that ship: embedded (SQLite under DAGSTER_HOME) and production (PostgreSQL).
INSTANCE_TEMPLATES = {"embedded": PROJECT_ROOT / "dagster.yaml",
                      "postgres": PROJECT_ROOT / "deploy" / "dagster.postgres.yaml"}


def instance_mode() -> str:
    """``M3_RECON_INSTANCE``: ``embedded`` (default) or ``postgres`` (needs M3_RECON_DAGSTER_POSTGRES_URL)."""
    mode = os.environ.get(INSTANCE_VARIABLE, "").strip().lower() or "embedded"
    if mode not in INSTANCE_TEMPLATES:
        raise SettingsError(f"{INSTANCE_VARIABLE} must be one of {', '.join(INSTANCE_TEMPLATES)}, got {mode!r}")
    if mode == "postgres":
        scheme = os.environ.get(POSTGRES_URL_VARIABLE, "").partition("://")[0]
        if not scheme:
            raise SettingsError(f"{INSTANCE_VARIABLE}=postgres needs {POSTGRES_URL_VARIABLE}, e.g. "
                                "postgresql+psycopg2://dagster:PASSWORD@db.internal:5432/dagster")
        if scheme != "postgresql+psycopg2":
            raise SettingsError(f"{POSTGRES_URL_VARIABLE} must start with postgresql+psycopg2:// (the driver "
                                f"dagster-postgres installs), not {scheme}://")
    return mode


def ensure_dagster_home() -> str:
    """A persistent instance inside the project (run history survives restarts) unless DAGSTER_HOME is set.

    ``$DAGSTER_HOME/dagster.yaml`` is written from the template ``M3_RECON_INSTANCE`` selects when it is
    missing or still one of the shipped templates; a file edited by the operator is left alone.
    """
    template = INSTANCE_TEMPLATES[instance_mode()]
    home = os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home"))
    os.makedirs(home, exist_ok=True)
    target = Path(home) / "dagster.yaml"
    shipped = {path.read_bytes() for path in INSTANCE_TEMPLATES.values()}
    if not target.exists() or target.read_bytes() in shipped:
        shutil.copyfile(template, target)
    return home


def _sandbox_args(parser: argparse.ArgumentParser) -> None:
    from m3_recon.sandbox import DEFAULT_DAYS, DEFAULT_SEED, DEFAULT_START
    from m3_recon.sandbox.world import DEFAULT_CUSTOMERS

    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed (default %(default)s)")
    parser.add_argument("--start", type=date.fromisoformat, default=DEFAULT_START,
                        help="first day of the sandbox period (default %(default)s)")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="days in the period (default %(default)s)")
    parser.add_argument("--quirks", type=_quirks, default=frozenset(), metavar="NAME[,NAME…]|all",
                        help="serve alternative vendor shapes (see README, 'Quirks')")
    parser.add_argument("--local-currency", type=_currency, default="USD", metavar="CODE",
                        help="the currency the sandbox M3 keeps its books in (default %(default)s); other than USD, "
                             "the Heartland account settles in JPY and the close uses its own warehouse")
    parser.add_argument("--charges-per-day", type=_positive, metavar="N",
                        help="a scaled world: N payments every day across the three processors, the default world's "
                             "case mix (default: the default world's few dozen); it has its own M3 ledger and warehouse")
    parser.add_argument("--customers", type=_positive, default=DEFAULT_CUSTOMERS, metavar="N",
                        help="M3 customers in the world (default %(default)s)")
    parser.add_argument("--invoices", type=_positive, metavar="N", help="invoices in M3 (default: 15 per customer)")
    parser.add_argument("--reset", action="store_true",
                        help="start over: a fresh sandbox M3 ledger (data/sandbox/) and warehouse")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _scale(args):
    from m3_recon.sandbox import Scale

    return Scale(args.charges_per_day, args.customers, args.invoices)


def _currency(text: str) -> str:
    from m3_recon.money import known_currency
    from m3_recon.sandbox.m3_ledger import USD_VALUE

    try:
        code = known_currency(text, "--local-currency")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if code not in USD_VALUE:
        raise argparse.ArgumentTypeError(f"the sandbox M3 keeps its books in one of {', '.join(sorted(USD_VALUE))}, "
                                         f"not {code}")
    return code


def _quirks(text: str) -> frozenset[str]:
    from m3_recon.sandbox.quirks import QuirkError, parse_quirks

    try:
        return parse_quirks(text)
    except QuirkError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_demo(args) -> int:
    ensure_dagster_home()
    from m3_recon.demo import run_demo

    from m3_recon.sandbox.m3_ledger import LedgerError

    try:
        return run_demo(args.seed, args.start, args.days, args.quirks, reset=args.reset,
                        local_currency=args.local_currency, scale=_scale(args))
    except LedgerError as error:
        print(f"{error}\nStart over with `m3-recon demo --reset` (the sandbox ledger, warehouse and analysts' copy).",
              file=sys.stderr)
        return 2


def cmd_backfill(args) -> int:
    from m3_recon.preflight import check_close
    from m3_recon.progress import summary

    first, last = check_close(args.start, args.end)
    ensure_dagster_home()
    from m3_recon.runs import run_after_close, run_payout_close, run_report

    from m3_recon.posting.summary import print_posting_summary

    result = run_payout_close(first, last, out=sys.stdout)
    print(f"payout_close {first}..{last}: {'succeeded' if result.success else 'FAILED'} (run {result.run_id})")
    if not result.success or args.no_post:
        print(summary([result]))
        return max(0 if result.success else 1, print_posting_summary())
    after = run_after_close(out=sys.stdout)
    if after[0].success:  # the report states what M3 holds, so it follows posting
        after.append(run_report(first, last, out=sys.stdout))
    for name, run in zip(("m3_posting", "recon_alerts", "reconciliation_report"), after):
        print(f"{name}: {'succeeded' if run.success else 'FAILED'} (run {run.run_id})")
    print(summary([result, *after]))
    return max(0 if all(run.success for run in after) else 1, print_posting_summary())


def _start_sandbox(args):
    """The sandbox on its fixed ports, serving the same persisted M3 ledger as the demo."""
    from m3_recon.sandbox import Sandbox, persisted_ledger_path, reset_sandbox_state

    scale = _scale(args)
    ledger = persisted_ledger_path(args.seed, args.start, args.days, args.quirks, args.local_currency, scale)
    if args.reset:
        print("Starting over: removed " + (", ".join(map(str, reset_sandbox_state(ledger))) or "nothing"))
    ledger.parent.mkdir(parents=True, exist_ok=True)
    from m3_recon.sandbox.m3_ledger import LedgerError

    try:
        sandbox = Sandbox(seed=args.seed, start=args.start, days=args.days, quirks=args.quirks, m3_ledger_path=ledger,
                          local_currency=args.local_currency, **asdict(scale))
    except LedgerError as error:
        raise SystemExit(f"{error}\nStart over with --reset (the sandbox ledger, warehouse and analysts' copy).")
    sandbox.start(SANDBOX_PORTS)
    sandbox.write_bank_statements()  # the sandbox bank's statements, in the folder env() names
    print(f"M3 ledger: {ledger} (shared with `make demo`; --reset starts over)")
    for name in sandbox.servers:
        print(f"{name:>10}: {sandbox.url(name)}")
    return sandbox


def cmd_sandbox(args) -> int:
    sandbox = _start_sandbox(args)
    print("Point m3-recon at it with:")
    for key, value in sandbox.env().items():
        print(f"  export {key}={value}")
    print("Ctrl-C stops the sandbox.")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    sandbox.stop()
    return 0


def cmd_ui(args) -> int:
    ensure_dagster_home()
    env = dict(os.environ)
    sandbox = None
    if not args.no_sandbox:
        sandbox = _start_sandbox(args)
        env.update(sandbox.env())
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
               "-h", "127.0.0.1", "-p", str(args.port)]
    try:
        return subprocess.call(command, env=env, cwd=PROJECT_ROOT)
    except KeyboardInterrupt:
        return 0
    finally:
        if sandbox is not None:
            sandbox.stop()


def cmd_doctor(args) -> int:
    from m3_recon.doctor import run_doctor

    return run_doctor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m3-recon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the pipeline over the sandbox period and print a summary")
    _sandbox_args(demo)
    demo.set_defaults(func=cmd_demo)
    sandbox = sub.add_parser("sandbox", help="serve the vendor sandboxes on 127.0.0.1 until stopped")
    _sandbox_args(sandbox)
    sandbox.set_defaults(func=cmd_sandbox)
    backfill = sub.add_parser("backfill", help="run the payout close for a period (vendors from the environment)")
    backfill.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    backfill.add_argument("--end", required=True, help="last day (inclusive)")
    backfill.add_argument("--no-post", action="store_true", help="close only; leave posting to the sensor")
    backfill.set_defaults(func=cmd_backfill)
    ui = sub.add_parser("ui", help="start the Dagster UI (dagster dev) with the sandbox behind it")
    _sandbox_args(ui)
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument("--no-sandbox", action="store_true", help="use the vendor URLs from the environment")
    ui.set_defaults(func=cmd_ui)
    add_exception_commands(sub)
    add_loop_commands(sub)
    doctor = sub.add_parser("doctor", help="check every configured vendor, the warehouse and the Dagster instance")
    doctor.set_defaults(func=cmd_doctor)
    args = parser.parse_args(argv)
    from m3_recon.preflight import PreflightError

    try:
        return args.func(args)
    except PreflightError as exc:  # bad input: one line each, no traceback, nothing called
        for problem in exc.problems:
            print(f"m3-recon {args.command}: {problem}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"m3-recon {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

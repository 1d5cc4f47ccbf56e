"""Checks made before a run calls any vendor: the period, the settings and finance's files.

``m3-recon backfill`` and ``demo`` call these first; each problem is one line naming what to change,
and the command exits 2 without a traceback and without a request to Stripe, PayTrace, GP API or M3.
Checked: the dates (ISO), the period's order, that it lies within the daily partitions (from
M3_RECON_START_DATE up to the last UTC day that has ended), the settings read at start-up, the
decisions file (M3_RECON_DECISIONS_FILE), the account map (data/gl_accounts.toml) and the matching
rules (data/matching_rules.toml).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import duckdb

from m3_recon import settings


class PreflightError(ValueError):
    """One or more inputs are unusable; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise PreflightError([f"{what} must be a date like 2026-10-01, got {text!r}"]) from None


def period_problems(first: date, last: date) -> list[str]:
    """The period's order and that every day of it is a partition that can be closed."""
    if last < first:
        return [f"the period ends ({last}) before it starts ({first}): swap --start and --end"]
    problems = []
    try:
        partitions_start = date.fromisoformat(settings.start_date())
        partitions_end = settings.end_date()
    except settings.SettingsError:
        return []  # input_problems names the variable
    if first < partitions_start:
        problems.append(f"--start {first} is before the first partition {partitions_start} (M3_RECON_START_DATE)")
    last_closed = datetime.now(timezone.utc).date() - timedelta(days=1)
    if last > last_closed:
        problems.append(f"--end {last} has not ended yet in UTC: the last day that can be closed is {last_closed}")
    elif partitions_end and last > date.fromisoformat(partitions_end):
        problems.append(f"--end {last} is after the last partition {partitions_end} (M3_RECON_END_DATE)")
    return problems


def input_problems() -> list[str]:
    """Settings and finance's files, each loaded as the run will load it."""
    from m3_recon.journals import DEFAULT_ACCOUNTS_FILE, AccountMap
    from m3_recon.reconcile.decisions import load_decisions
    from m3_recon.reconcile.matching import DEFAULT_RULES_FILE, MatchingRules

    problems = []
    for read in (settings.start_date, settings.end_date, settings.reporting_timezone, settings.local_currency,
                 lambda: settings.int_setting("M3_RECON_LOOKBACK_DAYS", settings.DEFAULT_LOOKBACK_DAYS)):
        try:
            read()
        except settings.SettingsError as exc:
            problems.append(str(exc))
    try:
        with duckdb.connect() as conn:
            load_decisions(conn)
    except (OSError, ValueError) as exc:
        problems.append(f"decisions file: {exc}")
    for name, load, path in (("account map", AccountMap.load, DEFAULT_ACCOUNTS_FILE),
                             ("matching rules", MatchingRules.load, DEFAULT_RULES_FILE)):
        try:
            load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{name} {path}: {f'missing {exc}' if isinstance(exc, KeyError) else exc}")
    return problems


def check_close(first: str | date, last: str | date) -> tuple[date, date]:
    """The period as dates, or PreflightError listing every problem with it and with the inputs."""
    first_day = first if isinstance(first, date) else parse_day(first, "--start")
    last_day = last if isinstance(last, date) else parse_day(last, "--end")
    problems = period_problems(first_day, last_day) + input_problems()
    if problems:
        raise PreflightError(problems)
    return first_day, last_day

"""Deployment settings read from the environment when the code location loads.

Only values that shape the *definitions* live here (partition start, time zone, file paths);
vendor credentials are read by resources through Dagster ``EnvVar`` so they never reach config or
logs. Every variable is documented in README.md and ``.env.example``.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_START_DATE = "2026-10-01"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_DUCKDB_PATH = str(PROJECT_ROOT / "data" / "m3_recon.duckdb")
DEFAULT_LOOKBACK_DAYS = 7


class SettingsError(ValueError):
    """A configuration value is present but unusable; the message names the variable to fix."""


def start_date() -> str:
    """First daily partition (``M3_RECON_START_DATE``, ISO date)."""
    raw = os.environ.get("M3_RECON_START_DATE", DEFAULT_START_DATE)
    try:
        return date.fromisoformat(raw).isoformat()
    except ValueError as exc:
        raise SettingsError(f"M3_RECON_START_DATE must be an ISO date like 2026-10-01, got {raw!r}") from exc


def end_date() -> str | None:
    """Last daily partition, inclusive (``M3_RECON_END_DATE``, ISO date; unset = the last complete day). The
    sandbox sets it to its period's last day, so a closed period shows complete instead of running to today."""
    raw = os.environ.get("M3_RECON_END_DATE", "").strip()
    if not raw:
        return None
    try:
        last = date.fromisoformat(raw)
    except ValueError as exc:
        raise SettingsError(f"M3_RECON_END_DATE must be an ISO date like 2026-10-31, got {raw!r}") from exc
    if last.isoformat() < start_date():
        raise SettingsError(f"M3_RECON_END_DATE ({last}) is before M3_RECON_START_DATE ({start_date()})")
    return last.isoformat()


def reporting_timezone() -> str:
    """Finance's reporting time zone (``M3_RECON_TIMEZONE``), used for schedules and close dates."""
    raw = os.environ.get("M3_RECON_TIMEZONE", DEFAULT_TIMEZONE)
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SettingsError(f"M3_RECON_TIMEZONE must be an IANA zone like America/Chicago, got {raw!r}") from exc
    return raw


def duckdb_path() -> str:
    """The DuckDB warehouse file (``M3_RECON_DUCKDB_PATH``)."""
    return os.environ.get("M3_RECON_DUCKDB_PATH", DEFAULT_DUCKDB_PATH)


def int_setting(name: str, default: int, minimum: int = 0) -> int:
    """An integer variable with a default; a bad value names the variable."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from exc
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def analyst_duckdb_path() -> str:
    """The read-only copy analysts query (``M3_RECON_ANALYST_DUCKDB_PATH``), replaced atomically by each close."""
    return os.environ.get("M3_RECON_ANALYST_DUCKDB_PATH", str(PROJECT_ROOT / "data" / "m3_recon_analyst.duckdb"))


def reports_path() -> str:
    """Where period reconciliation reports are written (``M3_RECON_REPORTS_PATH``)."""
    return os.environ.get("M3_RECON_REPORTS_PATH", str(PROJECT_ROOT / "data" / "reports"))


def m3_customer_email_field() -> str:
    """The CRS610MI output field holding a customer's e-mail (``M3_CUSTOMER_EMAIL_FIELD``, default EMAL)."""
    raw = os.environ.get("M3_CUSTOMER_EMAIL_FIELD", "EMAL").strip().upper() or "EMAL"
    if not raw.isalnum() or len(raw) > 10:
        raise SettingsError(f"M3_CUSTOMER_EMAIL_FIELD must be an M3 field name like EMAL, got {raw!r}")
    return raw


def customer_metadata_key() -> str:
    """The processor-customer metadata key holding the M3 customer number (``M3_RECON_CUSTOMER_METADATA_KEY``)."""
    return os.environ.get("M3_RECON_CUSTOMER_METADATA_KEY", "erp_customer_id").strip() or "erp_customer_id"


def bank_dir() -> str:
    """The folder bank statements (BAI2, camt.053) are dropped in (``M3_RECON_BANK_DIR``)."""
    return os.environ.get("M3_RECON_BANK_DIR", str(PROJECT_ROOT / "data" / "bank"))


def stripe_events_db() -> str:
    """The SQLite file the webhook receiver stores accepted Stripe events in (``M3_RECON_STRIPE_EVENTS_DB``)."""
    return os.environ.get("M3_RECON_STRIPE_EVENTS_DB", str(PROJECT_ROOT / "data" / "stripe_events.sqlite"))


def bank_business_days() -> int:
    """Business days after a payout's arrival within which the bank must show it (``M3_RECON_BANK_BUSINESS_DAYS``)."""
    return int_setting("M3_RECON_BANK_BUSINESS_DAYS", 3, minimum=0)


def bank_descriptors() -> dict[str, str]:
    """Per processor, the pattern its bank lines carry (``M3_RECON_BANK_DESCRIPTORS``, over the defaults)."""
    from m3_recon.reconcile.banking import parse_descriptors

    try:
        return parse_descriptors(os.environ.get("M3_RECON_BANK_DESCRIPTORS"))
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def local_currency() -> str:
    """The currency M3 keeps its books in (``M3_LOCAL_CURRENCY``, ISO 4217, default USD): GL vouchers and cash
    applications carry local amounts in it, and the FX gain or loss is booked in it."""
    from m3_recon.money import known_currency

    try:
        return known_currency(os.environ.get("M3_LOCAL_CURRENCY", "").strip() or "USD", "M3_LOCAL_CURRENCY")
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def exchange_rates_file() -> str | None:
    """M3's accounting rates to the local currency, one CSV row per currency and first valid day
    (``M3_RECON_EXCHANGE_RATES``; unset = no processor settles in a foreign currency)."""
    return os.environ.get("M3_RECON_EXCHANGE_RATES", "").strip() or None

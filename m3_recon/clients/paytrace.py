"""The PayTrace client (no Dagster): the v1 JSON reporting API through ``VendorSession`` with a cached OAuth token.

Only reads. The bearer token from the password grant (``POST /oauth/token`` with PAYTRACE_USERNAME /
PAYTRACE_PASSWORD) is cached until shortly before its ``expires_in`` runs out and fetched again then, or
at once when PayTrace answers 401 (expired early, revoked). Every request passes the request budget and
the bounded retries of ``VendorSession``. PayTrace has no paging, so date ranges are asked for one
business day at a time, as PayTrace advises; bodies are parsed with amounts as ``Decimal``.

This module also says what PayTrace's wire values mean (read by ``m3_recon.wire``): dollar amounts
(JSON numbers or strings) become integer cents, and zone-less timestamps (US style ``4/10/2026 4:06:30 PM``
or ISO 8601) are wall times of the account's time zone (PAYTRACE_TIMEZONE, Pacific by default).
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from typing import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from m3_recon import wire
from m3_recon.clients.http import TokenCache, VendorSession, short_text
from m3_recon.errors import VendorAuthError, VendorRequestError
from m3_recon.settings import SettingsError

VENDOR = "PayTrace"
DEFAULT_API_BASE = "https://api.paytrace.com"
DEFAULT_TIMEZONE = "America/Los_Angeles"
CREDENTIAL_HINT = "PAYTRACE_USERNAME / PAYTRACE_PASSWORD"
TOKEN_REFRESH_MARGIN_SECONDS = 60


def account_zone(name: str) -> ZoneInfo:
    """The zone of PayTrace's timestamps; a bad name says which variable to fix."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"PAYTRACE_TIMEZONE must be an IANA zone like {DEFAULT_TIMEZONE}, got {name!r}") from None


def us_date(day: date) -> str:
    return f"{day:%m/%d/%Y}"


def cents(value) -> int | None:
    """PayTrace dollars -> integer cents: ``110``, ``1234.5`` (parsed as Decimal) or ``"8.10"``; ``""`` -> None."""
    return wire.minor_units(value, 2, "cents")


def local_timestamp(text: str, zone: ZoneInfo) -> datetime | None:
    """``10/31/2026 8:33:20 PM`` (or any ISO 8601 form) as an aware datetime; a zone-less wall time is in
    ``zone``; ``""`` (not settled yet) -> None. A repeated wall time when DST ends is its first occurrence."""
    return wire.instant(text, zone)


class PasswordGrantToken(TokenCache):
    """The bearer token of PayTrace's password grant, renewed a minute (at most half its lifetime) early."""

    def __init__(self, username: str, password: str, clock: Callable[[], float] = time.monotonic):
        super().__init__(TOKEN_REFRESH_MARGIN_SECONDS, 0.5, clock)
        self._username, self._password = username, password

    def _sign_in(self, session: VendorSession) -> tuple[str, float]:
        form = {"grant_type": "password", "username": self._username, "password": self._password}
        try:
            payload = session.json("POST", "/oauth/token", authenticated=False, data=form)
        except VendorRequestError as exc:  # OAuth servers may answer a bad grant with 400 rather than 401
            raise VendorAuthError(VENDOR, f"POST /oauth/token rejected the password grant. Check {CREDENTIAL_HINT}.",
                                  status=exc.status) from None
        token, expires_in = payload.get("access_token"), payload.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int) or expires_in <= 0:
            raise VendorAuthError(VENDOR, "POST /oauth/token answered without a usable bearer token; check "
                                  f"PAYTRACE_API_BASE ({session.base_url}) and {CREDENTIAL_HINT}.")
        return token, expires_in


class PayTraceClient:
    """Read access to one PayTrace merchant account through the v1 JSON API."""

    def __init__(self, username: str, password: str, *, api_base: str = DEFAULT_API_BASE, integrator_id: str = "",
                 time_zone: str = DEFAULT_TIMEZONE, requests_per_second: float = 5.0, max_attempts: int = 5,
                 timeout_seconds: float = 60.0):
        self.api_base, self.integrator_id, self.time_zone = api_base, integrator_id, time_zone
        self.session = VendorSession(
            VENDOR, api_base, credential_hint=CREDENTIAL_HINT, url_hint="PAYTRACE_API_BASE",
            requests_per_second=requests_per_second, max_attempts=max_attempts, timeout_seconds=timeout_seconds,
            authenticator=PasswordGrantToken(username, password))

    def zone(self) -> ZoneInfo:
        return account_zone(self.time_zone)

    def _post(self, path: str, body: dict, listing: str | None = None) -> tuple[dict, list[str]]:
        """One v1 call, and the exact text of each record of its list ``listing`` (when given); PayTrace's
        ``success: false`` is an error even when the HTTP status is 200."""
        if self.integrator_id:
            body = {**body, "integrator_id": self.integrator_id}
        response = self.session.request("POST", path, json=body)
        payload, texts = self.session.decode_listing(f"POST {path}", response, listing)
        if not isinstance(payload, dict) or payload.get("success") is not True:
            raise VendorRequestError(VENDOR, f"POST {path} did not succeed: {short_text(response)}",
                                     status=response.status_code)
        return payload, texts
    def _by_day(self, path: str, key: str, first_day: date, last_day: date, **filters) -> list[tuple[date, dict]]:
        rows = []
        for offset in range((last_day - first_day).days + 1):
            day = first_day + timedelta(days=offset)
            payload, _ = self._post(path, {"start_date": us_date(day), "end_date": us_date(day), **filters})
            rows.extend((day, row) for row in payload.get(key) or [])
        return rows

    # -- what the assets read -------------------------------------------------------------------
    def batches(self, first_day: date, last_day: date) -> list[tuple[date, dict]]:
        """Settled batch summaries for each business date in [first_day, last_day], with that date."""
        return self._by_day("/v1/batches/export", "batches", first_day, last_day)

    def batch_transactions(self, batch_number: int) -> list[dict]:
        """The transactions one settled batch contains."""
        return [txn for txn, _ in self.batch_transactions_as_sent(batch_number)]

    def batch_transactions_as_sent(self, batch_number: int) -> list[tuple[dict, str]]:
        """``batch_transactions``, each with the exact JSON text PayTrace sent for it."""
        payload, texts = self._post("/v1/batches/transaction_list", {"batch_number": batch_number}, "transactions")
        transactions = payload.get("transactions") or []
        if not isinstance(transactions, list):
            raise VendorRequestError(VENDOR, f"batch {batch_number}'s transaction list is not a list")
        return list(zip(transactions, texts))

    def transactions(self, first_day: date, last_day: date, transaction_type: str | None = None) -> list[dict]:
        """Transactions created on each local date in [first_day, last_day] (optionally of one type)."""
        filters = {"transaction_type": transaction_type} if transaction_type else {}
        return [row for _, row in self._by_day("/v1/transactions/export/by_date_range", "transactions",
                                               first_day, last_day, **filters)]

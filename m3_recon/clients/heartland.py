"""The Heartland client (no Dagster): Global Payments' GP API settlement reports over ``VendorSession``.

Signs in with ``POST /accesstoken`` (``secret`` = SHA-512 of nonce + app key; the key never leaves
this process), caches the bearer token until shortly before it expires, signs in again on a 401 once,
and reads the three settlement lists page by page (``page_size`` ≤ 1000, stopping at the first short
page); once the first page has said how many rows there are, the pages after it are read
``concurrency`` at a time. Every call goes through the request budget and bounded retries of
``VendorSession``. Returns the JSON objects exactly as GP sent them, and each page's JSON text.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from typing import Callable

from m3_recon.clients.http import TokenCache, VendorSession
from m3_recon.errors import VendorAuthError, VendorRequestError

GP_API_VERSION = "2021-03-22"
GP_HEADERS = {"X-GP-Version": GP_API_VERSION, "Accept": "application/json"}  # no Content-Type on GETs: GP 502s
DATA_ACCOUNT_PREFIX = "DAA_"
REFRESH_MARGIN_SECONDS = 300
MAX_PAGES = 10_000
CREDENTIAL_HINT = "GP_API_APP_ID / GP_API_APP_KEY"
DEFAULT_API_BASE = "https://apis.globalpay.com/ucp"


def access_token_secret(nonce: str, app_key: str) -> str:
    """GP's sign-in ``secret``: lower-case hex SHA-512 of the nonce followed by the app key."""
    return hashlib.sha512((nonce + app_key).encode("utf-8")).hexdigest()


class GpApiAccessToken(TokenCache):
    """One GP API access token, renewed a fifth of its lifetime early (at most five minutes) and on a 401;
    it also knows the accounts its scope grants."""

    def __init__(self, app_id: str, app_key: str, seconds_to_expire: int,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(REFRESH_MARGIN_SECONDS, 0.2, clock)
        self._app_id = app_id
        self._app_key = app_key
        self._seconds_to_expire = seconds_to_expire
        self.accounts: dict[str, str] = {}  # account name -> id, from the token's scope

    def data_account_name(self, session: VendorSession) -> str:
        """The settlement-reporting (``DAA_``) account the token grants, signing in first if needed."""
        self.headers(session)
        names = [name for name, account_id in self.accounts.items() if account_id.startswith(DATA_ACCOUNT_PREFIX)]
        if not names:
            raise VendorAuthError("GP API", "the access token grants no settlement-reporting (DAA_) account; ask "
                                  "Global Payments to enable settlement reporting for the app in GP_API_APP_ID, "
                                  "or set GP_API_ACCOUNT_NAME")
        return names[0]

    def _sign_in(self, session: VendorSession) -> tuple[str, float]:
        nonce = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = session.json("POST", "/accesstoken", authenticated=False,
                            headers={**GP_HEADERS, "Content-Type": "application/json"},
                            json={"app_id": self._app_id, "nonce": nonce,
                                  "secret": access_token_secret(nonce, self._app_key),
                                  "grant_type": "client_credentials", "seconds_to_expire": self._seconds_to_expire})
        token, lifetime = body.get("token"), body.get("seconds_to_expire", self._seconds_to_expire)
        if not token or not isinstance(lifetime, int):
            raise VendorRequestError("GP API", "POST /accesstoken answered without a token and its lifetime")
        self.accounts = {a.get("name", ""): a.get("id", "") for a in body.get("scope", {}).get("accounts", [])}
        return token, lifetime


class HeartlandClient:
    """Read access to one Global Payments (Heartland) merchant's settlement reports on GP API."""

    def __init__(self, app_id: str, app_key: str, *, api_base: str = DEFAULT_API_BASE, account_name: str = "",
                 merchant_id: str = "", token_seconds_to_expire: int = 3_600, requests_per_second: float = 10.0,
                 max_attempts: int = 5, timeout_seconds: float = 30.0, page_size: int = 1_000, concurrency: int = 4):
        self.api_base, self.account_name, self.merchant_id, self.page_size = (
            api_base, account_name, merchant_id, page_size)
        self.workers = max(1, min(concurrency, int(requests_per_second)))  # never more than the budget per second
        self.access_token = GpApiAccessToken(app_id, app_key, token_seconds_to_expire)
        self.session = VendorSession(
            vendor="GP API", base_url=api_base, credential_hint=CREDENTIAL_HINT, url_hint="GP_API_BASE",
            requests_per_second=requests_per_second, max_attempts=max_attempts, timeout_seconds=timeout_seconds,
            authenticator=self.access_token)

    def list_pages(self, path: str, key: str, params: dict[str, str]) -> list[tuple[list[dict], str]]:
        """Every page of a settlement list, oldest first, as (its rows, its JSON text), up to the first short page
        or the page that reaches the count the first page gave (``total_record_count``). Given that count, the
        pages after the first are read ``concurrency`` at a time; the same stopping rule then applies in order."""
        session = self.session
        account = self.account_name or self.access_token.data_account_name(session)
        query = {**params, "account_name": account, "page_size": str(self.page_size), "order": "ASC",
                 "order_by": "TIME_CREATED"}
        if self.merchant_id:
            query["system.mid"] = self.merchant_id

        def page(number: int) -> tuple[list[dict], str]:
            response = session.request("GET", path, params={**query, "page": str(number)}, headers=GP_HEADERS)
            body = session.decode(f"GET {path}", response)
            items = body.get(key) if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise VendorRequestError("GP API", f"GET {path} answered without a '{key}' list")
            if number == 1 and str(body.get("total_record_count", "")).isdigit():
                nonlocal expected
                expected = int(body["total_record_count"])
            return items, response.content.decode(json.detect_encoding(response.content))

        expected: int | None = None
        pages, rows, number = [page(1)], 0, 1
        prefetched: dict[int, tuple[list[dict], str]] = {}
        while True:
            items = pages[-1][0]
            rows += len(items)
            if len(items) < self.page_size or (expected is not None and rows >= expected):
                return pages
            number += 1
            if number > MAX_PAGES:
                raise VendorRequestError("GP API", f"GET {path} did not end after {MAX_PAGES} pages of "
                                         f"{self.page_size}; load a shorter window")
            if number == 2 and expected is not None and self.workers > 1:
                last = min(MAX_PAGES, -(-expected // self.page_size))
                with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="gp-api-pages") as pool:
                    prefetched = dict(zip(range(2, last + 1), pool.map(page, range(2, last + 1))))
            pages.append(prefetched.pop(number) if number in prefetched else page(number))

    def list_all(self, path: str, key: str, params: dict[str, str]) -> list[dict]:
        """Every row of a settlement list, oldest first (``list_pages``)."""
        return [row for items, _ in self.list_pages(path, key, params) for row in items]

    # -- what the assets read (deposit dates inclusive, as GP's YYYY-MM-DD filters are) -------------
    def settlement_transactions(self, first_day: date, last_day: date) -> list[dict]:
        """Sales and refunds funded by deposits dated first_day..last_day."""
        return [row for items, _ in self.settlement_transaction_pages(first_day, last_day) for row in items]

    def settlement_transaction_pages(self, first_day: date, last_day: date) -> list[tuple[list[dict], str]]:
        """``settlement_transactions`` page by page, each with its JSON text (``list_pages``)."""
        return self.list_pages("/settlement/transactions", "transactions", {
            "from_deposit_time_created": first_day.isoformat(), "to_deposit_time_created": last_day.isoformat()})

    def deposits(self, first_day: date, last_day: date) -> list[dict]:
        return self.list_all("/settlement/deposits", "deposits", {
            "from_time_created": first_day.isoformat(), "to_time_created": last_day.isoformat()})

    def disputes(self, first_day: date, last_day: date) -> list[dict]:
        """Chargebacks and reversals that moved money in deposits dated first_day..last_day."""
        return self.list_all("/settlement/disputes", "disputes", {
            "from_deposit_time_created": first_day.isoformat(), "to_deposit_time_created": last_day.isoformat()})

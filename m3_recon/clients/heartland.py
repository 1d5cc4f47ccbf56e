"""The Heartland connector: Global Payments' GP API settlement reports over ``VendorSession``.

Signs in with ``POST /accesstoken`` (``secret`` = SHA-512 of nonce + app key; the key never leaves
this process), caches the bearer token until shortly before it expires, signs in again on a 401 once,
and reads the three settlement lists page by page (``page_size`` ≤ 1000, stopping at the first short
page). Every call goes through the request budget and bounded retries of ``VendorSession``. Returns
the JSON objects exactly as GP sent them.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import date, datetime, timezone
from typing import Callable

import dagster as dg
from pydantic import Field, PrivateAttr

from m3_recon.errors import VendorAuthError, VendorRequestError
from m3_recon.vendor_http import VendorSession

GP_API_VERSION = "2021-03-22"
GP_HEADERS = {"X-GP-Version": GP_API_VERSION, "Accept": "application/json"}  # no Content-Type on GETs: GP 502s
DATA_ACCOUNT_PREFIX = "DAA_"
REFRESH_MARGIN_SECONDS = 300
MAX_PAGES = 10_000
CREDENTIAL_HINT = "GP_API_APP_ID / GP_API_APP_KEY"


def access_token_secret(nonce: str, app_key: str) -> str:
    """GP's sign-in ``secret``: lower-case hex SHA-512 of the nonce followed by the app key."""
    return hashlib.sha512((nonce + app_key).encode("utf-8")).hexdigest()


class GpApiAccessToken:
    """A ``VendorSession`` authenticator holding one GP API access token.

    The token is renewed before it expires (a fifth of its lifetime early, at most five minutes) and
    whenever GP answers 401. ``clock`` is a monotonic clock in seconds.
    """

    def __init__(self, app_id: str, app_key: str, seconds_to_expire: int,
                 clock: Callable[[], float] = time.monotonic):
        self._app_id = app_id
        self._app_key = app_key
        self._seconds_to_expire = seconds_to_expire
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.accounts: dict[str, str] = {}  # account name -> id, from the token's scope
        self.sign_ins = 0

    def headers(self, session: VendorSession) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._sign_in(session)
            return {"Authorization": f"Bearer {self._token}"}

    def refresh(self, session: VendorSession) -> None:
        with self._lock:
            self._sign_in(session)

    def data_account_name(self, session: VendorSession) -> str:
        """The settlement-reporting (``DAA_``) account the token grants, signing in first if needed."""
        self.headers(session)
        names = [name for name, account_id in self.accounts.items() if account_id.startswith(DATA_ACCOUNT_PREFIX)]
        if not names:
            raise VendorAuthError("GP API", "the access token grants no settlement-reporting (DAA_) account; ask "
                                  "Global Payments to enable settlement reporting for the app in GP_API_APP_ID, "
                                  "or set GP_API_ACCOUNT_NAME")
        return names[0]

    def _sign_in(self, session: VendorSession) -> None:
        nonce = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        started = self._clock()
        body = session.json("POST", "/accesstoken", authenticated=False,
                            headers={**GP_HEADERS, "Content-Type": "application/json"},
                            json={"app_id": self._app_id, "nonce": nonce,
                                  "secret": access_token_secret(nonce, self._app_key),
                                  "grant_type": "client_credentials", "seconds_to_expire": self._seconds_to_expire})
        token, lifetime = body.get("token"), body.get("seconds_to_expire", self._seconds_to_expire)
        if not token or not isinstance(lifetime, int):
            raise VendorRequestError("GP API", "POST /accesstoken answered without a token and its lifetime")
        self._token = token
        self._renew_at = started + lifetime - min(REFRESH_MARGIN_SECONDS, lifetime // 5)
        self.accounts = {a.get("name", ""): a.get("id", "") for a in body.get("scope", {}).get("accounts", [])}
        self.sign_ins += 1


class HeartlandResource(dg.ConfigurableResource):
    """Read access to one Global Payments (Heartland) merchant's settlement reports on GP API."""

    app_id: str = Field(description="GP API app id (GP_API_APP_ID).")
    app_key: str = Field(description="GP API app key (GP_API_APP_KEY); never sent, logged or stored.")
    api_base: str = Field(default="https://apis.globalpay.com/ucp", description="GP_API_BASE")
    account_name: str = Field(default="", description="GP_API_ACCOUNT_NAME: the DAA_ data account; "
                              "empty = the one the access token grants")
    merchant_id: str = Field(default="", description="HEARTLAND_MERCHANT_ID: only this MID (system.mid); "
                             "empty = every MID of the account")
    token_seconds_to_expire: int = Field(default=3_600, ge=60, le=604_800, description="GP_API_TOKEN_SECONDS")
    max_requests_per_second: float = Field(default=10.0, gt=0, description="GP_API_MAX_REQUESTS_PER_SECOND")
    max_attempts: int = Field(default=5, ge=1, description="GP_API_MAX_ATTEMPTS: tries per request")
    timeout_seconds: float = Field(default=30.0, gt=0, description="GP_API_TIMEOUT_SECONDS per request")
    page_size: int = Field(default=1_000, ge=1, le=1_000, description="rows per page (GP allows at most 1000)")

    _session: VendorSession | None = PrivateAttr(default=None)
    _access_token: GpApiAccessToken | None = PrivateAttr(default=None)

    def session(self) -> VendorSession:
        if self._session is None:
            self._access_token = GpApiAccessToken(self.app_id, self.app_key, self.token_seconds_to_expire)
            self._session = VendorSession(
                vendor="GP API", base_url=self.api_base, credential_hint=CREDENTIAL_HINT, url_hint="GP_API_BASE",
                requests_per_second=self.max_requests_per_second, max_attempts=self.max_attempts,
                timeout_seconds=self.timeout_seconds, authenticator=self._access_token)
        return self._session

    def access_token(self) -> GpApiAccessToken:
        self.session()
        return self._access_token

    def list_all(self, path: str, key: str, params: dict[str, str]) -> list[dict]:
        """Every row of a settlement list, oldest first, page by page until a short (or the counted last) page."""
        session = self.session()
        account = self.account_name or self.access_token().data_account_name(session)
        query = {**params, "account_name": account, "page_size": str(self.page_size), "order": "ASC",
                 "order_by": "TIME_CREATED"}
        if self.merchant_id:
            query["system.mid"] = self.merchant_id
        rows: list[dict] = []
        expected: int | None = None
        for page in range(1, MAX_PAGES + 1):
            body = session.json("GET", path, params={**query, "page": str(page)}, headers=GP_HEADERS)
            items = body.get(key)
            if not isinstance(items, list):
                raise VendorRequestError("GP API", f"GET {path} answered without a '{key}' list")
            rows.extend(items)
            if page == 1 and str(body.get("total_record_count", "")).isdigit():
                expected = int(body["total_record_count"])
            if len(items) < self.page_size or (expected is not None and len(rows) >= expected):
                return rows
        raise VendorRequestError("GP API", f"GET {path} did not end after {MAX_PAGES} pages of {self.page_size}; "
                                 "load a shorter window")

    # -- what the assets read (deposit dates inclusive, as GP's YYYY-MM-DD filters are) -------------
    def settlement_transactions(self, first_day: date, last_day: date) -> list[dict]:
        """Sales and refunds funded by deposits dated first_day..last_day."""
        return self.list_all("/settlement/transactions", "transactions", {
            "from_deposit_time_created": first_day.isoformat(), "to_deposit_time_created": last_day.isoformat()})

    def deposits(self, first_day: date, last_day: date) -> list[dict]:
        return self.list_all("/settlement/deposits", "deposits", {
            "from_time_created": first_day.isoformat(), "to_time_created": last_day.isoformat()})

    def disputes(self, first_day: date, last_day: date) -> list[dict]:
        """Chargebacks and reversals that moved money in deposits dated first_day..last_day."""
        return self.list_all("/settlement/disputes", "disputes", {
            "from_deposit_time_created": first_day.isoformat(), "to_deposit_time_created": last_day.isoformat()})

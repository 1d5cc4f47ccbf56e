"""PayTrace's v1 JSON API over the sandbox's PayTrace ledger.

Implements the OAuth password grant (``POST /oauth/token``) and the v1 reporting calls m3-recon uses:
``POST /v1/batches/export``, ``/v1/batches/transaction_list`` and ``/v1/transactions/export/by_date_range``.
Wire format as PayTrace documents it: ``MM/DD/YYYY`` request dates; US-style Pacific timestamps without
a zone (``4/10/2026 4:06:30 PM``); amounts as bare decimal JSON numbers, tax as a string; the
``success`` / ``response_code`` / ``status_message`` envelope; no paging. Token problems are answered
in OAuth's shape (``invalid_grant``, ``invalid_token`` with "The access token expired"), rejected
requests in PayTrace's ``{"success": false, …, "errors": {"<code>": ["message"]}}``. Batch field names
follow the legacy ExportBatches record (PayTrace's JSON names are unconfirmed); error codes are the
sandbox's own. Quirks (``m3_recon.sandbox.quirks``): ``paytrace_no_settle_time`` leaves ``settled`` out of
batch records; ``amounts_as_strings`` writes every dollar amount as a string (``"110.00"``).
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import time
from datetime import date, datetime
from decimal import Decimal
from typing import Callable
from urllib.parse import parse_qsl

from m3_recon import decimal_json
from m3_recon.sandbox.paytrace_ledger import PACIFIC, Batch, CardTransaction, PayTraceLedger
from m3_recon.sandbox.server import Request, Response, SandboxClock, VendorApp

SANDBOX_PAYTRACE_USERNAME = "m3recon_sandbox_api"
SANDBOX_PAYTRACE_PASSWORD = "sandbox-Password-0001"

SUCCESS_MESSAGE = "Your request has been successfully completed."
ERROR_MESSAGE = "One or more errors has occurred."
TRANSACTION_TYPES = ("SALE", "AUTHORIZATION", "STR/FWD", "REFUND", "VOID", "SETTLED", "PENDING", "DECLINED")
MAX_LIVE_TOKENS = 1_000
INVALID_GRANT = ("The provided authorization grant is invalid, expired, revoked, does not match the "
                 "redirection URI used in the authorization request, or was issued to another client.")
US_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
BLANK_ADDRESS = {"name": "", "street_address": "", "street_address2": "", "city": "", "county": "", "state": "",
                 "zip": "", "country": ""}

# Sandbox error codes for rejected requests.
BAD_REQUEST_BODY, BAD_START_DATE, BAD_END_DATE, BAD_DATE_RANGE = "40", "41", "42", "43"
BAD_BATCH_NUMBER, BAD_TRANSACTION_TYPE, BAD_TRANSACTION_ID, UNKNOWN_PATH = "44", "45", "46", "47"


class PayTraceError(Exception):
    """A request PayTrace rejects: HTTP 400 with ``success: false`` and coded messages."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.status = code, status


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error = status, error

    def response(self) -> Response:
        headers = {}
        if self.error == "invalid_token":
            headers["WWW-Authenticate"] = (f'Bearer realm="PayTrace", error="invalid_token", '
                                           f'error_description="{self}"')
        return Response.json(self.status, {"error": self.error, "error_description": str(self)}, headers)


def wire_money(minor: int) -> int | Decimal:
    """A JSON number in dollars as PayTrace writes it: ``110`` or ``1234.5`` (never a float)."""
    return minor // 100 if minor % 100 == 0 else Decimal(minor) / 100


def wire_money_text(minor: int) -> str:
    return f"{'-' if minor < 0 else ''}{abs(minor) // 100}.{abs(minor) % 100:02d}"


def wire_timestamp(epoch: int) -> str:
    """``10/31/2026 8:33:20 PM``: Pacific wall time, no zone, 12-hour clock."""
    local = datetime.fromtimestamp(epoch, PACIFIC)
    return (f"{local.month}/{local.day}/{local.year} {local.hour % 12 or 12}:{local:%M:%S} "
            f"{'AM' if local.hour < 12 else 'PM'}")


def _wire(status: int, payload: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(status, decimal_json.dumps(payload).encode(),
                    {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


class PayTraceApp(VendorApp):
    name = "paytrace"

    def __init__(self, ledger: PayTraceLedger, clock: SandboxClock, username: str, password: str,
                 token_ttl_seconds: int = 7_200, wall_clock: Callable[[], float] = time.monotonic,
                 quirks: frozenset[str] = frozenset()):
        """Tokens expire ``token_ttl_seconds`` after issue on ``wall_clock`` (real time, not the sandbox
        clock, so moving the sandbox's "now" never logs clients out; tests pass a faster clock)."""
        self.ledger = ledger
        self.clock = clock
        self.username, self.password = username, password
        self.token_ttl_seconds = token_ttl_seconds
        self.wall_clock = wall_clock
        self.money = wire_money_text if "amounts_as_strings" in quirks else wire_money
        self.batch_settle_time = "paytrace_no_settle_time" not in quirks
        self._tokens: dict[str, float] = {}  # bearer token -> expiry on wall_clock
        self._lock = threading.Lock()
        self.tokens_issued = 0
        self.expired_token_refusals = 0
        self._routes = {
            "/v1/batches/export": self.export_batches,
            "/v1/batches/transaction_list": self.batch_transaction_list,
            "/v1/transactions/export/by_date_range": self.export_transactions_by_date,
        }

    # -- framework ---------------------------------------------------------------------------
    def fault_response(self, status: int, headers: dict[str, str]) -> Response:
        message = ("Too many requests have been made. Please wait and try again." if status == 429
                   else "The service is temporarily unavailable. Please try again later.")
        return _wire(status, {"success": False, "response_code": status, "status_message": message}, headers)

    def handle(self, request: Request) -> Response:
        try:
            if request.path == "/oauth/token" and request.method == "POST":
                return self.issue_token(request)
            route = self._routes.get(request.path.rstrip("/"))
            if route is None or request.method != "POST":
                raise PayTraceError(UNKNOWN_PATH, f"No API method at {request.method} {request.path}.", 404)
            self.authenticate(request)
            body = self._body(request)
            payload = route(body)
        except OAuthError as error:
            return error.response()
        except PayTraceError as error:
            return _wire(error.status, {"success": False, "response_code": 1, "status_message": ERROR_MESSAGE,
                                        "errors": {error.code: [str(error)]}})
        return _wire(200, {"success": True, "response_code": 1, "status_message": SUCCESS_MESSAGE, **payload})

    # -- OAuth ---------------------------------------------------------------------------------
    def issue_token(self, request: Request) -> Response:
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        if form.get("grant_type") != "password":
            raise OAuthError(400, "unsupported_grant_type",
                             "The authorization grant type is not supported by the authorization server.")
        if not form.get("username") or not form.get("password"):
            raise OAuthError(400, "invalid_request", "The request is missing a required parameter, includes an "
                             "unsupported parameter value, or is otherwise malformed.")
        valid_user = hmac.compare_digest(form["username"].encode(), self.username.encode())
        valid_password = hmac.compare_digest(form["password"].encode(), self.password.encode())
        if not (valid_user and valid_password):
            raise OAuthError(401, "invalid_grant", INVALID_GRANT)
        token = f"{secrets.token_hex(7)}:{secrets.token_hex(7)}:{secrets.token_hex(32)}"
        with self._lock:
            now = self.wall_clock()
            self._tokens = {t: expiry for t, expiry in self._tokens.items() if expiry > now}
            while len(self._tokens) >= MAX_LIVE_TOKENS:
                del self._tokens[next(iter(self._tokens))]
            self._tokens[token] = now + self.token_ttl_seconds
            self.tokens_issued += 1
        return Response.json(200, {"access_token": token, "token_type": "bearer",
                                   "expires_in": self.token_ttl_seconds})

    def authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            expiry = self._tokens.get(token) if scheme.lower() == "bearer" else None
            if expiry is None:
                raise OAuthError(401, "invalid_token", "The access token is invalid")
            if self.wall_clock() >= expiry:
                self.expired_token_refusals += 1
                raise OAuthError(401, "invalid_token", "The access token expired")

    # -- request parsing -------------------------------------------------------------------------
    @staticmethod
    def _body(request: Request) -> dict:
        try:
            body = decimal_json.loads(request.body or b"{}")
        except ValueError:
            raise PayTraceError(BAD_REQUEST_BODY, "Please provide the request as a JSON object.") from None
        if not isinstance(body, dict):
            raise PayTraceError(BAD_REQUEST_BODY, "Please provide the request as a JSON object.")
        return body

    @staticmethod
    def _date(body: dict, name: str, code: str) -> date:
        value = body.get(name)
        match = US_DATE.fullmatch(value) if isinstance(value, str) else None
        try:
            if match is None:
                raise ValueError(value)
            month, day, year = (int(part) for part in match.groups())
            return date(year, month, day)
        except ValueError:
            label = name.replace("_", " ").title()
            raise PayTraceError(code, f"Please provide a valid {label} formatted as MM/DD/YYYY.") from None

    def _date_range(self, body: dict) -> tuple[date, date]:
        start = self._date(body, "start_date", BAD_START_DATE)
        end = self._date(body, "end_date", BAD_END_DATE)
        if end < start:
            raise PayTraceError(BAD_DATE_RANGE, "The End Date must be on or after the Start Date.")
        return start, end

    # -- endpoints ---------------------------------------------------------------------------------
    def export_batches(self, body: dict) -> dict:
        start, end = self._date_range(body)
        now = self.clock.now()
        batches = [b for b in self.ledger.batches.values() if b.settled_at <= now and start <= b.business_date <= end]
        return {"batches": [self.render_batch(b) for b in sorted(batches, key=lambda b: b.number)]}

    def batch_transaction_list(self, body: dict) -> dict:
        number = body.get("batch_number")
        if isinstance(number, bool) or not isinstance(number, int):
            raise PayTraceError(BAD_BATCH_NUMBER, "Please provide a valid Batch Number.")
        batch = self.ledger.batches.get(number)
        if batch is None or batch.settled_at > self.clock.now():
            raise PayTraceError(BAD_BATCH_NUMBER, f"Batch Number {number} was not found.")
        return {"transactions": [self.render_transaction(t) for t in self.ledger.batch_transactions(batch)]}

    def export_transactions_by_date(self, body: dict) -> dict:
        start, end = self._date_range(body)
        wanted_type = body.get("transaction_type")
        if wanted_type is not None and wanted_type not in TRANSACTION_TYPES:
            raise PayTraceError(BAD_TRANSACTION_TYPE, "Please provide a valid Transaction Type: "
                                + ", ".join(TRANSACTION_TYPES) + ".")
        wanted_id = body.get("transaction_id")
        if wanted_id is not None and (isinstance(wanted_id, bool) or not isinstance(wanted_id, int)):
            raise PayTraceError(BAD_TRANSACTION_ID, "Please provide a valid Transaction ID.")
        now = self.clock.now()
        text = str(body.get("including_text") or "").lower()
        rows = []
        for txn in self.ledger.transactions.values():
            if txn.created > now or not start <= datetime.fromtimestamp(txn.created, PACIFIC).date() <= end:
                continue
            settled = self._settled(txn, now)
            if (wanted_type == "SETTLED" and not settled) or (wanted_type == "PENDING" and settled):
                continue
            if wanted_type not in (None, "SETTLED", "PENDING") and txn.type != wanted_type:
                continue
            if wanted_id is not None and txn.id != wanted_id:
                continue
            if body.get("customer_id") and txn.customer_id != body["customer_id"]:
                continue
            if text and text not in " ".join((txn.description, txn.invoice_id, txn.customer_id,
                                               txn.customer_reference_id, txn.billing_name)).lower():
                continue
            rows.append(self.render_transaction(txn, include_bin=body.get("include_bin") is True))
        return {"transactions": rows}

    # -- rendering as of the clock ---------------------------------------------------------------
    def _settled(self, txn: CardTransaction, now: int) -> bool:
        return txn.batch is not None and self.ledger.batches[txn.batch].settled_at <= now

    def render_batch(self, batch: Batch) -> dict:
        totals = self.ledger.totals(batch)
        settled = {"settled": wire_timestamp(batch.settled_at)} if self.batch_settle_time else {}
        return {"number": batch.number, **settled,
                "transaction_count": totals.transaction_count, "net_amount": self.money(totals.net_minor),
                "sales_count": totals.sales_count, "sales_amount": self.money(totals.sales_minor),
                "refund_count": totals.refund_count, "refund_amount": self.money(totals.refund_minor)}

    def render_transaction(self, txn: CardTransaction, include_bin: bool = False) -> dict:
        card = txn.card
        hidden = card.length - 4 - (6 if include_bin else 0)
        sale = txn.type == "SALE"
        return {
            "transaction_id": txn.id,
            "credit_card": {"masked_number": (card.bin if include_bin else "") + "*" * hidden + card.last4,
                            "expiration_month": card.expiration_month, "expiration_year": card.expiration_year},
            "transaction_type": txn.type,
            "description": txn.description,
            "amount": self.money(txn.amount_minor),
            "invoice_id": txn.invoice_id,
            "shipping_address": dict(BLANK_ADDRESS),
            "billing_address": {**BLANK_ADDRESS, "name": txn.billing_name, "zip": txn.billing_zip, "country": "US"},
            "receipt_emailed_to": "",
            "tax_amount": wire_money_text(txn.tax_minor) if txn.tax_minor is not None else "",
            "customer_reference_id": txn.customer_reference_id,
            "approval_code": txn.approval_code,
            "approval_message": "  EXACT MATCH - Approved and completed" if sale else "",
            "avs_response": "Full Exact Match" if sale else "",
            "csc_response": "Match" if sale else "",
            "status_code": "101" if sale else "106",
            "status_message": ("Your transaction was successfully approved." if sale
                               else "Your transaction was successfully refunded."),
            "created": {"through": txn.through, "at": wire_timestamp(txn.created),
                        "by": "erp.integration" if txn.through == "API" else "ar.clerk",
                        "from_ip": "203.0.113.24" if txn.through == "API" else "198.51.100.7"},
            "settled": (wire_timestamp(self.ledger.batches[txn.batch].settled_at)
                        if self._settled(txn, self.clock.now()) else ""),
            "customer_id": txn.customer_id,
        }


def sandbox_env(url: str) -> dict[str, str]:
    """Environment variables that point the PayTrace connector at a sandbox served at ``url``."""
    return {"PAYTRACE_USERNAME": SANDBOX_PAYTRACE_USERNAME, "PAYTRACE_PASSWORD": SANDBOX_PAYTRACE_PASSWORD,
            "PAYTRACE_API_BASE": url}

"""GP API's settlement-reporting wire format over the sandbox's Heartland ledger.

Implements what m3-recon reads from ``https://apis.globalpay.com/ucp``:

* ``POST /ucp/accesstoken``: ``secret`` must be the hex SHA-512 of ``nonce + app_key``; a wrong app
  id or secret is a 403 ``ACTION_NOT_AUTHORIZED`` / 40004, an out-of-range ``seconds_to_expire`` a
  400 / 40213, as GP answers. Tokens expire after the granted lifetime (wall clock) and then get 401
  ``NOT_AUTHENTICATED`` / 40001.
* ``GET /ucp/settlement/transactions``, ``/deposits``, ``/disputes`` with GP's filters (dates as
  ``YYYY-MM-DD``, inclusive), ``page`` / ``page_size`` (default 5, at most 1000), ``order`` /
  ``order_by`` and GP's list envelope; ``total_record_count`` only on page 1 of a query whose date
  range is a month or less. A populated ``Content-Type`` on these GETs is a 502, GP's known quirk.
* Every request needs ``X-GP-Version``; errors are GP's ``{error_code, detailed_error_code,
  detailed_error_description}`` (the 429 codes are this sandbox's own: GP does not publish them).

Wire conventions: amounts are minor-unit strings ("" when a group is empty; refunds, discounts,
fees and chargebacks negative inside a deposit); transaction times are UTC ``…sssZ`` with the
merchant's local time in ``time_created_reference``; deposit dates are bank business dates without
a time. A settlement dispute is listed once per money movement (its CHARGEBACK debit and, if won,
its REVERSAL credit, each with its own deposit) because GP lists "disputes that affected the bank
account" by deposit date; that per-stage listing is this sandbox's reading of an UNCONFIRMED detail,
as is the exact error code for a too-large ``page_size``. Quirks (``m3_recon.sandbox.quirks``):
``gp_millis_z`` writes the settlement dispute times as ``…sssZ`` too; ``gp_positive_fees`` writes a
deposit's discounts and fees as positive numbers (money out, as the deposit identity shows).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable

from m3_recon.sandbox.heartland_ledger import (
    MERCHANT, MERCHANT_TIMEZONE, Deposit, Dispute, DisputeAdjustment, HeartlandLedger, SettlementTxn,
)
from m3_recon.sandbox.server import Request, Response, SandboxClock, VendorApp

SANDBOX_GP_APP_ID = "m3reconSandboxApp0000000000000001"
SANDBOX_GP_APP_KEY = "m3rSandboxKey001"
APP_NAME = "m3-recon sandbox"
GP_MERCHANT = ("MER_m3recon0000000000000000000001", "Sandbox_merchant_heartland")
DATA_ACCOUNT = ("DAA_m3recon0000000000000000000001", "settlement_reporting")
DISPUTE_ACCOUNT = ("DIA_m3recon0000000000000000000001", "dispute_management")
DEFAULT_TOKEN_TTL_SECONDS = 3_600
TOKEN_SECONDS_RANGE = (60, 604_800)
DEFAULT_PAGE_SIZE = 5
MAX_PAGE_SIZE = 1_000
COUNTED_RANGE_DAYS = 31  # total_record_count is given only for date ranges up to a month
PAGING_PARAMS = {"page", "page_size", "order", "order_by"}
ACCOUNT_PARAMS = {"account_name", "account_id"}


class GpApiError(Exception):
    def __init__(self, status: int, error_code: str, detailed_error_code: str, description: str):
        super().__init__(description)
        self.status, self.error_code, self.detailed_error_code = status, error_code, detailed_error_code

    def response(self) -> Response:
        return Response.json(self.status, {"error_code": self.error_code,
                                           "detailed_error_code": self.detailed_error_code,
                                           "detailed_error_description": str(self)})


def unexpected(field_name: str) -> GpApiError:
    return GpApiError(400, "INVALID_REQUEST_DATA", "40213", f"{field_name} contains unexpected data")


def missing(field_name: str) -> GpApiError:
    return GpApiError(400, "MANDATORY_DATA_MISSING", "40005", f"Request expects the following fields : {field_name}")


def expected_secret(nonce: str, app_key: str) -> str:
    """What GP compares ``secret`` with (the vendor's side, kept apart from the connector's signing)."""
    return hashlib.sha512((nonce + app_key).encode("utf-8")).hexdigest()


def gp_timestamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def gp_local_timestamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).astimezone(MERCHANT_TIMEZONE).strftime(
        "%Y-%m-%dT%H:%M:%S.000")


def gp_settlement_timestamp(epoch: int) -> str:
    """Settlement dispute times come without milliseconds or zone (UTC here)."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def minor(amount: int, count: int = 1) -> str:
    """A minor-unit amount string; GP sends "" for an empty group."""
    return str(amount) if count else ""


def pluck(row: dict, path: tuple[str, ...]) -> str:
    value = row
    for key in path:
        value = value.get(key, "") if isinstance(value, dict) else ""
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Listing:
    """One list endpoint: its filters (param -> (match kind, field path)), sort keys and envelope names."""

    key: str  # the list's name in the envelope
    action: str
    filters: dict[str, tuple[str, tuple[str, ...]]]
    order_by: dict[str, tuple[str, ...]]
    default_order_by: str
    account_name_required: bool = False

    @property
    def params(self) -> set[str]:
        return set(self.filters) | PAGING_PARAMS | ACCOUNT_PARAMS


def _system_filters() -> dict[str, tuple[str, tuple[str, ...]]]:
    return {"system.mid": ("mid", ("system", "mid")), "system.hierarchy": ("eq", ("system", "hierarchy"))}


def _date_range(name: str, path: tuple[str, ...]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {f"from_{name}": ("from", path), f"to_{name}": ("to", path)}


CARD = ("payment_method", "card")
DISPUTED_CARD = ("transaction", "payment_method", "card")

TRANSACTIONS = Listing(
    key="transactions", action="TRANSACTION_LIST",
    filters={"deposit_status": ("eq", ("deposit_status",)), "arn": ("eq", CARD + ("arn",)),
             "deposit_id": ("eq", ("deposit_id",)), "number_first6": ("first6", CARD + ("masked_number_first6last4",)),
             "number_last4": ("last4", CARD + ("masked_number_first6last4",)), "brand": ("eq", CARD + ("brand",)),
             "brand_reference": ("eq", CARD + ("brand_reference",)), "authcode": ("eq", CARD + ("authcode",)),
             "reference": ("eq", ("reference",)), "status": ("eq", ("status",)),
             **_date_range("time_created", ("time_created",)),
             **_date_range("deposit_time_created", ("deposit_time_created",)),
             **_date_range("batch_time_created", ("batch_time_created",)), **_system_filters()},
    order_by={"TIME_CREATED": ("time_created",), "STATUS": ("status",), "TYPE": ("type",),
              "DEPOSIT_ID": ("deposit_id",), "ID": ("id",)},
    default_order_by="TIME_CREATED",
)
DEPOSITS = Listing(
    key="deposits", action="DEPOSIT_LIST",
    filters={"id": ("eq", ("id",)), "status": ("eq", ("status",)), "amount": ("eq", ("amount",)),
             "masked_account_number_last4": ("last4", ("bank_transfer", "masked_account_number_last4")),
             **_date_range("time_created", ("time_created",)), **_system_filters()},
    order_by={"TIME_CREATED": ("time_created",), "STATUS": ("status",), "TYPE": ("funding_type",),
              "DEPOSIT_ID": ("id",)},
    default_order_by="TIME_CREATED", account_name_required=True,
)
DISPUTES = Listing(
    key="disputes", action="DISPUTE_LIST",
    filters={"arn": ("eq", DISPUTED_CARD + ("arn",)), "brand": ("eq", DISPUTED_CARD + ("brand",)),
             "status": ("eq", ("status",)), "stage": ("eq", ("stage",)),
             **_date_range("stage_time_created", ("stage_time_created",)),
             **_date_range("deposit_time_created", ("deposit_time_created",)), **_system_filters()},
    order_by={"TIME_CREATED": ("stage_time_created",), "ID": ("id",), "STATUS": ("status",), "STAGE": ("stage",)},
    default_order_by="TIME_CREATED",
)


def _day(value: str, param: str) -> str:
    try:
        if len(value) == 10:
            return date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    raise unexpected(param)


def _predicate(kind: str, path: tuple[str, ...], value: str, param: str) -> Callable[[dict], bool]:
    if kind in ("from", "to"):
        bound = _day(value, param)

        def within(row: dict) -> bool:
            day = pluck(row, path)[:10]
            return bool(day) and (day >= bound if kind == "from" else day <= bound)

        return within
    if kind == "mid":
        if not value.isdigit():
            raise GpApiError(400, "INVALID_REQUEST_DATA", "40090", "system.mid value is invalid. Please check the "
                             "format and data provided is correct")
        return lambda row: pluck(row, path) == value
    if kind == "first6":
        return lambda row: pluck(row, path)[:6] == value
    if kind == "last4":
        return lambda row: pluck(row, path)[-4:] == value[-4:]
    return lambda row: pluck(row, path) == value


def _counted(params: dict[str, str]) -> bool:
    """Whether a from_/to_ date pair spans a month or less (GP then reports total_record_count)."""
    for name, value in params.items():
        if name.startswith("from_") and f"to_{name[5:]}" in params:
            span = date.fromisoformat(params[f"to_{name[5:]}"]) - date.fromisoformat(value)
            if span.days <= COUNTED_RANGE_DAYS:
                return True
    return False


class HeartlandApp(VendorApp):
    name = "heartland"

    def __init__(self, ledger: HeartlandLedger, clock: SandboxClock, app_id: str, app_key: str,
                 token_ttl_seconds: int = DEFAULT_TOKEN_TTL_SECONDS, quirks: frozenset[str] = frozenset()):
        self.ledger = ledger
        self.settlement_time = gp_timestamp if "gp_millis_z" in quirks else gp_settlement_timestamp
        self.fee_sign = 1 if "gp_positive_fees" in quirks else -1
        self.clock = clock
        self.app_id = app_id
        self.app_key = app_key
        self.token_ttl_seconds = token_ttl_seconds
        self._tokens: dict[str, float] = {}  # token -> wall-clock expiry
        self._lock = threading.Lock()
        self._serial = itertools.count(1)
        self._issued = 0

    # -- framework ---------------------------------------------------------------------------
    def fault_response(self, status: int, headers: dict[str, str]) -> Response:
        if status == 429:
            error = GpApiError(429, "TOO_MANY_REQUESTS", "42901", "Too many requests; retry later")
        else:
            error = GpApiError(status, "SYSTEM_ERROR_DOWNSTREAM", "50013", "Unable to process the request at "
                               "this time")
        response = error.response()
        response.headers.update(headers)
        return response

    def expire_tokens(self) -> None:
        """End every issued token now, as if its lifetime had run out (the next call gets a 401)."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    def handle(self, request: Request) -> Response:
        try:
            if request.headers.get("x-gp-version", "") == "":
                raise missing("X-GP-Version")
            path = request.path.rstrip("/")
            if path == "/ucp/accesstoken":
                if request.method != "POST":
                    raise self._not_found(request)
                return Response.json(200, self._access_token(request))
            listing = {"/ucp/settlement/transactions": TRANSACTIONS, "/ucp/settlement/deposits": DEPOSITS,
                       "/ucp/settlement/disputes": DISPUTES}.get(path)
            if listing is None or request.method != "GET":
                raise self._not_found(request)
            self._authenticate(request)
            if request.headers.get("content-type", ""):
                raise GpApiError(502, "SYSTEM_ERROR_DOWNSTREAM", "50002", "Bad Gateway")
            return Response.json(200, self._list(listing, request))
        except GpApiError as error:
            return error.response()

    @staticmethod
    def _not_found(request: Request) -> GpApiError:
        return GpApiError(404, "RESOURCE_NOT_FOUND", "40008", f"Requested resource not found at this "
                          f"{request.method} {request.path}")

    # -- auth --------------------------------------------------------------------------------------
    def _access_token(self, request: Request) -> dict:
        try:
            body = request.json()
        except ValueError:
            raise GpApiError(400, "INVALID_REQUEST_DATA", "40213", "Request body is not valid JSON") from None
        for name in ("app_id", "nonce", "secret", "grant_type"):
            if not body.get(name):
                raise missing(name)
        if body["grant_type"] != "client_credentials":
            raise unexpected("grant_type")
        lifetime = body.get("seconds_to_expire", self.token_ttl_seconds)
        if not isinstance(lifetime, int) or not TOKEN_SECONDS_RANGE[0] <= lifetime <= TOKEN_SECONDS_RANGE[1]:
            raise unexpected("seconds_to_expire")
        if body["app_id"] != self.app_id:
            raise GpApiError(403, "ACTION_NOT_AUTHORIZED", "40004", "App credentials not recognized")
        if str(body["secret"]).lower() != expected_secret(str(body["nonce"]), self.app_key):
            raise GpApiError(403, "ACTION_NOT_AUTHORIZED", "40004",
                             "Credentials not recognized to create access token.")
        lifetime = min(lifetime, self.token_ttl_seconds)
        with self._lock:
            self._issued += 1
            token = hashlib.sha256(f"{self.app_id}:{self._issued}".encode()).hexdigest()[:28]
            self._tokens[token] = time.time() + lifetime
        permissions = ["DAA_GET_List", "DAA_GET_Single", "DIA_GET_List"]
        return {
            "token": token, "type": "Bearer", "app_id": self.app_id, "app_name": APP_NAME,
            "time_created": gp_timestamp(int(time.time())), "seconds_to_expire": lifetime,
            "email": "sandbox@m3-recon.invalid",
            "scope": {"merchant_id": GP_MERCHANT[0], "merchant_name": GP_MERCHANT[1], "accounts": [
                {"id": DATA_ACCOUNT[0], "name": DATA_ACCOUNT[1], "permissions": permissions},
                {"id": DISPUTE_ACCOUNT[0], "name": DISPUTE_ACCOUNT[1], "permissions": permissions}]},
        }

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            expiry = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if expiry is None or time.time() >= expiry:
            raise GpApiError(401, "NOT_AUTHENTICATED", "40001", "Invalid access token")

    # -- lists -----------------------------------------------------------------------------------
    def _list(self, listing: Listing, request: Request) -> dict:
        params: dict[str, str] = {}
        for name, value in request.query:
            if name not in listing.params:
                raise unexpected(name)
            params[name] = value
        self._check_account(params, listing)
        page = self._int(params.get("page", "1"), "page")
        page_size = self._int(params.get("page_size", str(DEFAULT_PAGE_SIZE)), "page_size")
        if page < 1:
            raise unexpected("page")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise unexpected("page_size")
        order = params.get("order", "ASC")
        order_by = params.get("order_by", listing.default_order_by)
        if order not in ("ASC", "DESC"):
            raise unexpected("order")
        if order_by not in listing.order_by:
            raise unexpected("order_by")
        filters = {name: value for name, value in params.items() if name in listing.filters}
        checks = [_predicate(*listing.filters[name], value, name) for name, value in filters.items()]
        rows = [row for row in self._rows(listing) if all(check(row) for check in checks)]
        rows.sort(key=lambda row: pluck(row, listing.order_by[order_by]), reverse=order == "DESC")
        selected = rows[(page - 1) * page_size: page * page_size]
        envelope = {
            "merchant_id": GP_MERCHANT[0], "merchant_name": GP_MERCHANT[1],
            "account_id": DATA_ACCOUNT[0], "account_name": DATA_ACCOUNT[1],
            "current_page_size": len(selected), "filter": filters,
            "paging": {"page": page, "page_size": page_size, "order": order, "order_by": order_by},
            listing.key: selected,
            "action": {"id": f"ACT_sandbox{next(self._serial):010d}", "type": listing.action,
                       "time_created": gp_timestamp(self.clock.now()), "result_code": "SUCCESS",
                       "app_id": self.app_id, "app_name": APP_NAME},
        }
        if page == 1 and _counted(filters):
            envelope = {"total_record_count": len(rows), **envelope}
        return envelope

    @staticmethod
    def _int(value: str, param: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise unexpected(param) from None

    @staticmethod
    def _check_account(params: dict[str, str], listing: Listing) -> None:
        if listing.account_name_required and not params.get("account_name"):
            raise missing("account_name")
        name, account_id = params.get("account_name"), params.get("account_id")
        if (name is not None and name != DATA_ACCOUNT[1]) or (account_id is not None and account_id != DATA_ACCOUNT[0]):
            raise GpApiError(403, "ACTION_NOT_AUTHORIZED", "40003",
                             "Token does not match account_id or account_name in the request")

    def _rows(self, listing: Listing) -> list[dict]:
        now = self.clock.now()
        ledger = self.ledger
        if listing is TRANSACTIONS:
            return [self.render_transaction(t, now) for t in ledger.transactions.values() if t.created <= now]
        if listing is DEPOSITS:
            return [self.render_deposit(d, now) for d in ledger.deposits.values() if d.created <= now]
        return [self.render_dispute(d, a, now) for d in ledger.disputes.values() for a in d.adjustments
                if a.created <= now]

    # -- rendering as of the clock ----------------------------------------------------------------
    def _posted(self, deposit_id: str | None, now: int) -> Deposit | None:
        deposit = self.ledger.deposits.get(deposit_id) if deposit_id else None
        return deposit if deposit is not None and deposit.created <= now else None

    def render_transaction(self, txn: SettlementTxn, now: int) -> dict:
        batch = self.ledger.batches[txn.batch]
        deposit = self._posted(txn.deposit, now)
        card = txn.card
        return {
            "id": txn.id, "time_created": gp_timestamp(txn.created),
            "time_created_reference": gp_local_timestamp(txn.created),
            "status": "FUNDED" if deposit else "CAPTURED", "type": txn.type, "channel": "CNP",
            "amount": minor(txn.amount), "currency": self.ledger.currency, "reference": txn.reference,
            "description": txn.description, "country": "US", "parent_resource_id": txn.parent or "",
            "batch_id": batch.id, "batch_time_created": gp_timestamp(batch.closed_at) if batch.closed_at <= now else "",
            "deposit_id": deposit.id if deposit else "",
            "deposit_status": deposit.status_at(now) if deposit else "",
            "deposit_time_created": deposit.deposit_date.isoformat() if deposit else "",
            "deposit_amount": str(abs(deposit.net)) if deposit else "",
            "system": dict(MERCHANT),
            "payment_method": {"result": "00", "message": "APPROVAL", "entry_mode": card.entry_mode,
                               "name": card.cardholder, "card": {
                                   "arn": card.arn, "masked_number_first6last4": card.masked_number,
                                   "brand": card.brand, "authcode": card.authcode,
                                   "brand_reference": card.brand_reference}},
            "gratuity_amount": "", "cashback_amount": "",
            "merchant_amount": minor(txn.amount), "merchant_currency": self.ledger.currency,
        }

    def render_deposit(self, deposit: Deposit, now: int) -> dict:
        d = deposit
        return {
            "id": d.id, "time_created": d.deposit_date.isoformat(), "status": d.status_at(now),
            "funding_type": "CREDIT" if d.net >= 0 else "DEBIT", "amount": str(abs(d.net)), "currency": self.ledger.currency,
            "aggregation_model": "H-By Date",
            "bank_transfer": {"masked_account_number_last4": "XXXXXX4321", "bank": {"code": "XXXXX0210"}},
            "system": {key: MERCHANT[key] for key in ("mid", "hierarchy", "name", "dba")},
            "sales": {"count": d.sales_count, "amount": minor(d.sales_amount, d.sales_count)},
            "refunds": {"count": d.refunds_count, "amount": minor(-d.refunds_amount, d.refunds_count)},
            "discounts": {"count": d.discounts_count,
                          "amount": minor(self.fee_sign * d.discounts_amount, d.discounts_count)},
            "tax": {"count": 0, "amount": ""},
            "disputes": {"chargebacks": {"count": d.chargebacks_count,
                                         "amount": minor(-d.chargebacks_amount, d.chargebacks_count)},
                         "reversals": {"count": d.reversals_count,
                                       "amount": minor(d.reversals_amount, d.reversals_count)}},
            "fees": {"amount": minor(self.fee_sign * d.fees_amount, d.fees_amount)},
        }

    def render_dispute(self, dispute: Dispute, adjustment: DisputeAdjustment, now: int) -> dict:
        sale = self.ledger.transactions[dispute.transaction]
        deposit = self._posted(adjustment.deposit, now)
        latest = max((a for a in dispute.adjustments if a.created <= now), key=lambda a: a.created)
        status, result = dispute.status_at(now)
        card = sale.card
        return {
            "id": dispute.id, "status": status, "stage": adjustment.stage,
            "stage_time_created": self.settlement_time(adjustment.created),
            "amount": minor(dispute.amount), "currency": self.ledger.currency, "funding_type": adjustment.funding_type,
            "reason_code": dispute.reason_code, "reason_description": dispute.reason_description,
            "time_to_respond_by": self.settlement_time(dispute.respond_by), "result": result,
            "deposit_id": deposit.id if deposit else "",
            "deposit_time_created": deposit.deposit_date.isoformat() if deposit else "",
            "last_adjustment_amount": minor(dispute.amount), "last_adjustment_currency": self.ledger.currency,
            "last_adjustment_funding": latest.funding_type,
            "last_adjustment_time_created": self.settlement_time(latest.created),
            "system": dict(MERCHANT),
            "transaction": {
                "time_created": self.settlement_time(sale.created),
                "merchant_time_created": gp_local_timestamp(sale.created)[:19], "type": sale.type,
                "amount": minor(sale.amount), "currency": self.ledger.currency, "reference": sale.reference,
                "payment_method": {"card": {"masked_number_first6last4": card.masked_number, "arn": card.arn,
                                            "brand": card.brand, "authcode": card.authcode,
                                            "brand_reference": card.brand_reference}}},
        }


def sandbox_env(url: str) -> dict[str, str]:
    """Environment variables that point m3-recon's Heartland (GP API) resource at a sandbox at ``url``."""
    return {"GP_API_APP_ID": SANDBOX_GP_APP_ID, "GP_API_APP_KEY": SANDBOX_GP_APP_KEY,
            "GP_API_BASE": f"{url.rstrip('/')}/ucp", "HEARTLAND_MERCHANT_ID": MERCHANT["mid"]}

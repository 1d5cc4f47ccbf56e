"""Stripe's REST wire format over the sandbox's Stripe ledger.

Implements the endpoints m3-recon uses (balance transactions, payouts, charges, customers and
updating a customer's metadata, events) with Stripe's
parameter grammar (``created[gte]``, ``expand[]``, cursors), newest-first ordering, ``has_more``
paging, and Stripe's error JSON for unknown parameters, bad values, missing objects and bad keys.
"""

from __future__ import annotations

import itertools
import math
import re
from bisect import bisect_left, bisect_right
from urllib.parse import parse_qsl, urlsplit

from m3_recon.sandbox.server import Request, Response, SandboxClock, VendorApp
from m3_recon.sandbox.customer_master import StripeCustomer
from m3_recon.sandbox.stripe_events import Event, deliver_webhooks, ledger_events, render_event
from m3_recon.sandbox.stripe_ledger import RECONCILIATION_DELAY, BalanceTxn, Charge, Dispute, Payout, Refund, StripeLedger

RANGE_OPERATORS = {"gt", "gte", "lt", "lte"}
LIST_PARAMS = {"limit", "starting_after", "ending_before", "expand"}
BALANCE_TXN_PARAMS = LIST_PARAMS | {"created", "payout", "type", "source", "currency"}
PAYOUT_PARAMS = LIST_PARAMS | {"created", "arrival_date", "status", "destination"}
PAYOUT_STATUS_FILTERS = {"pending", "paid", "failed", "canceled"}
CUSTOMER_PARAMS = LIST_PARAMS | {"created", "email"}
EVENT_PARAMS = LIST_PARAMS | {"created", "type", "types", "delivery_success"}


class StripeError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def response(self, request_id: str) -> Response:
        error = {"message": str(self), "type": self.type}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return Response.json(self.status, {"error": error}, {"Request-Id": request_id})


def parse_params(query: list[tuple[str, str]], allowed: set[str]) -> dict:
    """Stripe's form grammar: ``a=1``, ``a[b]=2`` (nested), ``a[]=x`` / ``a[0]=x`` (lists)."""
    params: dict = {}
    for key, value in query:
        match = re.fullmatch(r"([a-z_]+)(?:\[([a-z_]*|\d+)\])?", key)
        if not match or match.group(1) not in allowed:
            raise StripeError(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
        name, sub = match.groups()
        if sub is None:
            params[name] = value
        elif sub == "" or sub.isdigit():
            params.setdefault(name, [])
            if not isinstance(params[name], list):
                raise StripeError(400, f"Invalid array: {name}", code="parameter_invalid_array", param=name)
            params[name].append(value)
        else:
            if name not in ("created", "arrival_date") or sub not in RANGE_OPERATORS:
                raise StripeError(400, f"Received unknown parameter: {key}", code="parameter_unknown",
                                  param=key)
            params.setdefault(name, {})
            if not isinstance(params[name], dict):
                raise StripeError(400, f"Invalid hash: {name}", code="parameter_invalid_hash", param=name)
            params[name][sub] = value
    return params


def _int(value: str, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param)


def range_bounds(params: dict, name: str) -> tuple[float, float]:
    """The inclusive (low, high) an epoch field must lie in, from ``name=…`` or ``name[gte]=…`` style parameters."""
    spec = params.get(name)
    if spec is None:
        return -math.inf, math.inf
    if isinstance(spec, str):
        exact = _int(spec, name)
        return exact, exact
    low, high = -math.inf, math.inf
    for op, raw in spec.items():
        bound = _int(raw, f"{name}[{op}]")
        if op not in ("gt", "gte", "lt", "lte"):
            raise StripeError(400, f"Received unknown parameter: {name}[{op}]", param=f"{name}[{op}]")
        if op in ("gt", "gte"):
            low = max(low, bound + (op == "gt"))
        else:
            high = min(high, bound - (op == "lt"))
    return low, high


def range_filter(params: dict, name: str):
    """A predicate on an epoch field from ``name=…`` or ``name[gte]=…`` style parameters."""
    low, high = range_bounds(params, name)
    return lambda value: low <= value <= high


class StripeApp(VendorApp):
    name = "stripe"

    def __init__(self, ledger: StripeLedger, clock: SandboxClock, api_key: str):
        self.ledger = ledger
        self.clock = clock
        self.api_key = api_key
        self._request_ids = itertools.count(1)
        # Stable newest-first order: (created, generation order) descending.
        self._txn_order = {t.id: (t.created, i) for i, t in enumerate(ledger.balance_transactions.values())}
        self._txns_by_created = sorted(ledger.balance_transactions.values(), key=lambda t: self._txn_order[t.id])
        self._txn_created = [t.created for t in self._txns_by_created]  # bisected: a page reads only its window
        self._payout_order = {p.id: (p.created, i) for i, p in enumerate(ledger.payouts.values())}
        self._payouts = sorted(ledger.payouts.values(), key=lambda p: self._payout_order[p.id])
        self.customers: dict[str, StripeCustomer] = dict(ledger.customer_master.customers) \
            if ledger.customer_master else {}
        self._customer_order = {c.id: (c.created, i) for i, c in enumerate(self.customers.values())}
        self._customers = sorted(self.customers.values(), key=lambda c: self._customer_order[c.id])
        self._events = ledger_events(ledger)
        self._event_order = {e.id: (e.created, i) for i, e in enumerate(self._events)}
        self._events_in_order = sorted(self._events, key=lambda e: self._event_order[e.id])

    # -- framework ---------------------------------------------------------------------------
    def fault_response(self, status: int, headers: dict[str, str]) -> Response:
        if status == 429:
            error = StripeError(429, "Request rate limit exceeded. Learn more about rate limits here "
                                "https://stripe.com/docs/rate-limits.", code="rate_limit")
        else:
            error = StripeError(status, "An unknown error occurred", type_="api_error")
        response = error.response(self._request_id())
        response.headers.update(headers)
        return response

    def control(self, request: Request) -> Response | None:
        """``POST /_sandbox/webhooks`` JSON ``{"url": …, "secret": "whsec_…", "created_gt": 0}``: deliver every
        event so far (after ``created_gt``) to a loopback URL, signed like Stripe."""
        if request.path != "/_sandbox/webhooks" or request.method != "POST":
            return None
        payload = request.json()
        url, secret = str(payload.get("url", "")), str(payload.get("secret", ""))
        if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1") or not secret:
            return Response.json(400, {"error": "give a loopback url (http://127.0.0.1:…) and the endpoint secret"})
        delivered = deliver_webhooks(self, url, secret, created_gt=int(payload.get("created_gt", -1)))
        return Response.json(200, {"delivered": len(delivered),
                                   "accepted": sum(1 for _, status in delivered if status == 200)})

    def _request_id(self) -> str:
        return f"req_sandbox{next(self._request_ids):08d}"

    def handle(self, request: Request) -> Response:
        request_id = self._request_id()
        try:
            self._authenticate(request)
            if request.method == "POST" and request.path.startswith("/v1/customers/"):
                payload = self.update_customer(request.path[len("/v1/customers/"):],
                                               parse_qsl(request.body.decode(), keep_blank_values=True))
            elif request.method != "GET":
                raise StripeError(404, f"Unrecognized request URL ({request.method}: {request.path}).")
            else:
                payload = self._route(request)
        except StripeError as error:
            return error.response(request_id)
        return Response.json(200, payload, {"Request-Id": request_id, "Stripe-Version": request.headers.get(
            "stripe-version", "2026-10-28.endive")})

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if not header:
            raise StripeError(401, "You did not provide an API key. You need to provide your API key in "
                              "the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                              "YOUR_SECRET_KEY').")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token != self.api_key:
            masked = (token[:8] + "*" * max(len(token) - 12, 0) + token[-4:]) if len(token) > 12 else "****"
            raise StripeError(401, f"Invalid API Key provided: {masked}")

    def _route(self, request: Request) -> dict:
        path, query = request.path.rstrip("/"), request.query
        if path == "/v1/balance_transactions":
            return self.list_balance_transactions(parse_params(query, BALANCE_TXN_PARAMS))
        if path == "/v1/payouts":
            return self.list_payouts(parse_params(query, PAYOUT_PARAMS))
        if path == "/v1/customers":
            return self.list_customers(parse_params(query, CUSTOMER_PARAMS))
        if path == "/v1/events":
            return self.list_events(parse_params(query, EVENT_PARAMS))
        for prefix, table, render in (
            ("/v1/balance_transactions/", self.ledger.balance_transactions, self.render_txn),
            ("/v1/payouts/", self.ledger.payouts, self.render_payout),
            ("/v1/charges/", self.ledger.charges, self.render_charge),
            ("/v1/customers/", self.customers, self.render_customer),
            ("/v1/events/", {e.id: e for e in self._events}, self.render_event),
        ):
            if path.startswith(prefix) and "/" not in path[len(prefix):]:
                params = parse_params(query, {"expand"})
                object_id = path[len(prefix):]
                obj = table.get(object_id)
                if obj is None or obj.created > self.clock.now():
                    raise StripeError(404, f"No such {prefix.split('/')[2].rstrip('s')}: '{object_id}'",
                                      code="resource_missing", param="id")
                return render(obj, expand_source="source" in params.get("expand", []))
        raise StripeError(404, f"Unrecognized request URL (GET: {request.path}). Please see "
                          "https://stripe.com/docs or we can help at https://support.stripe.com/.")

    # -- lists -----------------------------------------------------------------------------------
    def _page(self, url: str, items: list, order: dict, params: dict, render) -> dict:
        """One page of ``items`` (oldest first by ``order``), newest first as Stripe lists; the cursor is
        found by bisection, so a page costs its own objects, not the whole list."""
        limit = _int(params.get("limit", "10"), "limit")
        if not 1 <= limit <= 100:
            raise StripeError(400, "This value must be between 1 and 100 (it currently is "
                              f"{limit}).", code="parameter_invalid_integer", param="limit")
        if "starting_after" in params and "ending_before" in params:
            raise StripeError(400, "You may only specify one of these parameters: ending_before, "
                              "starting_after.", param="starting_after")
        key = lambda obj: order[obj.id]  # noqa: E731
        low, high = 0, len(items)  # items[low:high]: the objects beyond the cursor
        if "starting_after" in params:
            high = bisect_left(items, self._cursor(params["starting_after"], order, "starting_after"), key=key)
        elif "ending_before" in params:
            low = bisect_right(items, self._cursor(params["ending_before"], order, "ending_before"), key=key)
        # after a cursor (or none): the newest of the older objects; before one: the oldest of the newer ones
        page = items[low:min(high, low + limit)] if "ending_before" in params else items[max(low, high - limit):high]
        expand = params.get("expand", [])
        if not isinstance(expand, list):
            raise StripeError(400, "Invalid array", code="parameter_invalid_array", param="expand")
        expand_source = "data.source" in expand
        return {"object": "list", "url": url, "has_more": high - low > limit,
                "data": [render(obj, expand_source=expand_source) for obj in reversed(page)]}

    def _cursor(self, object_id: str, order: dict, param: str):
        if object_id not in order:
            raise StripeError(400, f"No such object: '{object_id}'", code="resource_missing", param=param)
        return order[object_id]

    def list_balance_transactions(self, params: dict) -> dict:
        now = self.clock.now()
        low, high = range_bounds(params, "created")
        high = min(high, now)
        items = self._txns_by_created[bisect_left(self._txn_created, low):bisect_right(self._txn_created, high)]
        if "payout" in params:
            payout = self.ledger.payouts.get(params["payout"])
            if payout is None or payout.created > now:
                raise StripeError(400, f"No such payout: '{params['payout']}'", code="resource_missing",
                                  param="payout")
            items = [t for t in items if t.payout == payout.id]
        for name in ("type", "source", "currency"):
            if name in params:
                items = [t for t in items if getattr(t, name) == params[name]]
        return self._page("/v1/balance_transactions", items, self._txn_order, params, self.render_txn)

    def list_payouts(self, params: dict) -> dict:
        now = self.clock.now()
        created, arrival = range_filter(params, "created"), range_filter(params, "arrival_date")
        items = [p for p in self._payouts if p.created <= now and created(p.created) and arrival(p.arrival_date)]
        if "status" in params:
            if params["status"] not in PAYOUT_STATUS_FILTERS:
                raise StripeError(400, f"Invalid status: must be one of {', '.join(sorted(PAYOUT_STATUS_FILTERS))}",
                                  code="parameter_invalid_string", param="status")
            items = [p for p in items if self.payout_status(p, now) == params["status"]]
        return self._page("/v1/payouts", items, self._payout_order, params, self.render_payout)

    def list_customers(self, params: dict) -> dict:
        created = range_filter(params, "created")
        items = [c for c in self._customers if created(c.created)
                 and ("email" not in params or c.email == params["email"])]
        return self._page("/v1/customers", items, self._customer_order, params, self.render_customer)

    def update_customer(self, customer_id: str, form: list[tuple[str, str]]) -> dict:
        """``POST /v1/customers/{id}`` with ``metadata[key]=value`` pairs (an empty value deletes the key)."""
        customer = self.customers.get(customer_id)
        if customer is None:
            raise StripeError(404, f"No such customer: '{customer_id}'", code="resource_missing", param="id")
        for key, value in form:
            match = re.fullmatch(r"metadata\[([A-Za-z0-9_\-]{1,40})\]", key)
            if not match:
                raise StripeError(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
            if value:
                customer.metadata[match.group(1)] = value[:500]
            else:
                customer.metadata.pop(match.group(1), None)
        return self.render_customer(customer)

    def events_until(self, now: int) -> list[Event]:
        return [e for e in self._events if e.created <= now]

    def list_events(self, params: dict) -> dict:
        created = range_filter(params, "created")
        types = params.get("types", [])
        if "type" in params:
            types = [params["type"]]
        if not isinstance(types, list) or len(types) > 20:
            raise StripeError(400, "types must be a list of at most 20 event types", param="types")
        wanted = [re.compile(re.escape(t).replace(r"\*", ".*") + "$") for t in types]
        now = self.clock.now()
        items = [e for e in self._events_in_order if e.created <= now and created(e.created)
                 and (not wanted or any(w.match(e.type) for w in wanted))]
        return self._page("/v1/events", items, self._event_order, params, self.render_event)

    # -- rendering as of the clock ----------------------------------------------------------------
    def render_customer(self, customer: StripeCustomer, expand_source: bool = False) -> dict:
        return {"id": customer.id, "object": "customer", "created": customer.created, "email": customer.email,
                "name": customer.name, "metadata": dict(customer.metadata), "livemode": False,
                "currency": "usd", "delinquent": False, "description": None}

    def render_event(self, event: Event, expand_source: bool = False) -> dict:
        table = {"charge": self.ledger.charges, "refund": self.ledger.refunds, "dispute": self.ledger.disputes,
                 "payout": self.ledger.payouts}[event.object_kind]
        return render_event(event, self._render_any(table[event.object_id]))

    @staticmethod
    def payout_status(payout: Payout, now: int) -> str:
        if payout.failed_at is not None and now >= payout.failed_at:
            return "failed"
        return "paid" if now >= payout.arrival_date else "in_transit"

    def render_txn(self, txn: BalanceTxn, expand_source: bool = False) -> dict:
        now = self.clock.now()
        source = txn.source
        if expand_source and source is not None:
            obj = self.ledger.source_object(source)
            source = self._render_any(obj) if obj is not None else source
        return {
            "id": txn.id, "object": "balance_transaction", "amount": txn.amount,
            "available_on": txn.available_on, "balance_type": "payments", "created": txn.created,
            "currency": txn.currency, "description": txn.description,
            "exchange_rate": float(txn.exchange_rate) if txn.exchange_rate is not None else None,
            "fee": txn.fee, "fee_details": txn.fee_details, "net": txn.net,
            "reporting_category": txn.reporting_category, "source": source,
            "status": "available" if now >= txn.available_on else "pending", "type": txn.type,
        }

    def _render_any(self, obj) -> dict:
        if isinstance(obj, Charge):
            return self.render_charge(obj)
        if isinstance(obj, Refund):
            return self.render_refund(obj)
        if isinstance(obj, Dispute):
            return self.render_dispute(obj)
        return self.render_payout(obj)

    def render_charge(self, charge: Charge, expand_source: bool = False) -> dict:
        now = self.clock.now()
        refunded = sum(r.amount for r in self.ledger.refunds.values() if r.charge == charge.id and r.created <= now)
        disputed = any(d.charge == charge.id and d.created <= now for d in self.ledger.disputes.values())
        return {
            "id": charge.id, "object": "charge", "amount": charge.amount, "amount_captured": charge.amount,
            "amount_refunded": refunded, "balance_transaction": charge.balance_transaction,
            "billing_details": {"address": None, "email": None, "name": charge.billing_name, "phone": None},
            "captured": True, "created": charge.created, "currency": charge.currency,
            "customer": charge.customer, "description": charge.description, "disputed": disputed,
            "livemode": False, "metadata": dict(charge.metadata), "paid": True,
            "payment_intent": None,
            "payment_method_details": {"type": "card", "card": {
                "brand": charge.brand, "last4": charge.last4, "country": "US", "funding": "credit",
                "exp_month": 8, "exp_year": 2030, "network": charge.brand}},
            "refunded": refunded >= charge.amount, "statement_descriptor": charge.statement_descriptor,
            "status": "succeeded",
        }

    def render_refund(self, refund: Refund) -> dict:
        return {"id": refund.id, "object": "refund", "amount": refund.amount,
                "balance_transaction": refund.balance_transaction, "charge": refund.charge,
                "created": refund.created, "currency": refund.currency, "metadata": {},
                "reason": "requested_by_customer", "status": "succeeded"}

    def render_dispute(self, dispute: Dispute) -> dict:
        now = self.clock.now()
        won = dispute.won_at is not None and now >= dispute.won_at
        txns = [self.ledger.balance_transactions[t] for t in dispute.balance_transactions]
        return {"id": dispute.id, "object": "dispute", "amount": dispute.amount, "charge": dispute.charge,
                "balance_transactions": [self.render_txn(t) for t in txns if t.created <= now],
                "created": dispute.created, "currency": dispute.currency, "metadata": {},
                "reason": dispute.reason, "status": "won" if won else "needs_response",
                "is_charge_refundable": False, "livemode": False}

    def render_payout(self, payout: Payout, expand_source: bool = False) -> dict:
        now = self.clock.now()
        status = self.payout_status(payout, now)
        failed = status == "failed"
        return {
            "id": payout.id, "object": "payout", "amount": payout.amount, "arrival_date": payout.arrival_date,
            "automatic": True, "balance_transaction": payout.balance_transaction, "created": payout.created,
            "currency": payout.currency, "description": "STRIPE PAYOUT", "destination": payout.destination,
            "failure_balance_transaction": payout.failure_balance_transaction if failed else None,
            "failure_code": payout.failure_code if failed else None,
            "failure_message": "The bank account has been closed." if failed else None,
            "livemode": False, "metadata": {}, "method": "standard", "original_payout": None,
            "reconciliation_status": "completed" if now >= payout.created + RECONCILIATION_DELAY else "in_progress",
            "reversed_by": None, "source_type": "card", "statement_descriptor": None, "status": status,
            "type": "bank_account", "trace_id": {"status": "supported" if status == "paid" else "pending",
                                                 "value": None},
        }

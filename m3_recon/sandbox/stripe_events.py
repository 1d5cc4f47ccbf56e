"""Stripe events in the sandbox: derived from the Stripe ledger and the clock, and delivered as signed webhooks.

Each object's lifetime becomes the events Stripe would emit: ``charge.succeeded`` when a charge is
created, ``refund.created`` and ``charge.refunded`` for a refund, ``charge.dispute.created`` (and
``charge.dispute.closed`` when won), ``payout.created``, ``payout.paid`` at arrival and
``payout.failed``. An event exists once its time has passed on the sandbox clock; its id is stable
(derived from its type and object), so the same event is always the same id. ``deliver_webhooks``
POSTs events to a URL signed like Stripe (``Stripe-Signature: t=…,v1=…``) with the SDK's helper.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import requests
import stripe

from m3_recon.sandbox.stripe_ledger import StripeLedger

EVENT_API_VERSION = "2026-10-28.endive"


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    created: int
    object_kind: str  # charge, refund, dispute, payout
    object_id: str


def _event(type_: str, created: int, kind: str, object_id: str) -> Event:
    digest = hashlib.sha256(f"{type_}|{object_id}".encode()).hexdigest()[:24]
    return Event(f"evt_{digest}", type_, created, kind, object_id)


def ledger_events(ledger: StripeLedger) -> list[Event]:
    """Every event the ledger's objects ever emit, oldest first (ties in generation order)."""
    events: list[Event] = []
    for charge in ledger.charges.values():
        events.append(_event("charge.succeeded", charge.created, "charge", charge.id))
    for refund in ledger.refunds.values():
        events.append(_event("refund.created", refund.created, "refund", refund.id))
        events.append(_event("charge.refunded", refund.created, "charge", refund.charge))
    for dispute in ledger.disputes.values():
        events.append(_event("charge.dispute.created", dispute.created, "dispute", dispute.id))
        if dispute.won_at is not None:
            events.append(_event("charge.dispute.closed", dispute.won_at, "dispute", dispute.id))
    for payout in ledger.payouts.values():
        events.append(_event("payout.created", payout.created, "payout", payout.id))
        if payout.failed_at is not None:
            events.append(_event("payout.failed", payout.failed_at, "payout", payout.id))
        else:
            events.append(_event("payout.paid", payout.arrival_date, "payout", payout.id))
    order = {e.id: i for i, e in enumerate(events)}
    return sorted(events, key=lambda e: (e.created, order[e.id]))


def render_event(event: Event, data_object: dict) -> dict:
    return {"id": event.id, "object": "event", "api_version": EVENT_API_VERSION, "created": event.created,
            "data": {"object": data_object}, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "type": event.type}


def deliver_webhooks(app, url: str, secret: str, *, created_gt: int = -1, timestamp: int | None = None,
                     timeout: float = 10.0) -> list[tuple[str, int]]:
    """POST every event created after ``created_gt`` (as of the sandbox clock) to ``url``, signed with
    ``secret``; ``timestamp`` overrides the signing time (to send a stale event). Returns (event id, status)."""
    delivered = []
    for event in app.events_until(app.clock.now()):
        if event.created <= created_gt:
            continue
        payload = json.dumps(app.render_event(event))
        header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
        response = requests.post(url, data=payload.encode(), timeout=timeout,
                                 headers={"Content-Type": "application/json", "Stripe-Signature": header})
        delivered.append((event.id, response.status_code))
    return delivered

"""``m3-recon webhooks``: a small receiver for Stripe webhooks (Starlette on uvicorn, shipped with dagster-webserver).

``POST /stripe/webhooks`` verifies ``Stripe-Signature`` over the raw body with the SDK's
``stripe.Webhook.construct_event`` and the endpoint secret (``STRIPE_WEBHOOK_SECRET``): a forged
signature, a missing header or a timestamp older than the tolerance (300 s, so a captured event
cannot be replayed later) is answered 400 and stored nowhere. An accepted event is stored durably
in the event store (``M3_RECON_STRIPE_EVENTS_DB``) before 200 is answered, so Stripe retries anything
not stored; a redelivered event id is acknowledged and ignored. ``stripe_events_sensor`` reads the store.
"""

from __future__ import annotations

import os

import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from m3_recon.stripe_events import EventStore

MAX_BODY_BYTES = 1_048_576
DEFAULT_TOLERANCE_SECONDS = 300


def create_app(secret: str, store: EventStore, tolerance: int = DEFAULT_TOLERANCE_SECONDS) -> Starlette:
    if not secret:
        raise ValueError("set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (whsec_…) from Stripe's dashboard")

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": "payload too large"}, status_code=413)
        try:
            event = stripe.Webhook.construct_event(body, request.headers.get("stripe-signature"), secret,
                                                   tolerance=tolerance)
        except stripe.SignatureVerificationError:
            return JSONResponse({"error": "signature verification failed (forged, altered or stale)"},
                                status_code=400)
        except ValueError:
            return JSONResponse({"error": "the body is not a Stripe event"}, status_code=400)
        new = store.add(body)
        return JSONResponse({"received": event.id, "duplicate": not new})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/stripe/webhooks", receive, methods=["POST"]),
                             Route("/healthz", health, methods=["GET"])])


def serve(host: str, port: int) -> None:
    import uvicorn

    from m3_recon import settings

    app = create_app(os.environ.get("STRIPE_WEBHOOK_SECRET", ""), EventStore(settings.stripe_events_db()))
    uvicorn.run(app, host=host, port=port, log_level="info")

"""``stripe_events_sensor``: Stripe events ask for the close of the days they touch, within minutes.

Each tick reads new events of the types that move money (charges, refunds, disputes, payouts) from
Stripe's ``/v1/events`` (through the official SDK, from the cursor's last ``created`` less a short
overlap, as Stripe may list an event a moment late) and from the webhook receiver's event store
(after the cursor's last row). An event id seen before is ignored, whichever way it came and however
often. Each new event touches the UTC day it happened and the day its object was created; each
touched day whose partition exists gets one ``payout_close`` run, keyed by the day and the ids of
the events in this batch (so a batch closes a day once); a day that has not ended yet waits in the
cursor until its partition exists. The cursor (JSON) holds ``created``, ``seq``, the recently seen
ids and the waiting days.
"""

import json
from fnmatch import fnmatchcase
from datetime import datetime, timedelta, timezone
from hashlib import sha256

import dagster as dg

from m3_recon import settings
from m3_recon.defs.automation import payout_close
from m3_recon.defs.stripe.resources import StripeResource
from m3_recon.partitions import daily_partitions
from m3_recon.stripe_events import EventStore

EVENT_TYPES = ["charge.*", "refund.*", "charge.dispute.*", "payout.*"]
OVERLAP_SECONDS = 300
MAX_SEEN = 5_000  # ids remembered (oldest forgotten first): far more than a day's retries


def _day(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(int(epoch), tz=timezone.utc).date().isoformat()


def plan_closes(cursor: dict, api_events: list[dict], stored,
                last_day: str | None) -> tuple[list[dg.RunRequest], dict]:
    """The runs a batch of events asks for, and the next cursor (pure: no I/O)."""
    seen_order = list(cursor.get("seen", []))
    seen = set(seen_order)
    waiting: dict[str, list[str]] = {day: list(ids) for day, ids in cursor.get("waiting", {}).items()}
    created, seq = cursor.get("created", 0), cursor.get("seq", 0)
    fresh: dict[str, tuple[int, set[str]]] = {}
    for event in api_events:
        touched = {_day(event["created"]), _day(((event.get("data") or {}).get("object") or {}).get("created"))}
        fresh.setdefault(event["id"], (int(event["created"]), touched))
    for event in stored:
        seq = max(seq, event.seq)
        if not any(fnmatchcase(event.type, pattern) for pattern in EVENT_TYPES):
            continue  # the endpoint may send other types too; they move no money
        fresh.setdefault(event.id, (event.created, {_day(event.created), _day(event.object_created)}))
    for event_id, (when, days) in fresh.items():
        created = max(created, when)
        if event_id in seen:
            continue
        seen.add(event_id)
        seen_order.append(event_id)
        for day in filter(None, days):
            if day >= settings.start_date():
                waiting.setdefault(day, []).append(event_id)
    requests, still_waiting = [], {}
    for day, ids in sorted(waiting.items()):
        if last_day is None or day > last_day:
            still_waiting[day] = ids
            continue
        batch = sha256(",".join(sorted(ids)).encode()).hexdigest()[:16]
        requests.append(dg.RunRequest(run_key=f"stripe_events:{day}:{batch}", partition_key=day,
                                      tags={"m3_recon/trigger": "stripe_events", "m3_recon/events": str(len(ids))}))
    return requests, {"created": created, "seq": seq, "seen": seen_order[-MAX_SEEN:], "waiting": still_waiting}


@dg.sensor(job=payout_close, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="New Stripe events (API and webhooks) ask for the close of the days they touch.")
def stripe_events_sensor(context: dg.SensorEvaluationContext, stripe: StripeResource):
    now = datetime.now(timezone.utc)
    cursor = json.loads(context.cursor) if context.cursor else {
        "created": int((now - timedelta(days=settings.int_setting("M3_RECON_LOOKBACK_DAYS",
                                                                   settings.DEFAULT_LOOKBACK_DAYS))).timestamp())}
    api_events = stripe.client().events(max(cursor["created"] - OVERLAP_SECONDS, 0), EVENT_TYPES)
    stored = EventStore(settings.stripe_events_db()).after(cursor.get("seq", 0))
    last_day = daily_partitions.get_last_partition_key()  # the last day that has ended
    requests, next_cursor = plan_closes(cursor, api_events, stored, last_day)
    context.update_cursor(json.dumps(next_cursor))
    if not requests:
        return dg.SkipReason(f"no new Stripe events for a closable day ({len(next_cursor['waiting'])} day(s) waiting)")
    return requests

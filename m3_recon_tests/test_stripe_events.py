"""Stripe events: the webhook receiver (signature, staleness, durability) and the events sensor (one close
per batch)."""

import json
import socket
import threading
import time
from datetime import date, datetime, timezone

import dagster as dg
import pytest
import requests
import stripe
import uvicorn

from m3_recon.sandbox import Sandbox
from m3_recon.sandbox.stripe_events import deliver_webhooks
from m3_recon.stripe_events import EventStore
from m3_recon.webhooks import create_app
from m3_recon_tests.conftest import stripe_resource_for

SECRET = "whsec_test_m3recon_0001"


@pytest.fixture(scope="module")
def small_sandbox():
    with Sandbox(start=date(2026, 10, 1), days=4) as running:
        yield running


@pytest.fixture
def receiver(tmp_path):
    """The webhook receiver on a free loopback port, its store under tmp; stopped after the test."""
    store = EventStore(tmp_path / "events.sqlite")
    server = uvicorn.Server(uvicorn.Config(create_app(SECRET, store), log_level="warning", lifespan="off"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/stripe/webhooks", store
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _post(url: str, payload: str, header: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json", **({"Stripe-Signature": header} if header else {})}
    return requests.post(url, data=payload.encode(), headers=headers, timeout=5)


def test_signed_events_are_stored_once_and_forged_or_replayed_ones_rejected(small_sandbox, receiver):
    url, store = receiver
    app = small_sandbox.apps["stripe"]
    # The running sandbox delivers every event so far, signed, through its control path.
    answer = requests.post(small_sandbox.url("stripe") + "/_sandbox/webhooks", json={"url": url, "secret": SECRET},
                           timeout=60).json()
    events = app.events_until(small_sandbox.clock.now())
    assert answer == {"delivered": len(events), "accepted": len(events)} and events
    assert requests.post(small_sandbox.url("stripe") + "/_sandbox/webhooks", timeout=5,
                         json={"url": "http://example.com/hook", "secret": SECRET}).status_code == 400
    assert [e.id for e in store.after(0)] == [e.id for e in events]

    again = deliver_webhooks(app, url, SECRET)  # Stripe redelivers: acknowledged, stored nowhere twice
    assert {status for _, status in again} == {200} and len(store.after(0)) == len(events)

    payload = json.dumps({**app.render_event(events[0]), "id": "evt_forged_0001"})
    forged = stripe.WebhookSignature.generate_signature_header(payload, "whsec_someone_else")
    assert _post(url, payload, forged).status_code == 400
    genuine = stripe.WebhookSignature.generate_signature_header(payload, SECRET)
    tampered = payload.replace("evt_forged_0001", "evt_forged_0002")
    assert _post(url, tampered, genuine).status_code == 400  # body altered after signing
    assert _post(url, payload, None).status_code == 400  # no signature at all
    replayed = stripe.WebhookSignature.generate_signature_header(payload, SECRET, timestamp=int(time.time()) - 3600)
    response = _post(url, payload, replayed)
    assert response.status_code == 400 and "stale" in response.json()["error"]
    assert "evt_forged_0001" not in {e.id for e in store.after(0)}
    assert _post(url, payload, genuine).status_code == 200  # the same event, freshly signed, is accepted
    assert "evt_forged_0001" in {e.id for e in store.after(0)}


def _utc_day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).date().isoformat()


def test_an_event_delivered_twice_triggers_one_close(small_sandbox, tmp_path, monkeypatch):
    from m3_recon.definitions import defs
    from m3_recon.defs.stripe.sensors import stripe_events_sensor

    store_path = tmp_path / "events.sqlite"
    monkeypatch.setenv("M3_RECON_STRIPE_EVENTS_DB", str(store_path))
    store = EventStore(store_path)
    app = small_sandbox.apps["stripe"]
    events = app.events_until(small_sandbox.clock.now())
    event = events[0]
    body = json.dumps(app.render_event(event))
    assert store.add(body) and not store.add(body)  # the webhook delivered it twice; stored once
    resources = {"stripe": stripe_resource_for(small_sandbox)}

    def tick(cursor: dict | str):
        context = dg.build_sensor_context(instance=instance, resources=resources, definitions=defs,
                                          cursor=cursor if isinstance(cursor, str) else json.dumps(cursor))
        return stripe_events_sensor.evaluate_tick(context)

    with dg.instance_for_test() as instance:
        # Stripe's list has nothing newer than the cursor; the store has the event (twice delivered): one close.
        first = tick({"created": small_sandbox.clock.now() + 301})
        assert [r.partition_key for r in first.run_requests] == [_utc_day(event.created)]
        assert not tick(first.cursor).run_requests  # nothing new: no second close
        assert not store.add(body)

        # From the period start: every event comes from /v1/events, the stored one a second time. One close
        # per touched day, each once, keyed by the day and its batch of event ids.
        full = tick({"created": small_sandbox.period.start_epoch})
        days = [r.partition_key for r in full.run_requests]
        touched = {_utc_day(e.created) for e in events} | {
            _utc_day(p.created) for p in small_sandbox.stripe.payouts.values()}
        assert len(days) == len(set(days)) and set(days) == touched & set(days) and _utc_day(event.created) in days
        assert len({r.run_key for r in full.run_requests}) == len(days)
        assert not tick(full.cursor).run_requests


def test_a_day_that_has_not_ended_waits_in_the_cursor_and_closes_once_it_has():
    from m3_recon.defs.stripe.sensors import plan_closes
    from m3_recon.stripe_events import StoredEvent

    late = int(datetime(2026, 10, 3, 23, 0, tzinfo=timezone.utc).timestamp())
    charge = {"id": "evt_1", "created": late, "data": {"object": {"created": late}}}
    refund = StoredEvent(7, "evt_2", "charge.refunded", late + 7200, late)  # the refund happened on the 4th
    other = StoredEvent(8, "evt_3", "customer.updated", late + 7300, late)  # moves no money
    requests, cursor = plan_closes({}, [charge], [refund, other], last_day="2026-10-03")
    assert [r.partition_key for r in requests] == ["2026-10-03"] and cursor["waiting"] == {"2026-10-04": ["evt_2"]}
    assert cursor["seq"] == 8 and cursor["created"] == late + 7200
    again, cursor = plan_closes(cursor, [charge], [], last_day="2026-10-03")  # the 4th has not ended yet
    assert again == [] and cursor["waiting"] == {"2026-10-04": ["evt_2"]}
    later, cursor = plan_closes(cursor, [charge], [], last_day="2026-10-04")
    assert [r.partition_key for r in later] == ["2026-10-04"] and cursor["waiting"] == {}

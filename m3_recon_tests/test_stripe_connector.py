"""The Stripe connector over real HTTP: exactly-once paging, day boundaries, faults, bad keys."""

from collections import Counter
from datetime import timedelta

import pytest

from m3_recon.clients.stripe import _slices
from m3_recon.errors import VendorAuthError, VendorRequestError, VendorUnavailableError
from m3_recon.sandbox.server import Fault
from m3_recon.sandbox.world import day_start_epoch
from m3_recon_tests.conftest import stripe_resource_for


def test_every_transaction_arrives_exactly_once_across_pages(sandbox):
    client = stripe_resource_for(sandbox, page_size=7).client()
    period = sandbox.period
    before = sandbox.faults("stripe").served
    rows = client.balance_transactions(period.start_epoch, period.end_epoch)
    slices = _slices(period.start_epoch, period.end_epoch, client.window_slices)
    assert len(slices) > 1
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(sandbox.stripe.balance_transactions)
    # one request per page of each time slice (a slice with nothing in it still costs its one request)
    per_slice = Counter(next(i for i, (gte, lt) in enumerate(slices) if gte <= row["created"] < lt) for row in rows)
    assert sandbox.faults("stripe").served - before == sum(max(1, -(-per_slice[i] // 7)) for i in range(len(slices)))


def test_every_transaction_lands_in_exactly_one_utc_day(sandbox):
    client = stripe_resource_for(sandbox).client()
    seen = Counter()
    for day in sandbox.period.dates():
        start = day_start_epoch(day)
        for row in client.balance_transactions(start, start + 86400):
            assert start <= row["created"] < start + 86400
            seen[row["id"]] += 1
    assert set(seen) == set(sandbox.stripe.balance_transactions)
    assert set(seen.values()) == {1}
    last_day = sandbox.period.end
    last = client.balance_transactions(day_start_epoch(last_day), day_start_epoch(last_day + timedelta(days=1)))
    assert max(row["created"] for row in last) == sandbox.period.end_epoch - 1


def test_payout_lines_itemise_each_payout(sandbox, stripe_resource):
    for payout in list(sandbox.stripe.payouts.values())[:5]:
        lines = stripe_resource.client().payout_lines(payout.id)
        expected = {t.id for t in sandbox.stripe.balance_transactions.values() if t.payout == payout.id}
        assert {line["id"] for line in lines} == expected
        assert sum(line["net"] for line in lines) == 0


@pytest.mark.parametrize("fault", [
    Fault(status=429, count=2),  # plain 429: the SDK alone would not retry this
    Fault(status=429, headers={"Retry-After": "0", "Stripe-Should-Retry": "true"}, count=2),
    Fault(status=500, count=2),
    Fault(status=503, headers={"Retry-After": "0"}, count=3),
    Fault(stall_seconds=2.5, count=1),  # longer than the client's 2 s timeout
], ids=["429", "429-should-retry", "500", "503-retry-after", "timeout"])
def test_transient_faults_are_survived_without_losing_rows(sandbox, fault):
    client = stripe_resource_for(sandbox, page_size=50).client()
    sandbox.faults("stripe").configure(faults=[fault])
    rows = client.balance_transactions(sandbox.period.start_epoch, sandbox.period.end_epoch)
    assert {row["id"] for row in rows} == set(sandbox.stripe.balance_transactions)
    assert sandbox.faults("stripe").pending == 0


def test_should_retry_false_is_not_retried(sandbox, stripe_resource):
    sandbox.faults("stripe").configure(faults=[Fault(status=500, headers={"Stripe-Should-Retry": "false"})])
    before = sandbox.faults("stripe").served
    with pytest.raises(VendorRequestError, match="Stripe: GET /v1/payouts was rejected"):
        stripe_resource.client().payouts(sandbox.period.start_epoch, sandbox.period.end_epoch)
    assert sandbox.faults("stripe").served == before  # no second attempt reached the API


def test_persistent_outage_gives_up_after_the_bounded_attempts(sandbox):
    client = stripe_resource_for(sandbox, max_attempts=2).client()
    sandbox.faults("stripe").configure(faults=[Fault(status=503, headers={"Retry-After": "0"}, count=5)])
    with pytest.raises(VendorUnavailableError, match="kept failing after 2 attempts") as info:
        client.payouts(sandbox.period.start_epoch, sandbox.period.end_epoch)
    assert info.value.status == 503
    assert sandbox.faults("stripe").pending == 3


def test_invalid_key_names_the_variable_and_never_echoes_the_key(sandbox):
    secret = "sk_test_this_is_a_wrong_secret_key_9876"
    client = stripe_resource_for(sandbox, api_key=secret).client()
    with pytest.raises(VendorAuthError) as info:
        client.payouts(sandbox.period.start_epoch, sandbox.period.end_epoch)
    message = str(info.value)
    assert "STRIPE_API_KEY" in message and "HTTP 401" in message
    assert secret not in message and "wrong_secret" not in message


def test_unreachable_api_names_the_base_url_variable():
    from m3_recon.defs.stripe.resources import StripeResource

    client = StripeResource(api_key="sk_test_x", api_base="http://127.0.0.1:9", max_attempts=1,
                            timeout_seconds=1).client()
    with pytest.raises(VendorUnavailableError, match="STRIPE_API_BASE"):
        client.payouts(0, 1)


@pytest.mark.parametrize("start, end, count", [(0, 86_400, 8), (100, 103, 8), (5, 6, 4), (7, 7, 8), (0, 10, 3)])
def test_time_slices_cover_the_window_once_newest_first(start, end, count):
    slices = _slices(start, end, count)
    assert len(slices) == max(1, min(count, end - start))
    assert slices[0][1] == end and slices[-1][0] == start
    assert all(later[0] == earlier[1] for later, earlier in zip(slices, slices[1:]))  # adjacent, no gap or overlap
    assert all(gte < lt for gte, lt in slices) or end == start

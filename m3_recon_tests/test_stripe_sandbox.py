"""The Stripe sandbox speaks Stripe's wire format: parameters, paging, errors, objects as of the clock."""

import requests

from m3_recon.sandbox import SANDBOX_STRIPE_KEY, Sandbox

AUTH = {"Authorization": f"Bearer {SANDBOX_STRIPE_KEY}"}


def get(sandbox, path, headers=AUTH, **params):
    return requests.get(sandbox.url("stripe") + path, params=params, headers=headers, timeout=5)


def test_unknown_parameter_is_a_stripe_400(sandbox):
    response = get(sandbox, "/v1/balance_transactions", foo="1")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error == {"message": "Received unknown parameter: foo", "type": "invalid_request_error",
                     "code": "parameter_unknown", "param": "foo",
                     "doc_url": "https://stripe.com/docs/error-codes/parameter-unknown"}
    assert response.headers["Request-Id"].startswith("req_")


def test_limit_above_100_is_rejected(sandbox):
    response = get(sandbox, "/v1/balance_transactions", limit="101")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "limit"


def test_missing_and_wrong_keys_get_401_in_stripe_shape(sandbox):
    missing = get(sandbox, "/v1/payouts", headers={})
    assert missing.status_code == 401
    assert "You did not provide an API key" in missing.json()["error"]["message"]
    wrong = get(sandbox, "/v1/payouts", headers={"Authorization": "Bearer sk_test_not_the_right_key_1234"})
    assert wrong.status_code == 401
    body = wrong.json()["error"]
    assert body["type"] == "invalid_request_error"
    assert body["message"].startswith("Invalid API Key provided: sk_test_")
    assert "not_the_right" not in body["message"]  # Stripe masks the key


def test_lists_are_newest_first_and_cursor_pages_do_not_overlap(sandbox):
    first = get(sandbox, "/v1/balance_transactions", limit="5").json()
    assert first["object"] == "list" and first["has_more"] is True
    created = [t["created"] for t in first["data"]]
    assert created == sorted(created, reverse=True)
    second = get(sandbox, "/v1/balance_transactions", limit="5", starting_after=first["data"][-1]["id"]).json()
    assert not {t["id"] for t in first["data"]} & {t["id"] for t in second["data"]}
    back = get(sandbox, "/v1/balance_transactions", limit="5", ending_before=second["data"][0]["id"]).json()
    assert [t["id"] for t in back["data"]] == [t["id"] for t in first["data"]]


def test_created_range_and_expand_source(sandbox):
    period = sandbox.period
    params = {"created[gte]": str(period.end_epoch - 86400), "created[lt]": str(period.end_epoch),
              "limit": "100", "expand[]": "data.source", "type": "charge"}
    data = get(sandbox, "/v1/balance_transactions", **params).json()["data"]
    assert data and all(period.end_epoch - 86400 <= t["created"] < period.end_epoch for t in data)
    assert data[0]["created"] == period.end_epoch - 1  # the 23:59:59 UTC charge on the last day
    charge = data[0]["source"]
    assert charge["object"] == "charge" and charge["balance_transaction"] == data[0]["id"]


def test_eur_charge_settles_in_usd_with_exchange_rate(sandbox):
    eur = next(c for c in sandbox.stripe.charges.values() if c.currency == "eur")
    txn = get(sandbox, f"/v1/balance_transactions/{eur.balance_transaction}", **{"expand[]": "source"}).json()
    assert txn["currency"] == "usd" and txn["source"]["currency"] == "eur"
    assert txn["exchange_rate"] is not None
    assert txn["fee_details"][0]["type"] == "stripe_fee" and txn["net"] == txn["amount"] - txn["fee"]


def test_payout_filter_returns_its_own_line_and_nets_to_zero(sandbox):
    payout = next(iter(sandbox.stripe.payouts.values()))
    data = get(sandbox, "/v1/balance_transactions", payout=payout.id, limit="100").json()["data"]
    own = [t for t in data if t["type"] == "payout"]
    assert len(own) == 1 and own[0]["amount"] == -payout.amount and own[0]["source"] == payout.id
    assert sum(t["net"] for t in data) == 0


def test_unknown_payout_and_object_are_resource_missing(sandbox):
    response = get(sandbox, "/v1/balance_transactions", payout="po_doesnotexist")
    assert response.status_code == 400 and response.json()["error"]["code"] == "resource_missing"
    response = get(sandbox, "/v1/charges/ch_doesnotexist")
    assert response.status_code == 404 and response.json()["error"]["code"] == "resource_missing"


def test_failed_payout_changes_status_with_the_clock(sandbox):
    payout = next(p for p in sandbox.stripe.payouts.values() if p.failed_at)
    original = sandbox.clock.now()
    try:
        sandbox.clock.set(payout.arrival_date + 60)
        assert get(sandbox, f"/v1/payouts/{payout.id}").json()["status"] == "paid"
        sandbox.clock.set(payout.failed_at)
        failed = get(sandbox, f"/v1/payouts/{payout.id}").json()
        assert failed["status"] == "failed" and failed["failure_code"] == "account_closed"
        assert failed["failure_balance_transaction"] == payout.failure_balance_transaction
    finally:
        sandbox.clock.set(original)


def test_generator_is_deterministic_per_seed():
    from m3_recon.sandbox import Sandbox

    one, two, other = Sandbox(seed=3, days=5), Sandbox(seed=3, days=5), Sandbox(seed=4, days=5)
    assert list(one.stripe.balance_transactions) == list(two.stripe.balance_transactions)
    assert list(one.stripe.balance_transactions) != list(other.stripe.balance_transactions)


def test_unknown_category_quirk_pays_out_a_category_nobody_maps_in_the_same_world(sandbox):
    with Sandbox(quirks=frozenset({"stripe_unknown_category"})) as quirky:
        extra = {t.id: t for t in quirky.stripe.balance_transactions.values()
                 if t.id not in sandbox.stripe.balance_transactions}
        assert len(extra) == 2 and set(quirky.stripe.payouts) == set(sandbox.stripe.payouts)
        for txn in extra.values():
            data = get(quirky, "/v1/balance_transactions", payout=txn.payout, limit="100").json()["data"]
            [served] = [t for t in data if t["id"] == txn.id]
            assert (served["reporting_category"], served["type"], served["amount"], served["net"]) == (
                "new_product_settlement", "contribution", txn.amount, txn.amount)
            assert sum(t["net"] for t in data) == 0  # the payout pays it out
            assert quirky.stripe.payouts[txn.payout].amount == (
                sandbox.stripe.payouts[txn.payout].amount + txn.amount)

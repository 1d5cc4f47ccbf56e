"""PayTrace over real HTTP: tokens, one request per business day, the 8 p.m. Pacific cut-off across the
DST change, faults, error shapes, and partitions in DuckDB that equal the generator."""

import itertools
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import dagster as dg
import duckdb
import pytest
import requests
from dagster_duckdb import DuckDBResource

from m3_recon import decimal_json
from m3_recon.clients.http import VendorSession
from m3_recon.clients.paytrace import PasswordGrantToken, cents, local_timestamp
from m3_recon.defs.paytrace.assets import raw_paytrace_batches, raw_paytrace_transactions
from m3_recon.defs.paytrace.resources import PayTraceResource
from m3_recon.errors import VendorAuthError, VendorRequestError, VendorUnavailableError
from m3_recon.sandbox.paytrace_api import (SANDBOX_PAYTRACE_PASSWORD, SANDBOX_PAYTRACE_USERNAME, PayTraceApp,
                                           sandbox_env)
from m3_recon.sandbox.paytrace_ledger import PACIFIC, build_paytrace_ledger, cutoff_probe_days, local_epoch
from m3_recon.sandbox.server import Fault, SandboxClock, VendorServer
from m3_recon.sandbox.world import Period, build_world

PERIOD = Period(date(2026, 10, 1), 35)  # 2026-10-01 .. 2026-11-04: covers the DST end on 2026-11-01
SETTLED_NOW = PERIOD.end_epoch + 10 * 86_400
PAYTRACE_ASSETS = [raw_paytrace_batches, raw_paytrace_transactions]


@pytest.fixture(scope="module")
def paytrace():
    world = build_world(11, PERIOD)
    ledger = build_paytrace_ledger(world)
    clock = SandboxClock(SETTLED_NOW)
    app = PayTraceApp(ledger, clock, SANDBOX_PAYTRACE_USERNAME, SANDBOX_PAYTRACE_PASSWORD)
    server = VendorServer(app, clock).start()
    yield SimpleNamespace(world=world, ledger=ledger, clock=clock, app=app, server=server, url=server.url)
    server.stop()


@pytest.fixture(autouse=True)
def _reset(paytrace):
    yield
    paytrace.server.faults.clear()
    paytrace.clock.set(SETTLED_NOW)


def resource_for(url: str, **overrides) -> PayTraceResource:
    env = sandbox_env(url)
    settings = {"username": env["PAYTRACE_USERNAME"], "password": env["PAYTRACE_PASSWORD"],
                "api_base": env["PAYTRACE_API_BASE"], "max_requests_per_second": 1000.0, "timeout_seconds": 2.0,
                **overrides}
    return PayTraceResource(**settings)


def batches_on(ledger, first: date, last: date) -> dict:
    return {b.number: b for b in ledger.batches.values() if first <= b.business_date <= last}


def materialize(paytrace, db: str, partition_key: str, lookback: int = 0):
    config = {"ops": {a.key.to_python_identifier(): {"config": {"lookback_days": lookback}} for a in PAYTRACE_ASSETS}}
    return dg.materialize(PAYTRACE_ASSETS, partition_key=partition_key, run_config=config,
                          resources={"paytrace": resource_for(paytrace.url), "duckdb": DuckDBResource(database=db)})


def query(db: str, sql: str) -> list[tuple]:
    with duckdb.connect(db, read_only=True) as conn:
        return conn.execute(sql).fetchall()


class StepClock:
    """A wall clock that moves ``step`` seconds each time it is read: tokens age by request, not by sleeping."""

    def __init__(self, step: float):
        self._ticks = itertools.count()
        self.step = step

    def __call__(self) -> float:
        return next(self._ticks) * self.step


# -- wire values -------------------------------------------------------------------------------------
def test_dollars_become_cents_and_pacific_wall_times_become_utc():
    assert [cents(110), cents(Decimal("1234.5")), cents("8.10"), cents(""), cents(Decimal("-12.34"))] == \
        [11_000, 123_450, 810, None, -1_234]
    for bad in (1234.5, "1.234", "abc", True):
        with pytest.raises(ValueError):
            cents(bad)
    assert decimal_json.dumps(decimal_json.loads('{"amount": 1234.50, "n": 3}')) == '{"amount":1234.50,"n":3}'
    as_utc = lambda text: local_timestamp(text, PACIFIC).astimezone(timezone.utc)  # noqa: E731
    assert as_utc("10/31/2026 8:33:20 PM") == datetime(2026, 11, 1, 3, 33, 20, tzinfo=timezone.utc)  # PDT
    assert as_utc("11/1/2026 7:57:40 PM") == datetime(2026, 11, 2, 3, 57, 40, tzinfo=timezone.utc)  # PST
    assert as_utc("11/1/2026 1:30:00 AM") == datetime(2026, 11, 1, 8, 30, tzinfo=timezone.utc)  # first 1:30
    assert local_timestamp("", PACIFIC) is None


# -- connector over HTTP -------------------------------------------------------------------------------
def test_batches_and_their_transactions_equal_the_generator(paytrace):
    client = resource_for(paytrace.url).client()
    first, last = PERIOD.start, PERIOD.end + timedelta(days=1)
    loaded = client.batches(first, last)
    expected = batches_on(paytrace.ledger, first, last)
    assert [batch["number"] for _, batch in loaded] == sorted(expected)
    for day, batch in loaded:
        truth = expected[batch["number"]]
        totals = paytrace.ledger.totals(truth)
        assert day == truth.business_date
        assert (cents(batch["sales_amount"]), cents(batch["refund_amount"]), cents(batch["net_amount"])) == \
            (totals.sales_minor, totals.refund_minor, totals.net_minor)
        assert (batch["sales_count"], batch["refund_count"], batch["transaction_count"]) == \
            (totals.sales_count, totals.refund_count, totals.transaction_count)
    assert sum(totals.refund_count for totals in map(paytrace.ledger.totals, expected.values())) > 0
    sales = [t for t in paytrace.ledger.transactions.values() if t.type == "SALE"]
    truths = {p.payment_id: p for p in paytrace.world.payments if p.processor == "paytrace"}
    assert set(truths) == {str(t.id) for t in sales}
    for sale in sales:
        truth = truths[str(sale.id)]
        # The references the clerk keyed are the plan's, and the plan's allocations are this sale's money.
        assert (sale.invoice_id or None, sale.customer_id or None) == (truth.invoice_ref, truth.customer_ref)
        applied = sum(a.amount_minor for a in truth.allocations)
        if truth.allocations and truth.kind == "over":
            assert 0 < applied < sale.amount_minor and truth.expected_reason == "overpayment"
        elif truth.allocations:
            assert applied == sale.amount_minor
        else:
            assert truth.expected_status == "unmatched" and truth.expected_reason is not None
    assert {t.kind for t in truths.values()} >= {"full", "partial", "multi"}
    some = expected[sorted(expected)[len(expected) // 2]]
    rows = client.batch_transactions(some.number)
    assert [row["transaction_id"] for row in rows] == some.transaction_ids
    assert sum(cents(r["amount"]) * (-1 if r["transaction_type"] == "REFUND" else 1) for r in rows) == \
        paytrace.ledger.totals(some).net_minor


def test_date_ranges_are_asked_one_business_day_at_a_time(paytrace):
    client = resource_for(paytrace.url).client()
    before = paytrace.server.faults.served
    first, last = date(2026, 10, 3), date(2026, 10, 12)
    loaded = client.batches(first, last)
    assert paytrace.server.faults.served - before == 1 + 10  # one token, then one request per day
    assert sorted(batch["number"] for _, batch in loaded) == sorted(batches_on(paytrace.ledger, first, last))
    sales = client.transactions(first, last, transaction_type="SALE")
    ids = [row["transaction_id"] for row in sales]
    assert len(ids) == len(set(ids))
    assert set(ids) == {t.id for t in paytrace.ledger.transactions.values() if t.type == "SALE"
                        and first <= datetime.fromtimestamp(t.created, PACIFIC).date() <= last}


def test_bad_credentials_name_the_variables_and_never_echo_the_password(paytrace):
    secret = "this-is-a-wrong-password-4711"
    client = resource_for(paytrace.url, password=secret).client()
    with pytest.raises(VendorAuthError) as info:
        client.batches(PERIOD.start, PERIOD.start)
    message = str(info.value)
    assert "PAYTRACE_USERNAME" in message and "PAYTRACE_PASSWORD" in message and "HTTP 401" in message
    assert "invalid_grant" in message
    assert secret not in message


def test_an_expired_token_mid_run_is_replaced_transparently(paytrace):
    app = PayTraceApp(paytrace.ledger, paytrace.clock, SANDBOX_PAYTRACE_USERNAME, SANDBOX_PAYTRACE_PASSWORD,
                      wall_clock=StepClock(1_000))  # a 7,200 s token dies after about seven requests
    server = VendorServer(app, paytrace.clock).start()
    try:
        client = resource_for(server.url).client()
        loaded = client.batches(PERIOD.start, PERIOD.end)
        itemised = [client.batch_transactions(batch["number"]) for _, batch in loaded[:10]]
    finally:
        server.stop()
    assert sorted(batch["number"] for _, batch in loaded) == sorted(batches_on(paytrace.ledger, PERIOD.start,
                                                                                 PERIOD.end))
    for (_, batch), rows in zip(loaded, itemised):
        assert [row["transaction_id"] for row in rows] == paytrace.ledger.batches[batch["number"]].transaction_ids
    assert app.expired_token_refusals >= 3
    assert app.tokens_issued == app.expired_token_refusals + 1  # every new token answered a refusal


def test_the_token_is_renewed_shortly_before_it_expires(paytrace):
    now = [0.0]
    session = VendorSession("PayTrace", paytrace.url, "PAYTRACE_USERNAME / PAYTRACE_PASSWORD", "PAYTRACE_API_BASE",
                            authenticator=PasswordGrantToken(SANDBOX_PAYTRACE_USERNAME, SANDBOX_PAYTRACE_PASSWORD,
                                                             clock=lambda: now[0]))
    issued, refused = paytrace.app.tokens_issued, paytrace.app.expired_token_refusals
    body = {"start_date": "10/05/2026", "end_date": "10/05/2026"}
    session.request("POST", "/v1/batches/export", json=body)
    now[0] = 7_200 - 61
    session.request("POST", "/v1/batches/export", json=body)
    assert paytrace.app.tokens_issued == issued + 1  # still inside its lifetime less the margin
    now[0] = 7_200 - 60
    session.request("POST", "/v1/batches/export", json=body)
    assert paytrace.app.tokens_issued == issued + 2
    assert paytrace.app.expired_token_refusals == refused


@pytest.mark.parametrize("fault", [
    Fault(status=429, headers={"Retry-After": "0"}, count=2, path_prefix="/v1/"),
    Fault(status=500, headers={"Retry-After": "0"}, count=2, path_prefix="/v1/"),
    Fault(status=503, count=1, path_prefix="/oauth/token"),
    Fault(stall_seconds=1.5, count=1, path_prefix="/v1/"),  # longer than the client's 0.5 s timeout
], ids=["429", "500", "503-on-token", "timeout"])
def test_transient_faults_are_survived_without_losing_rows(paytrace, fault):
    client = resource_for(paytrace.url, timeout_seconds=0.5).client()
    paytrace.server.faults.configure(faults=[fault])
    first, last = date(2026, 10, 20), date(2026, 10, 22)
    loaded = client.batches(first, last)
    assert sorted(batch["number"] for _, batch in loaded) == sorted(batches_on(paytrace.ledger, first, last))
    assert paytrace.server.faults.pending == 0


def test_a_persistent_outage_gives_up_after_the_bounded_attempts(paytrace):
    client = resource_for(paytrace.url, max_attempts=2).client()
    paytrace.server.faults.configure(faults=[Fault(status=503, headers={"Retry-After": "0"}, count=5,
                                                   path_prefix="/v1/")])
    with pytest.raises(VendorUnavailableError, match="kept failing after 2 attempts") as info:
        client.batches(PERIOD.start, PERIOD.start)
    assert info.value.status == 503
    assert paytrace.server.faults.pending == 3


def test_rejected_requests_use_paytraces_error_shapes(paytrace):
    url = paytrace.url
    refused = requests.post(f"{url}/oauth/token", data={"grant_type": "password", "username": "nobody",
                                                         "password": "x"}, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_grant"
    token = requests.post(f"{url}/oauth/token", data={"grant_type": "password", "username": SANDBOX_PAYTRACE_USERNAME,
                                                       "password": SANDBOX_PAYTRACE_PASSWORD}, timeout=5).json()
    assert token["token_type"] == "bearer" and token["expires_in"] == 7_200
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    bad_date = requests.post(f"{url}/v1/batches/export", json={"start_date": "2026-10-05", "end_date": "10/05/2026"},
                             headers=auth, timeout=5)
    assert bad_date.status_code == 400
    assert bad_date.json() == {
        "success": False, "response_code": 1, "status_message": "One or more errors has occurred.",
        "errors": {"41": ["Please provide a valid Start Date formatted as MM/DD/YYYY."]}}
    reversed_range = requests.post(f"{url}/v1/transactions/export/by_date_range", headers=auth, timeout=5,
                                   json={"start_date": "10/06/2026", "end_date": "10/05/2026"})
    assert reversed_range.status_code == 400 and "43" in reversed_range.json()["errors"]
    no_token = requests.post(f"{url}/v1/batches/export", json={}, timeout=5)
    assert no_token.status_code == 401 and no_token.json()["error"] == "invalid_token"
    with pytest.raises(VendorRequestError, match="Batch Number 999999 was not found") as info:
        resource_for(url).client().batch_transactions(999_999)
    assert info.value.status == 400


def test_an_expired_token_is_refused_in_oauths_shape(paytrace):
    app = PayTraceApp(paytrace.ledger, paytrace.clock, SANDBOX_PAYTRACE_USERNAME, SANDBOX_PAYTRACE_PASSWORD,
                      token_ttl_seconds=7_200, wall_clock=StepClock(7_200))
    server = VendorServer(app, paytrace.clock).start()
    try:
        token = requests.post(f"{server.url}/oauth/token", timeout=5, data={
            "grant_type": "password", "username": SANDBOX_PAYTRACE_USERNAME,
            "password": SANDBOX_PAYTRACE_PASSWORD}).json()["access_token"]
        expired = requests.post(f"{server.url}/v1/batches/export", headers={"Authorization": f"Bearer {token}"},
                                json={"start_date": "10/05/2026", "end_date": "10/05/2026"}, timeout=5)
    finally:
        server.stop()
    assert expired.status_code == 401
    assert expired.json() == {"error": "invalid_token", "error_description": "The access token expired"}
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]


def test_nothing_after_the_sandbox_clock_is_visible(paytrace):
    now = local_epoch(date(2026, 10, 10), 12 * 3_600)  # noon Pacific on Oct 10
    paytrace.clock.set(now)
    client = resource_for(paytrace.url).client()
    loaded = client.batches(date(2026, 10, 8), date(2026, 10, 12))
    assert sorted(batch["number"] for _, batch in loaded) == sorted(batches_on(paytrace.ledger, date(2026, 10, 8),
                                                                               date(2026, 10, 9)))
    pending = client.transactions(date(2026, 10, 9), date(2026, 10, 10), transaction_type="PENDING")
    expected = {t.id for t in paytrace.ledger.transactions.values()
                if t.created <= now and paytrace.ledger.batches[t.batch].settled_at > now}
    assert {row["transaction_id"] for row in pending} == expected and expected
    assert {row["settled"] for row in pending} == {""}
    (still_open,) = batches_on(paytrace.ledger, date(2026, 10, 10), date(2026, 10, 10))
    with pytest.raises(VendorRequestError, match=f"Batch Number {still_open} was not found"):
        client.batch_transactions(still_open)


# -- assets into DuckDB -------------------------------------------------------------------------------
def test_a_partition_equals_the_generator_and_rematerialising_replaces_it(paytrace, tmp_path):
    db = str(tmp_path / "w.duckdb")
    day = date(2026, 10, 15)
    assert materialize(paytrace, db, day.isoformat()).success
    columns = ("transaction_id, batch_number, batch_date, transaction_type, amount_cents, signed_amount_cents, "
               "tax_amount_cents, invoice_id, customer_id, created_at_utc, created_date_local, settled_at_utc")
    first = query(db, f"SELECT {columns} FROM raw_paytrace_transactions ORDER BY transaction_id")
    first_batches = query(db, "SELECT * EXCLUDE (loaded_at_utc, dagster_run_id) FROM raw_paytrace_batches")
    result = materialize(paytrace, db, day.isoformat())
    assert result.success
    assert query(db, f"SELECT {columns} FROM raw_paytrace_transactions ORDER BY transaction_id") == first
    assert query(db, "SELECT * EXCLUDE (loaded_at_utc, dagster_run_id) FROM raw_paytrace_batches") == first_batches

    (batch,) = batches_on(paytrace.ledger, day, day).values()
    totals = paytrace.ledger.totals(batch)
    assert query(db, "SELECT batch_number, batch_date, net_amount_cents, sales_amount_cents, refund_amount_cents, "
                     "settled_at_utc FROM raw_paytrace_batches") == [
        (batch.number, day, totals.net_minor, totals.sales_minor, totals.refund_minor,
         datetime.fromtimestamp(batch.settled_at, timezone.utc).replace(tzinfo=None))]
    assert [row[0] for row in first] == batch.transaction_ids
    for (txn_id, number, batch_date, type_, amount, signed, tax, invoice, customer, created, local_day,
         settled) in first:
        truth = paytrace.ledger.transactions[txn_id]
        assert (number, batch_date, type_, amount, signed, tax) == \
            (batch.number, day, truth.type, truth.amount_minor, truth.signed_minor, truth.tax_minor)
        assert (invoice, customer) == (truth.invoice_id or None, truth.customer_id or None)
        assert created == datetime.fromtimestamp(truth.created, timezone.utc).replace(tzinfo=None)
        assert local_day == datetime.fromtimestamp(truth.created, PACIFIC).date()
        assert settled == datetime.fromtimestamp(batch.settled_at, timezone.utc).replace(tzinfo=None)
    materialization = result.asset_materializations_for_node("raw_paytrace_transactions")[0]
    assert materialization.metadata["batches_out_of_balance"].value == []
    assert materialization.metadata["rows"].value == len(batch.transaction_ids)
    assert query(db, "SELECT count(*) FROM raw_paytrace_transactions WHERE raw->>'$.amount' IS NULL") == [(0,)]
    (identity,) = result.get_asset_check_evaluations()
    assert (identity.check_name, identity.passed, identity.metadata["batches_checked"].value) == (
        "batches_sum_to_their_transactions", True, 1)


def test_a_batch_whose_totals_differ_from_its_transactions_fails_the_batch_identity_check(paytrace, tmp_path,
                                                                                          monkeypatch):
    day = date(2026, 10, 15)
    (batch,) = batches_on(paytrace.ledger, day, day).values()
    counted, itemised = paytrace.ledger.totals, paytrace.ledger.batch_transactions
    totals = counted(batch)  # the batch record still counts every transaction ...
    monkeypatch.setattr(paytrace.ledger, "totals", lambda b: totals if b.number == batch.number else counted(b))
    monkeypatch.setattr(paytrace.ledger, "batch_transactions",  # ... while PayTrace itemises one fewer
                        lambda b: itemised(b)[1:] if b.number == batch.number else itemised(b))
    result = materialize(paytrace, str(tmp_path / "w.duckdb"), day.isoformat())
    assert result.success  # a warning for a person, not a stop: the payout tie-out names the residue
    (identity,) = result.get_asset_check_evaluations()
    assert (identity.passed, identity.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert identity.metadata["examples"].value == [batch.number]


def test_the_8pm_pacific_cutoff_decides_the_partition_across_the_dst_change(paytrace, tmp_path):
    assert cutoff_probe_days(PERIOD) == [date(2026, 10, 1), date(2026, 10, 31), date(2026, 11, 1)]
    db = str(tmp_path / "w.duckdb")
    assert materialize(paytrace, db, "2026-11-02", lookback=2).success  # batch dates Oct 31 .. Nov 2
    loaded = {txn_id: (batch_date, created) for txn_id, batch_date, created in
              query(db, "SELECT transaction_id, batch_date, created_at_utc FROM raw_paytrace_transactions")}
    probes: dict[tuple[date, bool], list] = {}
    for txn in paytrace.ledger.transactions.values():
        local = datetime.fromtimestamp(txn.created, PACIFIC)
        minute = local.hour * 60 + local.minute
        if local.date() in (date(2026, 10, 31), date(2026, 11, 1)) and (19 * 60 + 50 <= minute < 20 * 60
                                                                         or 20 * 60 + 10 <= minute <= 20 * 60 + 40):
            probes.setdefault((local.date(), minute >= 20 * 60), []).append(txn)
    assert set(probes) == {(date(2026, 10, 31), False), (date(2026, 10, 31), True),
                           (date(2026, 11, 1), False), (date(2026, 11, 1), True)}
    for (local_day, after_cutoff), txns in probes.items():
        for txn in txns:
            batch_date, created = loaded[txn.id]
            assert created == datetime.fromtimestamp(txn.created, timezone.utc).replace(tzinfo=None)
            assert batch_date == local_day + timedelta(days=1 if after_cutoff else 0)
    # Both land in Nov 1's batch at 03:xx UTC: past the 03:00 UTC cut-off of Oct 31 (PDT), before the
    # 04:00 UTC cut-off of Nov 1 (PST). A fixed UTC offset would put one of them in the wrong batch.
    for key in ((date(2026, 10, 31), True), (date(2026, 11, 1), False)):
        assert {(loaded[txn.id][0], loaded[txn.id][1].hour) for txn in probes[key]} == {(date(2026, 11, 1), 3)}
    expected = {t for b in batches_on(paytrace.ledger, date(2026, 10, 31), date(2026, 11, 2)).values()
                for t in b.transaction_ids}
    assert set(loaded) == expected

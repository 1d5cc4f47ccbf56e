"""Heartland (GP API): sandbox wire format, the connector against it over HTTP, and the DuckDB assets."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import duckdb
import pydantic
import pytest
import requests
from dagster_duckdb import DuckDBResource

from m3_recon.clients.heartland import REFRESH_MARGIN_SECONDS, GpApiAccessToken, HeartlandClient, access_token_secret
from m3_recon.clients.http import VendorSession
from m3_recon.defs.heartland.assets import (
    DEPOSITS_TABLE, DISPUTES_TABLE, TRANSACTIONS_TABLE, raw_heartland_deposits, raw_heartland_disputes,
    raw_heartland_settlement_transactions,
)
from m3_recon.defs.heartland.definitions import heartland_resource_from_env
from m3_recon.defs.heartland.resources import HeartlandResource
from m3_recon.errors import VendorAuthError, VendorUnavailableError
from m3_recon.sandbox.heartland_api import SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY, HeartlandApp, sandbox_env
from m3_recon.sandbox.heartland_ledger import DAY, HeartlandLedger, build_heartland_ledger
from m3_recon.sandbox.server import Fault, SandboxClock, VendorServer
from m3_recon.sandbox.world import Period

SEED = 7
PERIOD = Period(date(2026, 10, 1), 21)
FIRST, LAST = date(2026, 10, 1), date(2026, 10, 31)
ASSETS = [raw_heartland_settlement_transactions, raw_heartland_disputes, raw_heartland_deposits]
GP_HEADERS = {"X-GP-Version": "2021-03-22"}
TABLE_KEYS = {TRANSACTIONS_TABLE: "id", DEPOSITS_TABLE: "id", DISPUTES_TABLE: "id, stage"}


@pytest.fixture(scope="module")
def ledger(world) -> HeartlandLedger:
    return build_heartland_ledger(world)


@pytest.fixture(scope="module")
def settled_now() -> int:
    return PERIOD.end_epoch + 10 * DAY


@pytest.fixture(scope="module")
def gp(ledger, settled_now):
    clock = SandboxClock(settled_now)
    server = VendorServer(HeartlandApp(ledger, clock, SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY), clock).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_sandbox(request, settled_now):
    """Every test starts with no pending faults and the clock after the period has settled."""
    yield
    if "gp" in request.fixturenames:
        server = request.getfixturevalue("gp")
        server.faults.clear()
        server.app.clock.set(settled_now)


def connector(gp: VendorServer, **overrides) -> HeartlandClient:
    """The client as the Heartland resource builds it from these settings."""
    settings = {"app_id": SANDBOX_GP_APP_ID, "app_key": SANDBOX_GP_APP_KEY, "api_base": f"{gp.url}/ucp",
                "max_requests_per_second": 500.0, **overrides}
    return HeartlandResource(**settings).client()


def sign_in(gp: VendorServer, app_key: str = SANDBOX_GP_APP_KEY, **extra) -> requests.Response:
    nonce = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {"app_id": SANDBOX_GP_APP_ID, "nonce": nonce, "grant_type": "client_credentials",
            "secret": hashlib.sha512((nonce + app_key).encode()).hexdigest(), **extra}
    return requests.post(f"{gp.url}/ucp/accesstoken", json=body, headers=GP_HEADERS, timeout=5)


def deposit_day(ledger: HeartlandLedger, deposit_id: str | None) -> date:
    return ledger.deposits[deposit_id].deposit_date


def expected_rows(ledger: HeartlandLedger, first: date, last: date) -> dict[str, set[tuple]]:
    """What the generator says deposits dated first..last hold: ids and signed minor-unit amounts."""
    def within(deposit_id):
        return first <= deposit_day(ledger, deposit_id) <= last

    return {
        TRANSACTIONS_TABLE: {(t.id, -t.amount if t.type == "REFUND" else t.amount)
                             for t in ledger.transactions.values() if within(t.deposit)},
        DEPOSITS_TABLE: {(d.id, d.net) for d in ledger.deposits.values() if within(d.id)},
        DISPUTES_TABLE: {(d.id, a.stage, -d.amount if a.funding_type == "DEBIT" else d.amount)
                         for d in ledger.disputes.values() for a in d.adjustments if within(a.deposit)},
    }


def loaded_rows(database: str) -> dict[str, set[tuple]]:
    with duckdb.connect(database, read_only=True) as conn:
        return {
            TRANSACTIONS_TABLE: set(conn.execute(f"SELECT id, signed_amount FROM {TRANSACTIONS_TABLE}").fetchall()),
            DEPOSITS_TABLE: set(conn.execute(f"SELECT id, net_amount FROM {DEPOSITS_TABLE}").fetchall()),
            DISPUTES_TABLE: set(conn.execute(f"SELECT id, stage, signed_amount FROM {DISPUTES_TABLE}").fetchall()),
        }


def snapshot(database: str) -> dict[str, list[tuple]]:
    """Every column except the load bookkeeping, in key order."""
    with duckdb.connect(database, read_only=True) as conn:
        return {table: conn.execute(f"SELECT * EXCLUDE (loaded_at_utc, dagster_run_id) FROM {table} "
                                    f"ORDER BY {key}").fetchall() for table, key in TABLE_KEYS.items()}


def materialize(database: str, partition_key: str, lookback_days: int | None = None) -> dg.ExecuteInProcessResult:
    run_config = None
    if lookback_days is not None:
        run_config = {"ops": {a.op.name: {"config": {"lookback_days": lookback_days}} for a in ASSETS}}
    return dg.materialize(ASSETS, partition_key=partition_key, run_config=run_config,
                          resources={"heartland": heartland_resource_from_env(),
                                     "duckdb": DuckDBResource(database=database)})


# -- the sandbox speaks GP API -------------------------------------------------------------------------
def test_access_token_secret_is_sha512_of_nonce_then_app_key():
    expected = hashlib.sha512(b"2023-09-13T13:34:23.444ZmUJvvbN1DsG2r3RY").hexdigest()
    assert access_token_secret("2023-09-13T13:34:23.444Z", "mUJvvbN1DsG2r3RY") == expected
    assert len(expected) == 128


def test_sandbox_issues_tokens_only_for_the_right_secret(gp):
    granted = sign_in(gp, seconds_to_expire=600)
    assert granted.status_code == 200
    body = granted.json()
    assert body["type"] == "Bearer" and body["seconds_to_expire"] == 600 and body["token"]
    assert {a["name"]: a["id"][:4] for a in body["scope"]["accounts"]} == {
        "settlement_reporting": "DAA_", "dispute_management": "DIA_"}

    refused = sign_in(gp, app_key="not-the-key")
    assert refused.status_code == 403
    assert refused.json() == {"error_code": "ACTION_NOT_AUTHORIZED", "detailed_error_code": "40004",
                              "detailed_error_description": "Credentials not recognized to create access token."}
    too_short = sign_in(gp, seconds_to_expire=10)
    assert (too_short.status_code, too_short.json()["detailed_error_code"]) == (400, "40213")


def test_sandbox_enforces_gp_request_rules(gp):
    token = sign_in(gp).json()["token"]
    url = f"{gp.url}/ucp/settlement/deposits"
    auth = {**GP_HEADERS, "Authorization": f"Bearer {token}"}
    base = {"account_name": "settlement_reporting", "from_time_created": "2026-10-01",
            "to_time_created": "2026-10-31"}

    def get(params, headers=auth):
        return requests.get(url, params=params, headers=headers, timeout=5)

    ok = get({**base, "page_size": "1000"})
    assert ok.status_code == 200 and ok.json()["current_page_size"] == ok.json()["total_record_count"] == 16
    too_big = get({**base, "page_size": "1001"})
    assert too_big.status_code == 400
    assert too_big.json()["error_code"] == "INVALID_REQUEST_DATA"
    assert "page_size" in too_big.json()["detailed_error_description"]
    assert get({"from_time_created": "2026-10-01"}).json()["error_code"] == "MANDATORY_DATA_MISSING"
    assert get({**base, "account_name": "someone_else"}).status_code == 403
    assert get(base, headers={**auth, "Authorization": "Bearer nope"}).json()["error_code"] == "NOT_AUTHENTICATED"
    assert get(base, headers={"Authorization": f"Bearer {token}"}).status_code == 400  # no X-GP-Version
    assert get(base, headers={**auth, "Content-Type": "application/json"}).status_code == 502  # GP's quirk
    with pytest.raises(pydantic.ValidationError):
        connector(gp, page_size=1_001)


def test_every_sale_is_a_planned_payment_with_its_references_on_the_wire(gp, world):
    sales = [t for t in connector(gp).settlement_transactions(FIRST, LAST) if t["type"] == "SALE"]
    planned = {p.payment_id: p for p in world.payments}
    assert len(sales) == len(planned) == 117 and {sale["id"] for sale in sales} == set(planned)
    for sale in sales:
        plan = planned[sale["id"]]
        assert plan.processor == "heartland"
        assert sale["reference"] == (plan.invoice_ref or "")
        assert sale["description"] == (f"Customer {plan.customer_ref}" if plan.customer_ref else "Card payment")
    references = [(p.invoice_ref is not None, p.customer_ref is not None) for p in planned.values()]
    assert (references.count((True, True)), references.count((False, True)), references.count((False, False))) == (
        98, 13, 6)


def test_only_what_exists_at_the_sandbox_clock_is_visible(gp, ledger):
    held = next(d for d in ledger.deposits.values() if d.released_at is not None)
    client = connector(gp)
    gp.app.clock.set(held.created - 1)
    assert held.id not in {d["id"] for d in client.deposits(FIRST, LAST)}
    assert all(t["deposit_id"] != held.id for t in client.settlement_transactions(FIRST, LAST))
    gp.app.clock.set(held.created)
    assert [d["status"] for d in client.deposits(held.deposit_date, held.deposit_date)] == ["DELAYED"]
    gp.app.clock.set(held.released_at)
    assert [d["status"] for d in client.deposits(held.deposit_date, held.deposit_date)] == ["RELEASED"]


# -- the connector -----------------------------------------------------------------------------------
def test_wrong_app_key_is_a_clear_error_naming_the_variable(gp):
    with pytest.raises(VendorAuthError) as raised:
        connector(gp, app_key="wrong-key-123456").deposits(FIRST, LAST)
    message = str(raised.value)
    assert "GP_API_APP_KEY" in message and "Credentials not recognized" in message
    assert "wrong-key-123456" not in message and SANDBOX_GP_APP_KEY not in message


def test_paging_across_page_boundaries(gp, ledger):
    everything = connector(gp).settlement_transactions(FIRST, LAST)
    assert len(everything) == len(ledger.transactions) == 126
    for first, last, pages in ((FIRST, LAST, 18), (date(2026, 9, 1), LAST, 19)):
        # A month or less: GP counts the rows (126 = 18 full pages of 7). Longer: GP does not count, so the
        # connector reads until a short page — here an empty 19th.
        served = gp.faults.served
        paged = connector(gp, page_size=7).settlement_transactions(first, last)
        assert [t["id"] for t in paged] == [t["id"] for t in everything]
        assert gp.faults.served - served == 1 + pages  # one sign-in, then the pages
    exact = connector(gp, page_size=63)  # 126 = 2 x 63: the count saves asking for an empty third page
    served = gp.faults.served
    assert len(exact.settlement_transactions(FIRST, LAST)) == 126 and gp.faults.served - served == 1 + 2


def test_token_is_renewed_before_it_expires(gp):
    now = [1_000.0]
    token = GpApiAccessToken(SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY, 3_600, clock=lambda: now[0])
    session = VendorSession(vendor="GP API", base_url=f"{gp.url}/ucp", credential_hint="GP_API_APP_KEY",
                            url_hint="GP_API_BASE", authenticator=token)
    first = token.headers(session)
    now[0] += 3_600 - REFRESH_MARGIN_SECONDS - 1
    assert token.headers(session) == first and token.sign_ins == 1
    now[0] += 1
    assert token.headers(session) != first and token.sign_ins == 2


def test_expired_token_is_replaced_after_a_401(gp, ledger):
    client = connector(gp)
    before = client.deposits(FIRST, LAST)
    gp.app.expire_tokens()
    assert client.deposits(FIRST, LAST) == before
    assert client.access_token.sign_ins == 2


def test_rate_limits_server_errors_and_timeouts_are_survived(gp):
    baseline = connector(gp).disputes(FIRST, LAST)
    gp.faults.configure(faults=[
        Fault(stall_seconds=1.0, path_prefix="/ucp/settlement"),
        Fault(status=429, headers={"Retry-After": "0"}, count=2, path_prefix="/ucp/settlement"),
        Fault(status=503, headers={"Retry-After": "0"}, path_prefix="/ucp/settlement"),
    ])
    assert connector(gp, timeout_seconds=0.3).disputes(FIRST, LAST) == baseline
    assert gp.faults.pending == 0


def test_persistent_outage_gives_up_with_an_actionable_error(gp):
    gp.faults.configure(faults=[Fault(status=503, headers={"Retry-After": "0"}, count=3,
                                      path_prefix="/ucp/settlement")])
    with pytest.raises(VendorUnavailableError, match="GP API: GET /settlement/deposits kept failing after 2"):
        connector(gp, max_attempts=2).deposits(FIRST, LAST)


# -- the assets ----------------------------------------------------------------------------------------
def test_materialize_is_idempotent_and_equals_the_generator(gp, ledger, tmp_path, monkeypatch):
    for name, value in sandbox_env(gp.url).items():
        monkeypatch.setenv(name, value)
    database = str(tmp_path / "warehouse.duckdb")
    day = date(2026, 10, 21)  # Wednesday: the look-back holds Monday's weekend batches, a chargeback and a reversal
    first_result = materialize(database, day.isoformat())
    first = snapshot(database)
    assert materialize(database, day.isoformat()).success
    assert snapshot(database) == first

    expected = expected_rows(ledger, day - timedelta(days=7), day)
    assert loaded_rows(database) == expected
    assert {len(rows) for rows in expected.values()} != {0}
    assert {stage for _, stage, _ in expected[DISPUTES_TABLE]} == {"CHARGEBACK", "REVERSAL"}
    deposits_meta = first_result.asset_materializations_for_node("raw_heartland_deposits")[0].metadata
    assert deposits_meta["deposits_unexplained_by_lines"].value == 0
    assert deposits_meta["deposits_not_summing"].value == 0
    assert {(c.check_name, c.passed) for c in first_result.get_asset_check_evaluations()} == {
        ("deposit_totals_add_up", True), ("deposits_sum_to_their_lines", True)}

    # Only the partition's own day is replaced when the look-back is zero.
    assert materialize(database, "2026-10-22", lookback_days=0).success
    assert loaded_rows(database) == expected_rows(ledger, day - timedelta(days=7), day + timedelta(days=1))
    with duckdb.connect(database, read_only=True) as conn:
        amounts = conn.execute(f"SELECT typeof(amount), typeof(net_amount) FROM {DEPOSITS_TABLE} LIMIT 1").fetchone()
    assert amounts == ("BIGINT", "BIGINT")


def test_every_deposit_nets_its_transactions_less_fees_and_chargebacks(gp, ledger, tmp_path, monkeypatch):
    for name, value in sandbox_env(gp.url).items():
        monkeypatch.setenv(name, value)
    database = str(tmp_path / "warehouse.duckdb")
    assert materialize(database, PERIOD.end.isoformat(), lookback_days=PERIOD.days).success
    with duckdb.connect(database, read_only=True) as conn:
        deposits = conn.execute(f"""
            SELECT d.id, d.net_amount, d.sales_amount + d.refunds_amount,
                   (SELECT COALESCE(sum(signed_amount), 0) FROM {TRANSACTIONS_TABLE} t WHERE t.deposit_id = d.id),
                   d.chargebacks_amount + d.reversals_amount,
                   (SELECT COALESCE(sum(signed_amount), 0) FROM {DISPUTES_TABLE} x WHERE x.deposit_id = d.id),
                   d.discounts_amount + d.fees_amount + d.tax_amount
            FROM {DEPOSITS_TABLE} d ORDER BY d.deposit_date""").fetchall()
    in_period = [d for d in ledger.deposits.values() if d.deposit_date <= PERIOD.end]
    assert len(deposits) == len(in_period) == 15
    for deposit_id, net, gross, lines, disputes, disputed, fees in deposits:
        assert gross == lines and disputes == disputed, deposit_id
        assert net == lines + disputed + fees, deposit_id  # fees, discounts, chargebacks are negative
    assert sum(d.net for d in in_period) == sum(row[1] for row in deposits)

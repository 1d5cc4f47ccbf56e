"""Infor M3: the MI client against the sandbox over real HTTP, and the open-invoice assets in DuckDB."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal

import dagster as dg
import duckdb
import pytest
import requests

from m3_recon import wire
from m3_recon.defs.m3.assets import _amount_sql, _snapshot_docs, _taken, core_open_invoices, raw_m3_open_invoices
from m3_recon.clients.m3 import IncompleteReadError, M3Client, M3Error, minor_units
from m3_recon.defs.m3.definitions import m3_resource_from_env
from m3_recon.defs.m3.resources import M3Resource
from m3_recon.errors import VendorAuthError, VendorRequestError, VendorUnavailableError
from m3_recon.money import major
from m3_recon.posting.layout import ParmLayout
from m3_recon.sandbox import m3_api
from m3_recon.sandbox.m3_api import (SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_PASSWORD,
                                     SANDBOX_M3_TENANT, SANDBOX_M3_USERNAME, M3App, sandbox_env, write_ionapi_file)
from m3_recon.sandbox.m3_ledger import LedgerError, M3Ledger, PaymentLine
from m3_recon.sandbox.server import Fault, SandboxClock, VendorServer
from m3_recon_tests.test_wire import AMOUNTS
from m3_recon.sandbox.world import Period, build_world

SEED = 11
PERIOD = Period(date(2026, 10, 1), 10)
DAY = 86_400
FAST = {"sleep": lambda seconds: None, "requests_per_second": 1_000}  # no waiting between retries or calls
NOW = PERIOD.end_epoch + DAY


@pytest.fixture(scope="module")
def applied(world):
    """Cash the test applies in M3 before reading: invoice number -> minor units (full, partial, EUR)."""
    eur = next(inv for inv in world.invoices if inv.currency == "EUR")
    usd = [inv for inv in world.invoices if inv.currency == "USD"]
    return {usd[0].number: usd[0].amount_minor, usd[1].number: usd[1].amount_minor // 3,
            eur.number: eur.amount_minor}


@pytest.fixture(scope="module")
def ledger(world, applied):
    ledger = M3Ledger(world)
    by_number = {inv.number: inv for inv in world.invoices}
    for number, amount in applied.items():
        ledger.apply_cash(number, by_number[number].year, amount, PERIOD.start_epoch + 3_600)
    return ledger


@pytest.fixture(scope="module")
def m3_server(ledger):
    clock = SandboxClock(NOW)
    app = M3App(ledger, clock, SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_USERNAME,
                SANDBOX_M3_PASSWORD, SANDBOX_M3_TENANT)
    server = VendorServer(app, clock).start()
    yield server, clock
    server.stop()


@pytest.fixture(scope="module")
def filter_m3(ledger):
    """The same ledger served by an M3 that reads the ARS200MI key inputs as filters (quirk m3_keys_as_filters)."""
    clock = SandboxClock(NOW)
    app = M3App(ledger, clock, SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_USERNAME,
                SANDBOX_M3_PASSWORD, SANDBOX_M3_TENANT, quirks=frozenset({"m3_keys_as_filters"}))
    server = VendorServer(app, clock).start()
    yield server
    server.stop()


@pytest.fixture
def m3(m3_server):
    """The shared sandbox, with its clock and fault plan put back after each test."""
    yield m3_server
    server, clock = m3_server
    server.faults.clear()
    clock.set(NOW)


@pytest.fixture
def ionapi(m3, tmp_path):
    return write_ionapi_file(tmp_path / "sandbox.ionapi", m3[0].url)


def ion_client(ionapi, **options) -> M3Client:
    return M3Client.from_ionapi(ionapi, 100, "AAA", **{**FAST, **options})


def basic_client(m3, password: str = SANDBOX_M3_PASSWORD, **options) -> M3Client:
    return M3Client.on_premise(m3[0].url, SANDBOX_M3_USERNAME, password, 100, "AAA", **{**FAST, **options})


def expected_open(world, applied, day: date) -> dict[str, int]:
    """The generator's answer: invoices dated up to ``day`` with what is still owed on them."""
    open_amounts = {inv.number: inv.amount_minor - applied.get(inv.number, 0)
                    for inv in world.invoices if inv.invoice_date <= day}
    return {number: amount for number, amount in open_amounts.items() if amount > 0}


def totals_call(inv) -> tuple[str, dict]:
    return "GetInvTotInfo", {"PYNO": inv.customer, "CINO": inv.number, "INYR": inv.year, "CUNO": inv.customer}


# -- reading through both authentication routes ------------------------------------------------------
def test_ion_api_client_reads_every_open_invoice_with_exact_outstanding_amounts(world, applied, ionapi):
    records = ion_client(ionapi).open_invoices()
    found = {r["CINO"]: minor_units(r["OCUA"], r["CUCD"]) for r in records}
    assert found == expected_open(world, applied, PERIOD.end)
    assert len(records) == len(found) == len(world.invoices) - 2  # two invoices were paid in full
    partial = next(r for r in records if r["CINO"] == list(applied)[1])
    assert minor_units(partial["PCUA"], partial["CUCD"]) == applied[partial["CINO"]]
    assert partial["RECO"] == "0" and partial["CUNO"] == partial["PYNO"]
    assert all(r["CONO"] == "100" and r["DIVI"] == "AAA" for r in records)


def test_basic_auth_client_reads_paid_invoice_with_reco_9(world, applied, m3):
    paid = next(inv for inv in world.invoices if inv.number == list(applied)[0])
    client = basic_client(m3)
    [record] = client.execute("ARS200MI", "GetInvTotInfo", **totals_call(paid)[1])
    assert (record["RECO"], record["OCUA"], record["DTP5"], record["REDE"]) == ("9", "0", "20261001", "20261001")
    assert minor_units(record["CUAM"], record["CUCD"]) == paid.amount_minor
    invoice_lines = client.execute("ARS200MI", "LstInvoices", maxrecs=0, CUNO=paid.customer)
    assert {line["CINO"] for line in invoice_lines if line["TRCD"] == "10"} == {
        inv.number for inv in world.invoices_of(paid.customer)}
    payment = next(line for line in invoice_lines if line["TRCD"] == "20")
    [voucher_line] = client.execute("ARS200MI", "GetInvoice", YEA4=payment["YEA4"], JRNO=payment["JRNO"],
                                    JSNO=payment["JSNO"])
    assert minor_units(voucher_line["CUAM"], voucher_line["CUCD"]) == -paid.amount_minor


def test_foreign_invoice_keeps_booking_rate_and_closes_local_amount_exactly(world, applied, ionapi):
    eur = next(inv for inv in world.invoices if inv.currency == "EUR" and inv.number not in applied)
    [record] = ion_client(ionapi).execute("ARS200MI", "GetInvTotInfo", **totals_call(eur)[1])
    assert record["CUCD"] == "EUR" and record["LOCD"] == "USD"
    assert minor_units(record["OCUA"], "EUR") == eur.amount_minor
    rate = Decimal(record["ARAT"])
    assert Decimal("1.03") <= rate <= Decimal("1.13")
    assert minor_units(record["OAMT"], "USD") == int((eur.amount_minor * rate).quantize(Decimal(1), ROUND_HALF_EVEN))
    paid_eur = next(inv for inv in world.invoices if inv.number in applied and inv.currency == "EUR")
    [closed] = ion_client(ionapi).execute("ARS200MI", "GetInvTotInfo", **totals_call(paid_eur)[1])
    assert (closed["OCUA"], closed["OAMT"], closed["RECO"]) == ("0", "0", "9")


# -- bulk calls and paging ------------------------------------------------------------------------------
def test_bulk_calls_are_chunked_and_answered_in_order(world, ionapi, m3):
    invoices = world.invoices[:20]
    client = ion_client(ionapi, bulk_size=7)
    served_before = m3[0].faults.served
    results = client.execute_bulk("ARS200MI", [totals_call(inv) for inv in invoices])
    assert [r[0]["CINO"] for r in results] == [inv.number for inv in invoices]
    assert [minor_units(r[0]["CUAM"], r[0]["CUCD"]) for r in results] == [inv.amount_minor for inv in invoices]
    assert m3[0].faults.served - served_before == 1 + 3  # one sign-in, then 20 calls in 3 POSTs


def test_independent_bulk_calls_in_flight_at_once_answer_in_order_and_a_terminated_one_raises(world, ionapi, m3):
    invoices = world.invoices[:20]
    client = ion_client(ionapi, bulk_size=3)
    calls = [totals_call(inv) for inv in invoices]
    in_order = client.execute_each("ARS200MI", calls)
    served_before = m3[0].faults.served
    assert client.execute_each("ARS200MI", calls, in_flight=4) == in_order
    assert [r[0]["CINO"] for r in in_order] == [inv.number for inv in invoices]
    assert m3[0].faults.served - served_before == 7  # 20 calls in 7 POSTs, each sent once
    answers = client.execute_each("ARS200MI", [*calls[:4], ("GetInvTotInfo", {"PYNO": invoices[0].customer})],
                                  in_flight=4)
    assert answers[:4] == in_order[:4] and isinstance(answers[4], M3Error) and answers[4].code == "WCI0202"
    with pytest.raises(M3Error, match="Program XYZ999MI does not exist"):
        client.execute_each("XYZ999MI", [("LstFoo", {})] * 10, in_flight=4)
    assert ion_client(ionapi, read_concurrency=8).reads_in_flight == 8
    assert M3Client(client.session, 100, "AAA", read_concurrency=4000).reads_in_flight == int(
        client.session.requests_per_second)  # never more than the request budget per second


# M3 sends amounts as text: every amount text of the wire table, with the places of its currency.
AMOUNT_TEXTS = {(text, places): expected for (text, places), expected in AMOUNTS.items() if isinstance(text, str) and text}


@pytest.mark.parametrize("case,expected", AMOUNT_TEXTS.items(), ids=[repr(c) for c in AMOUNT_TEXTS])
def test_the_snapshots_amount_reader_reads_every_amount_text_as_minor_units_does(case, expected):
    """The snapshot's SQL amount reader is its own (string arithmetic, for speed) beside ``wire.minor_units_sql``:
    it must read, or refuse, exactly what the Python reader reads or refuses."""
    text, places = case
    reads, value = _amount_sql("$1", "CAST($2 AS INTEGER)")
    with duckdb.connect() as conn:
        sql_reads, sql_value = conn.execute(f"SELECT {reads}, {value}", [text.strip(), places]).fetchone()
    if isinstance(expected, str):
        with pytest.raises(wire.WireValueError):
            wire.minor_units(text, places)
        assert not (sql_reads and sql_value is not None)
    else:
        assert sql_reads and sql_value == expected == wire.minor_units(text, places)


def test_snapshot_rows_are_typed_once_per_record_and_an_unreadable_amount_or_date_fails_with_the_readers_message():
    record = {"CONO": "100", "DIVI": "AAA", "PYNO": "C1", "CUNO": "C1", "CINO": "7", "INYR": "2026", "CUCD": "JPY",
              "ARAT": "0.0067", "CUAM": "1200", "OCUA": "1000.", "LOCD": "USD", "OAMT": "6.7", "IVDT": "20261002",
              "DUDT": "0", "RECO": "0", "YEA4": "2026", "JRNO": "1", "JSNO": "1"}
    later, undated = {**record, "CINO": "8", "IVDT": "20261003", "CUCD": "KWD", "CUAM": "-1.5"}, {**record, "CINO": "9",
                                                                                                  "IVDT": "0"}
    del undated["OAMT"]
    days, taken = [date(2026, 10, 2), date(2026, 10, 3)], datetime(2026, 10, 4, tzinfo=timezone.utc)
    with duckdb.connect() as conn:
        docs = _snapshot_docs(conn, *_taken([record, later, undated]), days, taken, "run").to_pylist()
        assert [(d["snapshot_date"], d["invoice_number"], d["original_minor"], d["outstanding_minor"],
                 d["outstanding_local_minor"], d["due_date"]) for d in docs] == [
            (days[0], "7", 1200, 1000, 670, None), (days[0], "9", 1200, 1000, 0, None),
            (days[1], "7", 1200, 1000, 670, None), (days[1], "8", -1500, 1_000_000, 670, None),
            (days[1], "9", 1200, 1000, 0, None)]
        assert json.loads(docs[0]["raw"]) == record
        for bad, message in (({"CUAM": "12.5"}, "M3 amount 12.5 is not a whole number of minor units of JPY"),
                             ({"CUCD": "USD", "OCUA": "1e3"}, "M3 amount '1e3' is not an amount"),
                             ({"IVDT": "20261399"}, "'20261399' is not a valid date"),
                             ({"CUAM": "None"}, "M3 amount 'None' is not an amount"), ({"OCUA": ...}, "without OCUA")):
            broken = {k: v for k, v in {**record, **bad}.items() if v is not ...}
            with pytest.raises((VendorRequestError, ValueError), match=re.escape(message)):
                _snapshot_docs(conn, *_taken([record, broken]), days, taken, "run")


def test_restart_key_paging_reads_every_line_once_across_pages(world, applied, ionapi, m3):
    client = ion_client(ionapi, page_size=40)
    served_before = m3[0].faults.served
    lines = client.list_all("ARS200MI", "LstInvByDivi", restart={"PYNO": "PYNO", "IVDT": "IVDT"},
                            key=("DIVI", "YEA4", "JRNO", "JSNO"), FDIV="AAA", TDIV="AAA")
    keys = [(line["YEA4"], line["JRNO"], line["JSNO"]) for line in lines]
    assert len(keys) == len(set(keys)) == len(world.invoices) + len(applied)
    assert {line["CINO"] for line in lines if line["TRCD"] == "10"} == {inv.number for inv in world.invoices}
    assert m3[0].faults.served - served_before > len(lines) // 40  # every page was a request of its own


def test_paging_that_cannot_advance_stops_with_an_actionable_error(ionapi):
    client = ion_client(ionapi, page_size=1)
    with pytest.raises(VendorRequestError, match="M3_PAGE_SIZE"):
        client.list_all("ARS200MI", "LstInvByDivi", restart={"PYNO": "PYNO", "IVDT": "IVDT"},
                        key=("DIVI", "YEA4", "JRNO", "JSNO"), FDIV="AAA", TDIV="AAA")


# -- the two v2 error forms -----------------------------------------------------------------------------
def test_single_call_error_is_read_from_the_http_400_top_level(world, ionapi):
    inv = world.invoices[0]
    client = ion_client(ionapi)
    with pytest.raises(M3Error) as missing:
        client.execute("ARS200MI", "GetInvTotInfo", **{**totals_call(inv)[1], "CINO": "99999999"})
    assert (missing.value.code, missing.value.status, missing.value.transaction) == ("XRE0103", 400, "GetInvTotInfo")
    with pytest.raises(M3Error) as unknown_customer:
        client.execute("ARS200MI", "LstInvoices", CUNO="C99999")
    assert (unknown_customer.value.code, unknown_customer.value.field) == ("WCU0203", "CUNO")
    with pytest.raises(M3Error, match="Not authorized for company 200") as company:
        M3Client.from_ionapi(ionapi, 200, "AAA").execute("ARS200MI", "LstInvoices", CUNO=inv.customer)
    assert company.value.field == "CONO"


def test_record_does_not_exist_on_a_list_is_an_empty_list(world, ionapi):
    client = ion_client(ionapi)
    assert client.execute("ARS200MI", "LstInvoices", CUNO=world.invoices[0].customer, IVDT="20991231") == []


def test_bulk_errors_are_read_per_result_from_an_http_200(world, ionapi):
    client = ion_client(ionapi)
    good, bad = totals_call(world.invoices[0]), ("GetInvTotInfo", {"PYNO": world.invoices[0].customer})
    with pytest.raises(M3Error) as per_result:
        client.execute_bulk("ARS200MI", [good, bad])
    assert (per_result.value.code, per_result.value.field, per_result.value.status) == ("WCI0202", "CINO", 200)
    with pytest.raises(M3Error, match="Transaction LstEverything does not exist"):
        client.execute_bulk("ARS200MI", [("LstEverything", {})])
    empty = client.execute_bulk("ARS200MI", [("LstInvoices", {"CUNO": world.invoices[0].customer,
                                                              "IVDT": "20991231"}), good])
    assert empty[0] == [] and empty[1][0]["CINO"] == world.invoices[0].number


def test_terminated_bulk_call_is_read_from_the_http_400_termination_fields(ionapi):
    with pytest.raises(M3Error, match="Program XYZ999MI does not exist") as terminated:
        ion_client(ionapi).execute_bulk("XYZ999MI", [("LstFoo", {})])
    assert terminated.value.status == 400


def test_wire_format_matches_the_reference(world, m3):
    base, auth = m3[0].url + "/m3api-rest", (SANDBOX_M3_USERNAME, SANDBOX_M3_PASSWORD)
    inv = world.invoices[0]
    v2 = requests.get(f"{base}/v2/execute/ARS200MI/LstInvoices;maxrecs=2;returncols=CINO,IVDT,RECO",
                      params={"cono": "100", "divi": "AAA", "CUNO": inv.customer}, auth=auth, timeout=5).json()
    assert v2["nrOfSuccessfullTransactions"] == 1 and v2["wasTerminated"] == "false"
    records = v2["results"][0]["records"]
    assert len(records) == 2 and list(records[0]) == ["CINO", "IVDT", "RECO"]
    assert all(isinstance(v, str) for r in records for v in r.values())
    assert records[0]["CINO"].endswith(" ") and len(records[0]["CINO"]) == 15  # padded alphanumeric
    v1 = requests.get(f"{base}/execute/ARS200MI/GetInvTotInfo", auth=auth, timeout=5, params={
        "cono": "100", "divi": "AAA", "metadata": "true", "returncols": "OCUA,IVDT", **totals_call(inv)[1]}).json()
    assert v1["Metadata"]["Field"] == [
        {"@name": "OCUA", "@type": "N", "@length": 17, "@description": "Outstanding amount - foreign currency"},
        {"@name": "IVDT", "@type": "D", "@length": 10, "@description": "Invoice date"}]
    assert v1["MIRecord"][0]["NameValue"][1] == {"Name": "IVDT", "Value": inv.invoice_date.strftime("%Y%m%d")}
    v1_error = requests.get(f"{base}/execute/ARS200MI/LstInvoices", auth=auth, timeout=5,
                            params={"cono": "100", "divi": "AAA"})
    assert v1_error.status_code == 200 and v1_error.json()["@code"] == "WCU0202"


# -- authentication: expiry, refusal ----------------------------------------------------------------------
def test_expired_token_is_renewed_by_refresh_then_by_password_grant(world, ionapi, m3):
    _, clock = m3
    client = ion_client(ionapi)
    customer = world.invoices[0].customer
    first = client.execute("ARS200MI", "LstInvoices", CUNO=customer, maxrecs=0)
    auth = client.session.authenticator
    token, refresh = auth._token, auth._refresh_token
    clock.set(clock.now() + 7_201)  # the sandbox's access tokens last 7,200 s
    assert client.execute("ARS200MI", "LstInvoices", CUNO=customer, maxrecs=0) == first
    assert auth._token != token and auth._refresh_token != refresh
    reuse = requests.post(f"{m3[0].url}/{SANDBOX_M3_TENANT}/as/token.oauth2", timeout=5, data={
        "grant_type": "refresh_token", "refresh_token": refresh, "client_id": SANDBOX_M3_CLIENT_ID,
        "client_secret": SANDBOX_M3_CLIENT_SECRET})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"  # spent by the refresh grant
    clock.set(clock.now() + 9 * 3_600)  # refresh token gone too: sign in again with saak/sask
    assert client.execute("ARS200MI", "LstInvoices", CUNO=customer, maxrecs=0) == first


def test_bad_service_account_names_the_variable_and_hides_the_secret(ionapi):
    config = json.loads(ionapi.read_text())
    ionapi.write_text(json.dumps({**config, "sask": "not-the-secret-key"}))
    with pytest.raises(VendorAuthError, match="M3_IONAPI_FILE") as refused:
        ion_client(ionapi).execute("ARS200MI", "LstInvoices", CUNO="C10001")
    assert "invalid_grant" in str(refused.value) and "not-the-secret-key" not in str(refused.value)
    ionapi.write_text(json.dumps({**config, "cs": "wrong-client-secret"}))
    with pytest.raises(VendorAuthError, match="M3_IONAPI_FILE") as bad_client:
        ion_client(ionapi).execute("ARS200MI", "LstInvoices", CUNO="C10001")
    assert "wrong-client-secret" not in str(bad_client.value)
    ionapi.write_text(json.dumps({k: v for k, v in config.items() if k != "saak"}))
    with pytest.raises(VendorAuthError, match="lacks saak"):
        ion_client(ionapi)
    with pytest.raises(VendorAuthError, match="M3_IONAPI_FILE points to .* does not exist"):
        ion_client(ionapi.with_name("missing.ionapi"))


def test_bad_basic_credentials_name_the_variables(m3):
    with pytest.raises(VendorAuthError, match="M3_USERNAME / M3_PASSWORD") as refused:
        basic_client(m3, password="Pa55-not-it").execute("ARS200MI", "LstInvoices", CUNO="C10001")
    assert refused.value.status == 401 and "Pa55-not-it" not in str(refused.value)
    with pytest.raises(VendorAuthError, match="M3_CONO"):
        M3Resource(ionapi_file="x.ionapi", divi="AAA").client()
    with pytest.raises(VendorAuthError, match="M3_IONAPI_FILE .* or M3_BASE_URL"):
        M3Resource(cono=100, divi="AAA").client()


# -- surviving a flaky gateway --------------------------------------------------------------------------
def test_rate_limits_server_errors_and_timeouts_are_retried(world, ionapi, m3):
    server, _ = m3
    api = f"/{SANDBOX_M3_TENANT}/M3/"
    server.faults.configure(faults=[Fault(status=429, headers={"Retry-After": "0"}, count=2, path_prefix=api),
                                    Fault(status=503, count=1, path_prefix=api),
                                    Fault(stall_seconds=1.0, count=1, path_prefix=api)])
    client = ion_client(ionapi, timeout_seconds=0.5, max_attempts=6)
    records = client.execute("ARS200MI", "LstInvoices", CUNO=world.invoices[0].customer, maxrecs=0)
    assert {r["CINO"] for r in records if r["TRCD"] == "10"} == {
        inv.number for inv in world.invoices_of(world.invoices[0].customer)}
    assert server.faults.pending == 0
    server.faults.configure(faults=[Fault(status=502, count=3, path_prefix=api)])
    with pytest.raises(VendorUnavailableError, match="kept failing after 3 attempts"):
        ion_client(ionapi, max_attempts=3).execute("ARS200MI", "LstInvoices", CUNO="C10001")


# -- the ledger's persistence ----------------------------------------------------------------------------
def test_ledger_persists_postings_across_restarts(world, tmp_path):
    path = tmp_path / "m3.sqlite"
    inv = world.invoices[5]
    M3Ledger(world, path).apply_cash(inv.number, inv.year, 1_000, PERIOD.start_epoch)
    reopened = M3Ledger(world, path)
    totals = reopened.totals(PERIOD.end_epoch)[(inv.customer, inv.number, inv.year)]
    assert (totals.paid_minor, totals.outstanding_minor) == (1_000, inv.amount_minor - 1_000)
    with pytest.raises(LedgerError, match="cannot apply"):
        reopened.apply_cash(inv.number, inv.year, inv.amount_minor, PERIOD.start_epoch)
    with pytest.raises(LedgerError, match="delete the file"):
        M3Ledger(build_world(SEED + 1, PERIOD), path)


# -- the assets -------------------------------------------------------------------------------------------
def test_materialised_snapshot_is_exactly_the_open_invoices_and_reruns_are_idempotent(world, applied, ionapi, m3,
                                                                                     duckdb_resource, monkeypatch):
    for key, value in {**sandbox_env(m3[0].url, ionapi), "M3_MAX_REQUESTS_PER_SECOND": "1000"}.items():
        monkeypatch.setenv(key, value)
    database = duckdb_resource.database
    resources = {"m3": m3_resource_from_env(), "duckdb": duckdb_resource}
    last, earlier = PERIOD.end, PERIOD.end - timedelta(days=4)

    def materialise(day: date) -> None:
        result = dg.materialize([raw_m3_open_invoices, core_open_invoices], partition_key=day.isoformat(),
                                resources=resources)
        assert result.success

    materialise(last)
    materialise(earlier)
    materialise(last)  # the re-run replaces the day's snapshot
    with duckdb.connect(database, read_only=True) as conn:
        core = {row[0]: row[1:] for row in conn.execute(
            "SELECT invoice_number, outstanding_minor, original_minor, currency, customer, invoice_date, "
            "reference_normalised, snapshot_date FROM core_open_invoices").fetchall()}
        per_day = dict(conn.execute("SELECT snapshot_date, count(*) FROM raw_m3_open_invoices GROUP BY 1").fetchall())
        duplicates = conn.execute("SELECT count(*) FROM (SELECT snapshot_date, invoice_number FROM "
                                  "raw_m3_open_invoices GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
    by_number = {inv.number: inv for inv in world.invoices}
    assert {number: row[0] for number, row in core.items()} == expected_open(world, applied, last)
    for number, (_, original, currency, customer, invoice_date, reference, snapshot) in core.items():
        inv = by_number[number]
        assert (original, currency, customer, invoice_date, reference, snapshot) == (
            inv.amount_minor, inv.currency, inv.customer, inv.invoice_date, number.lstrip("0"), last)
    assert per_day == {last: len(expected_open(world, applied, last)),
                       earlier: len(expected_open(world, applied, earlier))}
    assert duplicates == 0


# -- complete open items whether M3 reads key inputs as start positions or as filters --------------------
@pytest.fixture(params=["start_positions", "filters"])
def either_m3(request, m3, filter_m3, tmp_path):
    """.ionapi file of the M3 that reads LstInvByDivi's PYNO/IVDT as start positions, or as filters."""
    server = m3[0] if request.param == "start_positions" else filter_m3
    return request.param, write_ionapi_file(tmp_path / f"{request.param}.ionapi", server.url)


def test_customer_master_is_paged_by_its_start_key(world, ionapi):
    customers = ion_client(ionapi, page_size=7).customers()
    assert [c["CUNO"] for c in customers] == sorted(c.number for c in world.customers)
    first = customers[0]
    currency = world.customer(first["CUNO"]).currency
    assert (first["PYNO"], first["STAT"], first["CUCD"]) == (first["CUNO"], "20", currency)


def test_per_payer_read_with_the_default_page_size_finds_every_open_invoice(world, applied, either_m3):
    _, ionapi_file = either_m3
    client = ion_client(ionapi_file)
    assert (client.page_size, client.open_items_paging) == (500, "payer")
    records = client.open_invoices()
    found = {r["CINO"]: minor_units(r["OCUA"], r["CUCD"]) for r in records}
    expected = expected_open(world, applied, PERIOD.end)
    assert found == expected and len(records) == len(expected) == len(world.invoices) - 2
    assert sum(found.values()) == sum(expected.values())


def test_a_read_that_cannot_show_it_is_complete_fails_with_what_to_change(world, applied, either_m3):
    """Restart paging is complete only where the key inputs are start positions; elsewhere the cross-check fails."""
    mode, ionapi_file = either_m3
    client = ion_client(ionapi_file, open_items_paging="restart")
    expected = len(expected_open(world, applied, PERIOD.end))
    if mode == "start_positions":
        assert len(client.open_invoices()) == expected
        return
    with pytest.raises(IncompleteReadError) as failure:
        client.open_invoices()
    message = str(failure.value)
    read = re.search(r"gave (\d+) open invoices in (\d+) ledger lines", message)
    assert read, message
    assert int(read[1]) < expected and 500 <= int(read[2]) < len(world.invoices)  # a page and a restart page
    assert f"LstInvoices for the {len(world.customers)} customers of CRS610MI lists {expected};" in message
    assert f"; {expected - int(read[1])} open invoice(s) were not read" in message
    assert "set M3_OPEN_ITEMS_PAGING=payer" in message


def test_an_invoice_paid_between_the_two_routes_is_no_gap_but_an_open_one_is(world, applied, ionapi):
    by_number = {inv.number: inv for inv in world.invoices}
    paid, still_open = by_number[list(applied)[0]], next(inv for inv in world.invoices if inv.number not in applied)
    key = lambda inv: (inv.customer, inv.number, str(inv.year), inv.customer)  # noqa: E731
    client = ion_client(ionapi)
    client._prove_complete([], {key(paid): paid.customer}, lines=0, customers=1)
    with pytest.raises(IncompleteReadError, match=f"1 open invoice\\(s\\) were not read, e.g. {still_open.number}/"):
        client._prove_complete([], {key(paid): paid.customer, key(still_open): still_open.customer}, lines=0,
                               customers=2)


def test_a_payer_with_a_full_answer_cannot_be_proven_complete(either_m3):
    _, ionapi_file = either_m3
    with pytest.raises(IncompleteReadError, match=r"has at least 5 open ledger lines.*raise M3_PAGE_SIZE"):
        ion_client(ionapi_file, page_size=5).open_invoices()


def test_an_m3_that_caps_its_answers_below_maxrecs_fails_the_read_until_the_page_size_fits(world, applied, either_m3,
                                                                                          monkeypatch):
    _, ionapi_file = either_m3
    monkeypatch.setattr(m3_api, "MAX_RECORDS", 200)  # the server answers at most 200 rows, whatever maxrecs says
    for paging in ("payer", "restart"):
        capped = r"answered 200 rows when asked for up to 500 \(M3_PAGE_SIZE\), yet the division has at least \d+ "
        with pytest.raises(IncompleteReadError, match=capped + r"open ledger lines.*set M3_PAGE_SIZE=200"):
            ion_client(ionapi_file, open_items_paging=paging).open_invoices()
    records = ion_client(ionapi_file, page_size=200).open_invoices()
    assert {r["CINO"]: minor_units(r["OCUA"], r["CUCD"]) for r in records} == expected_open(world, applied, PERIOD.end)


def test_the_page_bound_still_holds_for_the_customer_master(either_m3):
    _, ionapi_file = either_m3
    with pytest.raises(VendorRequestError, match=r"CRS610MI/LstByNumber has more than 2 pages of 10 rows.*M3_MAX_PAGES"
                       ):
        ion_client(ionapi_file, page_size=10, max_pages=2).open_invoices()


def test_unknown_paging_strategy_names_the_setting(ionapi):
    with pytest.raises(VendorRequestError, match="M3_OPEN_ITEMS_PAGING='offset' is not a paging strategy"):
        ion_client(ionapi, open_items_paging="offset")


def test_an_incomplete_read_fails_the_asset_and_stores_nothing(filter_m3, tmp_path, duckdb_resource, monkeypatch):
    ionapi_file = write_ionapi_file(tmp_path / "filters.ionapi", filter_m3.url)
    for key, value in {**sandbox_env(filter_m3.url, ionapi_file), "M3_MAX_REQUESTS_PER_SECOND": "1000",
                       "M3_OPEN_ITEMS_PAGING": "restart"}.items():
        monkeypatch.setenv(key, value)
    result = dg.materialize([raw_m3_open_invoices, core_open_invoices], partition_key=PERIOD.end.isoformat(),
                            resources={"m3": m3_resource_from_env(), "duckdb": duckdb_resource}, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "raw_m3_open_invoices"
    assert "open-item read is incomplete" in failure.step_failure_data.error.to_string()
    assert not [e for e in result.all_events if e.is_step_success]  # core_open_invoices did not run
    with duckdb.connect(duckdb_resource.database) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.tables "
                            "WHERE table_name LIKE '%open_invoices'").fetchone()[0] == 0


# -- posting programs: GLS840MI, GLS200MI, ARS040MI -------------------------------------------------------
LAYOUT = ParmLayout.load()


@pytest.fixture
def posting_m3(world, tmp_path):
    """A sandbox of its own (its ledger takes postings) and a client for it."""
    ledger = M3Ledger(world, tmp_path / "m3.sqlite")
    clock = SandboxClock(NOW)
    app = M3App(ledger, clock, SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_USERNAME,
                SANDBOX_M3_PASSWORD, SANDBOX_M3_TENANT)
    server = VendorServer(app, clock).start()
    ionapi = write_ionapi_file(tmp_path / "m3.ionapi", server.url)
    yield app, ledger, ionapi, ion_client(ionapi)
    server.stop()


def parm(line: int, account: str, amount: str, day: str = "20261005", text: str = "Stripe payout po_1",
         **values) -> str:
    return LAYOUT.build({"RNNO": line, "GRNR": 1, "DIVI": "AAA", "AIT1": account, "CUCD": "USD",
                         "CUAM": Decimal(amount), "ACDT": date(int(day[:4]), int(day[4:6]), int(day[6:])),
                         "VTXT": text, **values})


def nok(client: M3Client, program: str, transaction: str, **fields) -> M3Error:
    with pytest.raises(M3Error) as refused:
        client.execute(program, transaction, **fields)
    return refused.value


def test_a_gls840_batch_becomes_one_gl_voucher_read_back_through_gls200mi(posting_m3):
    _, ledger, _, client = posting_m3
    assert client.execute("GLS840MI", "AddBatchHead", KEY1="JV2610050001", INTN="GLUPLOAD", DESC="Payout po_1") == []
    client.execute_bulk("GLS840MI", [
        ("AddBatchLine", {"KEY1": "JV2610050001", "LINE": 1, "PARM": parm(1, "1930", "1000.00")}),
        ("AddBatchLine", {"KEY1": "JV2610050001", "LINE": 2, "PARM": parm(2, "6570", "25.50").rstrip()}),
        ("AddBatchLineFld", {"KEY1": "JV2610050001", "LINE": 3, "INRI": "I1", "GRNR": 1, "AIT1": "1580",
                             "AIT2": "STRIPE", "CUCD": "USD", "CUAM": "-1025.50", "ACDT": "20261005",
                             "VTXT": "Stripe payout po_1"}),
        ("CtrlBatch", {"KEY1": "JV2610050001"}), ("UpdBatch", {"KEY1": "JV2610050001"})])
    lines = client.execute("GLS200MI", "SearchGenLedger", SQRY="KEY1:JV2610050001", maxrecs=0)
    assert [(r["JSNO"], r["AIT1"], r["AIT2"], r["CUAM"], r["DBCR"], r["ACDT"], r["VTXT"]) for r in lines] == [
        ("1", "1930", "", "1000", "D", "20261005", "Stripe payout po_1"),
        ("2", "6570", "", "25.5", "D", "20261005", "Stripe payout po_1"),
        ("3", "1580", "STRIPE", "-1025.5", "C", "20261005", "Stripe payout po_1")]
    year, voucher = lines[0]["YEA4"], lines[0]["VONO"]
    assert (year, lines[0]["VSER"], voucher) == ("2026", "GL", "1")
    [head] = client.execute("GLS200MI", "GetVoucherHead", YEA4=year, VONO=voucher)
    assert (head["DSUM"], head["CSUM"], head["CUCD"], head["ACDT"]) == ("1025.5", "1025.5", "USD", "20261005")
    assert client.execute("GLS200MI", "LstVoucherLines", YEA4=year, VONO=voucher, maxrecs=0) == lines
    assert client.execute("GLS200MI", "SearchGenLedger", SQRY=f"YEA4:{year} VONO:{voucher} AIT1:6570") == lines[1:2]
    assert client.execute("GLS200MI", "SearchGenLedger", SQRY="KEY1:JV2610059999") == []

    assert nok(client, "GLS840MI", "AddBatchHead", KEY1="JV2610050001", INTN="GLUPLOAD", DESC="again").code == "XRE0104"
    assert "already updated" in nok(client, "GLS840MI", "UpdBatch", KEY1="JV2610050001").message
    assert "already updated" in nok(client, "GLS840MI", "AddBatchLine", KEY1="JV2610050001", LINE=4,
                                    PARM=parm(4, "1930", "1.00")).message
    assert len(ledger.gl_lines(NOW)) == 3


def test_gls840_refuses_what_m3_would_refuse(posting_m3):
    _, ledger, _, client = posting_m3
    assert nok(client, "GLS840MI", "AddBatchHead", KEY1="JV26100500000001", INTN="GLUPLOAD", DESC="x").field == "KEY1"
    assert nok(client, "GLS840MI", "AddBatchHead", KEY1="JV1", INTN="GLOTHER", DESC="x").field == "INTN"
    assert nok(client, "GLS840MI", "AddBatchHead", KEY1="JV1", INTN="GLUPLOAD").code == "WDE0202"
    assert nok(client, "GLS840MI", "AddBatchLine", KEY1="JV0", LINE=1, PARM=parm(1, "1930", "1.00")).code == "XRE0103"

    def control(key: str, *lines: dict) -> M3Error:
        client.execute("GLS840MI", "AddBatchHead", KEY1=key, INTN="GLUPLOAD", DESC="test")
        for number, line in enumerate(lines, start=1):
            transaction = "AddBatchLine" if "PARM" in line else "AddBatchLineFld"
            client.execute("GLS840MI", transaction, KEY1=key, LINE=number, **line)
        return nok(client, "GLS840MI", "CtrlBatch", KEY1=key)

    balanced = {"PARM": parm(2, "1580", "-1.00")}
    assert nok(client, "GLS840MI", "AddBatchLine", KEY1="JV1", LINE=1, PARM="I1" + "0" * 899).field == "PARM"
    unbalanced = control("JV2", {"PARM": parm(1, "1930", "1.01")}, balanced)
    assert (unbalanced.field, unbalanced.message) == ("CUAM", "Voucher group 1 does not balance in USD: debit 1.01, "
                                                              "credit 1.00")
    bad_date = control("JV3", {"PARM": parm(1, "1930", "1.00").replace("20261005", "20261341")}, balanced)
    assert (bad_date.code, bad_date.field, bad_date.message) == ("XDT0001", "ACDT", "Line 1: Incorrect date 20261341 "
                                                                                    "in field ACDT")
    assert control("JV4", {"PARM": "I2" + parm(1, "1930", "1.00")[2:]}, balanced).field == "INRI"
    assert control("JV5", {"PARM": parm(1, "", "1.00")}, balanced).code == "WAI0202"
    assert control("JV6", {"PARM": parm(1, "1930", "1.00", day="20261006")}, balanced).field == "ACDT"
    assert control("JV7", {"PARM": parm(1, "1930", "1.00") + "X"}, balanced).field == "PARM"  # longer than template
    assert control("JV8").message == "Batch JV8 has no lines"
    assert nok(client, "GLS840MI", "AddBatchLineFld", KEY1="JV8", LINE=1, AIT1="1930", CUCD="USD", CUAM="1",
               ACDT="20261005", VTXT="x" * 41).field == "VTXT"
    assert nok(client, "GLS840MI", "AddBatchLineFld", KEY1="JV8", LINE=1, AIT1="1930", CUCD="USD", CUAM="1",
               ACDT="20261341").code == "XDT0001"
    assert nok(client, "GLS840MI", "UpdBatch", KEY1="JV2").field == "CUAM"  # update controls again
    assert ledger.gl_lines(NOW) == []


def test_an_ars040_payment_batch_lowers_outstanding_amounts_all_or_nothing(world, posting_m3):
    _, ledger, _, client = posting_m3
    first, second = [inv for inv in world.invoices if inv.currency == "USD"][:2]
    [head] = client.execute("ARS040MI", "AddBatchHead", PBID=1234567890, BOPE="1", ACDT="20261007")
    assert head == {"PBID": "1234567890"}
    assert nok(client, "ARS040MI", "AddBatchHead", PBID=1234567890, BOPE="1").code == "XRE0104"

    def line(number: int, inv, amount: int, batch: int = 1234567890) -> tuple[str, dict]:
        return "AddBatchLine", {"PBID": batch, "TRNO": number, "CINO": inv.number, "INYR": inv.year,
                                "CUNO": inv.customer, "PYAM": format(major(amount, "USD"), "f"), "CUCD": "USD"}

    client.execute_bulk("ARS040MI", [line(1, first, first.amount_minor), line(2, second, 1_000)])
    assert nok(client, "ARS040MI", "AddBatchLine", **line(2, second, 1_000)[1]).code == "XRE0104"
    assert nok(client, "ARS040MI", "AddBatchLine", **{**line(3, second, 1)[1], "PYAM": "-0.01"}).code == "XNU0003"
    assert nok(client, "ARS040MI", "AddBatchLine", **{**line(3, second, 1)[1], "CUNO": "C99999"}).code == "WCU0203"
    client.execute("ARS040MI", "ControlBatch", PBID=1234567890)
    totals = {inv.number: client.execute("ARS200MI", "GetInvTotInfo", PYNO=inv.customer, CINO=inv.number,
                                         INYR=inv.year, CUNO=inv.customer)[0] for inv in (first, second)}
    assert (totals[first.number]["OCUA"], totals[first.number]["RECO"], totals[first.number]["DTP5"]) == (
        "0", "9", "20261007")
    assert minor_units(totals[second.number]["OCUA"], "USD") == second.amount_minor - 1_000
    assert "already updated" in nok(client, "ARS040MI", "ControlBatch", PBID=1234567890).message

    client.execute("ARS040MI", "AddBatchHead", PBID=1234567891, BOPE="1")
    client.execute_bulk("ARS040MI", [line(1, second, 500, 1234567891),
                                     line(2, second, second.amount_minor, 1234567891)])
    assert "cannot apply" in nok(client, "ARS040MI", "ControlBatch", PBID=1234567891).message
    assert ledger.totals(NOW)[second.customer, second.number, second.year].outstanding_minor == (
        second.amount_minor - 1_000)  # neither line of the refused batch was booked


def test_a_lost_answer_leaves_the_transaction_done(posting_m3):
    app, _, ionapi, client = posting_m3
    app.lose_response("GLS840MI", "AddBatchHead")
    with pytest.raises(VendorUnavailableError, match="kept failing after 1 attempts"):
        ion_client(ionapi, max_attempts=1).execute("GLS840MI", "AddBatchHead", KEY1="JV9", INTN="GLUPLOAD",
                                                         DESC="lost")
    assert app.lost_responses_pending == 0
    assert nok(client, "GLS840MI", "AddBatchHead", KEY1="JV9", INTN="GLUPLOAD", DESC="again").code == "XRE0104"


def test_interface_batches_and_vouchers_survive_a_restart(world, tmp_path):
    path = tmp_path / "m3.sqlite"
    ledger = M3Ledger(world, path)
    ledger.add_gl_batch("JV1", "GLUPLOAD", "posted", "", NOW)
    ledger.add_gl_batch_line("JV1", 1, {"PARM": parm(1, "1930", "5.00")})
    ledger.add_gl_batch_line("JV1", 2, {"PARM": parm(2, "1580", "-5.00")})
    [voucher_line, _] = ledger.update_gl_batch("JV1", NOW)
    ledger.add_gl_batch("JV2", "GLUPLOAD", "half", "", NOW)
    ledger.add_gl_batch_line("JV2", 1, {"PARM": parm(1, "1930", "7.00")})
    inv = world.invoices[3]
    ledger.add_payment_batch(1_000_000_001, "1", date(2026, 10, 7), NOW)
    ledger.add_payment_line(1_000_000_001, PaymentLine(1, inv.customer, "", inv.number, inv.year, 700, "USD"))

    reopened = M3Ledger(world, path)
    assert reopened.gl_lines(NOW) == ledger.gl_lines(NOW) and reopened.gl_lines(NOW)[0] == voucher_line
    with pytest.raises(LedgerError, match="already exists"):
        reopened.add_gl_batch_line("JV2", 1, {"PARM": parm(1, "1930", "7.00")})
    reopened.add_gl_batch_line("JV2", 2, {"PARM": parm(2, "1580", "-7.00")})
    assert [(ln.voucher, ln.amount_minor) for ln in reopened.update_gl_batch("JV2", NOW)] == [(2, 700), (2, -700)]
    [payment] = reopened.control_payment_batch(1_000_000_001, NOW)
    assert (payment.amount_minor, payment.accounting_date) == (-700, date(2026, 10, 7))
    assert M3Ledger(world, path).totals(NOW)[inv.customer, inv.number, inv.year].paid_minor == 700

"""Heartland (GP API) → canonical lines and payouts: the mapping over DuckDB tables, its quarantine, and the
whole period from the sandbox through Dagster, judged against the generator (totals, ids, tie-out, matching)."""

from collections import Counter
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import duckdb
import pytest
from dagster_duckdb import DuckDBResource

from m3_recon.canonical import heartland as heartland_mapping
from m3_recon.canonical.model import (PAYOUT_COLUMNS, PAYOUT_SCHEMA, SETTLEMENT_LINE_COLUMNS, SETTLEMENT_LINE_SCHEMA,
                                      split_valid)
from m3_recon.defs.core.assets import core_payouts, core_settlement_lines, load_candidates, replace_canonical
from m3_recon.defs.heartland.assets import (
    DEPOSITS_DDL, DEPOSITS_REJECTION, DEPOSITS_SELECT, DEPOSITS_TABLE, DISPUTES_DDL, DISPUTES_REJECTION,
    DISPUTES_SELECT, DISPUTES_TABLE, TRANSACTIONS_DDL, TRANSACTIONS_REJECTION, TRANSACTIONS_SELECT,
    TRANSACTIONS_TABLE, raw_heartland_deposits, raw_heartland_disputes, raw_heartland_settlement_transactions,
)
from m3_recon.defs.heartland.resources import HeartlandResource
from m3_recon.partitions import FetchWindow
from m3_recon.reconcile.tieout import tie_out_payouts
from m3_recon.sandbox.heartland_api import SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY, HeartlandApp
from m3_recon.sandbox.heartland_ledger import DAY, HeartlandLedger, build_heartland_ledger
from m3_recon.sandbox.server import SandboxClock, VendorServer
from m3_recon.sandbox.truth import truth_misses
from m3_recon.sandbox.world import Period
from m3_recon.warehouse import documents_table, replace_window
# the checks one run of the period evaluates: the raw layer's integrity and the canonical schemas
CHECKS_RUN = ["conforms_to_schema", "conforms_to_schema", "deposit_totals_add_up", "deposits_sum_to_their_lines"]

DEPOSIT_DAY = date(2026, 10, 5)
WINDOW = FetchWindow(datetime(2026, 10, 5, tzinfo=timezone.utc), datetime(2026, 10, 6, tzinfo=timezone.utc))
REPULL = "re-pull its deposit date, and raise it with Global Payments if it persists"
MAPPING_FILE = "m3_recon/canonical/heartland.py"


# -- GP objects as the settlement endpoints return them -------------------------------------------------
def transaction(n: int, type_: str = "SALE", amount: str = "10000", **extra) -> dict:
    obj = {"id": f"TRN_{n:04d}", "time_created": f"2026-10-02T15:{n % 60:02d}:00.000Z",
           "time_created_reference": "2026-10-02T11:00:00.000", "status": "FUNDED", "type": type_, "channel": "CNP",
           "amount": amount, "currency": "USD", "reference": "26000001", "description": "Customer C10001",
           "country": "US", "parent_resource_id": "", "batch_id": "BAT_000001",
           "batch_time_created": "2026-10-03T02:00:00.000Z", "deposit_id": "DEP_0000000001",
           "deposit_status": "FUNDED", "deposit_time_created": DEPOSIT_DAY.isoformat(), "deposit_amount": "99999",
           "system": {"mid": "8800012345678", "hierarchy": "000-70-024-011-019"},
           "payment_method": {"result": "00", "message": "APPROVAL", "entry_mode": "ECOM", "name": "ALDER FOODS INC",
                              "card": {"arn": f"7{n:022d}", "masked_number_first6last4": "424242XXXXXX4242",
                                       "brand": "VISA", "authcode": "123456", "brand_reference": "ABC"}}}
    obj.update(extra)
    return obj


def dispute(n: int, stage: str = "CHARGEBACK", funding: str = "DEBIT", amount: str = "10000", arn_of: int = 1,
            **extra) -> dict:
    obj = {"id": f"DIS_{n:04d}", "status": "WITH_MERCHANT", "stage": stage, "stage_time_created": "2026-10-02T16:00:00",
           "amount": amount, "currency": "USD", "funding_type": funding, "reason_code": "10.4",
           "reason_description": "Other Fraud-Card Absent Environment", "time_to_respond_by": "2026-10-22T16:00:00",
           "result": "PENDING", "deposit_id": "DEP_0000000001", "deposit_time_created": DEPOSIT_DAY.isoformat(),
           "last_adjustment_amount": amount, "last_adjustment_funding": funding,
           "last_adjustment_time_created": "2026-10-02T16:00:00", "system": {"mid": "8800012345678"},
           "transaction": {"time_created": "2026-10-01T15:00:00", "type": "SALE", "amount": amount,
                           "currency": "USD", "reference": "26000001",
                           "payment_method": {"card": {"masked_number_first6last4": "424242XXXXXX4242",
                                                       "arn": f"7{arn_of:022d}", "brand": "VISA"}}}}
    obj.update(extra)
    return obj


def deposit(n: int = 1, *, sales=(0, ""), refunds=(0, ""), discounts=(0, ""), tax=(0, ""), fees="",
            chargebacks=(0, ""), reversals=(0, ""), status="FUNDED", **extra) -> dict:
    net = sum(int(part) for part in (sales[1], refunds[1], discounts[1], tax[1], fees, chargebacks[1], reversals[1])
              if part)
    obj = {"id": f"DEP_{n:010d}", "time_created": DEPOSIT_DAY.isoformat(), "status": status,
           "funding_type": "CREDIT" if net >= 0 else "DEBIT", "amount": str(abs(net)), "currency": "USD",
           "aggregation_model": "H-By Date", "system": {"mid": "8800012345678"},
           "sales": {"count": sales[0], "amount": sales[1]}, "refunds": {"count": refunds[0], "amount": refunds[1]},
           "discounts": {"count": discounts[0], "amount": discounts[1]}, "tax": {"count": tax[0], "amount": tax[1]},
           "disputes": {"chargebacks": {"count": chargebacks[0], "amount": chargebacks[1]},
                        "reversals": {"count": reversals[0], "amount": reversals[1]}},
           "fees": {"amount": fees}}
    obj.update(extra)
    return obj


TABLES = ((TRANSACTIONS_TABLE, TRANSACTIONS_DDL, TRANSACTIONS_SELECT, TRANSACTIONS_REJECTION),
          (DISPUTES_TABLE, DISPUTES_DDL, DISPUTES_SELECT, DISPUTES_REJECTION),
          (DEPOSITS_TABLE, DEPOSITS_DDL, DEPOSITS_SELECT, DEPOSITS_REJECTION))


def stage_raw(transactions=(), disputes=(), deposits=(), window=WINDOW) -> tuple[duckdb.DuckDBPyConnection, dict]:
    """The three staging tables as the Heartland assets write them; returns the rows each stored."""
    conn = duckdb.connect()
    stored = {}
    for (table, ddl, select, rejection), objects in zip(TABLES, (transactions, disputes, deposits)):
        stored[table] = replace_window(conn, table=table, ddl=ddl, insert_select=select,
                                       docs=documents_table(list(objects), "test-run"), window_column="deposit_date",
                                       start=window.start, end=window.end, rejection=rejection, run_id="test-run")
    return conn, stored


def canonical(conn: duckdb.DuckDBPyConnection, window: FetchWindow = WINDOW):
    """Map, split and write both canonical tables for the window; return (lines, rejected lines, payouts,
    rejected payouts)."""
    results = []
    for table, columns, schema, sql_of, deps_of in (
            ("core_settlement_lines", SETTLEMENT_LINE_COLUMNS, SETTLEMENT_LINE_SCHEMA,
             lambda m: m.settlement_lines_sql, lambda m: m.settlement_line_deps),
            ("core_payouts", PAYOUT_COLUMNS, PAYOUT_SCHEMA, lambda m: m.payouts_sql, lambda m: m.payout_deps)):
        valid, rejected = split_valid(load_candidates(conn, window, sql_of, deps_of), schema)
        replace_canonical(conn, table=table, columns=columns, window=window, valid=valid, rejected=rejected,
                          run_id="test-run")
        results += [valid, rejected]
    return tuple(results)


def quarantined(conn) -> list[tuple]:
    return conn.execute("SELECT source_id, table_name, CAST(partition_date AS VARCHAR), reason FROM core_quarantine "
                        "ORDER BY source_id").fetchall()


# -- the mapping --------------------------------------------------------------------------------------------
EXPECTED_TRANSACTION_LINE_TYPES = {"SALE": "charge", "REFUND": "refund"}
EXPECTED_DISPUTE_STAGES = {"RETRIEVAL", "CHARGEBACK", "REVERSAL", "SECOND_CHARGEBACK", "PRE_ARBITRATION",
                           "ARBITRATION", "PRE_COMPLIANCE", "COMPLIANCE", "GOODFAITH"}
EXPECTED_FUNDING_LINE_TYPES = {"DEBIT": ("dispute", -1), "CREDIT": ("dispute_reversal", 1)}
EXPECTED_COMPONENT_LINE_TYPES = {"DISCOUNTS": "fee", "FEES": "fee", "TAX": "adjustment"}
EXPECTED_PAYOUT_STATUSES = {"FUNDED": ("paid", True), "SPLIT_FUNDING": ("paid", True), "RELEASED": ("paid", False),
                            "DELAYED": ("pending", False), "RESERVED": ("pending", False), "IRREG": ("failed", False)}


def test_every_known_gp_type_stage_and_component_has_a_line_type():
    stages = sorted(EXPECTED_DISPUTE_STAGES)
    disputes = [dispute(i * 2 + k, stage, funding, amount="700") for i, stage in enumerate(stages)
                for k, funding in enumerate(EXPECTED_FUNDING_LINE_TYPES)]
    conn, stored = stage_raw(
        [transaction(1, "SALE", "10000"), transaction(2, "REFUND", "2500", parent_resource_id="TRN_0001")], disputes,
        [deposit(discounts=(1, "-260"), fees="-20", tax=(1, "-31"))])
    lines, rejected, payouts, rejected_payouts = canonical(conn)
    assert rejected.empty and rejected_payouts.empty and stored[DISPUTES_TABLE] == 2 * len(stages)
    got = {source_id: (line_type, amount) for source_id, line_type, amount in conn.execute(
        "SELECT source_id, line_type, amount_minor FROM core_settlement_lines").fetchall()}
    expected = {"TRN_0001": ("charge", 10000), "TRN_0002": ("refund", -2500),
                "DEP_0000000001:DISCOUNTS": ("fee", -260), "DEP_0000000001:FEES": ("fee", -20),
                "DEP_0000000001:TAX": ("adjustment", -31)}
    expected |= {f"DIS_{i * 2 + k:04d}:{stage}": (line_type, sign * 700) for i, stage in enumerate(stages)
                 for k, (line_type, sign) in enumerate(EXPECTED_FUNDING_LINE_TYPES.values())}
    assert got == expected
    assert heartland_mapping.TRANSACTION_LINE_TYPES == EXPECTED_TRANSACTION_LINE_TYPES
    assert set(heartland_mapping.DISPUTE_STAGES) == EXPECTED_DISPUTE_STAGES
    assert {k: v for k, (v, _) in EXPECTED_FUNDING_LINE_TYPES.items()} == heartland_mapping.DISPUTE_FUNDING_LINE_TYPES
    assert {c[0]: c[3] for c in heartland_mapping.DEPOSIT_COMPONENTS} == EXPECTED_COMPONENT_LINE_TYPES


@pytest.mark.parametrize("gp_status,expected", sorted(EXPECTED_PAYOUT_STATUSES.items()))
def test_every_gp_deposit_status_is_a_payout_status(gp_status, expected):
    status, arrives_on_deposit_date = expected
    conn, _ = stage_raw(deposits=[deposit(sales=(1, "10000"), discounts=(1, "-260"), fees="-10", status=gp_status)])
    _, _, payouts, rejected = canonical(conn)
    assert rejected.empty
    assert conn.execute("SELECT payout_id, amount_minor, status, CAST(arrival_date AS VARCHAR), itemised, line_count "
                        "FROM core_payouts").fetchall() == [
        ("DEP_0000000001", 9730, status, DEPOSIT_DAY.isoformat() if arrives_on_deposit_date else None, True, 3)]
    assert set(heartland_mapping.DEPOSIT_STATUSES) == set(EXPECTED_PAYOUT_STATUSES)


def test_a_deposit_is_the_sum_of_its_lines_and_refunds_and_disputes_inherit_the_sale():
    sale = transaction(1, "SALE", "20000", reference="26000042", description="Customer C10007")
    sale_then = transaction(3, "SALE", "5000", reference="", description="Card payment")
    refund = transaction(2, "REFUND", "7500", reference="", description="Refund of Customer C10007",
                         parent_resource_id="TRN_0001")
    disputes = [dispute(1, "CHARGEBACK", "DEBIT", "20000", arn_of=1),
                dispute(1, "REVERSAL", "CREDIT", "20000", arn_of=1),
                dispute(2, "CHARGEBACK", "DEBIT", "5000", arn_of=99)]  # no loaded transaction has that ARN
    the_deposit = deposit(sales=(2, "25000"), refunds=(1, "-7500"), discounts=(2, "-650"), fees="-2520",
                          chargebacks=(2, "-25000"), reversals=(1, "20000"))
    conn, _ = stage_raw([sale, refund, sale_then], disputes, [the_deposit])
    lines, rejected, payouts, rejected_payouts = canonical(conn)
    assert rejected.empty and rejected_payouts.empty
    rows = conn.execute("SELECT source_id, line_type, net_minor, payout_id, invoice_ref, customer_ref, "
                        "original_source_id, card_brand, card_last4, CAST(settlement_date AS VARCHAR) "
                        "FROM core_settlement_lines ORDER BY source_id").fetchall()
    dep, day = "DEP_0000000001", DEPOSIT_DAY.isoformat()
    assert rows == [
        (f"{dep}:DISCOUNTS", "fee", -650, dep, None, None, None, None, None, day),
        (f"{dep}:FEES", "fee", -2520, dep, None, None, None, None, None, day),
        ("DIS_0001:CHARGEBACK", "dispute", -20000, dep, "26000042", "C10007", "TRN_0001", "visa", "4242", day),
        ("DIS_0001:REVERSAL", "dispute_reversal", 20000, dep, "26000042", "C10007", "TRN_0001", "visa", "4242", day),
        ("DIS_0002:CHARGEBACK", "dispute", -5000, dep, "26000001", None, None, "visa", "4242", day),
        ("TRN_0001", "charge", 20000, dep, "26000042", "C10007", None, "visa", "4242", day),
        ("TRN_0002", "refund", -7500, dep, "26000042", "C10007", "TRN_0001", "visa", "4242", day),
        ("TRN_0003", "charge", 5000, dep, None, None, None, "visa", "4242", day),
    ]
    net = int(the_deposit["amount"]) * (1 if the_deposit["funding_type"] == "CREDIT" else -1)
    assert sum(r[2] for r in rows) == net == 9330
    assert conn.execute("SELECT amount_minor, line_count FROM core_payouts").fetchall() == [(9330, 8)]
    tie_out_payouts(conn, payouts="core_payouts", lines="core_settlement_lines")
    assert conn.execute("SELECT status, difference_minor FROM payout_tieout").fetchall() == [("tied", 0)]


def test_gp_amounts_as_json_numbers_and_times_in_any_iso_8601_form_read_exactly():
    sale = transaction(1, "SALE", 25000, time_created="2026-10-02T15:01:00Z")  # a JSON number, no millis
    refund = transaction(2, "REFUND", "7500", time_created="2026-10-02T08:02:00.123-07:00",
                         parent_resource_id="TRN_0001")
    chargeback = dispute(1, "CHARGEBACK", "DEBIT", 5000, arn_of=1, stage_time_created="2026-10-02T16:00:00.000Z")
    the_deposit = deposit(sales=(1, "25000"), refunds=(1, "-7500"), chargebacks=(1, "-5000"), fees="-300")
    the_deposit |= {"amount": int(the_deposit["amount"]), "time_created": "2026-10-05T00:00:00.000Z"}
    conn, _ = stage_raw([sale, refund], [chargeback], [the_deposit])
    lines, rejected, payouts, rejected_payouts = canonical(conn)
    assert rejected.empty and rejected_payouts.empty
    assert conn.execute("SELECT source_id, net_minor, occurred_at_utc FROM core_settlement_lines "
                        "WHERE line_type <> 'fee' ORDER BY source_id").fetchall() == [
        ("DIS_0001:CHARGEBACK", -5000, datetime(2026, 10, 2, 16)),
        ("TRN_0001", 25000, datetime(2026, 10, 2, 15, 1)),
        ("TRN_0002", -7500, datetime(2026, 10, 2, 15, 2, 0, 123_000))]
    assert conn.execute("SELECT payout_id, amount_minor, settlement_date FROM core_payouts").fetchall() == [
        ("DEP_0000000001", 12200, DEPOSIT_DAY)]


def test_a_refund_in_a_later_deposit_still_links_to_its_sale():
    later = FetchWindow(WINDOW.start + timedelta(days=2), WINDOW.end + timedelta(days=2))
    conn, _ = stage_raw([transaction(1)])
    refund = transaction(2, "REFUND", "4000", reference="", description="Refund", parent_resource_id="TRN_0001",
                         deposit_id="DEP_0000000002", deposit_time_created="2026-10-07")
    replace_window(conn, table=TRANSACTIONS_TABLE, ddl=TRANSACTIONS_DDL, insert_select=TRANSACTIONS_SELECT,
                   docs=documents_table([refund], "test-run"), window_column="deposit_date", start=later.start,
                   end=later.end, rejection=TRANSACTIONS_REJECTION, run_id="test-run")
    lines, *_ = canonical(conn, later)
    assert lines[["source_id", "original_source_id", "invoice_ref", "customer_ref"]].values.tolist() == [
        ["TRN_0002", "TRN_0001", "26000001", "C10001"]]


def test_an_object_delivered_twice_is_one_line_and_one_payout():
    conn, _ = stage_raw([transaction(1)], [dispute(1)], [deposit(sales=(1, "10000"), chargebacks=(1, "-10000"))])
    for table, *_ in TABLES:
        conn.execute(f"INSERT INTO {table} SELECT * FROM {table}")
    lines, rejected, payouts, _ = canonical(conn)
    assert rejected.empty
    assert sorted(lines["source_id"]) == ["DIS_0001:CHARGEBACK", "TRN_0001"]
    assert list(payouts["payout_id"]) == ["DEP_0000000001"]


# -- quarantine: never guessed, never dropped ----------------------------------------------------------------
@pytest.mark.parametrize("broken,reason", [
    ({"type": "CASHBACK"}, "unknown GP settlement transaction type 'CASHBACK': add it to TRANSACTION_LINE_TYPES in "
                           f"{MAPPING_FILE} once finance has decided how it is booked"),
    ({"type": None}, "unknown GP settlement transaction type null: add it to TRANSACTION_LINE_TYPES in "
                     f"{MAPPING_FILE} once finance has decided how it is booked"),
    ({"amount": ""}, f"GP sent no amount: {REPULL}"),
    ({"amount": None}, f"GP sent no amount: {REPULL}"),
    ({"amount": "12.50"}, f"GP amount 12.50 is not a whole number of cents: {REPULL}"),
    ({"amount": "8084.5"}, f"GP amount 8084.5 is not a whole number of cents: {REPULL}"),
    ({"amount": "1e3"}, f"GP amount '1e3' is not an amount: {REPULL}"),
    ({"amount": "99999999999999999999"},
     f"GP amount 99999999999999999999 is too large: m3-recon stores amounts as 64-bit cents: {REPULL}"),
    ({"time_created": "yesterday"},
     f"GP time_created 'yesterday' is not a time (expected ISO 8601 like 2026-10-05T14:03:11.000Z): {REPULL}"),
    ({"time_created": "2026-10-02T24:30:00Z"},
     f"GP time_created '2026-10-02T24:30:00Z' is not a valid date or time: {REPULL}"),
    ({"time_created": ""}, f"GP sent no time_created: {REPULL}"),
    ({"description": "Customer " + "C" * 70}, 'customer_ref failed str_length(1, 64) (value "' + "C" * 70 + '")'),
])
def test_unusable_transactions_are_quarantined_with_the_reason(broken, reason):
    conn, stored = stage_raw([transaction(1), transaction(2) | broken])
    lines, rejected, _, _ = canonical(conn)
    assert stored[TRANSACTIONS_TABLE] == 2 and list(lines["source_id"]) == ["TRN_0001"]
    assert quarantined(conn) == [("TRN_0002", "core_settlement_lines", DEPOSIT_DAY.isoformat(), reason)]
    assert conn.execute("SELECT raw_payload->>'$.id' FROM core_quarantine").fetchone() == ("TRN_0002",)


@pytest.mark.parametrize("broken,reason", [
    ({"deposit_time_created": "2026-13-05"}, "the GP settlement transaction has no usable deposit date in "
                                             "deposit_time_created (got '2026-13-05'), so no partition can hold it"),
    ({"deposit_time_created": ""}, "the GP settlement transaction has no usable deposit date in "
                                   "deposit_time_created (got ''), so no partition can hold it"),
    ({"id": ""}, "the GP settlement transaction has no id"),
])
def test_a_transaction_without_a_deposit_date_is_quarantined_at_the_raw_layer(broken, reason):
    conn, stored = stage_raw([transaction(1), transaction(2) | broken])
    lines, *_ = canonical(conn)
    assert stored[TRANSACTIONS_TABLE] == 1 and list(lines["source_id"]) == ["TRN_0001"]
    source_id = broken.get("id", "TRN_0002") or ""
    assert quarantined(conn) == [(source_id, TRANSACTIONS_TABLE, WINDOW.start.date().isoformat(), reason)]


@pytest.mark.parametrize("broken,reason", [
    ({"stage": "PRE_CHARGEBACK"}, "unknown GP dispute stage 'PRE_CHARGEBACK': add it to DISPUTE_STAGES in "
                                  f"{MAPPING_FILE} once finance has decided how it is booked"),
    ({"funding_type": "NONE"}, "GP dispute funding_type 'NONE' is neither DEBIT nor CREDIT, so the direction of the "
                               f"money is unknown: ask Global Payments, then map it in DISPUTE_FUNDING_LINE_TYPES in "
                               f"{MAPPING_FILE}"),
    ({"amount": "99.5"}, f"GP amount 99.5 is not a whole number of cents: {REPULL}"),
    ({"stage_time_created": "2026-10-02 16:00 PDT"},
     f"GP stage_time_created '2026-10-02 16:00 PDT' is not a time (expected ISO 8601 like 2026-10-05T14:03:11.000Z)"
     f": {REPULL}"),
])
def test_unusable_disputes_are_quarantined_with_the_reason(broken, reason):
    conn, _ = stage_raw([transaction(1)], [dispute(1), dispute(2) | broken])
    lines, *_ = canonical(conn)
    assert sorted(lines["source_id"]) == ["DIS_0001:CHARGEBACK", "TRN_0001"]
    source_id = f"DIS_0002:{broken.get('stage', 'CHARGEBACK')}"
    assert quarantined(conn) == [(source_id, "core_settlement_lines", DEPOSIT_DAY.isoformat(), reason)]


# 10000 sales less 260 discounts less 10 fees is 9730; fees of 20 tie with neither sign.
UNTIED = ("GP deposit DEP_0000000001 amount 9730 does not equal sales − refunds − chargebacks + reversals − discounts "
          "− fees + tax with discounts and fees of either sign (sales 10000, refunds 0, chargebacks 0, reversals 0, "
          f"discounts -260, fees -20, tax 0): {REPULL}")


@pytest.mark.parametrize("broken,reasons", [
    ({"status": "FROZEN"}, [("DEP_0000000001", "core_payouts", "unknown GP deposit status 'FROZEN': add it to "
                             f"DEPOSIT_STATUSES in {MAPPING_FILE} once finance has decided whether the money reached "
                             "the bank")]),
    ({"funding_type": "NONE"}, [("DEP_0000000001", "core_payouts", "GP deposit funding_type 'NONE' is neither CREDIT "
                                 "nor DEBIT, so the sign of the deposit is unknown: ask Global Payments")]),
    ({"amount": "97.30"}, [("DEP_0000000001", "core_payouts",
                            f"GP amount 97.30 is not a whole number of cents: {REPULL}")]),
    ({"fees": {"amount": "-0.10"}},
     [("DEP_0000000001:FEES", "core_settlement_lines",
       f"GP deposit fees.amount -0.10 is not a whole number of cents: {REPULL}")]),
    ({"fees": {"amount": "-20"}}, [(f"DEP_0000000001{suffix}", table, UNTIED) for suffix, table in (
        ("", "core_payouts"), (":DISCOUNTS", "core_settlement_lines"), (":FEES", "core_settlement_lines"))]),
])
def test_unusable_deposits_are_quarantined_with_the_reason(broken, reasons):
    conn, _ = stage_raw([transaction(1)], deposits=[deposit(sales=(1, "10000"), discounts=(1, "-260"), fees="-10")
                                                    | broken])
    canonical(conn)
    assert [(s, t, r) for s, t, _, r in quarantined(conn)] == reasons
    assert conn.execute("SELECT DISTINCT raw_payload->>'$.id' FROM core_quarantine").fetchall() == [("DEP_0000000001",)]


BIGINT_MAX = str(2**63 - 1)


def test_amounts_beyond_64_bits_quarantine_their_row_and_the_rest_of_the_load_goes_on():
    """Each amount fits a BIGINT, but a refund's sign flip, a chargeback's absolute value or a deposit's identity
    would not: the row is quarantined with its reason and every other row of the window is loaded."""
    conn, stored = stage_raw(
        [transaction(1), transaction(2, "REFUND", "-9223372036854775808")],
        [dispute(1), dispute(2, amount="-9223372036854775808")],
        [deposit(1, sales=(1, "10000"), chargebacks=(1, "-10000")),
         deposit(2, sales=(1, BIGINT_MAX), discounts=(0, "0"), fees="0", tax=(1, "5"))
         | {"amount": BIGINT_MAX, "funding_type": "CREDIT"}])
    assert stored == {TRANSACTIONS_TABLE: 2, DISPUTES_TABLE: 2, DEPOSITS_TABLE: 2}
    lines, _, payouts, _ = canonical(conn)
    assert sorted(lines["source_id"]) == ["DEP_0000000002:TAX", "DIS_0001:CHARGEBACK", "TRN_0001"]
    assert list(payouts["payout_id"]) == ["DEP_0000000001"]  # the deposit that cannot add up is quarantined
    too_large = f"-9223372036854775808 is too large: m3-recon stores amounts as 64-bit cents: {REPULL}"
    untied = (f"GP deposit DEP_0000000002 amount {BIGINT_MAX} does not equal sales − refunds − chargebacks + "
              f"reversals − discounts − fees + tax with discounts and fees of either sign (sales {BIGINT_MAX}, refunds "
              f"0, chargebacks 0, reversals 0, discounts 0, fees 0, tax 5): {REPULL}")
    assert [(s, r) for s, _, _, r in quarantined(conn)] == [
        ("DEP_0000000002", untied), ("DIS_0002:CHARGEBACK", f"GP amount {too_large}"),
        ("TRN_0002", f"GP amount {too_large}")]


@pytest.mark.parametrize("discounts,fees,signs", [
    ("-650", "-2520", "as sent"), ("650", "2520", "both negated"), ("650", "-2520", "discounts negated"),
    ("-650", "2520", "fees negated"), (650, 2520, "both negated")],
    ids=["gp-convention", "both-positive", "discounts-positive", "fees-positive", "json-numbers"])
def test_discounts_and_fees_take_the_sign_the_deposit_identity_chooses(discounts, fees, signs):
    # deposit 25000 − 7500 − 650 − 2520 = 14330, however GP signed the discounts and fees
    the_deposit = deposit(sales=(2, "25000"), refunds=(1, "-7500"), discounts=(2, "-650"), fees="-2520")
    the_deposit["discounts"]["amount"], the_deposit["fees"]["amount"] = discounts, fees
    assert the_deposit["amount"] == "14330"
    conn, _ = stage_raw([transaction(1, "SALE", "25000"), transaction(2, "REFUND", "7500")], deposits=[the_deposit])
    assert conn.execute(f"SELECT discounts_amount, fees_amount, fee_signs FROM {DEPOSITS_TABLE}").fetchall() == [
        (-650, -2520, signs)]
    lines, rejected, payouts, rejected_payouts = canonical(conn)
    assert rejected.empty and rejected_payouts.empty
    assert conn.execute("SELECT source_id, net_minor FROM core_settlement_lines WHERE line_type = 'fee' "
                        "ORDER BY source_id").fetchall() == [("DEP_0000000001:DISCOUNTS", -650),
                                                            ("DEP_0000000001:FEES", -2520)]
    tie_out_payouts(conn, payouts="core_payouts", lines="core_settlement_lines")
    assert conn.execute("SELECT status, payout_amount_minor FROM payout_tieout").fetchall() == [("tied", 14330)]


# -- the whole period: sandbox → GP API → staging → canonical ------------------------------------------------
SEED = 12  # a period with refunds, chargebacks, reversals and all four of the planner's edge cases
PERIOD = Period(date(2026, 10, 1), 31)
HEARTLAND_ASSETS = [raw_heartland_settlement_transactions, raw_heartland_disputes, raw_heartland_deposits]


@pytest.fixture(scope="module")
def ledger(world) -> HeartlandLedger:
    return build_heartland_ledger(world)


@pytest.fixture(scope="module", params=["", "gp_millis_z", "gp_positive_fees"],
                ids=["documented", "gp_millis_z", "gp_positive_fees"])
def gp(ledger, request):
    """GP API as documented, and the same world with dispute times as ``…sssZ`` or positive discounts/fees."""
    clock = SandboxClock(PERIOD.end_epoch + 10 * DAY)  # every deposit posted, the held one released
    quirks = frozenset({request.param} - {""})
    server = VendorServer(HeartlandApp(ledger, clock, SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY, quirks=quirks),
                          clock).start()
    server.quirks = quirks
    yield server
    server.stop()


def close_period(gp: VendorServer, db: str, last_day: date) -> dg.ExecuteInProcessResult:
    resource = HeartlandResource(app_id=SANDBOX_GP_APP_ID, app_key=SANDBOX_GP_APP_KEY, api_base=f"{gp.url}/ucp",
                                 max_requests_per_second=1000.0)
    definitions = dg.Definitions(
        assets=[*HEARTLAND_ASSETS, core_settlement_lines, core_payouts],
        jobs=[dg.define_asset_job("close", dg.AssetSelection.all())],
        resources={"heartland": resource, "duckdb": DuckDBResource(database=db)})
    return definitions.resolve_job_def("close").execute_in_process(
        tags={"dagster/asset_partition_range_start": PERIOD.start.isoformat(),
              "dagster/asset_partition_range_end": last_day.isoformat()},
        instance=dg.DagsterInstance.ephemeral())


def generator_lines(ledger: HeartlandLedger) -> dict[str, tuple[str, int]]:
    """Every money movement of every deposit as the generator made it: id -> (currency, signed minor units)."""
    currency = ledger.currency
    lines = {t.id: (currency, -t.amount if t.type == "REFUND" else t.amount) for t in ledger.transactions.values()}
    lines |= {f"{d.id}:{a.stage}": (currency, -d.amount if a.funding_type == "DEBIT" else d.amount)
              for d in ledger.disputes.values() for a in d.adjustments}
    for d in ledger.deposits.values():
        lines |= {f"{d.id}:{suffix}": (currency, -amount)
                  for suffix, amount in (("DISCOUNTS", d.discounts_amount), ("FEES", d.fees_amount)) if amount}
    return lines


def test_the_period_maps_to_the_generators_lines_ties_out_and_matches_as_planned(gp, world, ledger, tmp_path):
    db = str(tmp_path / "w.duckdb")
    last_deposit = max(d.deposit_date for d in ledger.deposits.values())  # the last days' sales deposit after it
    result = close_period(gp, db, last_deposit)
    assert result.success
    checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert sorted(e.event_specific_data.check_name for e in checks) == CHECKS_RUN
    assert all(e.event_specific_data.passed for e in checks)

    expected = generator_lines(ledger)
    net = sum(amount for _, amount in expected.values())
    adjustments = Counter(a.stage for d in ledger.disputes.values() for a in d.adjustments)
    with duckdb.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM core_quarantine").fetchone() == (0,)
        got = conn.execute("SELECT currency, count(*), sum(amount_minor), sum(fee_minor), sum(net_minor) "
                           "FROM core_settlement_lines GROUP BY ALL").fetchall()
        assert got == [(ledger.currency, len(expected), net, 0, net)]
        lines = dict(conn.execute("SELECT source_id, net_minor FROM core_settlement_lines").fetchall())
        assert lines == {source_id: amount for source_id, (_, amount) in expected.items()}
        assert dict(conn.execute("SELECT line_type, count(*) FROM core_settlement_lines GROUP BY ALL").fetchall()) == {
            "charge": sum(t.type == "SALE" for t in ledger.transactions.values()),
            "refund": sum(t.type == "REFUND" for t in ledger.transactions.values()),
            "dispute": adjustments["CHARGEBACK"], "dispute_reversal": adjustments["REVERSAL"],
            "fee": sum(bool(d.discounts_amount) + bool(d.fees_amount) for d in ledger.deposits.values())}
        assert dict(conn.execute("SELECT payout_id, amount_minor FROM core_payouts").fetchall()) == {
            d.id: d.net for d in ledger.deposits.values()}
        assert {s for (s,) in conn.execute("SELECT DISTINCT status FROM core_payouts").fetchall()} == {"paid"}

        tie_out_payouts(conn, payouts="core_payouts", lines="core_settlement_lines")
        tieout = conn.execute("SELECT payout_id, status, line_count, itemised_line_count FROM payout_tieout").fetchall()
        assert len(tieout) == len(ledger.deposits) and {status for _, status, _, _ in tieout} == {"tied"}
        assert all(lines == itemised for _, _, lines, itemised in tieout)

        # Each dispute movement happened when the generator says, whichever ISO 8601 form GP wrote it in.
        assert dict(conn.execute("SELECT source_id, occurred_at_utc FROM core_settlement_lines "
                                 "WHERE line_type LIKE 'dispute%'").fetchall()) == {
            f"{d.id}:{a.stage}": datetime.fromtimestamp(a.created, timezone.utc).replace(tzinfo=None)
            for d in ledger.disputes.values() for a in d.adjustments}
        millis_z, positive_fees = "gp_millis_z" in gp.quirks, "gp_positive_fees" in gp.quirks
        wire_shapes = conn.execute(
            f"SELECT DISTINCT raw->>'$.stage_time_created' LIKE '%.000Z' FROM {DISPUTES_TABLE}").fetchall()
        assert wire_shapes == [(millis_z,)]
        assert dict(conn.execute(f"SELECT fee_signs, count(*) FROM {DEPOSITS_TABLE} GROUP BY ALL").fetchall()) == {
            "both negated" if positive_fees else "as sent": len(ledger.deposits)}
        judged, misses = truth_misses(conn, world, "heartland", "core_settlement_lines")
    assert judged == sum(t.type == "SALE" for t in ledger.transactions.values()) and misses == []
    resigned = {m.metadata["deposits_with_fee_signs_chosen_by_identity"].value
                for m in result.asset_materializations_for_node("raw_heartland_deposits")}
    assert resigned == {len(ledger.deposits) if positive_fees else 0}
    assert {t.payment_id for t in world.payments} == {t.id for t in ledger.transactions.values() if t.type == "SALE"}

"""Stripe → canonical mapping and quarantine, as pure functions over DuckDB tables (no Dagster)."""

from datetime import datetime, timezone

import duckdb
import pytest

from m3_recon.canonical import stripe as stripe_mapping
from m3_recon.canonical.model import SETTLEMENT_LINE_COLUMNS, SETTLEMENT_LINE_SCHEMA, split_valid
from m3_recon.defs.core.assets import MAPPINGS, load_candidates, replace_canonical
from m3_recon.defs.stripe.assets import (BALANCE_TRANSACTIONS_DDL, BALANCE_TRANSACTIONS_SELECT, PAYOUT_LINES_DDL,
                                         rejection)
from m3_recon.partitions import FetchWindow
from m3_recon.reconcile.tieout import tie_out_payouts, unknown_category_exceptions
from m3_recon.warehouse import documents_table, replace_window

DAY_START = datetime(2026, 10, 5, tzinfo=timezone.utc)
WINDOW = FetchWindow(DAY_START, datetime(2026, 10, 6, tzinfo=timezone.utc))
CREATED = int(DAY_START.timestamp()) + 3600


def txn(n: int, category: str, amount: int = -500, fee: int = 0, type_: str = "adjustment", **extra) -> dict:
    obj = {"id": f"txn_{n:04d}", "object": "balance_transaction", "amount": amount, "fee": fee, "net": amount - fee,
           "currency": "usd", "created": CREATED + n, "available_on": CREATED + n, "status": "available",
           "reporting_category": category, "type": type_, "source": None, "exchange_rate": None,
           "fee_details": [], "description": f"test {category}", "balance_type": "payments"}
    obj.update(extra)
    return obj


def load(objects: list[dict]):
    conn = duckdb.connect()
    conn.execute(PAYOUT_LINES_DDL)
    stored = replace_window(conn, table="raw_stripe_balance_transactions", ddl=BALANCE_TRANSACTIONS_DDL,
                            insert_select=BALANCE_TRANSACTIONS_SELECT, docs=documents_table(objects, "test-run"),
                            window_column="created_at_utc", start=WINDOW.start, end=WINDOW.end,
                            rejection=rejection("balance transaction", ("amount", "fee", "net")), run_id="test-run")
    candidates = load_candidates(conn, WINDOW, lambda m: m.settlement_lines_sql, lambda m: m.settlement_line_deps)
    valid, rejected = split_valid(candidates, SETTLEMENT_LINE_SCHEMA)
    replace_canonical(conn, table="core_settlement_lines", columns=SETTLEMENT_LINE_COLUMNS, window=WINDOW,
                      valid=valid, rejected=rejected, run_id="test-run")
    return conn, stored, valid, rejected


EXPECTED_LINE_TYPES = {category: "other" for category in stripe_mapping.KNOWN_CATEGORIES} | {
    "charge": "charge", "charge_failure": "charge", "refund": "refund", "refund_failure": "refund",
    "partial_capture_reversal": "refund", "dispute": "dispute", "dispute_reversal": "dispute_reversal",
    "fee": "fee", "network_cost": "fee", "other_adjustment": "adjustment", "payout": "payout",
    "payout_reversal": "payout_failure"}


def test_every_known_reporting_category_has_a_line_type():
    objects = [txn(i, category) for i, category in enumerate(sorted(EXPECTED_LINE_TYPES)) if category != "risk_reserved_funds"]
    objects += [txn(90, "risk_reserved_funds", -3000, type_="reserve_hold"),
                txn(91, "risk_reserved_funds", 3000, type_="reserve_release")]
    conn, stored, valid, rejected = load(objects)
    assert stored == len(objects) and rejected.empty
    got = dict(conn.execute("SELECT description, line_type FROM core_settlement_lines").fetchall())
    for category, line_type in EXPECTED_LINE_TYPES.items():
        if category != "risk_reserved_funds":
            assert got[f"test {category}"] == line_type, category
    assert conn.execute("SELECT source_id, line_type FROM core_settlement_lines WHERE source_id IN "
                        "('txn_0090', 'txn_0091') ORDER BY 1").fetchall() == [
        ("txn_0090", "reserve_hold"), ("txn_0091", "reserve_release")]
    assert set(stripe_mapping.KNOWN_CATEGORIES) == set(EXPECTED_LINE_TYPES)


def test_unknown_category_is_a_line_of_its_own_its_payout_ties_and_it_is_an_exception():
    conn, _, valid, rejected = load([txn(1, "charge", 1000, 59, "charge"),
                                     txn(2, "new_product_settlement", 2_345, type_="contribution")])
    assert rejected.empty
    assert conn.execute("SELECT source_id, line_type, amount_minor, fee_minor, net_minor FROM core_settlement_lines "
                        "ORDER BY 1").fetchall() == [("txn_0001", "charge", 1000, 59, 941),
                                                     ("txn_0002", "unknown_category", 2_345, 0, 2_345)]
    conn.execute("UPDATE core_settlement_lines SET payout_id = 'po_1'")
    conn.execute("CREATE TABLE payouts AS SELECT 'stripe' AS processor, 'po_1' AS payout_id, 'USD' AS currency, "
                 "DATE '2026-10-06' AS settlement_date, DATE '2026-10-07' AS arrival_date, 'paid' AS status, "
                 "3286::BIGINT AS amount_minor, 2::BIGINT AS line_count, true AS itemised")
    tie_out_payouts(conn, payouts="payouts", lines="core_settlement_lines")
    assert conn.execute("SELECT status, lines_net_minor, difference_minor FROM payout_tieout").fetchall() == [
        ("tied", 941 + 2_345, 0)]
    for suspense, where in (("2990", "booked to suspense account 2990 so its payout ties"),
                            (None, "its voucher is held: map suspense under [accounts] in data/gl_accounts.toml")):
        unknown_category_exceptions(conn, lines="core_settlement_lines", categories=stripe_mapping.CATEGORY_SQL,
                                    suspense_account=suspense)
        [row] = conn.execute("SELECT reason_code, source_id, amount_minor, currency, candidates::VARCHAR, detail "
                             "FROM category_exceptions").fetchall()
        assert row[:5] == ("unknown_category", "txn_0002", 2_345, "USD", '["new_product_settlement"]')
        assert row[5].startswith("stripe category 'new_product_settlement' is not in the mapping: 23.45 USD "
                                 "(payout po_1) " + where)


def test_a_row_without_a_category_is_quarantined_with_an_actionable_reason():
    conn, _, valid, rejected = load([txn(1, "charge", 1000, 59, "charge"), txn(2, None, 100, type_="bonus")])
    assert list(valid["source_id"]) == ["txn_0001"]
    reason, raw = conn.execute("SELECT reason, raw_payload->>'$.id' FROM core_quarantine").fetchone()
    assert "has no reporting_category (type 'bonus')" in reason and raw == "txn_0002"


@pytest.mark.parametrize("broken,reason_part", [
    ({"net": 1}, "net_minor must equal amount_minor - fee_minor"),
    ({"currency": "us dollars"}, "currency must be an upper-case ISO 4217 code"),
    ({"source": {"object": "charge", "id": "ch_1", "amount": 100, "currency": "usd", "metadata": {},
                 "payment_method_details": {"card": {"brand": "visa", "last4": "42"}}}}, "card_last4 failed"),
])
def test_malformed_rows_are_quarantined_never_dropped(broken, reason_part):
    good = txn(1, "charge", 1000, 59, "charge")
    bad = txn(2, "charge", 2000, 88, "charge") | broken
    conn, stored, valid, rejected = load([good, bad])
    assert list(valid["source_id"]) == ["txn_0001"]
    quarantined = conn.execute("SELECT source_id, table_name, partition_date, reason FROM core_quarantine").fetchall()
    assert len(quarantined) == 1
    source_id, table, partition_date, reason = quarantined[0]
    assert (source_id, table, str(partition_date)) == ("txn_0002", "core_settlement_lines", "2026-10-05")
    assert reason_part in reason


@pytest.mark.parametrize("broken,reason", [
    ({"amount": None, "net": 0}, "the balance transaction has no amount"),
    ({"amount": 8084.5}, "the balance transaction amount 8084.5 is not a whole number of minor units"),
    ({"fee": "12.50"}, "the balance transaction fee 12.50 is not a whole number of minor units"),
    ({"net": "lots"}, "the balance transaction net 'lots' is not an amount"),
    ({"amount": 10**20, "net": 10**20},
     "the balance transaction amount 100000000000000000000 is too large: m3-recon stores amounts as 64-bit "
     "minor units"),
], ids=["no-amount", "fraction", "fee-string-fraction", "not-a-number", "beyond-bigint"])
def test_an_unreadable_amount_is_quarantined_naming_the_defect_and_keeping_the_payload(broken, reason):
    conn, stored, valid, _ = load([txn(1, "charge", 1000, 59, "charge"), txn(2, "charge", 2000, 88, "charge") | broken])
    assert stored == 1 and list(valid["source_id"]) == ["txn_0001"]
    rows = conn.execute("SELECT source_id, table_name, reason, raw_payload->>'$.id' FROM core_quarantine").fetchall()
    assert rows == [("txn_0002", "raw_stripe_balance_transactions", reason, "txn_0002")]


def test_amounts_sent_as_integer_strings_are_read_exactly():
    as_strings = txn(1, "charge", 1000, 59, "charge") | {"amount": "1000", "fee": "59", "net": "941"}
    conn, stored, valid, rejected = load([as_strings])
    assert stored == 1 and rejected.empty
    assert list(zip(valid["amount_minor"], valid["fee_minor"], valid["net_minor"])) == [(1000, 59, 941)]


def test_unparseable_created_is_quarantined_at_the_raw_layer():
    conn, stored, valid, _ = load([txn(1, "charge", 1000, 59, "charge"), txn(2, "charge", created="yesterday")])
    assert stored == 1 and list(valid["source_id"]) == ["txn_0001"]
    row = conn.execute("SELECT source_id, table_name, reason FROM core_quarantine").fetchone()
    assert row == ("txn_0002", "raw_stripe_balance_transactions",
                   "the balance transaction has no usable created timestamp (got yesterday)")


def test_refunds_inherit_the_charge_invoice_and_presentment_keeps_the_sign():
    charge_source = {"object": "charge", "id": "ch_1", "amount": 9000, "currency": "eur",
                     "metadata": {"m3_invoice": "26000001", "m3_customer": "C10001"},
                     "payment_method_details": {"card": {"brand": "visa", "last4": "4242"}}}
    refund_source = {"object": "refund", "id": "re_1", "charge": "ch_1", "amount": 4500, "currency": "eur"}
    conn, _, valid, rejected = load([
        txn(1, "charge", 9738, 312, "charge", source=charge_source, exchange_rate=1.082),
        txn(2, "refund", -4860, 0, "refund", source=refund_source, exchange_rate=1.08)])
    assert rejected.empty
    rows = conn.execute("SELECT source_id, invoice_ref, customer_ref, original_source_id, presentment_currency, "
                        "presentment_amount_minor, CAST(fx_rate AS VARCHAR), card_last4 FROM core_settlement_lines "
                        "ORDER BY 1").fetchall()
    assert rows == [("txn_0001", "26000001", "C10001", None, "EUR", 9000, "1.08200000", "4242"),
                    ("txn_0002", "26000001", "C10001", "txn_0001", "EUR", -4500, "1.08000000", "4242")]


def test_a_transaction_delivered_twice_is_one_line():
    conn, _, valid, rejected = load([txn(1, "fee", -300)])
    conn.execute("INSERT INTO raw_stripe_balance_transactions SELECT * FROM raw_stripe_balance_transactions")
    candidates = load_candidates(conn, WINDOW, lambda m: m.settlement_lines_sql, lambda m: m.settlement_line_deps)
    assert len(candidates) == 1
    assert [m.processor for m in MAPPINGS][0] == "stripe"

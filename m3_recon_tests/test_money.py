"""Money as people read it, everywhere it is shown: each currency with its own decimals (JPY none, KWD three),
the same text from Python and from SQL, and never a figure that adds two currencies together."""

from datetime import date, datetime

import dagster as dg
import duckdb
import pytest

from m3_recon.alerts import raise_alerts
from m3_recon.defs.metadata import markdown_table, money_totals
from m3_recon.analyst import VIEWS
from m3_recon.money import figure, money, money_by_currency, money_sql
from m3_recon.report import Section
from m3_recon.reconcile.tieout import tie_out_payouts

CASES = [(123456, "USD"), (-5, "EUR"), (0, "USD"), (1234567, "JPY"), (-1234567, "KWD"), (7, "KWD"), (12, "JPY"),
         (2**63 - 1, "USD"), (-(2**63 - 1), "JPY"), (100, "XYZ")]


def test_each_currency_has_its_own_decimals():
    assert [money(m, c) for m, c in CASES] == [
        "1,234.56 USD", "-0.05 EUR", "0.00 USD", "1,234,567 JPY", "-1,234.567 KWD", "0.007 KWD", "12 JPY",
        "92,233,720,368,547,758.07 USD", "-9,223,372,036,854,775,807 JPY", "1.00 XYZ"]
    assert figure(1234567, "KWD") == "1,234.567" and money(None, "USD") == "" and money(5, None) == ""
    assert money_by_currency({"USD": 100, "JPY": 250, "KWD": 1250}) == "250 JPY; 1.250 KWD; 1.00 USD"


def test_asset_metadata_shows_a_total_per_currency_and_a_table_with_names_left_and_amounts_right():
    assert money_totals("paid_out", [("USD", 123456), ("JPY", 500)]) == {
        "paid_out": "500 JPY; 1,234.56 USD", "paid_out_minor": dg.MetadataValue.json({"USD": 123456, "JPY": 500})}
    table = markdown_table(["processor", "status", "payouts", "amount"],
                           [("stripe", "paid", 2, money(123456, "USD")), ("heartland", None, 1, money(500, "JPY"))],
                           text_columns=2)
    assert table.value.splitlines() == [
        "| processor | status | payouts | amount |", "| --- | --- | ---: | ---: |",
        "| stripe | paid | 2 | 1,234.56 USD |", "| heartland |  | 1 | 500 JPY |"]


@pytest.mark.parametrize("minor,currency", CASES + [(None, "USD"), (5, None)])
def test_sql_writes_the_same_text_as_python(minor, currency):
    sql = duckdb.connect().execute(f"SELECT {money_sql('?::BIGINT', '?::VARCHAR')}", [minor, currency]).fetchone()[0]
    assert (sql or "") == money(minor, currency)


def register(conn, rows):
    conn.execute("CREATE TABLE out_recon_exceptions (exception_id VARCHAR, reason_code VARCHAR, processor VARCHAR, "
                 "source_id VARCHAR, settlement_date DATE, currency VARCHAR, amount_minor BIGINT, detail VARCHAR, "
                 "status VARCHAR)")
    conn.executemany("INSERT INTO out_recon_exceptions VALUES (?, 'no_reference', 'stripe', ?, ?, ?, ?, "
                     "'no reference', 'open')", rows)


def test_alerts_state_amounts_in_the_currencys_decimals():
    conn = duckdb.connect()
    register(conn, [("EX-1", "txn_jpy", date(2026, 10, 5), "JPY", 150000),
                    ("EX-2", "txn_kwd", date(2026, 10, 5), "KWD", 12345),
                    ("EX-3", "txn_usd", date(2026, 10, 5), "USD", 123456),
                    ("EX-4", "txn_none", date(2026, 10, 5), None, None)])
    assert raise_alerts(conn, datetime(2026, 10, 6, 2)) == 4
    assert dict(conn.execute("SELECT source_id, message FROM out_alerts").fetchall()) == {
        "txn_jpy": "stripe txn_jpy: no_reference — no reference (150,000 JPY)",
        "txn_kwd": "stripe txn_kwd: no_reference — no reference (12.345 KWD)",
        "txn_usd": "stripe txn_usd: no_reference — no reference (1,234.56 USD)",
        "txn_none": "stripe txn_none: no_reference — no reference"}


def test_report_totals_are_per_currency_and_never_add_two_currencies():
    section = Section("exceptions", "Open exceptions", ["exception_id", "currency", "amount_minor", "unapplied_minor"],
                      [("EX-1", "USD", 10_00, 0), ("EX-2", "EUR", 20_00, 5), ("EX-3", "USD", 1_50, None),
                       ("EX-4", "JPY", 5000, 0), ("EX-5", "KWD", 1250, 0)])
    assert section.totals() == [("Total", "EUR", 20_00, 5), ("Total", "JPY", 5000, 0), ("Total", "KWD", 1250, 0),
                                ("Total", "USD", 11_50, 0)]
    shown = [section.readable(row)[:4] for row in section.totals()]
    assert shown == [["Total", "EUR", "20.00 EUR", "0.05 EUR"], ["Total", "JPY", "5,000 JPY", "0 JPY"],
                     ["Total", "KWD", "1.250 KWD", "0.000 KWD"], ["Total", "USD", "11.50 USD", "0.00 USD"]]


def test_analyst_views_keep_currencies_apart():
    conn = duckdb.connect()
    register(conn, [("EX-1", "a", date.today(), "USD", 10_00), ("EX-2", "b", date.today(), "EUR", 20_00),
                    ("EX-3", "c", date.today(), "USD", 5_00)])
    conn.execute("CREATE TABLE core_settlement_lines AS SELECT * FROM (VALUES "
                 "('stripe', DATE '2026-10-05', 'USD', 'charge', 100_00, 3_00), "
                 "('stripe', DATE '2026-10-06', 'EUR', 'charge', 200_00, 6_00), "
                 "('stripe', DATE '2026-10-07', 'JPY', 'charge', 9000, 270)) "
                 "t(processor, settlement_date, currency, line_type, amount_minor, fee_minor)")
    by_age = conn.execute(f"SELECT currency, exceptions, amount_minor FROM ({VIEWS['v_open_exceptions_by_age']}) "
                          "ORDER BY 1").fetchall()
    assert by_age == [("EUR", 1, 20_00), ("USD", 2, 15_00)]
    fees = conn.execute(f"SELECT currency, fees_minor, charged_minor FROM ({VIEWS['v_processor_fees_by_month']}) "
                        "ORDER BY 1").fetchall()
    assert fees == [("EUR", 6_00, 200_00), ("JPY", 270, 9000), ("USD", 3_00, 100_00)]


def test_a_payout_residue_is_named_in_the_payouts_currency():
    conn = duckdb.connect()
    conn.execute("CREATE TABLE payouts AS SELECT * FROM (VALUES "
                 "('stripe', 'po_jpy', 'JPY', DATE '2026-10-05', NULL::DATE, 'paid', 5000, TRUE, 1), "
                 "('stripe', 'po_kwd', 'KWD', DATE '2026-10-05', NULL::DATE, 'paid', 12000, TRUE, 1)) "
                 "t(processor, payout_id, currency, settlement_date, arrival_date, status, amount_minor, itemised, "
                 "line_count)")
    conn.execute("CREATE TABLE lines AS SELECT * FROM (VALUES ('stripe', 'po_jpy', 'charge', 4825), "
                 "('stripe', 'po_kwd', 'charge', 11750)) t(processor, payout_id, line_type, net_minor)")
    tie_out_payouts(conn, payouts="payouts", lines="lines")
    assert dict(conn.execute("SELECT payout_id, residue FROM payout_tieout").fetchall()) == {
        "po_jpy": "payout 5,000 JPY vs lines net 4,825 JPY: residue 175 JPY; every itemised line is present, so the "
                  "residue is unexplained by the processor",
        "po_kwd": "payout 12.000 KWD vs lines net 11.750 KWD: residue 0.250 KWD; every itemised line is present, so "
                  "the residue is unexplained by the processor"}

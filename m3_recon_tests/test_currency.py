"""The currency model at function level, with exact amounts: conversion between currencies (half-up, each
currency's decimals), M3's local currency as a checked setting, the local values cash application books
(reconcile.posted) and the journals' local amounts and FX, for the four cases — settlement currency = local,
settlement ≠ local, invoice currency ≠ both, and a zero-decimal currency (JPY)."""

from dataclasses import replace
from decimal import Decimal

import duckdb
import pytest

from m3_recon import settings
from m3_recon.journals import AccountMap, clearing_by_payout, corrections, derive_journals, load_exchange_rates
from m3_recon.money import convert, convert_sql
from m3_recon.reconcile.posted import book_local_values, check_local_currency

ACCOUNTS = AccountMap.load()
DAY, ARRIVED = "2026-10-01", "2026-10-05"


@pytest.mark.parametrize("minor, source, target, rate, expected", [
    (10_000, "JPY", "USD", "0.0067", 67_00),      # ¥10,000 is $67.00, not $0.67
    (67_00, "USD", "JPY", "149.253731", 10_000),
    (-5, "USD", "EUR", "0.5", -3), (5, "USD", "EUR", "0.5", 3),  # half-up, away from zero: a credit mirrors its debit
    (100_00, "EUR", "KWD", "0.333333", 33_333),   # three decimals
    (123_45, "USD", "USD", "1", 123_45),
])
def test_conversion_uses_each_currencys_decimals_and_rounds_half_up_in_python_and_sql(minor, source, target, rate,
                                                                                      expected):
    assert convert(minor, source, target, Decimal(rate)) == expected
    sql = convert_sql(str(minor), f"'{source}'", f"'{target}'", f"'{rate}'")
    assert duckdb.connect().execute(f"SELECT {sql}").fetchone()[0] == expected


def test_a_float_rate_is_refused():
    with pytest.raises(TypeError):
        convert(100, "USD", "EUR", 0.92)


def test_local_currency_is_a_known_iso_code_and_the_one_m3_reports(monkeypatch):
    monkeypatch.setenv("M3_LOCAL_CURRENCY", "eur")
    assert settings.local_currency() == "EUR"
    monkeypatch.setenv("M3_LOCAL_CURRENCY", "EUX")
    with pytest.raises(settings.SettingsError, match="M3_LOCAL_CURRENCY must be an ISO 4217 currency code"):
        settings.local_currency()
    conn = duckdb.connect()
    conn.execute("CREATE TABLE invoices AS SELECT 'USD' AS local_currency")
    with pytest.raises(ValueError, match="M3 keeps its books in USD .* set M3_LOCAL_CURRENCY=USD"):
        check_local_currency(conn, "invoices", "EUR")
    assert check_local_currency(conn, "invoices", "usd") == "USD"


def booked(local, invoice_currency, payment_currency, allocated, rate, outstanding, outstanding_local):
    """The local value book_local_values gives one allocation paying part of an invoice."""
    conn = duckdb.connect()
    conn.execute("CREATE TABLE match_allocations AS SELECT 'stripe' AS processor, 'ch_1' AS source_id, "
                 "'26000001' AS invoice_number, 2026 AS invoice_year, DATE '2026-10-01' AS settlement_date, "
                 "?::BIGINT AS allocated_minor, ? AS invoice_currency, ? AS payment_currency, 'auto' AS status, "
                 "NULL::BIGINT AS allocated_local_minor", [allocated, invoice_currency, payment_currency])
    conn.execute("CREATE TABLE invoices AS SELECT '26000001' AS invoice_number, 2026 AS invoice_year, "
                 "?::BIGINT AS outstanding_minor, ?::BIGINT AS outstanding_local_minor, "
                 "?::DECIMAL(13, 6) AS exchange_rate", [outstanding, outstanding_local, rate])
    conn.execute("CREATE TABLE earlier AS SELECT * FROM match_allocations WHERE false")
    book_local_values(conn, invoices="invoices", earlier="earlier", local_currency=local)
    return conn.execute("SELECT allocated_local_minor FROM match_allocations").fetchone()[0]


def test_cash_application_local_values_in_the_four_cases():
    # settlement = local = invoice: the amount itself
    assert booked("USD", "USD", "USD", 40_00, "1", 100_00, 100_00) == 40_00
    # settlement ≠ local, invoice in the settlement currency (USD invoice, USD payment, EUR books): at the invoice's
    # rate — not the USD amount taken for euros, as when "same currency" meant invoice = payment currency
    assert booked("EUR", "USD", "USD", 40_00, "0.92", 100_00, 92_00) == 36_80
    # invoice ≠ both: a GBP invoice paid in USD, EUR books
    assert booked("EUR", "GBP", "USD", 40_00, "1.15", 100_00, 115_00) == 46_00
    # zero decimals: ¥10,000 of a ¥30,000 invoice at 0.0067 is $67.00
    assert booked("USD", "JPY", "USD", 10_000, "0.0067", 30_000, 201_00) == 67_00
    # the instalment that settles a JPY invoice takes the local amount left
    assert booked("USD", "JPY", "USD", 30_000, "0.0067", 30_000, 201_01) == 201_01


def journals(local, lines, payout, allocations, rates=(), accounts=ACCOUNTS):
    """Derive one processor-day's journals: lines (source_id, currency, line_type, amount, fee), one payout
    (currency, amount) arriving on ARRIVED, allocations (source_id, invoice, invoice currency, allocated,
    settled, booked local) and M3's rates (currency, valid_from, rate)."""
    conn = duckdb.connect()
    conn.execute("CREATE TABLE lines (processor VARCHAR, payout_id VARCHAR, source_id VARCHAR, settlement_date DATE, "
                 "currency VARCHAR, line_type VARCHAR, amount_minor BIGINT, fee_minor BIGINT)")
    conn.executemany("INSERT INTO lines VALUES ('heartland', 'po_1', ?, ?, ?, ?, ?, ?)",
                     [(s, DAY, c, t, a, f) for s, c, t, a, f in lines])
    conn.execute("CREATE TABLE payouts AS SELECT 'heartland' AS processor, 'po_1' AS payout_id, ? AS currency, "
                 "DATE '2026-10-01' AS settlement_date, DATE '2026-10-05' AS arrival_date, ?::BIGINT AS amount_minor, "
                 "'paid' AS status", list(payout))
    conn.execute("CREATE TABLE allocations (processor VARCHAR, source_id VARCHAR, invoice_number VARCHAR, "
                 "invoice_year INTEGER, customer VARCHAR, invoice_currency VARCHAR, allocated_minor BIGINT, "
                 "allocated_settlement_minor BIGINT, settlement_date DATE, allocated_local_minor BIGINT, "
                 "status VARCHAR, line_type VARCHAR)")
    for source_id, invoice, currency, allocated, settled, booked_local in allocations:
        conn.execute("INSERT INTO allocations VALUES ('heartland', ?, ?, 2026, 'C1', ?, ?, ?, ?, ?, 'auto', 'charge')",
                     [source_id, invoice, currency, allocated, settled, DAY, booked_local])
    conn.execute("CREATE TABLE overpaid (processor VARCHAR, source_id VARCHAR, written_off BOOLEAN)")
    conn.execute("CREATE TABLE rates (currency VARCHAR, valid_from DATE, rate DECIMAL(18, 8))")
    for rate in rates:
        conn.execute("INSERT INTO rates VALUES (?, ?, ?)", list(rate))
    derive_journals(conn, accounts, lines="lines", payouts="payouts", allocations="allocations", overpaid="overpaid",
                    local_currency=local, rates="rates")
    return conn


def entries(conn):
    """(entry, account, currency, amount, local amount) of every journal line."""
    return sorted(conn.execute("SELECT entry, ait1, currency, amount_minor, local_minor FROM journal_lines").fetchall())


def balanced_and_clearing_nets_to_zero(conn):
    assert conn.execute("SELECT count(*) FROM (SELECT voucher_key FROM journal_lines GROUP BY voucher_key "
                        "HAVING sum(local_minor) <> 0)").fetchone()[0] == 0
    clearing_by_payout(conn)
    return conn.execute("SELECT clearing_net_minor FROM clearing_by_payout").fetchall() == [(0,)]


def test_settlement_in_the_local_currency_books_fx_as_settled_less_booked():
    # a EUR invoice booked at $108.00 paid by a charge that settled $108.24 (USD books)
    conn = journals("USD", [("ch_1", "USD", "charge", 108_24, 3_20)], ("USD", 105_04),
                    [("ch_1", "26000001", "EUR", 100_00, 108_24, 108_00)])
    assert entries(conn) == [
        ("fx", "1193", "USD", 24, 24), ("fx", "8210", "USD", -24, -24),
        ("payout", "1010", "USD", 105_04, 105_04), ("payout", "1193", "USD", -105_04, -105_04),
        ("processing_fee", "1193", "USD", -3_20, -3_20), ("processing_fee", "6810", "USD", 3_20, 3_20)]
    assert balanced_and_clearing_nets_to_zero(conn)


def test_settlement_in_another_currency_than_local_books_local_values_and_fx_in_local_currency():
    # EUR books; a USD invoice booked at €99.36 paid by $108.00 settled in USD; M3's USD rate is 0.925 on the
    # settlement day and 0.93 when the payout arrives
    conn = journals("EUR", [("ch_1", "USD", "charge", 108_00, 3_20)], ("USD", 104_80),
                    [("ch_1", "26000001", "USD", 108_00, 108_00, 99_36)],
                    rates=[("USD", "2026-09-30", "0.925"), ("USD", ARRIVED, "0.93"), ("JPY", DAY, "0.0062")])
    assert entries(conn) == [
        ("fx", "1193", "EUR", 54, 54), ("fx", "8210", "EUR", -54, -54),  # €99.90 received for €99.36 booked
        # the payout leaves clearing at what its lines brought there: €99.90 − €2.96
        ("payout", "1010", "USD", 104_80, 96_94), ("payout", "1193", "USD", -104_80, -96_94),
        ("processing_fee", "1193", "USD", -3_20, -2_96), ("processing_fee", "6810", "USD", 3_20, 2_96)]
    assert conn.execute("SELECT currency, amount_minor, local_minor FROM cash_applications").fetchall() == [
        ("USD", 108_00, 99_36)]
    assert balanced_and_clearing_nets_to_zero(conn)


def test_an_invoice_in_neither_currency_and_a_partly_applied_payment():
    # EUR books; a GBP invoice (£80.00 booked at €92.00) paid by $101.60 settled in USD, $10.00 more unapplied
    conn = journals("EUR", [("ch_1", "USD", "charge", 111_60, 0)], ("USD", 111_60),
                    [("ch_1", "26000001", "GBP", 80_00, 101_60, 92_00)], rates=[("USD", DAY, "0.92")])
    assert entries(conn) == [
        ("fx", "1193", "EUR", 1_47, 1_47), ("fx", "8210", "EUR", -1_47, -1_47),  # $101.60 = €93.47 vs €92.00
        ("payout", "1010", "USD", 111_60, 102_67), ("payout", "1193", "USD", -111_60, -102_67),
        ("unapplied_payment", "1193", "USD", 10_00, 9_20), ("unapplied_payment", "2410", "USD", -10_00, -9_20)]
    assert balanced_and_clearing_nets_to_zero(conn)


def test_a_zero_decimal_settlement_currency():
    # USD books; a Heartland account settling in JPY: ¥10,000 pays a JPY invoice booked at $67.00; M3's rate
    # on the day is 0.00675, so the yen are worth $67.50; the ¥250 fee is $1.69 (1.6875 rounds half-up)
    conn = journals("USD", [("tx_1", "JPY", "charge", 10_000, 250)], ("JPY", 9_750),
                    [("tx_1", "26000001", "JPY", 10_000, 10_000, 67_00)], rates=[("JPY", DAY, "0.00675")],
                    accounts=replace(ACCOUNTS, bank={**ACCOUNTS.bank, "JPY": "1030"}))
    assert entries(conn) == [
        ("fx", "1193", "USD", 50, 50), ("fx", "8210", "USD", -50, -50),
        ("payout", "1030", "JPY", 9_750, 65_81), ("payout", "1193", "JPY", -9_750, -65_81),
        ("processing_fee", "1193", "JPY", -250, -1_69), ("processing_fee", "6810", "JPY", 250, 1_69)]
    assert balanced_and_clearing_nets_to_zero(conn)


def test_a_line_without_a_rate_holds_its_voucher_and_names_the_rate():
    conn = journals("EUR", [("ch_1", "USD", "refund", -10_00, 0)], ("USD", -10_00), [])
    held = conn.execute("SELECT DISTINCT voucher_key, held_reason FROM journal_lines ORDER BY 1").fetchall()
    assert held[0] == ("GHD20261001", "no exchange rate to EUR for USD on 2026-10-01 (M3_RECON_EXCHANGE_RATES)")


def test_rates_file_is_read_and_a_bad_row_fails_loudly(tmp_path):
    path = tmp_path / "rates.csv"
    path.write_text("currency,valid_from,rate\nUSD,2026-10-01,0.92\njpy,2026-10-01,0.0062\n")
    conn = duckdb.connect()
    assert load_exchange_rates(conn, path, "EUR") == 2
    assert conn.execute("SELECT currency, rate FROM exchange_rates ORDER BY 1").fetchall() == [
        ("JPY", Decimal("0.00620000")), ("USD", Decimal("0.92000000"))]
    path.write_text("currency,valid_from,rate\nEUR,2026-10-01,1\n")
    with pytest.raises(ValueError, match="line 2: a rate must be a positive number for a currency other than"):
        load_exchange_rates(conn, path, "EUR")


def test_an_eleventh_revision_gets_its_own_key():
    """Revision keys are <key>R1, R2, … R10, R11: the tenth and later never reuse a key M3 already holds."""
    conn = journals("USD", [("tx_1", "USD", "charge", 100_00, 0)], ("USD", 100_00),
                    [("tx_1", "26000001", "USD", 1_00, 1_00, 1_00)])
    keys = []
    for revision in range(2, 13):  # finance applies one more dollar of the payment each time
        conn.execute("CREATE OR REPLACE TABLE core_gl_journal_lines AS SELECT * FROM journal_lines")
        conn.execute("CREATE OR REPLACE TABLE core_cash_applications AS SELECT * FROM cash_applications")
        conn.execute("CREATE OR REPLACE TABLE out_m3_postings AS SELECT DISTINCT voucher_key, 'gl' AS route, "
                     "TIMESTAMP '2026-10-02 02:00' AS sent_at_utc FROM journal_lines UNION ALL "
                     "SELECT DISTINCT voucher_key, 'cash_application', TIMESTAMP '2026-10-02 02:00' "
                     "FROM cash_applications")
        conn.execute("DELETE FROM allocations")
        conn.execute("INSERT INTO allocations VALUES ('heartland', 'tx_1', '26000001', 2026, 'C1', 'USD', ?, ?, "
                     "DATE '2026-10-01', ?, 'auto', 'charge')", [revision * 100] * 3)
        derive_journals(conn, ACCOUNTS, lines="lines", payouts="payouts", allocations="allocations",
                        overpaid="overpaid")
        assert corrections(conn) == 2
        keys.append(conn.execute("SELECT DISTINCT voucher_key FROM cash_applications WHERE voucher_key LIKE '%R%'"
                                 " AND voucher_key NOT IN (SELECT voucher_key FROM core_cash_applications)"
                                 ).fetchone()[0])
    assert keys == [f"CHA20261001R{n}" for n in range(1, 12)]


def test_corrections_read_journals_stored_before_local_amounts_without_a_revision():
    """A warehouse from before local amounts: its stored lines lack local_minor / settlement_minor; the same
    journals derived again are no revision (their local amounts are the amounts, as M3 has them)."""
    conn = journals("USD", [("tx_1", "USD", "charge", 100_00, 1_00)], ("USD", 99_00),
                    [("tx_1", "26000001", "USD", 100_00, 100_00, 100_00)])
    conn.execute("CREATE TABLE core_gl_journal_lines AS SELECT * EXCLUDE (local_minor) FROM journal_lines")
    conn.execute("CREATE TABLE core_cash_applications AS SELECT * EXCLUDE (settlement_minor) FROM cash_applications")
    conn.execute("CREATE TABLE out_m3_postings AS SELECT DISTINCT voucher_key, 'gl' AS route, "
                 "TIMESTAMP '2026-10-02 02:00' AS sent_at_utc FROM journal_lines UNION ALL "
                 "SELECT DISTINCT voucher_key, 'cash_application', TIMESTAMP '2026-10-02 02:00' FROM cash_applications")
    assert corrections(conn) == 0


def test_the_sandbox_m3_keeps_eur_books_with_yen_and_takes_a_lines_local_amount():
    from datetime import date

    from m3_recon.sandbox.m3_ledger import M3Ledger
    from m3_recon.sandbox.world import Period, build_world

    world = build_world(7, Period(date(2026, 10, 1), 3), customers=12, local_currency="EUR")
    assert world.heartland_currency == "JPY"
    assert {c.currency for c in world.customers_of("heartland")} == {"JPY"}
    m3 = M3Ledger(world)
    yen = next(line for line in m3.lines(2**40) if line.currency == "JPY")
    assert yen.local_minor == convert(yen.amount_minor, "JPY", "EUR", yen.rate)  # whole yen to euro cents
    m3.add_gl_batch("GHD20261002", "GLUPLOAD", "test", "", 0)
    day = date(2026, 10, 2)
    for number, (account, amount, acam) in enumerate([("1193", "10000", "62.50"), ("6810", "-10000", "")], start=1):
        m3.add_gl_batch_line("GHD20261002", number, {"AIT1": account, "CUCD": "JPY", "CUAM": amount,
                                                     "ACDT": "20261002", "ACAM": acam})
    booked = m3.update_gl_batch("GHD20261002", 0)
    assert [(line.amount_minor, line.local_minor) for line in booked] == [
        (10_000, 62_50),  # the local amount the journal gave
        (-10_000, convert(-10_000, "JPY", "EUR", m3.gl_rate("JPY", day)))]  # none given: M3's rate of the day

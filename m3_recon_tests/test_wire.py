"""The shared wire readers: every plausible shape of a vendor instant or amount reads to the exact value,
every defect is named, and the Python and DuckDB SQL forms agree case by case."""

from datetime import date, datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import duckdb
import pytest

from m3_recon import decimal_json, wire

PACIFIC = ZoneInfo("America/Los_Angeles")
NOT_A_TIME = "is not a time (expected ISO 8601 like 2026-10-05T14:03:11.000Z)"

# text -> the UTC instant it names when a zone-less wall time is UTC (as GP writes them), or the defect.
INSTANTS = {
    "2026-10-05T14:03:11.000Z": datetime(2026, 10, 5, 14, 3, 11),
    "2026-10-05T14:03:11Z": datetime(2026, 10, 5, 14, 3, 11),
    "2026-10-05T14:03:11": datetime(2026, 10, 5, 14, 3, 11),
    "2026-10-05 14:03:11": datetime(2026, 10, 5, 14, 3, 11),
    "2026-10-05T14:03:11.5z": datetime(2026, 10, 5, 14, 3, 11, 500_000),
    "2026-10-05T14:03:11,25Z": datetime(2026, 10, 5, 14, 3, 11, 250_000),
    "2026-10-05T14:03:11.123456789Z": datetime(2026, 10, 5, 14, 3, 11, 123_456),  # truncated, never rounded
    "2026-10-05T14:03:11+02:00": datetime(2026, 10, 5, 12, 3, 11),
    "2026-10-05T14:03:11.250-07:00": datetime(2026, 10, 5, 21, 3, 11, 250_000),
    "2026-10-05T14:03:11-0700": datetime(2026, 10, 5, 21, 3, 11),
    "2026-10-05T14:03:11+02": datetime(2026, 10, 5, 12, 3, 11),
    "2026-10-05T00:30:00+05:30": datetime(2026, 10, 4, 19, 0),
    "2026-10-05T14:03": datetime(2026, 10, 5, 14, 3),
    "20261005T140311Z": datetime(2026, 10, 5, 14, 3, 11),
    "2026-10-05": datetime(2026, 10, 5),
    "20261005": datetime(2026, 10, 5),
    "  2026-10-05T14:03:11Z ": datetime(2026, 10, 5, 14, 3, 11),
    "yesterday": f"'yesterday' {NOT_A_TIME}",
    "2026-10-05 14:03:11 PDT": f"'2026-10-05 14:03:11 PDT' {NOT_A_TIME}",
    "1759672991": f"'1759672991' {NOT_A_TIME}",
    "2026-02-30": "'2026-02-30' is not a valid date or time",
    "2026-10-05T24:00:00Z": datetime(2026, 10, 6),
    "2026-10-05T24:30:00Z": "'2026-10-05T24:30:00Z' is not a valid date or time",
    "2026-10-05T23:59:60Z": "'2026-10-05T23:59:60Z' is not a valid date or time",
    "": None,
}

# (value, exponent) -> minor units or the defect; value is what a JSON parser hands over (str, int, Decimal).
AMOUNTS = {
    ("110", 2): 11_000, (110, 2): 11_000, (Decimal("1234.5"), 2): 123_450, ("1234.5", 2): 123_450,
    ("8.10", 2): 810, ("-12.34", 2): -1_234, ("+3", 2): 300, (".5", 2): 50, ("7.", 2): 700, ("0012.00", 2): 1_200,
    ("1234.500", 2): 123_450, ("11099", 0): 11_099, (11099, 0): 11_099, ("-260", 0): -260, ("260.000", 0): 260,
    ("92233720368547758.07", 2): 2**63 - 1, ("-9223372036854775807", 0): -(2**63 - 1),
    ("8084.5", 0): "8084.5 is not a whole number of cents",
    (Decimal("80.845"), 2): "80.845 is not a whole number of cents",
    ("12.345", 2): "12.345 is not a whole number of cents",
    ("92233720368547758.08", 2): "92233720368547758.08 is too large: m3-recon stores amounts as 64-bit cents",
    ("99999999999999999999", 0): "99999999999999999999 is too large: m3-recon stores amounts as 64-bit cents",
    # -2**63 fits a BIGINT but its negation and absolute value do not: a sign flip would abort the whole load
    ("-9223372036854775808", 0): "-9223372036854775808 is too large: m3-recon stores amounts as 64-bit cents",
    ("1e3", 0): "'1e3' is not an amount", ("12,50", 2): "'12,50' is not an amount", ("$5", 2): "'$5' is not an amount",
    ("-", 2): "'-' is not an amount", ("1 000", 0): "'1 000' is not an amount",
    ("", 2): None,
}


AMOUNT_TEXT = "j->>'$.amount'"


@pytest.fixture(scope="module")
def conn():
    return duckdb.connect()


@pytest.mark.parametrize("text,expected", INSTANTS.items(), ids=[repr(t) for t in INSTANTS])
def test_every_iso_8601_shape_reads_to_the_same_instant_in_python_and_sql(conn, text, expected):
    if isinstance(expected, str):
        with pytest.raises(wire.WireValueError) as raised:
            wire.instant(text, timezone.utc)
        assert str(raised.value) == expected
    else:
        got = wire.instant(text, timezone.utc)
        assert (got.astimezone(timezone.utc).replace(tzinfo=None) if got else None) == expected
    sql_value, sql_defect = conn.execute(
        f"SELECT {wire.instant_sql('$1')}, {wire.instant_defect_sql('$1')}", [text]).fetchone()
    assert (sql_defect if isinstance(expected, str) else sql_value) == expected
    assert sql_value is None if isinstance(expected, str) else sql_defect is None


def test_zone_less_times_are_wall_times_of_the_vendors_zone_and_us_style_is_paytraces():
    as_utc = lambda text: wire.instant(text, PACIFIC).astimezone(timezone.utc)  # noqa: E731
    assert as_utc("10/31/2026 8:33:20 PM") == datetime(2026, 11, 1, 3, 33, 20, tzinfo=timezone.utc)  # PDT
    assert as_utc("11/1/2026 7:57:40 PM") == datetime(2026, 11, 2, 3, 57, 40, tzinfo=timezone.utc)  # PST
    assert as_utc("11/1/2026 1:30:00 AM") == datetime(2026, 11, 1, 8, 30, tzinfo=timezone.utc)  # first 1:30
    assert as_utc("11/1/2026 12:05 AM") == datetime(2026, 11, 1, 7, 5, tzinfo=timezone.utc)
    assert as_utc("10/5/2026") == datetime(2026, 10, 5, 7, tzinfo=timezone.utc)
    assert as_utc("2026-10-05T20:00:00") == datetime(2026, 10, 6, 3, tzinfo=timezone.utc)
    assert as_utc("2026-10-05T20:00:00Z") == datetime(2026, 10, 5, 20, tzinfo=timezone.utc)  # an offset wins
    for bad in ("13/1/2026 1:00:00 PM", "10/5/2026 13:00:00 PM", "10/5/2026 0:10:00 AM"):
        with pytest.raises(wire.WireValueError, match="is not a valid date or time"):
            wire.instant(bad, PACIFIC)
    with pytest.raises(wire.WireValueError, match="is not a time"):
        wire.instant(1759672991, timezone.utc)


def test_a_business_date_is_the_date_as_written(conn):
    for text in ("2026-10-05", "2026-10-05T23:30:00-05:00", "20261005", "2026-10-05T00:00:00.000Z"):
        assert wire.calendar_date(text) == date(2026, 10, 5)
        assert conn.execute(f"SELECT {wire.calendar_date_sql('$1')}", [text]).fetchone()[0] == date(2026, 10, 5)
    assert conn.execute(f"SELECT {wire.calendar_date_sql('$1')}", ["2026-13-05"]).fetchone()[0] is None


@pytest.mark.parametrize("case,expected", AMOUNTS.items(), ids=[repr(c) for c in AMOUNTS])
def test_amounts_as_numbers_or_strings_read_exactly_in_python_and_sql(conn, case, expected):
    value, exponent = case
    if isinstance(expected, str):
        with pytest.raises(wire.WireValueError) as raised:
            wire.minor_units(value, exponent, "cents")
        assert str(raised.value) == expected
    else:
        assert wire.minor_units(value, exponent, "cents") == expected
    # SQL reads the text DuckDB gives for a JSON string or number: the same value through a JSON document.
    document = decimal_json.dumps({"amount": value})
    sql_value, sql_defect = conn.execute(
        f"SELECT {wire.minor_units_sql(AMOUNT_TEXT, exponent)}, "
        f"{wire.amount_defect_sql(AMOUNT_TEXT, exponent, 'cents')} FROM (SELECT CAST($1 AS JSON) AS j)",
        [document]).fetchone()
    assert (sql_defect if isinstance(expected, str) else sql_value) == expected
    assert sql_value is None if isinstance(expected, str) else sql_defect is None


def test_binary_floats_and_booleans_are_never_money():
    for bad, message in ((1234.5, "1234.5 is a binary float, not an exact amount"),
                         (True, "True is a binary bool, not an exact amount"),
                         ([5], "[5] is not an amount")):
        with pytest.raises(wire.WireValueError) as raised:
            wire.minor_units(bad, 2)
        assert str(raised.value) == message
    assert wire.minor_units(None, 2) is None and wire.minor_units("   ", 2) is None
    assert wire.instant(None, timezone.utc) is None and wire.instant(" ", timezone.utc) is None


def test_counts_are_whole_numbers_as_json_integers_or_strings():
    assert [wire.count(3), wire.count("12"), wire.count(" 0 "), wire.count(""), wire.count(None)] == [
        3, 12, 0, None, None]
    for bad, shown in (("two", "two"), (Decimal("3.5"), "3.5"), (2.0, "2.0")):
        with pytest.raises(wire.WireValueError) as raised:
            wire.count(bad)
        assert str(raised.value) == f"'{shown}' is not a count"


def test_json_numbers_keep_every_digit_on_the_way_in():
    # A PayTrace amount as a JSON number goes through Decimal, never a float: 0.1 + 0.2 stays 30 cents.
    parsed = decimal_json.loads('{"a": 0.1, "b": 0.2, "c": 12345678901234.57}')
    assert wire.minor_units(parsed["a"], 2) + wire.minor_units(parsed["b"], 2) == 30
    assert wire.minor_units(parsed["c"], 2) == 1_234_567_890_123_457


# A list response read once: the document as ``loads`` reads it, and each listed record's text exactly as sent.
LISTINGS = [
    '{"transactions": [{"id": "t1", "amount": 12.50}, {"id": "t2", "amount": 0.10}], "status": "OK"}',
    ' \n{ "status" : "OK" , "transactions" : [ ] }\n',
    '{"transactions": [{"nested": {"transactions": [1, 2]}, "note": "a ] , } [ \\" quote"}]}',
    '{"transactions": [{"id": 1}], "transactions": [{"id": 2}, {"id": 3}]}',  # a repeated key: the last one wins
    '{"transactions": "none today"}',  # not an array: no records
    '{"status": "OK"}',
    '[{"id": "t1"}]',  # not an object: no records
]


@pytest.mark.parametrize("text", LISTINGS)
def test_a_listing_reads_as_loads_reads_it_and_keeps_each_record_as_sent(text):
    document, texts = decimal_json.loads_listing(text, "transactions")
    assert document == decimal_json.loads(text)
    listed = document.get("transactions") if isinstance(document, dict) else None
    expected = listed if isinstance(listed, list) else []
    assert [decimal_json.loads(record) for record in texts] == expected
    assert all(record in text for record in texts)


@pytest.mark.parametrize("text", ['{"transactions": [{"id": 1},]}', '{"transactions": [1] "x": 2}',
                                  '{"transactions": [1]} trailing', '{"transactions": [1.5e]}', '{transactions: []}'])
def test_a_listing_that_is_not_json_fails_as_loads_fails(text):
    with pytest.raises(ValueError):
        decimal_json.loads(text)
    with pytest.raises(ValueError):
        decimal_json.loads_listing(text, "transactions")


def test_page_documents_keep_every_listed_object_and_its_exact_values():
    from m3_recon.warehouse import page_documents

    pages = ['{"object": "list", "data": [{"id": "txn_1", "amount": 123456789012, "exchange_rate": 1.0874, '
             '"fee": 0.00001234, "text": "caf\\u00e9"}, {"id": "txn_2", "amount": -5}], "has_more": true}',
             '{"object": "list", "data": [], "has_more": false}',
             '{"object": "list", "data": [{"id": "txn_3", "big": 12345678901234567890}]}']
    raw = page_documents(pages, "data", "run-1").column("raw").to_pylist()
    assert [decimal_json.loads(r) for r in raw] == [
        {"id": "txn_1", "amount": 123456789012, "exchange_rate": Decimal("1.0874"), "fee": Decimal("0.00001234"),
         "text": "café"}, {"id": "txn_2", "amount": -5}, {"id": "txn_3", "big": 12345678901234567890}]
    with pytest.raises(duckdb.Error):
        page_documents(['{"data": [1,'], "data", "run-1")

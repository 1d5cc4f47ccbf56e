"""The payout reconciliation report a controller signs, read back as finance would: written after posting (every
voucher verified, with its M3 number), the clearing roll-forward closing to the cent per processor and currency
against the tables it summarises, amounts as ``1,234.56 USD`` with the minor units beside them, totals per
currency, and a workbook that opens with one sheet per section."""

import csv
import re

import duckdb
import pandas as pd

from m3_recon.money import money
from m3_recon.report import SECTIONS

AMOUNT = re.compile(r"^-?\d{1,3}(,\d{3})*(\.\d+)? [A-Z]{3}$")


def read_csv(books, key, totals=False):
    """The section's rows (or, with ``totals``, only its totals rows)."""
    with open(books.report_directory / f"{key}.csv", newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if (next(iter(row.values())) == "Total") == totals]


def test_amounts_use_each_currencys_exponent():
    assert money(123456, "USD") == "1,234.56 USD"
    assert money(-5, "EUR") == "-0.05 EUR"
    assert money(123456, "JPY") == "123,456 JPY"
    assert money(1234567, "KWD") == "1,234.567 KWD"


def test_the_roll_forward_closes_on_the_ledger_and_adds_up_from_the_tables(closed_books):
    rows = read_csv(closed_books, "roll_forward")
    with duckdb.connect(closed_books.database, read_only=True) as conn:
        charges = dict(((p, c), a) for p, c, a in conn.execute(
            "SELECT processor, currency, sum(amount_minor) FROM core_settlement_lines WHERE line_type = 'charge' "
            "AND settlement_date BETWEEN ? AND ? GROUP BY ALL", [closed_books.first, closed_books.last]).fetchall())
        arrived = dict(((p, c), a) for p, c, a in conn.execute(
            "SELECT processor, currency, sum(amount_minor) FROM core_payouts WHERE status = 'paid' "
            "AND coalesce(arrival_date, settlement_date) BETWEEN ? AND ? GROUP BY ALL",
            [closed_books.first, closed_books.last]).fetchall())
    assert {(r["processor"], r["currency"]) for r in rows} == set(charges)
    for row in rows:
        key = (row["processor"], row["currency"])
        minor = {k: int(v) for k, v in row.items() if k.endswith("_minor")}
        assert minor["difference_minor"] == 0, row
        assert minor["closing_minor"] == minor["ledger_closing_minor"] == (
            minor["opening_minor"] + minor["charges_minor"] + minor["refunds_minor"] + minor["disputes_minor"]
            + minor["fees_minor"] + minor["adjustments_minor"] + minor["payouts_minor"])
        assert minor["charges_minor"] == charges[key] > 0
        assert minor["payouts_minor"] == -arrived.get(key, 0)
        assert row["charges"] == money(charges[key], row["currency"])
        assert all(AMOUNT.match(row[k.removesuffix("_minor")]) for k in minor)


def test_every_voucher_is_reported_verified_with_its_m3_number(closed_books):
    journals = read_csv(closed_books, "journals")
    with duckdb.connect(closed_books.database, read_only=True) as conn:
        posted = dict(conn.execute("SELECT voucher_key, m3_voucher_number FROM out_m3_postings WHERE route = 'gl' "
                                   "AND status = 'verified'").fetchall())
    gl = [j for j in journals if j["route"] == "GLS840MI"]
    assert gl and {j["m3_status"] for j in journals} == {"verified"}
    assert all(j["m3_voucher_number"] == posted[j["voucher_key"]] for j in gl)
    assert any(j["route"] == "ARS040MI" for j in journals)


def test_sections_have_totals_and_accounts_have_names(closed_books):
    accounts = read_csv(closed_books, "accounts")
    [total] = read_csv(closed_books, "accounts", totals=True)
    assert total["debits_minor"] == total["credits_minor"] and total["net"] == "0.00 USD"
    names = {a["account"]: a["account_name"] for a in accounts}
    assert names["1191"] == "Stripe clearing" and names["1510"] == "Accounts receivable"
    lines = read_csv(closed_books, "payout_lines")
    charges = [line for line in lines if line["line_type"] == "charge" and line["match_status"] == "auto"]
    assert charges and all(line["customer"] and line["invoice"] for line in charges)
    exceptions = read_csv(closed_books, "exceptions")
    assert exceptions and all(int(e["age_days"]) >= 0 for e in exceptions)
    totals = read_csv(closed_books, "exceptions", totals=True)  # one per currency
    assert len({t["currency"] for t in totals}) == len(totals)
    for total in totals:
        assert int(total["amount_minor"]) == sum(int(e["amount_minor"] or 0) for e in exceptions
                                                 if e["currency"] == total["currency"])


def test_the_workbook_opens_with_one_sheet_per_section(closed_books):
    sheets = pd.read_excel(closed_books.report_directory / "report.xlsx", sheet_name=None)
    assert list(sheets) == list(SECTIONS)
    roll_forward = sheets["roll_forward"]
    csv_rows = read_csv(closed_books, "roll_forward")
    assert len(roll_forward) == len(csv_rows) + len(read_csv(closed_books, "roll_forward", totals=True))
    for sheet_row, csv_row in zip(roll_forward.to_dict("records"), csv_rows):
        assert int(sheet_row["charges_minor"]) == int(csv_row["charges_minor"])
        assert round(sheet_row["charges"] * 100) == int(csv_row["charges_minor"])  # a number Excel can add up
    assert len(sheets["payout_lines"]) == len(read_csv(closed_books, "payout_lines")) + 1  # and its total

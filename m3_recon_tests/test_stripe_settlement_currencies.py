"""A Stripe account settling in two currencies (an M3 keeping EUR books): the sandbox settles EUR charges in EUR
and pays each currency out to its own bank account, and a five-day close ties out, banks, journals and rolls
forward each currency on its own, with M3's trial balance in EUR balancing."""

from collections import Counter
from datetime import date

import duckdb
import pytest

from m3_recon.journals import AccountMap
from m3_recon.sandbox import Sandbox
from m3_recon.sandbox.bank_statements import account_number
from m3_recon.sandbox.stripe_ledger import build_stripe_ledger
from m3_recon.sandbox.trial_balance import print_trial_balance
from m3_recon.sandbox.world import Period, build_world
from m3_recon_tests.conftest import ClosedBooks
from m3_recon_tests.test_report import read_csv

FIRST, LAST = "2026-10-01", "2026-10-05"


def test_eur_charges_settle_in_eur_and_each_currency_pays_out_to_its_own_bank_account():
    ledger = build_stripe_ledger(build_world(7, Period(date(2026, 10, 1), 5), local_currency="EUR"))
    for charge in ledger.charges.values():
        txn = ledger.balance_transactions[charge.balance_transaction]
        assert (txn.currency, txn.amount, txn.exchange_rate) == (charge.currency, charge.amount, None)
        assert {fee["currency"] for fee in txn.fee_details} == {charge.currency}
    assert {c.currency for c in ledger.charges.values()} == {"eur", "usd"}
    for payout in ledger.payouts.values():
        paid_out = [t for t in ledger.balance_transactions.values() if t.payout == payout.id]
        assert {t.currency for t in paid_out} == {payout.currency}
        assert sum(t.net for t in paid_out) == 0  # its lines and its own debit
    assert {(p.currency, p.destination) for p in ledger.payouts.values()} == {
        ("eur", "ba_sandboxbankeur1"), ("usd", "ba_sandboxbank0001")}
    usd_books = build_stripe_ledger(build_world(7, Period(date(2026, 10, 1), 5)))
    assert {t.currency for t in usd_books.balance_transactions.values()} == {"usd"}


@pytest.fixture(scope="module")
def eur_books(tmp_path_factory):
    with Sandbox(days=5, local_currency="EUR") as sandbox, pytest.MonkeyPatch.context() as monkeypatch:
        books = ClosedBooks(sandbox, tmp_path_factory.mktemp("eur_books"), FIRST, LAST).use(monkeypatch)
        sandbox.write_bank_statements()
        books.results = books.close_post_report()
        assert all(result.success for result in books.results)
        yield books


def test_a_short_close_ties_out_banks_and_rolls_forward_each_settlement_currency(eur_books, capsys):
    books = eur_books
    accounts = AccountMap.load()
    with duckdb.connect(books.database, read_only=True) as conn:
        payouts = Counter(conn.execute("SELECT currency, status, banked FROM core_payout_reconciliation "
                                       "WHERE processor = 'stripe'").fetchall())
        assert set(payouts) == {("EUR", "tied", True), ("USD", "tied", True)}
        banked_into = dict(conn.execute("SELECT DISTINCT currency, split_part(bank_line_ref, '/', 1) "
                                        "FROM core_payout_reconciliation WHERE processor = 'stripe'").fetchall())
        assert banked_into == {"EUR": account_number("EUR"), "USD": account_number("USD")}
        paid_into = set(conn.execute("SELECT DISTINCT currency, ait1 FROM core_gl_journal_lines "
                                     "WHERE processor = 'stripe' AND entry = 'payout' AND amount_minor > 0").fetchall())
        assert paid_into == {("EUR", accounts.bank["EUR"]), ("USD", accounts.bank["USD"])}
        fx_of = set(conn.execute("SELECT DISTINCT l.currency FROM core_gl_journal_lines g JOIN core_settlement_lines l "
                                 "USING (processor, source_id) WHERE g.processor = 'stripe' AND g.entry = 'fx'")
                    .fetchall())
        assert fx_of == {("USD",)}  # settled in the local currency: nothing to revalue
        assert print_trial_balance(conn, books.sandbox)
    assert "total" in capsys.readouterr().out
    rolled = {(r["processor"], r["currency"]): int(r["difference_minor"]) for r in read_csv(books, "roll_forward")}
    assert rolled[("stripe", "EUR")] == rolled[("stripe", "USD")] == 0  # one roll-forward per currency, each closing
    assert set(rolled.values()) == {0}


def test_the_report_counts_a_voucher_with_lines_in_two_currencies_once(eur_books):
    journals = read_csv(eur_books, "journals")  # a row per voucher and currency: EUR FX lines in USD vouchers
    vouchers = {(j["route"], j["voucher_key"]) for j in journals}
    report = eur_books.results[2].asset_materializations_for_node("out_reconciliation_report")[-1]
    assert len(vouchers) < len(journals)
    assert report.metadata["vouchers_by_m3_status"].value == {"verified": len(vouchers)}

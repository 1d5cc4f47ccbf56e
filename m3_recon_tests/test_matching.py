"""Matching rules and payout tie-out, one case at a time with exact amounts (pure SQL, no Dagster)."""

from datetime import date, datetime, timedelta

import duckdb
import pandas as pd
import pytest

from m3_recon.canonical.model import SETTLEMENT_LINE_COLUMNS
from m3_recon.reconcile import matching
from m3_recon.reconcile.matching import ALLOCATION_COLUMNS, MatchingRules, match_payments
from m3_recon.reconcile.posted import book_local_values, matchable_invoices
from m3_recon.reconcile.tieout import payout_exceptions, register_exceptions, tie_out_payouts

DAY = date(2026, 10, 10)
RULES = MatchingRules.load()


def line(source_id, amount, *, invoice=None, customer=None, line_type="charge", day=DAY, currency="USD",
         presentment=None, fee=0, original=None, payout=None, processor="stripe", seconds=0):
    p_currency, p_amount = presentment or (currency, amount)
    return {"processor": processor, "source_id": source_id, "line_type": line_type,
            "occurred_at_utc": datetime.combine(day, datetime.min.time()) + timedelta(seconds=seconds),
            "settlement_date": day, "payout_id": payout, "currency": currency, "amount_minor": amount,
            "fee_minor": fee, "net_minor": amount - fee, "presentment_currency": p_currency,
            "presentment_amount_minor": p_amount, "fx_rate": None, "customer_ref": customer, "invoice_ref": invoice,
            "original_source_id": original, "card_brand": None, "card_last4": None, "description": None}


def invoice(number, customer, outstanding, *, currency="USD", day=DAY - timedelta(days=20)):
    return {"invoice_number": number, "invoice_year": 2026, "customer": customer, "currency": currency,
            "outstanding_minor": outstanding, "invoice_date": day}


def lines_table(conn, lines):
    conn.execute(f"CREATE TABLE lines ({', '.join(f'{c} {t}' for c, t in SETTLEMENT_LINE_COLUMNS.items())})")
    conn.register("lines_df", pd.DataFrame(lines, columns=list(SETTLEMENT_LINE_COLUMNS)))
    conn.execute("INSERT INTO lines SELECT * FROM lines_df")


def earlier_table(conn):
    columns = ", ".join(f"{c} {t.replace(' NOT NULL', '')}" for c, t in ALLOCATION_COLUMNS.items())
    conn.execute(f"CREATE TABLE earlier ({columns})")


def run(lines, invoices, earlier=()):
    conn = duckdb.connect()
    lines_table(conn, lines)
    conn.register("inv_df", pd.DataFrame(invoices, columns=list(invoice("x", "c", 0))))
    conn.execute("CREATE TABLE invoices AS SELECT * FROM inv_df")
    earlier_table(conn)
    for row in earlier:
        conn.execute(f"INSERT INTO earlier ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    match_payments(conn, RULES, lines="lines", invoices="invoices", earlier="earlier")
    return conn


def allocations(conn):
    return conn.execute("SELECT source_id, invoice_number, allocated_minor, rule, status FROM match_allocations "
                        "ORDER BY source_id, invoice_number NULLS FIRST").fetchall()


def exceptions(conn):
    return conn.execute("SELECT source_id, reason_code, unapplied_minor, candidates::VARCHAR FROM match_exceptions "
                        "ORDER BY source_id, reason_code").fetchall()


def test_exact_reference_full_payment():
    conn = run([line("p1", 125_00, invoice="INV-0026000001", customer="C1")], [invoice("26000001", "C1", 125_00)])
    assert allocations(conn) == [("p1", "26000001", 125_00, "exact_reference", "auto")]
    assert exceptions(conn) == []


def test_partial_payment_leaves_the_residual_and_instalments_fill_it():
    conn = run([line("p1", 40_00, invoice="26000001", seconds=1), line("p2", 60_00, invoice="26000001", seconds=2),
                line("p3", 10_00, invoice="26000001", seconds=3)], [invoice("26000001", "C1", 90_00)])
    assert allocations(conn) == [("p1", "26000001", 40_00, "exact_reference", "auto"),
                                 ("p2", "26000001", 50_00, "exact_reference", "auto"),
                                 ("p3", "26000001", 0, "exact_reference", "unmatched")]
    assert exceptions(conn) == [("p2", "overpayment", 10_00, '["26000001"]'),
                                ("p3", "invoice_already_paid", 10_00, '["26000001"]')]


def test_earlier_unposted_allocations_bind_the_invoice():
    earlier = [{"processor": "stripe", "source_id": "p0", "line_type": "charge", "invoice_number": "26000001",
                "invoice_year": 2026, "allocated_minor": 70_00, "status": "auto"}]
    conn = run([line("p1", 30_00, invoice="26000001"), line("p2", 5_00, invoice="26000001", seconds=5)],
               [invoice("26000001", "C1", 100_00)], earlier)
    assert allocations(conn) == [("p1", "26000001", 30_00, "exact_reference", "auto"),
                                 ("p2", "26000001", 0, "exact_reference", "unmatched")]


def test_reference_for_another_customers_invoice_is_only_suggested():
    conn = run([line("p1", 80_00, invoice="26000001", customer="C2")], [invoice("26000001", "C1", 80_00)])
    assert allocations(conn) == [("p1", "26000001", 80_00, "exact_reference", "suggested")]
    assert exceptions(conn)[0][1] == "customer_mismatch"


def test_customer_and_exact_amount_one_candidate_is_applied():
    conn = run([line("p1", 77_01, customer="C1")], [invoice("26000001", "C1", 77_01), invoice("26000002", "C1", 99_00)])
    assert allocations(conn) == [("p1", "26000001", 77_01, "customer_amount", "auto")]


def test_customer_and_amount_several_candidates_are_suggested_never_applied():
    conn = run([line("p1", 50_00, customer="C1")], [invoice("26000001", "C1", 50_00), invoice("26000002", "C1", 50_00)])
    assert allocations(conn) == [("p1", "26000001", 50_00, "customer_amount", "suggested"),
                                 ("p1", "26000002", 50_00, "customer_amount", "suggested")]
    assert exceptions(conn) == [("p1", "ambiguous_amount", 0, '["26000001","26000002"]')]


def test_invoice_outside_the_date_window_is_not_a_candidate():
    old = invoice("26000001", "C1", 50_00, day=DAY - timedelta(days=RULES.days_before_payment + 1))
    conn = run([line("p1", 50_00, customer="C1")], [old])
    assert allocations(conn) == [("p1", None, 0, "none", "unmatched")]
    assert exceptions(conn) == [("p1", "no_matching_invoice", 50_00, "[]")]


def test_second_payment_for_an_already_claimed_invoice_is_an_exception():
    conn = run([line("p1", 20_00, customer="C1", seconds=1), line("p2", 20_00, customer="C1", seconds=2)],
               [invoice("26000001", "C1", 20_00)])
    assert [a[4] for a in allocations(conn)] == ["auto", "unmatched"]
    assert exceptions(conn) == [("p2", "invoice_claimed", 0, '["26000001"]')]


def test_one_payment_for_several_invoices():
    invoices = [invoice("26000001", "C1", 10_00), invoice("26000002", "C1", 25_50),
                invoice("26000003", "C1", 33_33), invoice("26000004", "C1", 1_00)]
    conn = run([line("p1", 68_83, customer="C1")], invoices)
    assert allocations(conn) == [("p1", "26000001", 10_00, "multi_invoice", "auto"),
                                 ("p1", "26000002", 25_50, "multi_invoice", "auto"),
                                 ("p1", "26000003", 33_33, "multi_invoice", "auto")]


def test_several_invoice_groups_are_suggested():
    invoices = [invoice("26000001", "C1", 10_00), invoice("26000002", "C1", 20_00),
                invoice("26000003", "C1", 15_00), invoice("26000004", "C1", 15_00)]
    conn = run([line("p1", 30_00, customer="C1")], invoices)
    assert {a[4] for a in allocations(conn)} == {"suggested"}
    assert exceptions(conn)[0][1] == "ambiguous_invoice_group"


def test_foreign_currency_invoice_is_compared_in_its_currency_and_keeps_the_settlement_value():
    conn = run([line("p1", 108_24, invoice="26000001", presentment=("EUR", 100_00))],
               [invoice("26000001", "C1", 100_00, currency="EUR")])
    row = conn.execute("SELECT invoice_currency, payment_currency, allocated_minor, allocated_settlement_minor "
                       "FROM match_allocations").fetchone()
    assert row == ("EUR", "USD", 100_00, 108_24)


def test_settlement_share_of_a_partly_applied_foreign_payment_rounds_half_up():
    conn = run([line("p1", 108_25, invoice="26000001", presentment=("EUR", 100_00))],
               [invoice("26000001", "C1", 33_33, currency="EUR")])
    # 108.25 × 33.33 / 100.00 = 36.0797… → 36.08
    assert conn.execute("SELECT allocated_minor, allocated_settlement_minor FROM match_allocations").fetchone() == (
        33_33, 36_08)


INSTALMENTS = [line(f"p{n}", usd, invoice="26000001", presentment=("EUR", eur), day=DAY + timedelta(days=n))
               for n, usd, eur in ((1, 36_12, 33_33), (2, 36_12, 33_33), (3, 36_14, 33_35))]


def booked_local(instalments, outstanding, outstanding_local, earlier=()):
    conn = run(instalments, [invoice("26000001", "C1", outstanding, currency="EUR")], earlier)
    conn.execute("ALTER TABLE invoices ADD COLUMN outstanding_local_minor BIGINT")
    conn.execute("ALTER TABLE invoices ADD COLUMN exchange_rate DECIMAL(18, 6)")
    conn.execute("UPDATE invoices SET outstanding_local_minor = ?, exchange_rate = 1.08375", [outstanding_local])
    book_local_values(conn, invoices="invoices", earlier="earlier", local_currency="USD")
    return conn.execute("SELECT source_id, allocated_minor, allocated_local_minor FROM match_allocations "
                        "ORDER BY source_id").fetchall()


def test_the_instalment_that_settles_a_foreign_invoice_takes_the_local_amount_left():
    # EUR 100.01 at 1.08375 is USD 108.39 in M3; each 33.33 is 36.12 at the rate, so the last 33.35 takes 36.15
    # (not 36.14 at the rate), leaving nothing open in local currency — as M3 books it
    assert booked_local(INSTALMENTS, 100_01, 108_39) == [("p1", 33_33, 36_12), ("p2", 33_33, 36_12),
                                                         ("p3", 33_35, 36_15)]
    # the same when the first instalment was matched by an earlier run but is not in M3 yet
    earlier = [{"processor": "stripe", "source_id": "p1", "invoice_number": "26000001", "invoice_year": 2026,
                "allocated_minor": 33_33, "allocated_local_minor": 36_12, "status": "auto",
                "settlement_date": DAY + timedelta(days=1)}]
    assert booked_local(INSTALMENTS[1:], 100_01, 108_39, earlier) == [("p2", 33_33, 36_12), ("p3", 33_35, 36_15)]
    # and when M3 already holds the first two
    assert booked_local(INSTALMENTS[2:], 33_35, 108_39 - 2 * 36_12) == [("p3", 33_35, 36_15)]


def test_a_reference_to_an_invoice_m3_no_longer_lists_as_open_is_already_paid_not_unknown():
    conn = duckdb.connect()
    lines_table(conn, [line("p1", 10_00, invoice="26000001"), line("p2", 20_00, invoice="26000002"),
                       line("p3", 30_00, invoice="26000003"), line("p4", 40_00, invoice="26000004")])
    conn.execute("CREATE TABLE raw_m3_open_invoices (snapshot_date DATE, invoice_number VARCHAR, invoice_year INTEGER, "
                 "customer VARCHAR, currency VARCHAR, outstanding_minor BIGINT, invoice_date DATE)")
    conn.execute("INSERT INTO raw_m3_open_invoices VALUES "
                 "(DATE '2026-10-08', '26000001', 2026, 'C1', 'USD', 10_00, DATE '2026-10-01'), "  # paid since
                 "(DATE '2026-10-09', '26000004', 2026, 'C4', 'USD', 40_00, DATE '2026-10-01')")   # still open
    conn.execute("CREATE TABLE core_open_invoices AS SELECT * EXCLUDE (snapshot_date) FROM raw_m3_open_invoices "
                 "WHERE snapshot_date = DATE '2026-10-09'")
    conn.execute("CREATE TABLE core_cash_applications AS SELECT '26000002' AS invoice_number, 2026 AS invoice_year, "
                 "'C2' AS customer, 'USD' AS currency, DATE '2026-10-05' AS accounting_date")  # we applied it
    matchable_invoices(conn)
    earlier_table(conn)
    match_payments(conn, RULES, lines="lines", invoices="matchable_invoices", earlier="earlier")
    assert [(s, r) for s, r, *_ in exceptions(conn)] == [("p1", "invoice_already_paid"), ("p2", "invoice_already_paid"),
                                                         ("p3", "invoice_not_found")]
    assert allocations(conn)[-1] == ("p4", "26000004", 40_00, "exact_reference", "auto")


def test_invoice_in_a_third_currency_is_a_currency_mismatch():
    conn = run([line("p1", 100_00, invoice="26000001")], [invoice("26000001", "C1", 100_00, currency="GBP")])
    assert allocations(conn) == [("p1", "26000001", 0, "exact_reference", "unmatched")]
    assert exceptions(conn)[0][1] == "currency_mismatch"


def test_refunds_and_disputes_follow_the_charge_allocation():
    conn = run([line("p1", 60_00, invoice="26000001"),
                line("r1", -60_00, line_type="refund", original="p1"),
                line("d1", -15_00, line_type="dispute", original="p9")], [invoice("26000001", "C1", 60_00)])
    links = conn.execute("SELECT source_id, invoice_number, status, linked_source_id FROM match_allocations "
                         "WHERE rule = 'reversal_link' ORDER BY 1").fetchall()
    assert links == [("d1", None, "unmatched", "p9"), ("r1", "26000001", "auto", "p1")]
    assert exceptions(conn) == [("d1", "reversal_of_unapplied_payment", 0, "[]")]


def test_payments_with_nothing_to_go_on_are_excepted_with_their_reason():
    conn = run([line("p1", 5_00), line("p2", 6_00, invoice="INV-404", customer="C1")], [invoice("26000001", "C1", 9_00)])
    assert exceptions(conn) == [("p1", "no_reference", 5_00, "[]"), ("p2", "invoice_not_found", 6_00, "[]")]


def test_allocations_never_exceed_the_payment_or_the_invoice():
    invoices = [invoice(f"2600000{i}", "C1", 10_00 * i) for i in range(1, 6)]
    lines = [line(f"p{i}", 10_00 * i + (1 if i % 2 else 0), invoice=f"2600000{i}", seconds=i) for i in range(1, 6)]
    lines += [line("q1", 30_00, customer="C1", seconds=10), line("q2", 30_00, invoice="26000003", seconds=11)]
    conn = run(lines, invoices)
    # what was applied (so the two checks below cannot pass by applying nothing): each p<i> settles its
    # invoice, the 1-cent excess of the odd ones unapplied; q2 finds 26000003 taken by p3, q1 nothing open
    assert [a for a in allocations(conn) if a[4] == "auto"] == [
        (f"p{i}", f"2600000{i}", 10_00 * i, "exact_reference", "auto") for i in range(1, 6)]
    assert [(s, r, u) for s, r, u, _ in exceptions(conn)] == [
        ("p1", "overpayment", 1), ("p3", "overpayment", 1), ("p5", "overpayment", 1),
        ("q1", "no_matching_invoice", 30_00), ("q2", "invoice_already_paid", 30_00)]
    over = conn.execute("""SELECT a.invoice_number FROM match_allocations a JOIN invoices i USING (invoice_number)
                           WHERE a.status = 'auto' GROUP BY a.invoice_number, i.outstanding_minor
                           HAVING sum(a.allocated_minor) > i.outstanding_minor""").fetchall()
    assert over == []
    unbalanced = conn.execute("""
        SELECT a.source_id FROM match_allocations a LEFT JOIN
             (SELECT source_id, sum(unapplied_minor) AS unapplied FROM match_exceptions GROUP BY 1) e USING (source_id)
        WHERE a.status = 'auto' AND a.line_type = 'charge'
        GROUP BY a.source_id, a.payment_invoice_amount_minor, e.unapplied
        HAVING sum(a.allocated_minor) + coalesce(e.unapplied, 0) <> a.payment_invoice_amount_minor""").fetchall()
    assert unbalanced == []


# -- each rule alone: its statements run on the inputs and the rules before it; its own table is checked --


SOURCES = matching.Sources(payments="lines", invoices="invoices")


def rules_up_to(lines, invoices, *rule_statements):
    conn = duckdb.connect()
    lines_table(conn, lines)
    conn.register("inv_df", pd.DataFrame(invoices, columns=list(invoice("x", "c", 0))))
    conn.execute("CREATE TABLE invoices AS SELECT * FROM inv_df")
    earlier_table(conn)
    for statement in [*matching._inputs("lines", "invoices", "earlier", SOURCES), *rule_statements]:
        conn.execute(statement)
    return conn


def rule_rows(conn, table):
    return conn.execute(f"SELECT p.source_id, i.invoice_number, r.allocated, r.problem FROM {table} r "
                        "JOIN lines p ON p.rowid = r.pid JOIN invoices i ON i.rowid = r.iid ORDER BY 1, 2").fetchall()


def open_amounts(conn):
    return conn.execute("SELECT i.invoice_number, o.rem FROM m_open o JOIN invoices i ON i.rowid = o.iid "
                        "ORDER BY 1").fetchall()


def test_rule_1_applies_instalments_oldest_first_and_leaves_the_rest_open():
    conn = rules_up_to([line("p1", 40_00, invoice="26000001", seconds=1), line("p2", 70_00, invoice="INV 26000001", seconds=2),
                        line("p3", 5_00, invoice="26000002", customer="C2")],
                       [invoice("26000001", "C1", 100_00), invoice("26000002", "C1", 5_00), invoice("26000003", "C1", 7_00)],
                       *matching._exact_reference(RULES, SOURCES))
    assert rule_rows(conn, "m_r1") == [("p1", "26000001", 40_00, None), ("p2", "26000001", 60_00, None),
                                       ("p3", "26000002", 5_00, "customer_mismatch")]
    # 26000001 is settled (p2's 10.00 beyond it is an overpayment); a mismatch takes nothing off its invoice
    assert open_amounts(conn) == [("26000002", 5_00), ("26000003", 7_00)]


def test_rule_2_matches_what_is_left_of_an_invoice_and_takes_it_off():
    conn = rules_up_to([line("p1", 60_00, invoice="26000001"), line("q1", 30_00, customer="C1", seconds=1),
                        line("q2", 30_00, customer="C1", seconds=2), line("q3", 45_00, customer="C2"),
                        line("q4", 40_00, customer="C1")],
                       [invoice("26000001", "C1", 100_00), invoice("26000002", "C1", 30_00),
                        invoice("26000003", "C2", 45_00), invoice("26000004", "C2", 45_00)],
                       *matching._exact_reference(RULES, SOURCES), *matching._reference_list(RULES, SOURCES),
                       *matching._customer_amount(RULES))
    assert rule_rows(conn, "m_r2") == [("q1", "26000002", 30_00, None), ("q2", "26000002", 30_00, "invoice_claimed"),
                                       ("q3", "26000003", 45_00, "ambiguous_amount"),
                                       ("q3", "26000004", 45_00, "ambiguous_amount"),
                                       ("q4", "26000001", 40_00, None)]  # 100.00 less p1's 60.00 by rule 1
    assert open_amounts(conn) == [("26000001", 0), ("26000002", 0), ("26000003", 45_00), ("26000004", 45_00)]


def test_rule_3_applies_one_group_and_holds_payments_competing_for_one():
    conn = rules_up_to([line("r1", 68_83, customer="C1"), line("s1", 30_00, customer="C2", seconds=1),
                        line("s2", 30_00, customer="C2", seconds=2)],
                       [invoice("26000001", "C1", 10_00), invoice("26000002", "C1", 25_50),
                        invoice("26000003", "C1", 33_33), invoice("26000004", "C1", 1_00),
                        invoice("26000011", "C2", 10_00), invoice("26000012", "C2", 20_00)],
                       *matching._exact_reference(RULES, SOURCES), *matching._reference_list(RULES, SOURCES),
                       *matching._customer_amount(RULES), *matching._multi_invoice(RULES))
    assert rule_rows(conn, "m_r3") == [
        ("r1", "26000001", 10_00, None), ("r1", "26000002", 25_50, None), ("r1", "26000003", 33_33, None),
        ("s1", "26000011", 10_00, "competing_payments"), ("s1", "26000012", 20_00, "competing_payments"),
        ("s2", "26000011", 10_00, "competing_payments"), ("s2", "26000012", 20_00, "competing_payments")]


@pytest.mark.parametrize("number", ["26000001", "0026000001", "INV-26000001", "inv 0026000001", "A-7", "0000", ""])
def test_invoice_numbers_of_digits_take_the_short_path_to_the_same_reference(number):
    found = duckdb.connect().execute(
        f"SELECT {matching._normalised_number('n', RULES)}, {matching.normalised('n', RULES)} FROM (SELECT ? AS n)",
        [number]).fetchone()
    assert found[0] == found[1]


@pytest.mark.parametrize("reference", ["INV-0030000123", "inv30000123", "INVOICE-12", "INV--12", "INV-000", "INVO12",
                                       "INV 12", "0012", "-12", "INV12A", "INVINV12", "Inv-1-2", "", None])
def test_payment_references_of_the_common_shape_take_the_short_path_to_the_same_reference(reference):
    found = duckdb.connect().execute(
        f"SELECT {matching._normalised_reference('n', 's', RULES)}, {matching.normalised('n', RULES)} "
        f"FROM (SELECT n, {matching._short_reference('n', RULES)} AS s FROM (SELECT ?::VARCHAR AS n))",
        [reference]).fetchone()
    assert found[0] == found[1]


def tieout(payouts, lines):
    conn = duckdb.connect()
    conn.register("payouts_df", pd.DataFrame(payouts))
    conn.execute("CREATE TABLE payouts AS SELECT * FROM payouts_df")
    lines_table(conn, lines)
    tie_out_payouts(conn, payouts="payouts", lines="lines")
    payout_exceptions(conn, tieout="payout_tieout")
    return conn


def payout(payout_id, amount, status="paid", itemised=True, line_count=2):
    return {"processor": "stripe", "payout_id": payout_id, "currency": "USD", "amount_minor": amount,
            "settlement_date": DAY, "arrival_date": DAY + timedelta(days=1), "status": status,
            "itemised": itemised, "line_count": line_count}


def test_payout_tie_out_statuses_and_named_residue():
    lines = [line("c1", 100_00, fee=3_20, payout="po1"), line("f1", -5_00, line_type="fee", payout="po1"),
             line("o1", -91_80, line_type="payout", payout="po1"),
             line("c2", 50_00, fee=1_75, payout="po2"), line("c3", 10_00, payout="po3")]
    conn = tieout([payout("po1", 91_80), payout("po2", 50_00, line_count=2), payout("po3", 10_00, status="failed"),
                   payout("po4", 12_00, itemised=False)], lines)
    rows = conn.execute("SELECT payout_id, status, difference_minor FROM payout_tieout ORDER BY 1").fetchall()
    assert rows == [("po1", "tied", 0), ("po2", "mismatch", 1_75), ("po3", "failed", 0), ("po4", "pending", 12_00)]
    residue = conn.execute("SELECT source_id, unapplied_minor, detail FROM payout_exceptions").fetchall()
    assert residue == [("po2", 1_75, "payout 50.00 USD vs lines net 48.25 USD: residue 1.75 USD; "
                                     "1 itemised line(s) missing from core_settlement_lines")]


def test_exception_register_keeps_first_seen_and_clears_what_went_away():
    conn = duckdb.connect()
    conn.execute("CREATE TABLE found AS SELECT 'EX-1' AS exception_id, 'no_reference' AS reason_code, 'stripe' AS processor,"
                 " 'p1' AS source_id, DATE '2026-10-10' AS settlement_date, 'USD' AS currency, 5 AS amount_minor,"
                 " 5 AS unapplied_minor, '[]'::JSON AS candidates, 'x' AS detail")
    first, second = datetime(2026, 10, 11, 2), datetime(2026, 10, 12, 2)
    scope = {"first_day": date(2026, 10, 1), "end_day": date(2026, 11, 1), "reason_codes": ("no_reference",)}
    assert register_exceptions(conn, found="found", now=first, **scope) == {"new": 1, "cleared": 0}
    assert register_exceptions(conn, found="found", now=second, **scope) == {"new": 0, "cleared": 0}
    assert conn.execute("SELECT status, first_seen_at_utc, last_seen_at_utc FROM out_recon_exceptions").fetchall() == [
        ("open", first, second)]
    conn.execute("DELETE FROM found")
    assert register_exceptions(conn, found="found", now=second, **scope) == {"new": 0, "cleared": 1}
    assert conn.execute("SELECT status FROM out_recon_exceptions").fetchall() == [("cleared",)]


def test_rules_file_is_validated(tmp_path):
    bad = tmp_path / "rules.toml"
    bad.write_text((RULES_TEXT := open("data/matching_rules.toml").read()).replace("max_invoices = 3", "max_invoices = 9"))
    with pytest.raises(ValueError, match="max_invoices"):
        MatchingRules.load(bad)
    assert "max_candidates" in RULES_TEXT


def test_tables_are_matched_in_place_and_views_or_frames_as_copies_with_the_same_outcome():
    lines = [line("r0", -10_00, line_type="refund", original="p1"), line("p1", 40_00, invoice="26000001", seconds=1),
             line("f0", 3_00, line_type="fee"), line("p2", 70_00, invoice="INV 26000001", seconds=2),
             line("q1", 30_00, customer="C1", seconds=3), line("q2", 50_00, customer="C2", seconds=4),
             line("x1", 9_99, invoice="26009999")]
    invoices = [invoice("26000001", "C1", 100_00), invoice("26000002", "C1", 30_00), invoice("26000003", "C2", 20_00),
                invoice("26000004", "C2", 30_00), invoice("26000005", "C1", 8_00)]
    claimed = {"processor": "stripe", "source_id": "e1", "line_type": "charge", "settlement_date": DAY,
               "invoice_number": "26000005", "invoice_year": 2026, "payment_currency": "USD",
               "payment_amount_minor": 8_00, "allocated_minor": 8_00, "allocated_settlement_minor": 8_00,
               "rule": "exact_reference", "confidence": 1, "status": "auto"}
    in_place = run(lines, invoices, earlier=[claimed])
    copied = run(lines, invoices, earlier=[claimed])
    copied.execute("CREATE VIEW lines_view AS SELECT * FROM lines")
    copied.register("invoices_frame", pd.DataFrame(invoices))
    match_payments(copied, RULES, lines="lines_view", invoices="invoices_frame", earlier="earlier")

    assert allocations(in_place) == allocations(copied) == [
        ("p1", "26000001", 40_00, "exact_reference", "auto"), ("p2", "26000001", 60_00, "exact_reference", "auto"),
        ("q1", "26000002", 30_00, "customer_amount", "auto"), ("q2", "26000003", 20_00, "multi_invoice", "auto"),
        ("q2", "26000004", 30_00, "multi_invoice", "auto"), ("r0", "26000001", 0, "reversal_link", "auto"),
        ("x1", None, 0, "none", "unmatched")]
    assert exceptions(in_place) == exceptions(copied) == [("p2", "overpayment", 10_00, '["26000001"]'),
                                                          ("x1", "invoice_not_found", 9_99, "[]")]
    tables = "SELECT table_name FROM duckdb_tables() WHERE table_name IN ('m_lines', 'm_invoices') ORDER BY 1"
    assert in_place.execute(tables).fetchall() == []
    assert copied.execute(tables).fetchall() == [("m_invoices",), ("m_lines",)]

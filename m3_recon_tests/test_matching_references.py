"""References as customers write them: several invoices in one reference, numbers in free text, one number
open in several invoice years. One reference form per test, exact amounts, pure SQL (no Dagster)."""

import dataclasses
from datetime import timedelta

import duckdb
import pytest

from m3_recon.canonical.references import with_text_references
from m3_recon.reconcile.matching import MatchingRules, match_payments, normalised
from m3_recon_tests.test_matching import DAY, RULES, allocations, exceptions, invoice, line, run


def test_comma_separated_invoices_summing_to_the_payment_are_all_applied():
    conn = run([line("p1", 600_00, invoice="2601831, 2601832, 2601840, 2601841", customer="C1")],
               [invoice("2601831", "C1", 100_00), invoice("2601832", "C1", 150_00),
                invoice("2601840", "C1", 200_00), invoice("2601841", "C1", 150_00)])
    assert allocations(conn) == [("p1", "2601831", 100_00, "reference_list", "auto"),
                                 ("p1", "2601832", 150_00, "reference_list", "auto"),
                                 ("p1", "2601840", 200_00, "reference_list", "auto"),
                                 ("p1", "2601841", 150_00, "reference_list", "auto")]
    assert exceptions(conn) == []


@pytest.mark.parametrize("reference", ["INV-26000001; INV-26000002", "26000001/26000002", "26000001 and 26000002",
                                       "26000001 26000002", "Inv 26000001 & 26000002"])
def test_every_separator_customers_use_names_the_same_invoices(reference):
    conn = run([line("p1", 300_00, invoice=reference)],
               [invoice("26000001", "C1", 100_00), invoice("26000002", "C1", 200_00)])
    assert allocations(conn) == [("p1", "26000001", 100_00, "reference_list", "auto"),
                                 ("p1", "26000002", 200_00, "reference_list", "auto")]


def test_a_smaller_payment_pays_the_oldest_first_and_the_last_in_part():
    conn = run([line("p1", 250_00, invoice="26000003, 26000001, 26000002", customer="C1")],
               [invoice("26000001", "C1", 100_00, day=DAY - timedelta(days=30)),
                invoice("26000002", "C1", 100_00, day=DAY - timedelta(days=20)),
                invoice("26000003", "C1", 100_00, day=DAY - timedelta(days=10))])
    assert allocations(conn) == [("p1", "26000001", 100_00, "reference_list", "auto"),
                                 ("p1", "26000002", 100_00, "reference_list", "auto"),
                                 ("p1", "26000003", 50_00, "reference_list", "auto")]
    assert exceptions(conn) == []


def test_a_larger_payment_settles_every_named_invoice_and_the_excess_is_an_overpayment():
    conn = run([line("p1", 330_00, invoice="26000001, 26000002", customer="C1")],
               [invoice("26000001", "C1", 100_00), invoice("26000002", "C1", 200_00)])
    assert allocations(conn) == [("p1", "26000001", 100_00, "reference_list", "auto"),
                                 ("p1", "26000002", 200_00, "reference_list", "auto")]
    assert exceptions(conn) == [("p1", "overpayment", 30_00, '["26000001","26000002"]')]


def test_a_list_counts_what_an_exact_reference_already_took_from_an_invoice():
    conn = run([line("p1", 40_00, invoice="26000001", seconds=1),
                line("p2", 260_00, invoice="26000001, 26000002", seconds=2)],
               [invoice("26000001", "C1", 100_00), invoice("26000002", "C1", 200_00)])
    assert allocations(conn) == [("p1", "26000001", 40_00, "exact_reference", "auto"),
                                 ("p2", "26000001", 60_00, "reference_list", "auto"),
                                 ("p2", "26000002", 200_00, "reference_list", "auto")]


def test_a_list_naming_an_unknown_number_is_only_suggested():
    conn = run([line("p1", 300_00, invoice="26000001, 26000002, 26000099", customer="C1")],
               [invoice("26000001", "C1", 100_00), invoice("26000002", "C1", 200_00)])
    assert allocations(conn) == [("p1", "26000001", 100_00, "reference_list", "suggested"),
                                 ("p1", "26000002", 200_00, "reference_list", "suggested")]
    assert exceptions(conn) == [("p1", "invoice_list_unresolved", 0, '["26000001","26000002"]')]


def test_a_list_naming_another_customers_invoice_is_only_suggested():
    conn = run([line("p1", 300_00, invoice="26000001, 26000002", customer="C1")],
               [invoice("26000001", "C1", 100_00), invoice("26000002", "C2", 200_00)])
    assert {row[4] for row in allocations(conn)} == {"suggested"}
    assert exceptions(conn) == [("p1", "customer_mismatch", 0, '["26000001","26000002"]')]


def test_two_lists_naming_the_same_invoice_compete():
    conn = run([line("p1", 300_00, invoice="26000001, 26000002", seconds=1),
                line("p2", 150_00, invoice="26000002, 26000003", seconds=2)],
               [invoice("26000001", "C1", 100_00), invoice("26000002", "C1", 200_00), invoice("26000003", "C1", 50_00)])
    assert {(row[0], row[4]) for row in allocations(conn)} == {("p1", "suggested"), ("p2", "suggested")}
    assert [row[:2] for row in exceptions(conn)] == [("p1", "competing_payments"), ("p2", "competing_payments")]


def test_a_list_of_paid_invoices_is_already_paid():
    conn = run([line("p1", 300_00, invoice="26000001, 26000002")],
               [invoice("26000001", "C1", 0), invoice("26000002", "C1", 0)])
    assert {row[2:] for row in allocations(conn)} == {(0, "reference_list", "unmatched")}
    assert exceptions(conn) == [("p1", "invoice_already_paid", 300_00, '["26000001","26000002"]')]


def reused(number, year, customer, outstanding, day):
    return {**invoice(number, customer, outstanding, day=day), "invoice_year": year}


def allocations_by_year(conn):
    return conn.execute("SELECT source_id, invoice_number, invoice_year, allocated_minor, status FROM match_allocations "
                        "ORDER BY source_id, invoice_year").fetchall()


TWO_YEARS = [reused("26000001", 2025, "C2", 80_00, DAY - timedelta(days=300)),
             reused("26000001", 2026, "C1", 125_00, DAY - timedelta(days=20))]


def test_a_number_open_in_two_years_goes_to_the_invoice_of_the_customer_the_payment_names():
    conn = run([line("p1", 125_00, invoice="26000001", customer="C1"),
                line("p2", 80_00, invoice="26000001", customer="C2")], TWO_YEARS)
    assert allocations_by_year(conn) == [("p1", "26000001", 2026, 125_00, "auto"),
                                         ("p2", "26000001", 2025, 80_00, "auto")]
    assert exceptions(conn) == []


def test_a_number_in_two_years_without_a_customer_goes_to_the_only_open_one():
    conn = run([line("p1", 125_00, invoice="26000001")], [{**TWO_YEARS[0], "outstanding_minor": 0}, TWO_YEARS[1]])
    assert allocations_by_year(conn) == [("p1", "26000001", 2026, 125_00, "auto")]


def test_a_real_tie_between_two_years_is_only_suggested():
    conn = run([line("p1", 125_00, invoice="26000001")], TWO_YEARS)
    assert [row[2:] for row in allocations_by_year(conn)] == [(2025, 80_00, "suggested"), (2026, 125_00, "suggested")]
    assert exceptions(conn) == [("p1", "ambiguous_reference", 0, '["26000001","26000001"]')]


def test_a_list_with_a_number_reused_across_years_is_decided_per_number():
    conn = run([line("p1", 225_00, invoice="26000001, 26000002", customer="C1")],
               TWO_YEARS + [invoice("26000002", "C1", 100_00)])
    assert allocations_by_year(conn) == [("p1", "26000001", 2026, 125_00, "auto"),
                                         ("p1", "26000002", 2026, 100_00, "auto")]


def test_strip_prefixes_are_compared_like_references_and_never_act_as_a_pattern():
    rules = dataclasses.replace(RULES, strip_prefixes=("INV", "NO.", "RE("))
    conn = duckdb.connect()
    found = conn.execute(f"SELECT {normalised('?', rules)}, {normalised('?', rules)}, {normalised('?', rules)}",
                         ["NO.12345", "re(-0042", "INV-26000001"]).fetchone()
    assert found == ("12345", "42", "26000001")


FREE_TEXT = [f"{{\"id\": \"txn_1\", \"source\": {{\"description\": \"{text}\", \"metadata\": {metadata}}}}}"
             for text, metadata in [("Payment for INV-26000123 and 26000124", "{}"),
                                    ("Payment by Alder Foods", '{"note": "invoice 26000200"}'),
                                    ("Payment for INV-26000123", "{}"),
                                    ("Payment by Alder Foods", '{"m3_customer": "C10001"}')]]


def test_invoice_numbers_written_in_free_text_become_the_reference_of_a_charge_without_one():
    conn = duckdb.connect()
    conn.execute("CREATE TABLE mapped (source_id VARCHAR, line_type VARCHAR, invoice_ref VARCHAR, raw_payload VARCHAR)")
    conn.executemany("INSERT INTO mapped VALUES (?, ?, ?, ?)",
                     [("t1", "charge", None, FREE_TEXT[0]), ("t2", "charge", None, FREE_TEXT[1]),
                      ("t3", "charge", "26000999", FREE_TEXT[2]), ("t4", "refund", None, FREE_TEXT[2]),
                      ("t5", "charge", None, FREE_TEXT[3])])
    sql = with_text_references("SELECT * FROM mapped", "stripe", RULES.text_references)
    assert conn.execute(f"SELECT source_id, invoice_ref FROM ({sql}) ORDER BY source_id").fetchall() == [
        ("t1", "26000123, 26000124"), ("t2", "26000200"), ("t3", "26000999"), ("t4", None), ("t5", None)]
    assert with_text_references("SELECT 1", "paytrace", ()) == "SELECT 1"


def test_free_text_references_match_like_keyed_ones():
    conn = duckdb.connect()
    conn.execute("CREATE TABLE mapped (source_id VARCHAR, line_type VARCHAR, invoice_ref VARCHAR, raw_payload VARCHAR)")
    conn.execute("INSERT INTO mapped VALUES ('p1', 'charge', NULL, ?)", [FREE_TEXT[0]])
    sql = with_text_references("SELECT * FROM mapped", "stripe", RULES.text_references)
    reference = conn.execute(f"SELECT invoice_ref FROM ({sql})").fetchone()[0]
    conn = run([line("p1", 175_00, invoice=reference, customer="C1")],
               [invoice("26000123", "C1", 100_00), invoice("26000124", "C1", 75_00)])
    assert allocations(conn) == [("p1", "26000123", 100_00, "reference_list", "auto"),
                                 ("p1", "26000124", 75_00, "reference_list", "auto")]


@pytest.mark.parametrize("entry, message", [
    (("stripe", "$.x", "(unclosed"), "not a usable regular expression"),
    (("square", "$.x", "x"), "processor must be one of"),
    (("stripe", "description", "x"), "must be a JSON path")])
def test_free_text_rules_are_validated(tmp_path, entry, message):
    processor, field, pattern = entry
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(open("data/matching_rules.toml").read() + f"""
[[free_text]]
processor = "{processor}"
field = "{field}"
pattern = '{pattern}'
""")
    with pytest.raises(ValueError, match=message):
        MatchingRules.load(rules_file)


def test_list_separators_are_validated(tmp_path):
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(open("data/matching_rules.toml").read().replace("list_separators = '", "list_separators = '(", 1))
    with pytest.raises(ValueError, match="list_separators"):
        MatchingRules.load(rules_file)


def test_matching_runs_with_no_free_text_rules_and_default_separators(tmp_path):
    text = open("data/matching_rules.toml").read().split("[[free_text]]")[0]
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text("\n".join(l for l in text.splitlines() if not l.startswith("list_separators")))
    rules = MatchingRules.load(rules_file)
    assert rules.text_references == () and rules.list_separators == RULES.list_separators
    conn = run([line("p1", 300_00, invoice="26000001 and 26000002")],
               [invoice("26000001", "C1", 100_00), invoice("26000002", "C1", 200_00)])
    match_payments(conn, rules, lines="lines", invoices="invoices", earlier="earlier")
    assert [row[2] for row in allocations(conn)] == [100_00, 200_00]


def test_a_decision_on_a_tie_applies_only_when_it_names_the_year(tmp_path):
    from m3_recon.reconcile.decisions import apply_decisions, load_decisions, new_decision, record
    conn = run([line("p1", 125_00, invoice="26000001")], TWO_YEARS)
    (exception_id,) = conn.execute("SELECT exception_id FROM match_exceptions").fetchone()
    decisions = tmp_path / "decisions.jsonl"
    record(new_decision(exception_id, "assign", "ap", "remittance", "26000001"), decisions)
    load_decisions(conn, decisions)
    assert apply_decisions(conn, decisions="exception_decisions", payments="lines", invoices="invoices", earlier="earlier") == 0  # which year? not applied
    record(new_decision(exception_id, "assign", "ap", "remittance says 2026", "26000001", 2026), decisions)
    load_decisions(conn, decisions)
    assert apply_decisions(conn, decisions="exception_decisions", payments="lines", invoices="invoices", earlier="earlier") == 1
    assert allocations_by_year(conn) == [("p1", "26000001", 2026, 125_00, "auto")]
    assert exceptions(conn) == []


def test_accepting_a_suggested_list_applies_every_invoice_of_it_oldest_first(tmp_path):
    from m3_recon.reconcile.decisions import apply_decisions, load_decisions, new_decision, record
    conn = run([line("p1", 250_00, invoice="26000002, 26000001, 26000099", customer="C1")],
               [invoice("26000001", "C1", 100_00, day=DAY - timedelta(days=30)),
                invoice("26000002", "C1", 200_00, day=DAY - timedelta(days=20))])
    assert {row[4] for row in allocations(conn)} == {"suggested"}
    (exception_id,) = conn.execute("SELECT exception_id FROM match_exceptions").fetchone()
    decisions = tmp_path / "decisions.jsonl"
    record(new_decision(exception_id, "accept", "ap", "the customer mistyped the third number"), decisions)
    load_decisions(conn, decisions)
    assert apply_decisions(conn, decisions="exception_decisions", payments="lines", invoices="invoices", earlier="earlier") == 1
    assert allocations(conn) == [("p1", "26000001", 100_00, "manual", "auto"), ("p1", "26000002", 150_00, "manual", "auto")]
    assert exceptions(conn) == []

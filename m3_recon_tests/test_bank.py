"""Bank statements: BAI2 and camt.053 reading, import once per file and line, matching to payouts, exceptions."""

import json
import shutil
from datetime import date

import dagster as dg
import duckdb
import pytest

from m3_recon.defs.bank.assets import import_statements
from m3_recon.defs.bank.statements import StatementError, read_statement
from m3_recon.reconcile.banking import DEFAULT_DESCRIPTORS, bank_exceptions, match_bank_lines
from m3_recon.sandbox.bank_statements import BankLine, bai2_file, camt053

STRIPE_LINE = BankLine(date(2026, 10, 2), 1_234_567, "165", "po_1", "STRIPE TRANSFER ST-ABC", "stripe", "po_1")
FEE_LINE = BankLine(date(2026, 10, 2), -1_500, "698", "", "ACCOUNT ANALYSIS SERVICE CHARGE", None, None)
WIRE_LINE = BankLine(date(2026, 10, 2), 50_000, "195", "FEDREF", "WIRE IN NORTHWIND", None, None)


@pytest.mark.parametrize("render", [bai2_file, lambda d, lines: camt053(d, lines, "08"),
                                    lambda d, lines: camt053(d, lines, "02")], ids=["bai2", "camt08", "camt02"])
def test_each_format_reads_to_the_same_signed_lines(render):
    lines = read_statement(render(date(2026, 10, 2), [STRIPE_LINE, FEE_LINE]).encode(), "s")
    assert [(l.bank_account, l.booking_date, l.amount_minor, l.currency) for l in lines] == [
        ("000123456789", date(2026, 10, 2), 1_234_567, "USD"), ("000123456789", date(2026, 10, 2), -1_500, "USD")]
    assert "STRIPE TRANSFER ST-ABC" in lines[0].description and len({l.line_ref for l in lines}) == 2


def test_camt_without_namespace_and_pending_entries():
    text = camt053(date(2026, 10, 2), [STRIPE_LINE], "05").replace(
        ' xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.05"', "")
    pending = camt053(date(2026, 10, 2), [STRIPE_LINE], "08").replace("<Cd>BOOK</Cd>", "<Cd>PDNG</Cd>")
    assert [l.amount_minor for l in read_statement(text.encode(), "s")] == [1_234_567]
    assert read_statement(pending.encode(), "s") == []


@pytest.mark.parametrize("content, message", [
    (b"hello", "neither BAI2"),
    (bai2_file(date(2026, 10, 2), [STRIPE_LINE]).replace("49,1234567", "49,1234568").encode(), "control totals"),
    (camt053(date(2026, 10, 2), [STRIPE_LINE], "08").replace("12345.67", "12345.675").encode(), "whole minor units"),
    (camt053(date(2026, 10, 2), [STRIPE_LINE], "08").replace("<CdtDbtInd>CRDT", "<CdtDbtInd>X").encode(),
     "neither CRDT nor DBIT"),
])
def test_unreadable_statements_are_refused_naming_the_defect(content, message, tmp_path):
    with pytest.raises(StatementError, match=message):
        read_statement(content, "bad")
    good, bad = tmp_path / "good.bai2", tmp_path / "bad.xml"
    good.write_text(bai2_file(date(2026, 10, 2), [STRIPE_LINE]))
    bad.write_bytes(content)
    with duckdb.connect() as conn:
        with pytest.raises(StatementError, match="nothing imported"):
            import_statements(conn, [good, bad])
        assert conn.execute("SELECT count(*) FROM raw_bank_statement_lines").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM raw_bank_statement_files").fetchone() == (0,)


def _payouts(conn, rows):
    conn.execute("CREATE OR REPLACE TABLE payouts (processor VARCHAR, payout_id VARCHAR, currency VARCHAR, "
                 "amount_minor BIGINT, settlement_date DATE, arrival_date DATE, status VARCHAR)")
    conn.executemany("INSERT INTO payouts VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def test_a_statement_line_is_matched_once_however_often_the_file_is_dropped(tmp_path):
    statement = tmp_path / "statement.bai2"
    statement.write_text(bai2_file(date(2026, 10, 2), [STRIPE_LINE, FEE_LINE, WIRE_LINE]))
    copy = tmp_path / "copy-of-statement.bai2"
    shutil.copy(statement, copy)
    resent = tmp_path / "resent.xml"  # the same statement lines, re-sent: same account, statement and references
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        first = import_statements(conn, [statement])
        again = import_statements(conn, [statement, copy, statement])
        assert [(r.lines, r.new_lines, r.duplicate_file) for r in first] == [(3, 3, False)]
        assert all(r.duplicate_file for r in again)
        resent.write_text(bai2_file(date(2026, 10, 2), [STRIPE_LINE, FEE_LINE, WIRE_LINE]) + "\n")
        assert [(r.lines, r.new_lines) for r in import_statements(conn, [resent])] == [(3, 0)]
        assert conn.execute("SELECT count(*) FROM raw_bank_statement_lines").fetchone() == (3,)
        _payouts(conn, [("stripe", "po_1", "USD", 1_234_567, date(2026, 10, 1), date(2026, 10, 2), "paid"),
                        ("stripe", "po_2", "USD", 1_234_567, date(2026, 10, 1), date(2026, 10, 2), "paid")])
        match_bank_lines(conn, payouts="payouts", bank_lines="raw_bank_statement_lines",
                         descriptors=DEFAULT_DESCRIPTORS)
        matches = conn.execute("SELECT payout_id, line_ref FROM bank_matches").fetchall()
        assert len(matches) == 1 and matches[0][0] == "po_1"  # one line banks one payout, never two


def test_the_folder_sensor_asks_one_import_per_file_content(tmp_path, monkeypatch):
    from m3_recon.defs.bank.sensors import bank_statement_sensor

    monkeypatch.setenv("M3_RECON_BANK_DIR", str(tmp_path))
    (tmp_path / "a.bai2").write_text(bai2_file(date(2026, 10, 2), [STRIPE_LINE]))
    (tmp_path / "a-again.bai2").write_text(bai2_file(date(2026, 10, 2), [STRIPE_LINE]))
    (tmp_path / "b.xml").write_text(camt053(date(2026, 10, 5), [WIRE_LINE], "08"))
    with dg.instance_for_test() as instance:
        requests = bank_statement_sensor.evaluate_tick(dg.build_sensor_context(instance=instance)).run_requests
    assert len(requests) == 3 and len({r.run_key for r in requests}) == 2
    assert json.dumps(requests[0].run_config).count("a-again.bai2") == 1


@pytest.mark.parametrize("statements_through, raised", [(date(2026, 10, 7), False), (date(2026, 10, 8), True)])
def test_an_unbanked_payout_becomes_an_exception_after_the_window(statements_through, raised, tmp_path):
    """Due Friday 2 October; 3 business days later is Wednesday 7 October. A statement of the 7th does not
    yet make it late; one of the 8th does. A failed payout is never expected at the bank."""
    with duckdb.connect() as conn:
        other = BankLine(statements_through, 99, "165", "", "STRIPE TRANSFER ST-OTHER", "stripe", "po_x")
        path = tmp_path / "s.bai2"
        path.write_text(bai2_file(statements_through, [other]))
        import_statements(conn, [path])
        _payouts(conn, [("stripe", "po_late", "USD", 500_000, date(2026, 10, 1), date(2026, 10, 2), "paid"),
                        ("stripe", "po_failed", "USD", 700_000, date(2026, 10, 1), date(2026, 10, 2), "failed"),
                        ("stripe", "po_x", "USD", 99, date(2026, 10, 1), statements_through, "paid")])
        match_bank_lines(conn, payouts="payouts", bank_lines="raw_bank_statement_lines",
                         descriptors=DEFAULT_DESCRIPTORS)
        bank_exceptions(conn, payouts="payouts", bank_lines="raw_bank_statement_lines", first_day="2026-10-01",
                        end_day="2026-10-31")
        found = conn.execute("SELECT reason_code, source_id FROM bank_exceptions").fetchall()
    assert found == ([("payout_not_banked", "po_late")] if raised else [])


def test_a_credit_nobody_explains_is_an_exception_and_a_wrong_descriptor_explains_nothing():
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE lines AS SELECT * FROM (VALUES ('acct', 's1', 'r1', DATE '2026-10-05', "
                     "1000::BIGINT, 'USD', 'HEARTLAND PAYMENT SYS DEPOSIT'), ('acct', 's1', 'r2', DATE '2026-10-05', "
                     "-200::BIGINT, 'USD', 'SERVICE CHARGE')) t(bank_account, statement_id, line_ref, booking_date, "
                     "amount_minor, currency, description)")
        _payouts(conn, [("stripe", "po_1", "USD", 1000, date(2026, 10, 2), date(2026, 10, 5), "paid")])
        match_bank_lines(conn, payouts="payouts", bank_lines="lines", descriptors=DEFAULT_DESCRIPTORS)
        bank_exceptions(conn, payouts="payouts", bank_lines="lines", first_day="2026-10-01", end_day="2026-10-31")
        found = conn.execute("SELECT reason_code, source_id FROM bank_exceptions").fetchall()
    assert found == [("unexplained_bank_credit", "acct/s1/r1")]


def test_equal_payouts_days_apart_each_keep_their_own_line():
    """A (due Mon 5th, banked Wed 7th) and B (due Wed 7th, banked Fri 9th) share an amount: the nearer-date
    rule alone gives B the 7th and leaves A without a line in its window; the swap gives each its own."""
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE lines AS SELECT * FROM (VALUES ('acct', 's7', 'r7', DATE '2026-10-07', "
                     "500::BIGINT, 'USD', 'STRIPE TRANSFER'), ('acct', 's9', 'r9', DATE '2026-10-09', 500::BIGINT, "
                     "'USD', 'STRIPE TRANSFER')) t(bank_account, statement_id, line_ref, booking_date, amount_minor, "
                     "currency, description)")
        _payouts(conn, [("stripe", "po_a", "USD", 500, date(2026, 10, 4), date(2026, 10, 5), "paid"),
                        ("stripe", "po_b", "USD", 500, date(2026, 10, 6), date(2026, 10, 7), "paid")])
        match_bank_lines(conn, payouts="payouts", bank_lines="lines", descriptors=DEFAULT_DESCRIPTORS,
                         business_days=2)
        assert sorted(conn.execute("SELECT payout_id, line_ref FROM bank_matches").fetchall()) == [
            ("po_a", "r7"), ("po_b", "r9")]


def test_a_bad_file_in_the_folder_never_holds_up_the_close(tmp_path, monkeypatch):
    """The folder scan imports what it can read and fails a (warning) check naming the bad file, which stays;
    once the file is whole, the next scan imports it."""
    from dagster_duckdb import DuckDBResource

    from m3_recon.defs.bank.assets import raw_bank_statement_lines

    folder = tmp_path / "bank"
    folder.mkdir()
    monkeypatch.setenv("M3_RECON_BANK_DIR", str(folder))
    (folder / "good.bai2").write_text(bai2_file(date(2026, 10, 2), [STRIPE_LINE]))
    whole = camt053(date(2026, 10, 5), [WIRE_LINE], "08")
    (folder / "copying.xml").write_text(whole[: len(whole) // 2])
    resources = {"duckdb": DuckDBResource(database=str(tmp_path / "w.duckdb"))}
    result = dg.materialize([raw_bank_statement_lines], resources=resources)
    (check,) = result.get_asset_check_evaluations()
    assert result.success and not check.passed and "copying.xml: not well-formed XML" in str(check.metadata)
    assert (folder / "copying.xml").exists()
    (folder / "copying.xml").write_text(whole)
    result = dg.materialize([raw_bank_statement_lines], resources=resources)
    assert result.get_asset_check_evaluations()[0].passed
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        assert conn.execute("SELECT count(*) FROM raw_bank_statement_lines").fetchone() == (2,)

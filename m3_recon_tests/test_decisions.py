"""Finance resolves exceptions without code: assign, accept, write off, dismiss — recorded with who,
when and why, honoured by the next run, and never lost on a rerun. The decisions' effect on allocations,
journals and the register is checked on a small warehouse through the plain window functions (no Dagster);
one whole close with posting proves what M3 already holds is not undone by a later dismissal."""

from argparse import Namespace
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pytest

from m3_recon import cli
from m3_recon.canonical.model import PAYOUT_COLUMNS, SETTLEMENT_LINE_COLUMNS
from m3_recon.exceptions_cli import cmd_resolve
from m3_recon.journals import AccountMap
from m3_recon.journals.window import run_window as derive_window_journals
from m3_recon.reconcile.banking import BANKING_COLUMNS
from m3_recon.reconcile.decisions import DecisionError, apply_decisions, decide, load_decisions, new_decision, record
from m3_recon.reconcile.matching import REASON_CODES
from m3_recon.reconcile.tieout import RECONCILIATION_COLUMNS, record_decisions, register_exceptions
from m3_recon.reconcile.window import allocate_payments
from m3_recon.sandbox import Sandbox
from m3_recon_tests.conftest import ClosedBooks, close_definitions, run_close
from m3_recon_tests.test_matching import DAY, RULES, invoice, line, run
from m3_recon_tests.test_matching_references import TWO_YEARS

END = DAY + timedelta(days=1)


def resolve(exception_id, action, invoice=None, why="checked the remittance"):
    return cmd_resolve(Namespace(exception_id=exception_id, action=action, invoice=invoice, year=None, by="controller",
                                 why=why))


# One payment per decision: no reference at all (assign), two invoices of the customer with its amount (accept
# one), 0.40 more than its invoice (write off the excess), and nothing of its customer matches (dismiss).
PAYMENTS = [line("ch_unref", 120_00), line("ch_ambiguous", 50_00, customer="C2"),
            line("ch_over", 100_40, invoice="26000004"), line("ch_none", 77_00, customer="C4")]
INVOICES = [invoice("26000001", "C1", 120_00), invoice("26000002", "C2", 50_00), invoice("26000003", "C2", 50_00),
            invoice("26000004", "C3", 100_00)]


def small_warehouse(path):
    """The tables one window's allocation, journals and register read, holding PAYMENTS and INVOICES."""
    with duckdb.connect(str(path)) as conn:
        for table, columns in (("core_settlement_lines", SETTLEMENT_LINE_COLUMNS), ("core_payouts", PAYOUT_COLUMNS),
                               ("core_payout_reconciliation", RECONCILIATION_COLUMNS | BANKING_COLUMNS)):
            conn.execute(f"CREATE TABLE {table} ({', '.join(f'{c} {t}' for c, t in columns.items())})")
        conn.register("lines_df", pd.DataFrame(PAYMENTS, columns=list(SETTLEMENT_LINE_COLUMNS)))
        conn.execute("INSERT INTO core_settlement_lines SELECT * FROM lines_df")
        conn.register("invoices_df", pd.DataFrame(INVOICES))
        conn.execute("CREATE TABLE core_open_invoices AS SELECT *, outstanding_minor AS outstanding_local_minor, "
                     "1.0::DECIMAL(13, 6) AS exchange_rate FROM invoices_df")
        conn.execute("CREATE TABLE raw_m3_open_invoices AS SELECT invoice_number, invoice_year, customer, currency, "
                     "invoice_date, DATE '2026-10-01' AS snapshot_date FROM invoices_df")


def close_window(path, decisions_file, run: int):
    """What the close does for the window, without Dagster: allocate, derive the journals, register exceptions."""
    with duckdb.connect(str(path)) as conn:
        load_decisions(conn, decisions_file, into="decided")
        allocate_payments(conn, RULES, DAY, END, decisions="decided")
        derive_window_journals(conn, AccountMap.load(), DAY, END, decisions="decided")
        register_exceptions(conn, found="match_exceptions", first_day=DAY, end_day=END, reason_codes=tuple(REASON_CODES),
                            now=datetime(2026, 10, 11, run))
        record_decisions(conn, decisions="decided")


def test_decisions_are_honoured_by_the_next_run_and_survive_reruns(tmp_path, monkeypatch, capsys):
    warehouse, decisions_file = tmp_path / "work.duckdb", tmp_path / "decisions.jsonl"
    monkeypatch.setenv("M3_RECON_ANALYST_DUCKDB_PATH", str(warehouse))  # the register the CLI reads
    monkeypatch.setenv("M3_RECON_DECISIONS_FILE", str(decisions_file))
    small_warehouse(warehouse)
    close_window(warehouse, decisions_file, run=0)
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        register = dict(conn.execute("SELECT source_id, exception_id || '/' || reason_code || '/' || "
                                     "coalesce(unapplied_minor, 0) FROM out_recon_exceptions").fetchall())
    assert {k: v.split("/", 1)[1] for k, v in register.items()} == {
        "ch_unref": "no_reference/12000", "ch_ambiguous": "ambiguous_amount/0", "ch_over": "overpayment/40",
        "ch_none": "no_matching_invoice/7700"}
    exception = {k: v.split("/")[0] for k, v in register.items()}

    assert resolve(exception["ch_unref"], "accept") == 2  # nothing was suggested: accept is refused, nothing recorded
    assert "Not recorded" in capsys.readouterr().out
    assert resolve(exception["ch_unref"], "assign", invoice="26000001") == 0
    assert resolve(exception["ch_ambiguous"], "accept", invoice="26000003") == 0
    assert resolve(exception["ch_over"], "write_off", why="customer rounding, not worth a refund") == 0
    assert resolve(exception["ch_none"], "dismiss", why="refunded outside the processor") == 0

    for run in (1, 2):  # the next run applies them; a further rerun keeps them
        close_window(warehouse, decisions_file, run)
        with duckdb.connect(str(warehouse), read_only=True) as conn:
            assert conn.execute("SELECT source_id, invoice_number, allocated_minor, rule, status "
                                "FROM core_payment_allocations WHERE source_id IN ('ch_unref', 'ch_ambiguous') "
                                "ORDER BY 1").fetchall() == [
                ("ch_ambiguous", "26000003", 50_00, "manual", "auto"), ("ch_unref", "26000001", 120_00, "manual", "auto")]
            decided = dict(conn.execute("SELECT source_id, status || '/' || decided_by FROM out_recon_exceptions "
                                        "WHERE decision IS NOT NULL").fetchall())
            assert decided == {"ch_unref": "resolved/controller", "ch_ambiguous": "resolved/controller",
                               "ch_over": "resolved/controller", "ch_none": "dismissed/controller"}
            # the excess, in the settlement currency, to the write-off account instead of unapplied cash
            assert conn.execute("SELECT ait1, amount_minor FROM core_gl_journal_lines WHERE entry = 'write_off' "
                                "AND source_id = 'ch_over' AND amount_minor < 0").fetchall() == [("8295", -40)]
            assert conn.execute("SELECT count(*) FROM core_gl_journal_lines WHERE entry = 'unapplied_payment' "
                                "AND source_id = 'ch_over'").fetchone() == (0,)
    assert cli.main(["exceptions", "list", "--status", "resolved"]) == 0  # through the m3-recon command
    assert "showing 3 of 3\n" in capsys.readouterr().out
    assert cli.main(["exceptions", "list", "--status", "dismissed"]) == 0
    assert "dismiss by controller" in capsys.readouterr().out


def test_a_malformed_decisions_file_fails_loudly(tmp_path):
    path = tmp_path / "decisions.jsonl"
    record(new_decision("EX-ABC", "dismiss", "me", "duplicate"), path)
    with open(path, "a") as handle:
        handle.write('{"exception_id": "EX-DEF", "action": "forgive"}\n')
    with pytest.raises(DecisionError, match="decisions.jsonl:2 is not a valid decision"):
        load_decisions(duckdb.connect(), path)
    with pytest.raises(DecisionError, match="needs who decided"):
        record(new_decision("EX-ABC", "dismiss", " ", "x"), path)


def test_every_reason_code_is_known_to_be_about_a_payment_or_not():
    from m3_recon.exceptions_cli import KNOWN_REASONS
    from m3_recon.reconcile.decisions import NOT_PAYMENT_REASONS, PAYMENT_REASONS

    assert PAYMENT_REASONS | NOT_PAYMENT_REASONS == KNOWN_REASONS  # a new code must be placed on one side
    assert not PAYMENT_REASONS & NOT_PAYMENT_REASONS


def open_exceptions(books):
    with duckdb.connect(books.database, read_only=True) as conn:
        return conn.execute("SELECT exception_id, reason_code, source_id, unapplied_minor FROM out_recon_exceptions "
                            "WHERE status = 'open' ORDER BY 1").fetchall()


def test_an_action_must_fit_its_exception(closed_books, tmp_path, monkeypatch, capsys):
    closed_books.copy(tmp_path).use(monkeypatch)
    register = open_exceptions(closed_books)
    not_a_payment = next(r for r in register if r[1] == "reversal_of_unapplied_payment")
    unreferenced = next(r for r in register if r[1] == "no_reference")
    small = next(r for r in register if r[1] == "overpayment" and 50 < r[3] <= 5000)
    some_invoice = "26000022"
    assert resolve(not_a_payment[0], "assign", invoice=some_invoice) == 2
    assert "not a payment exception" in capsys.readouterr().out
    assert resolve(unreferenced[0], "write_off") == 2
    assert "only an overpayment" in capsys.readouterr().out
    with duckdb.connect(closed_books.env["M3_RECON_ANALYST_DUCKDB_PATH"], read_only=True) as conn, \
            pytest.raises(DecisionError, match=r"over the write-off limit \(0.50 USD"):
        decide(conn, new_decision(small[0], "write_off", "controller", "too much"), write_off_limit_minor=50)
    assert resolve(small[0], "write_off") == 0
    assert resolve(small[0], "dismiss", why="the customer asked to keep it as a credit") == 0
    out = capsys.readouterr().out
    assert "supersedes the earlier decision write_off by controller" in out
    in_force = load_decisions(duckdb.connect(), tmp_path / "decisions.jsonl")
    assert in_force == 1  # the later decision is the one in force, and says which it superseded
    assert '"supersedes": "write_off by controller' in (tmp_path / "decisions.jsonl").read_text()


def test_the_list_has_a_header_a_count_and_the_decisions_waiting(closed_books, tmp_path, monkeypatch, capsys):
    closed_books.copy(tmp_path).use(monkeypatch)
    register = open_exceptions(closed_books)
    assert cli.main(["exceptions", "list", "--limit", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["exception", "status", "reason"]
    assert f"showing 5 of {len(register)} (--limit)" in lines
    unreferenced = next(r for r in register if r[1] == "no_reference")
    assert resolve(unreferenced[0], "dismiss", why="refunded by cheque") == 0
    capsys.readouterr()
    assert cli.main(["exceptions", "list", "--reason", "no_reference", "--limit", "1000"]) == 0
    out = capsys.readouterr().out
    assert "1 decision(s) waiting for the next close:" in out and f"{unreferenced[0]}  dismiss by controller" in out
    assert f"showing {sum(r[1] == 'no_reference' for r in register)} of" in out and "(--limit)" not in out
    assert cli.main(["exceptions", "list", "--reason", "bogus"]) == 2
    assert "unknown reason 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        cli.main(["exceptions", "list", "--processor", "bogus"])
    assert refused.value.code == 2


def test_dismissing_what_m3_holds_raises_posted_voucher_changed(tmp_path, monkeypatch, capsys):
    with Sandbox(days=14) as sandbox:  # of its own: this test posts to M3
        books = ClosedBooks(sandbox, tmp_path, "2026-10-01", "2026-10-14").use(monkeypatch)
        assert all(result.success for result in books.close_post_report())
        dismiss_after_posting(books, capsys)


def dismiss_after_posting(books, capsys):
    truth = {t.payment_id: t for t in books.sandbox.world.payments}
    with duckdb.connect(books.database, read_only=True) as conn:
        applied = {r[0] for r in conn.execute("SELECT invoice_number FROM core_payment_allocations "
                                               "WHERE status = 'auto'").fetchall()}
    exception_id, _, source_id, _ = next(r for r in open_exceptions(books) if r[1] == "no_reference"
                                         and truth[r[2]].kind == "full"
                                         and truth[r[2]].allocations[0].invoice not in applied)
    invoice = truth[source_id].allocations[0].invoice
    assert resolve(exception_id, "assign", invoice=invoice) == 0
    assert all(result.success for result in books.close_post_report())  # M3 now holds the payment applied
    assert resolve(exception_id, "dismiss", why="wrong customer after all") == 0
    out = capsys.readouterr().out
    assert f"supersedes the earlier decision assign {invoice} by controller" in out
    assert "posted_voucher_changed" in out
    assert run_close(close_definitions(books.database), books.first, books.last).success
    with duckdb.connect(books.database, read_only=True) as conn:
        raised = conn.execute("SELECT status, detail FROM out_recon_exceptions WHERE reason_code = "
                              "'posted_voucher_changed' AND source_id = ?", [source_id]).fetchall()
        kept = conn.execute("SELECT invoice_number, status FROM core_payment_allocations WHERE source_id = ?",
                            [source_id]).fetchall()
    assert len(raised) == 1 and raised[0][0] == "open" and f"applied to invoice {invoice}" in raised[0][1]
    assert kept == [(invoice, "auto")]  # what M3 holds is not silently undone


# -- an invoice number M3 reuses across years: assign names one invoice, or nothing is applied -----------------
def _unreferenced_payment_against_a_number_open_in_two_years():
    """The matcher's tables for one payment without a reference, with invoice 26000001 open in 2025 and 2026."""
    conn = run([line("p1", 80_00, customer="C9")], TWO_YEARS)
    (exception_id,) = conn.execute("SELECT exception_id FROM match_exceptions WHERE source_id = 'p1'").fetchone()
    return conn, exception_id


@pytest.mark.parametrize("year,applied", [(None, []), (2025, [("26000001", 2025, 80_00, "manual", "auto")]),
                                          (2026, [("26000001", 2026, 80_00, "manual", "auto")])])
def test_an_assign_without_a_year_applies_nothing_when_the_number_is_open_in_two_years(tmp_path, year, applied):
    conn, exception_id = _unreferenced_payment_against_a_number_open_in_two_years()
    path = tmp_path / "decisions.jsonl"
    record(new_decision(exception_id, "assign", "controller", "remittance", "26000001", year), path)
    load_decisions(conn, path)
    assert apply_decisions(conn, decisions="exception_decisions", payments="lines", invoices="invoices",
                           earlier="earlier") == len(applied)
    assert conn.execute("SELECT invoice_number, invoice_year, allocated_minor, rule, status FROM match_allocations "
                        "WHERE status = 'auto'").fetchall() == applied
    still_open = conn.execute("SELECT count(*) FROM match_exceptions WHERE exception_id = ?", [exception_id]).fetchone()
    assert still_open == (0 if applied else 1,)


def test_the_cli_refuses_an_assign_without_a_year_when_the_number_is_open_in_two_years(tmp_path):
    conn, exception_id = _unreferenced_payment_against_a_number_open_in_two_years()
    conn.execute("CREATE TABLE out_recon_exceptions AS SELECT *, 'open' AS status FROM match_exceptions")
    conn.execute("CREATE TABLE core_open_invoices AS SELECT * FROM invoices")
    conn.execute("CREATE TABLE core_payment_allocations AS SELECT * FROM match_allocations")
    path = tmp_path / "decisions.jsonl"
    with pytest.raises(DecisionError, match="invoice 26000001 is open in 2 invoice years; name one with --year"):
        decide(conn, new_decision(exception_id, "assign", "controller", "remittance", "26000001"), 0, path)
    assert not path.exists()
    recorded = decide(conn, new_decision(exception_id, "assign", "controller", "remittance", "26000001", 2025), 0,
                      path)
    assert recorded.decision.invoice_year == 2025 and path.exists()

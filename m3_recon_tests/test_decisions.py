"""Finance resolves exceptions without code: assign, accept, write off, dismiss — recorded with who,
when and why, honoured by the next run, and never lost on a rerun."""

from argparse import Namespace

import duckdb
import pytest

from m3_recon import cli
from m3_recon.exceptions_cli import cmd_resolve
from m3_recon.reconcile.decisions import DecisionError, load_decisions, new_decision, record
from m3_recon_tests.conftest import close_definitions, run_close

FIRST, LAST = "2026-10-01", "2026-10-12"


def resolve(exception_id, action, invoice=None, why="checked the remittance"):
    return cmd_resolve(Namespace(exception_id=exception_id, action=action, invoice=invoice, year=None, by="controller",
                                 why=why))


def test_decisions_are_honoured_by_the_next_run_and_survive_reruns(sandbox_environment, tmp_path, capsys):
    sandbox = sandbox_environment
    db = str(tmp_path / "work.duckdb")
    definitions = close_definitions(db)
    assert run_close(definitions, FIRST, LAST).success
    truth = {t.payment_id: t for t in sandbox.world.payments}
    with duckdb.connect(db, read_only=True) as conn:
        register = conn.execute("SELECT exception_id, reason_code, source_id, unapplied_minor FROM out_recon_exceptions "
                                "WHERE status = 'open' ORDER BY 1").fetchall()
        applied = {r[0] for r in conn.execute("SELECT invoice_number FROM core_payment_allocations "
                                               "WHERE status = 'auto'").fetchall()}
    unreferenced = next(r for r in register if r[1] == "no_reference" and truth[r[2]].kind == "full"
                        and truth[r[2]].allocations[0].invoice not in applied)
    ambiguous = next(r for r in register if r[1] == "ambiguous_amount")
    overpaid = next(r for r in register if r[1] == "overpayment" and r[3] <= 5000)
    dismissed = next(r for r in register if r[1] == "no_matching_invoice")
    intended = truth[unreferenced[2]].allocations[0]

    assert resolve(unreferenced[0], "accept") == 2  # nothing was suggested: accept is refused, nothing recorded
    assert "Not recorded" in capsys.readouterr().out
    assert resolve(unreferenced[0], "assign", invoice=intended.invoice) == 0
    assert resolve(ambiguous[0], "accept", invoice=truth[ambiguous[2]].allocations[0].invoice) == 0
    assert resolve(overpaid[0], "write_off", why="customer rounding, not worth a refund") == 0
    assert resolve(dismissed[0], "dismiss", why="refunded outside the processor") == 0

    for _ in range(2):  # the next run applies them; a further rerun keeps them
        assert run_close(definitions, FIRST, LAST).success
        with duckdb.connect(db, read_only=True) as conn:
            assert conn.execute("SELECT invoice_number, allocated_minor, rule, status FROM core_payment_allocations "
                                "WHERE source_id = ?", [unreferenced[2]]).fetchall() == [
                (intended.invoice, intended.amount_minor, "manual", "auto")]
            assert conn.execute("SELECT status FROM core_payment_allocations WHERE source_id = ?",
                                [ambiguous[2]]).fetchall() == [("auto",)]
            decided = dict(conn.execute("SELECT exception_id, status || '/' || decided_by FROM out_recon_exceptions "
                                        "WHERE decision IS NOT NULL").fetchall())
            assert decided == {unreferenced[0]: "resolved/controller", ambiguous[0]: "resolved/controller",
                               overpaid[0]: "resolved/controller", dismissed[0]: "dismissed/controller"}
            write_off = conn.execute("SELECT ait1, amount_minor FROM core_gl_journal_lines WHERE entry = 'write_off' "
                                     "AND source_id = ? AND amount_minor < 0", [overpaid[2]]).fetchall()
            assert len(write_off) == 1 and write_off[0][0] == "8295"  # the excess, in the settlement currency
            assert conn.execute("SELECT count(*) FROM core_gl_journal_lines WHERE entry = 'unapplied_payment' "
                                "AND source_id = ?", [overpaid[2]]).fetchone() == (0,)
    assert cli.main(["exceptions", "list", "--status", "resolved"]) == 0  # through the m3-recon command
    assert "3 exception(s)" in capsys.readouterr().out
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

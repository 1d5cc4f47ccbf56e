"""The close with posting, end to end against a sandbox of its own (posting changes M3): M3's invoice
balances and GL vouchers equal what the pipeline applied; a rerun and an overlapping backfill post
nothing; a decision after posting reaches M3 as a revision voucher, once."""

from argparse import Namespace

import duckdb
import pytest

from m3_recon.exceptions_cli import cmd_resolve
from m3_recon.sandbox import Sandbox
from m3_recon_tests.conftest import close_definitions, run_close

FIRST, LAST = "2026-10-01", "2026-10-14"


@pytest.fixture
def own_sandbox(monkeypatch, tmp_path):
    with Sandbox(days=14) as sandbox:
        for key, value in sandbox.env().items():
            monkeypatch.setenv(key, value)
        for key, name in (("M3_RECON_ANALYST_DUCKDB_PATH", "analyst.duckdb"), ("M3_RECON_REPORTS_PATH", "reports"),
                          ("M3_RECON_DECISIONS_FILE", "decisions.jsonl")):
            monkeypatch.setenv(key, str(tmp_path / name))
        yield sandbox


def close_and_post(definitions, first=FIRST, last=LAST) -> dict:
    assert run_close(definitions, first, last).success
    posting = definitions.resolve_job_def("m3_posting").execute_in_process(raise_on_error=False)
    assert posting.success
    return {k: v.value for k, v in posting.get_asset_materialization_events()[0].materialization.metadata.items()
            if k in ("posted", "verified", "failed", "held", "resumed")}


def m3_state(sandbox):
    now = sandbox.clock.now()
    gl = {}
    for line in sandbox.m3.gl_lines(now):
        gl.setdefault(line.batch_key, []).append((line.ait1, line.amount_minor))
    paid = {(t.line.invoice, t.line.invoice_year): t.paid_minor for t in sandbox.m3.totals(now).values() if t.paid_minor}
    return {k: sorted(v) for k, v in gl.items()}, paid


def test_posting_lands_once_and_decisions_follow_as_revisions(own_sandbox, tmp_path):
    sandbox, db = own_sandbox, str(tmp_path / "work.duckdb")
    definitions = close_definitions(db)
    first = close_and_post(definitions)
    assert first["posted"] > 0 and first["posted"] == first["verified"] and first["failed"] == 0
    gl, paid = m3_state(sandbox)
    with duckdb.connect(db, read_only=True) as conn:
        journals = {}
        for key, account, amount in conn.execute("SELECT voucher_key, ait1, amount_minor FROM core_gl_journal_lines "
                                                  "WHERE held_reason IS NULL").fetchall():
            journals.setdefault(key, []).append((account, amount))
        applied = {(n, y): a for n, y, a in conn.execute(
            "SELECT invoice_number, invoice_year, sum(allocated_minor) FROM core_payment_allocations "
            "WHERE status = 'auto' AND invoice_number IS NOT NULL GROUP BY 1, 2").fetchall()}
        register = conn.execute("SELECT exception_id, source_id FROM out_recon_exceptions WHERE status = 'open' "
                                "AND reason_code = 'no_reference'").fetchall()
    assert gl == {k: sorted(v) for k, v in journals.items()}  # every voucher, line for line
    assert paid == applied  # every invoice's payments in M3 = what the matcher applied

    assert close_and_post(definitions)["posted"] == 0  # rerun
    assert close_and_post(definitions, "2026-10-05", "2026-10-09")["posted"] == 0  # overlapping backfill
    assert m3_state(sandbox) == (gl, paid)

    truth = {t.payment_id: t for t in sandbox.world.payments}
    exception_id, source_id = next((e, s) for e, s in register if truth[s].kind == "full"
                                   and (truth[s].allocations[0].invoice, 2026) not in applied)
    intended = truth[source_id].allocations[0]
    assert cmd_resolve(Namespace(exception_id=exception_id, action="assign", invoice=intended.invoice, year=None,
                                 by="controller", why="remittance advice")) == 0
    after = close_and_post(definitions)
    assert after["posted"] == 2 and after["failed"] == 0  # one GL revision (unapplied reversed), one cash revision
    gl_after, paid_after = m3_state(sandbox)
    assert paid_after == {**paid, (intended.invoice, 2026): intended.amount_minor}
    revisions = [k for k in gl_after if k not in gl]
    assert len(revisions) == 1 and revisions[0].endswith("R1")
    assert close_and_post(definitions)["posted"] == 0  # and the decision is posted once

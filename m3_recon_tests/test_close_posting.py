"""The close with posting, end to end against a sandbox of its own (posting changes M3): M3's invoice
balances and GL vouchers equal what the pipeline applied; a rerun and an overlapping backfill post
nothing; a decision after posting reaches M3 as a revision voucher, once; nightly closes and a range
backfill of the same world leave M3 in the same state."""

from argparse import Namespace
from datetime import datetime, time, timedelta, timezone

import duckdb
import pytest

from m3_recon.exceptions_cli import cmd_resolve
from m3_recon.sandbox import Sandbox
from m3_recon_tests.conftest import close_definitions, run_close

FIRST, LAST = "2026-10-01", "2026-10-07"  # a week holds every kind of voucher and revision


@pytest.fixture
def own_sandbox(monkeypatch, tmp_path):
    with Sandbox(days=7) as sandbox:
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
        if line.batch_key:  # GLS840 vouchers; ARS040 payment vouchers reach the GL without a batch key
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
    assert close_and_post(definitions, "2026-10-03", "2026-10-05")["posted"] == 0  # overlapping backfill
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


def test_a_range_backfill_posts_what_nightly_closes_post(monkeypatch, tmp_path):
    """Two identical worlds: one closed night by night as the schedule does (the sandbox's clock at 02:00 UTC
    after each day, so payouts are still in transit and invoices still being raised), posting after every
    close; the other closed as one range backfill once everything has settled. M3 ends up holding the same
    vouchers, line for line, and the same payments on every invoice; no night posted a revision; finance sees
    the same open exceptions for the same reasons."""
    start = Sandbox(days=1).period.start
    last_night = start + timedelta(days=8)
    states = []
    for path in ("nightly", "backfill"):
        with Sandbox(days=5, now=int(datetime.combine(last_night, time(2), tzinfo=timezone.utc).timestamp())) as sandbox:
            for key, value in sandbox.env().items():
                monkeypatch.setenv(key, value)
            monkeypatch.setenv("M3_RECON_DECISIONS_FILE", str(tmp_path / f"{path}-decisions.jsonl"))
            for key, name in (("M3_RECON_ANALYST_DUCKDB_PATH", "analyst.duckdb"), ("M3_RECON_REPORTS_PATH", "reports")):
                monkeypatch.setenv(key, str(tmp_path / path / name))
            db = str(tmp_path / f"{path}.duckdb")
            definitions = close_definitions(db)
            if path == "nightly":
                day = start
                while day < last_night:
                    sandbox.clock.set(int(datetime.combine(day + timedelta(days=1), time(2),
                                                           tzinfo=timezone.utc).timestamp()))
                    outcome = close_and_post(definitions, day.isoformat(), day.isoformat())
                    assert outcome["failed"] == 0 and outcome["posted"] == outcome["verified"]
                    day += timedelta(days=1)
            else:
                outcome = close_and_post(definitions, start.isoformat(), (last_night - timedelta(days=1)).isoformat())
                assert outcome["failed"] == 0 and outcome["posted"] == outcome["verified"] > 0
            with duckdb.connect(db, read_only=True) as conn:
                statuses = dict(conn.execute("SELECT status, count(*) FROM out_m3_postings GROUP BY 1").fetchall())
                revisions = conn.execute("SELECT count(*) FROM out_m3_postings "
                                         "WHERE regexp_matches(voucher_key, 'R[1-9]$')").fetchone()[0]
                register = set(conn.execute("SELECT reason_code, source_id FROM out_recon_exceptions "
                                            "WHERE status = 'open'").fetchall())
            assert set(statuses) == {"verified"} and revisions == 0
            states.append((*m3_state(sandbox), register))
    (nightly_gl, nightly_paid, nightly_register), (backfill_gl, backfill_paid, backfill_register) = states
    assert nightly_gl and nightly_paid and nightly_register
    assert nightly_gl == backfill_gl
    assert nightly_paid == backfill_paid
    assert nightly_register == backfill_register  # the same exceptions, for the same reasons, for finance

"""One close of a small sandbox period with bank statements and both customer masters, judged by the generator:
every arrived payout banked (per processor, exactly the ones the bank shows), the one stray credit raised,
the cross-reference exactly the generator's, payments naming only their Stripe customer landing where it says;
and the optional write-back of M3 numbers into Stripe metadata (dry run, write, idempotent)."""

from datetime import date

import duckdb
import pytest

from m3_recon.sandbox import Sandbox
from m3_recon.sandbox.truth import expected_banking, judge
from m3_recon_tests.conftest import close_definitions, run_close, stripe_resource_for


@pytest.fixture(scope="module")
def closed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    with Sandbox(start=date(2026, 10, 1), days=10) as sandbox, pytest.MonkeyPatch.context() as env:
        for key, value in sandbox.env().items():
            env.setenv(key, value)
        for key, name in (("M3_RECON_ANALYST_DUCKDB_PATH", "analyst.duckdb"), ("M3_RECON_REPORTS_PATH", "reports"),
                          ("M3_RECON_DECISIONS_FILE", "decisions.jsonl"), ("M3_RECON_BANK_DIR", "bank")):
            env.setenv(key, str(tmp / name))
        written = sandbox.write_bank_statements(tmp / "bank")
        database = str(tmp / "warehouse.duckdb")
        result = run_close(close_definitions(database), sandbox.period.start.isoformat(), sandbox.period.end.isoformat())
        assert result.success
        yield sandbox, database, written


def test_every_arrived_payout_is_banked_and_the_stray_credit_raised(closed):
    sandbox, database, written = closed
    assert {p.suffix for p in written} == {".bai2", ".xml"}
    banked, unexplained = expected_banking(sandbox)
    with duckdb.connect(database, read_only=True) as conn:
        got = {}
        for processor, payout_id in conn.execute("SELECT processor, payout_id FROM core_payout_reconciliation "
                                                 "WHERE banked").fetchall():
            got.setdefault(processor, set()).add(payout_id)
        assert got == banked and all(banked.values())
        unbanked = conn.execute("SELECT count(*) FROM core_payout_reconciliation WHERE NOT banked "
                                "AND status NOT IN ('failed', 'pending')").fetchone()[0]
        assert unbanked == 0
        reasons = dict(conn.execute("SELECT reason_code, count(*) FROM out_recon_exceptions WHERE status = 'open' "
                                    "GROUP BY 1").fetchall())
        assert reasons.get("unexplained_bank_credit", 0) == unexplained == 1
        assert "payout_not_banked" not in reasons


def test_payments_naming_only_their_stripe_customer_reach_the_customer_rules(closed):
    sandbox, database, _ = closed
    master = sandbox.stripe.customer_master
    with duckdb.connect(database, read_only=True) as conn:
        assert dict(conn.execute("SELECT processor_customer_id, customer FROM core_customer_xref").fetchall()) == \
            master.expected_xref
        conflicts = {r[0] for r in conn.execute("SELECT source_id FROM out_recon_exceptions "
                                                "WHERE reason_code = 'customer_xref_conflict'").fetchall()}
        assert conflicts == set(master.conflicts)
        judged, misses = judge(conn, sandbox.world, "stripe", "core_payment_allocations", "core_match_exceptions")
        assert judged > 0 and misses == []
        loaded = {r[0] for r in conn.execute("SELECT source_id FROM core_settlement_lines WHERE customer_ref IS NULL "
                                             "AND invoice_ref IS NULL AND line_type = 'charge'").fetchall()}
    via_xref = [t for t in sandbox.world.payments if t.customer_via_xref and t.payment_id in loaded]
    assert via_xref and all(t.expected_reason != "no_reference" for t in via_xref)


def test_writing_m3_numbers_back_to_stripe_is_a_dry_run_unless_asked_and_idempotent(closed):
    from m3_recon.customer_sync import sync_customers

    sandbox, database, _ = closed
    stripe = stripe_resource_for(sandbox).client()
    master = sandbox.stripe.customer_master
    by_email = {i for i, n in master.expected_xref.items() if "erp_customer_id" not in master.customers[i].metadata}
    with duckdb.connect(database, read_only=True) as conn:
        planned = sync_customers(conn, stripe, "erp_customer_id")
        assert {c.stripe_customer for c in planned} == by_email and all(c.current is None for c in planned)
        assert sync_customers(conn, stripe, "erp_customer_id") == planned  # a dry run changed nothing
        assert sync_customers(conn, stripe, "erp_customer_id", write=True) == planned
        assert sync_customers(conn, stripe, "erp_customer_id") == []
    assert {c.id: c.metadata.get("erp_customer_id") for c in sandbox.apps["stripe"].customers.values()
            if c.id in by_email} == {i: master.expected_xref[i] for i in by_email}

"""Sandbox quirks multi_invoice_refs, free_text_refs and invoice_number_reused: each processor's period,
read over HTTP into the core tables and matched, lands every payment where the generator says — including
payments naming several invoices, naming them only in free text, and naming a number open in two years."""

from collections import Counter
from datetime import timedelta

import dagster as dg
import duckdb
import pytest
from dagster_duckdb import DuckDBResource

from m3_recon.defs.core.assets import core_payouts, core_settlement_lines
from m3_recon.defs.heartland.resources import HeartlandResource
from m3_recon.sandbox import Sandbox
from m3_recon.sandbox.heartland_api import SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY
from m3_recon.sandbox.truth import truth_misses
from m3_recon_tests.conftest import stripe_resource_for
from m3_recon_tests.test_canonical_heartland import HEARTLAND_ASSETS
from m3_recon_tests.test_paytrace import PAYTRACE_ASSETS, resource_for
from m3_recon_tests.test_stripe_assets import STRIPE_ASSETS

QUIRKS = frozenset({"multi_invoice_refs", "free_text_refs", "invoice_number_reused"})


@pytest.fixture(scope="module")
def quirky():
    with Sandbox(quirks=QUIRKS) as running:
        yield running


def heartland_resource(sandbox):
    return HeartlandResource(app_id=SANDBOX_GP_APP_ID, app_key=SANDBOX_GP_APP_KEY,
                             api_base=f"{sandbox.url('heartland')}/ucp", max_requests_per_second=1000.0)


PROCESSORS = {
    "stripe": (STRIPE_ASSETS, lambda s: stripe_resource_for(s)),
    "paytrace": (PAYTRACE_ASSETS, lambda s: resource_for(s.url("paytrace"))),
    "heartland": (HEARTLAND_ASSETS, heartland_resource),
}


@pytest.mark.parametrize("processor", sorted(PROCESSORS))
def test_every_reference_form_lands_where_the_generator_says(quirky, processor, tmp_path):
    db = str(tmp_path / "w.duckdb")
    assets, resource = PROCESSORS[processor]
    definitions = dg.Definitions(
        assets=[*assets, core_settlement_lines, core_payouts], jobs=[dg.define_asset_job("close", dg.AssetSelection.all())],
        resources={processor: resource(quirky), "duckdb": DuckDBResource(database=db)})
    period = quirky.period
    result = definitions.resolve_job_def("close").execute_in_process(
        tags={"dagster/asset_partition_range_start": period.start.isoformat(),
              "dagster/asset_partition_range_end": (period.end + timedelta(days=4)).isoformat()},
        instance=dg.DagsterInstance.ephemeral())
    assert result.success
    with duckdb.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM core_quarantine").fetchone() == (0,)
        judged, misses = truth_misses(conn, quirky.world, processor, "core_settlement_lines")
        rules = Counter(r for (r,) in conn.execute("SELECT rule FROM match_allocations WHERE status = 'auto'").fetchall())
        years = {y for (y,) in conn.execute("SELECT DISTINCT invoice_year FROM match_allocations "
                                            "WHERE status = 'suggested'").fetchall()}
    assert judged > 100 and misses == []
    planned = [t for t in quirky.world.payments if t.processor == processor]
    kinds = Counter(t.kind for t in planned)
    # The quirks made each form: lists of invoices (applied as a list), references in free text only,
    # and a tie between two invoice years (suggested with both years as candidates).
    assert kinds["multi_ref"] >= 2 and rules["reference_list"] >= 4  # allocation rows of two lists at least
    assert kinds["reused_tie"] == 1 and years >= {2025, 2026}
    assert any(t.kind == "multi_ref" and t.expected_reason == "overpayment" for t in quirky.world.payments)
    assert any(len(t.allocations) > 1 and t.allocations[-1].amount_minor < _open(quirky, t.allocations[-1].invoice)
               for t in quirky.world.payments if t.kind == "multi_ref")


def _open(sandbox, number: str) -> int:
    return next(i.amount_minor for i in sandbox.world.invoices if i.number == number and i.year == 2026)


def test_the_quirky_world_writes_references_in_free_text_and_reuses_numbers(quirky):
    world = quirky.world
    assert len(world.reused_numbers) == 24
    years = Counter(i.number for i in world.invoices if i.number in world.reused_numbers)
    assert set(years.values()) == {2}
    descriptions = [c.description for c in quirky.stripe.charges.values()] + [
        t.description for t in quirky.paytrace.transactions.values()] + [
        t.description for t in quirky.heartland.transactions.values()]
    assert sum("Payment for INV-" in d for d in descriptions) >= 10
    assert any(c.statement_descriptor for c in quirky.stripe.charges.values())
    assert any("note" in c.metadata and "m3_invoice" not in c.metadata for c in quirky.stripe.charges.values())


def test_without_quirks_the_world_has_none_of_these_forms(sandbox):
    kinds = Counter(t.kind for t in sandbox.world.payments)
    assert not kinds["multi_ref"] and not kinds["reused_tie"] and not sandbox.world.reused_numbers
    assert not any(c.statement_descriptor or "note" in c.metadata for c in sandbox.stripe.charges.values())

"""Shared fixtures: one seeded sandbox for the session, DuckDB files in tmp, resources pointed at them."""

import os

os.environ.setdefault("M3_RECON_START_DATE", "2026-10-01")  # before m3_recon.partitions is imported

import pytest
from dagster_duckdb import DuckDBResource

from m3_recon.defs.stripe.resources import StripeResource
from m3_recon.sandbox import SANDBOX_STRIPE_KEY, Sandbox


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox() as running:
        yield running


@pytest.fixture(autouse=True)
def _clear_faults(request):
    yield
    if "sandbox" in request.fixturenames:
        for server in request.getfixturevalue("sandbox").servers.values():
            server.faults.clear()


def stripe_resource_for(sandbox: Sandbox, **overrides) -> StripeResource:
    settings = {"api_key": SANDBOX_STRIPE_KEY, "api_base": sandbox.url("stripe"),
                "max_requests_per_second": 1000.0, "timeout_seconds": 2.0, **overrides}
    return StripeResource(**settings)


@pytest.fixture
def stripe_resource(sandbox):
    return stripe_resource_for(sandbox)


@pytest.fixture
def duckdb_resource(tmp_path):
    return DuckDBResource(database=str(tmp_path / "warehouse.duckdb"))

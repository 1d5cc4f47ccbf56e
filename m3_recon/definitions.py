"""The code location: every source system's definitions merged, plus shared resources."""

from __future__ import annotations

import dagster as dg
from dagster_duckdb import DuckDBResource

from m3_recon import settings
from m3_recon.defs.stripe.definitions import defs as stripe_defs

defs = dg.Definitions.merge(
    stripe_defs,
    dg.Definitions(resources={"duckdb": DuckDBResource(database=settings.duckdb_path())}),
)

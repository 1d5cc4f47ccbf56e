"""The code location: every source system's definitions merged, plus shared resources."""

from __future__ import annotations

import dagster as dg
from dagster_duckdb import DuckDBResource

from m3_recon import settings
from m3_recon.defs.stripe import definitions as stripe

defs = dg.Definitions.merge(
    stripe.defs,
    dg.Definitions(resources={"duckdb": DuckDBResource(database=settings.duckdb_path())}),
)

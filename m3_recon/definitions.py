"""The code location: every source system's definitions merged, plus shared resources and automation."""

import dagster as dg

from m3_recon.defs import automation
from m3_recon.defs.bank import definitions as bank
from m3_recon.defs.core import definitions as core
from m3_recon.defs.customers import definitions as customers
from m3_recon.defs.heartland import definitions as heartland
from m3_recon.defs.m3 import definitions as m3
from m3_recon.defs.paytrace import definitions as paytrace
from m3_recon.defs.post import definitions as post
from m3_recon.defs.reconcile import definitions as reconcile
from m3_recon.defs.stripe import definitions as stripe
from m3_recon.storage import warehouse_resource_from_env

payout_close = automation.payout_close

defs = dg.Definitions.merge(
    stripe.defs,
    paytrace.defs,
    heartland.defs,
    m3.defs,
    bank.defs,
    core.defs,
    customers.defs,
    reconcile.defs,
    post.defs,
    automation.defs,
    # The warehouse (a DuckDB file, or DuckLake) comes from the environment. Steps run in their run's process:
    # they share the writer slot anyway, and a process per step would only add start-up time and file contention.
    dg.Definitions(resources={"duckdb": warehouse_resource_from_env()}, executor=dg.in_process_executor),
)

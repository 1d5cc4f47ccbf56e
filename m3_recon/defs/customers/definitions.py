"""The customer cross-reference asset (its inputs live with their sources: stripe/ and m3/)."""

import dagster as dg

from m3_recon.defs.customers.assets import core_customer_xref

defs = dg.Definitions(assets=[core_customer_xref])

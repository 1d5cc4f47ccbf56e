"""The reconciliation assets."""

import dagster as dg

from m3_recon.defs.reconcile.assets import core_payment_allocations, core_payout_reconciliation, out_recon_exceptions

defs = dg.Definitions(assets=[core_payment_allocations, core_payout_reconciliation, out_recon_exceptions])

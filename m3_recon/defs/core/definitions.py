"""The canonical layer's assets."""

import dagster as dg

from m3_recon.defs.core.assets import core_payouts, core_settlement_lines

defs = dg.Definitions(assets=[core_settlement_lines, core_payouts])

"""The bank's asset (statement lines), its import job and the folder sensor."""

import dagster as dg

from m3_recon.defs.bank.assets import raw_bank_statement_lines
from m3_recon.defs.bank.sensors import bank_import, bank_statement_sensor

defs = dg.Definitions(assets=[raw_bank_statement_lines], jobs=[bank_import], sensors=[bank_statement_sensor])

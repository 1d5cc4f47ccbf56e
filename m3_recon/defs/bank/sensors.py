"""``bank_statement_sensor``: each statement file dropped in the bank folder is imported once, by content hash.

The run key is the file's SHA-256, so Dagster launches one ``bank_import`` run per distinct content
however often a file is dropped, renamed or copied; the import itself skips known hashes and lines
too. The sensor only reads the folder (never the warehouse), so it cannot contend with a run.
"""

import dagster as dg

from m3_recon import settings
from m3_recon.defs.bank.assets import raw_bank_statement_lines, statement_files
from m3_recon.defs.bank.statements import file_hash

bank_import = dg.define_asset_job(
    "bank_import", selection=[raw_bank_statement_lines],
    description="Import bank statement files (BAI2, camt.053) into raw_bank_statement_lines.")


@dg.sensor(job=bank_import, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def bank_statement_sensor(context: dg.SensorEvaluationContext):
    """One run per new statement file in M3_RECON_BANK_DIR, keyed by its content hash."""
    folder = settings.bank_dir()
    files = statement_files(folder)
    if not files:
        return dg.SkipReason(f"no statement files in {folder}")
    return [dg.RunRequest(run_key=f"bank_statement:{file_hash(path.read_bytes())}",
                          run_config={"ops": {"raw_bank_statement_lines": {"config": {"files": [str(path)]}}}},
                          tags={"m3_recon/bank_file": path.name})
            for path in files]

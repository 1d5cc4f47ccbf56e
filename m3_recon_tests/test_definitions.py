"""The code location loads, with the jobs, schedules and resources the README promises."""

import subprocess
import sys

import dagster as dg

from m3_recon.definitions import defs
from m3_recon.settings import PROJECT_ROOT


def test_definitions_are_loadable():
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("stripe_ingest")
    assert job.partitions_def is not None
    assert {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()} >= {
        "raw_stripe_balance_transactions", "raw_stripe_payouts", "raw_stripe_payout_lines"}


def test_dagster_cli_validates_the_workspace():
    result = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr

"""Bad input stops the command before any vendor is called: one line per problem, exit code 2, no traceback; a
warehouse file held by another process fails within seconds, naming the process and the analysts' copy."""

import subprocess
import sys
import time

import pytest

from m3_recon import cli, storage
from m3_recon.reconcile.decisions import new_decision, record


def backfill(capsys, *dates) -> tuple[int, list[str]]:
    code = cli.main(["backfill", "--start", dates[0], "--end", dates[1]])
    captured = capsys.readouterr()
    return code, captured.err.splitlines() + captured.out.splitlines()


def test_a_period_that_ends_before_it_starts_is_one_line_and_exit_2(capsys):
    assert backfill(capsys, "2026-10-31", "2026-10-01") == (2, [
        "m3-recon backfill: the period ends (2026-10-01) before it starts (2026-10-31): swap --start and --end"])


def test_dates_and_partitions_out_of_range_are_named(capsys):
    assert backfill(capsys, "2026-10-3x", "2026-10-05") == (2, [
        "m3-recon backfill: --start must be a date like 2026-10-01, got '2026-10-3x'"])
    code, lines = backfill(capsys, "2026-09-01", "2999-01-01")
    assert code == 2 and len(lines) == 2
    assert "before the first partition 2026-10-01 (M3_RECON_START_DATE)" in lines[0]
    assert "--end 2999-01-01 has not ended yet in UTC" in lines[1]


def test_finance_files_and_settings_are_checked_before_any_vendor_call(capsys, monkeypatch, tmp_path):
    import m3_recon.journals
    import m3_recon.reconcile.matching

    decisions = tmp_path / "decisions.jsonl"
    record(new_decision("EX-ABC", "dismiss", "me", "duplicate"), decisions)
    decisions.write_text(decisions.read_text() + '{"exception_id": "EX-DEF", "action": "forgive"}\n')
    monkeypatch.setenv("M3_RECON_DECISIONS_FILE", str(decisions))
    (tmp_path / "accounts.toml").write_text("this is = = not toml")
    monkeypatch.setattr(m3_recon.journals, "DEFAULT_ACCOUNTS_FILE", tmp_path / "accounts.toml")
    monkeypatch.setattr(m3_recon.reconcile.matching, "DEFAULT_RULES_FILE", tmp_path / "missing.toml")
    monkeypatch.setenv("M3_RECON_LOOKBACK_DAYS", "a week")
    for variable in ("STRIPE_API_BASE", "PAYTRACE_API_BASE", "GP_API_BASE", "M3_BASE_URL"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # nothing listens: a call would fail differently
    code, lines = backfill(capsys, "2026-10-01", "2026-10-02")
    assert code == 2 and len(lines) == 4, lines
    assert "M3_RECON_LOOKBACK_DAYS must be a whole number" in lines[0]
    assert "decisions.jsonl:2 is not a valid decision" in lines[1]
    assert "account map" in lines[2] and "accounts.toml" in lines[2]
    assert "matching rules" in lines[3] and "missing.toml" in lines[3]
    assert not any("Traceback" in line for line in lines)


HOLDER = "import duckdb, sys, time\nconn = duckdb.connect(sys.argv[1])\nprint('holding', flush=True)\ntime.sleep(300)\n"


def test_a_locked_warehouse_fails_within_seconds_naming_the_holder_and_the_analysts_copy(tmp_path):
    path = str(tmp_path / "warehouse.duckdb")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        began = time.monotonic()
        with pytest.raises(storage.WarehouseLockedError) as failure:
            with storage.WarehouseFileResource(database=path).get_connection():
                pass
        waited = time.monotonic() - began
    finally:
        holder.kill()
        holder.wait()
    message = str(failure.value)
    assert f"pid {holder.pid}" in message and "M3_RECON_ANALYST_DUCKDB_PATH" in message
    assert storage.LOCK_WAIT_SECONDS <= waited < 60  # gave a finishing writer its seconds; no 100 s retry loop
    with storage.WarehouseFileResource(database=path).get_connection() as conn:  # released: opens at once
        assert conn.execute("SELECT 1").fetchone() == (1,)

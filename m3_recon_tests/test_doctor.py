"""``m3-recon doctor`` against the sandbox: every check passes, and each wrong URL, credential, company,
division, missing M3 program, locked warehouse or unreachable instance fails on its own line with a fix."""

import io
import subprocess
import sys

import pytest

from m3_recon.doctor import READ_PREFIXES, run_doctor
from m3_recon.sandbox import m3_api

WRONG_STRIPE_KEY = "sk_live_wrongwrongwrong0000000000000042"
WRONG_GP_KEY = "gp-app-key-that-is-not-right-0042"


@pytest.fixture
def doctor_environment(sandbox_environment, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("M3_RECON_DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    for variable in ("M3_RECON_INSTANCE", "M3_RECON_WAREHOUSE"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def doctor() -> tuple[int, dict[str, str], str]:
    """Exit code, each check's line by check name, and the whole output."""
    out = io.StringIO()
    code = run_doctor(out)
    lines = {line[6:29].strip(): line for line in out.getvalue().splitlines()[:-1]}
    return code, lines, out.getvalue()


def test_every_connection_checks_out_against_the_sandbox(doctor_environment):
    code, lines, _ = doctor()
    assert code == 0
    passing = ["stripe", "paytrace token", "paytrace reports", "gp api token", "gp api account", "m3 sign-in",
               "m3 company/division", "m3 ARS200MI", "m3 CRS610MI", "m3 GLS840MI", "m3 GLS200MI", "m3 ARS040MI", "warehouse",
               "dagster instance", "writer pool"]
    assert [name for name in passing if not lines[name].startswith("OK ")] == []
    assert "test mode" in lines["stripe"] and lines["stripe mode"].startswith("WARN")
    assert "company 100, division AAA" in lines["m3 company/division"]
    assert lines["dagster daemon"].startswith("WARN") and "dagster-daemon run" in lines["dagster daemon"]


def test_wrong_urls_and_credentials_fail_on_their_own_line_with_a_fix(doctor_environment, monkeypatch):
    monkeypatch.setenv("STRIPE_API_KEY", WRONG_STRIPE_KEY)
    monkeypatch.setenv("PAYTRACE_API_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("GP_API_APP_KEY", WRONG_GP_KEY)
    monkeypatch.setenv("M3_DIVI", "ZZZ")
    code, lines, output = doctor()
    assert code == 1
    assert lines["stripe"].startswith("FAIL") and "HTTP 401" in lines["stripe"]
    assert "fix: set STRIPE_API_KEY" in lines["stripe"]
    assert lines["paytrace token"].startswith("FAIL") and "fix: check PAYTRACE_API_BASE (http://127.0.0.1:9)" in \
        lines["paytrace token"]
    assert "paytrace reports" not in lines
    assert lines["gp api token"].startswith("FAIL") and "fix: set GP_API_APP_ID / GP_API_APP_KEY" in lines["gp api token"]
    assert lines["m3 sign-in"].startswith("OK")
    assert lines["m3 company/division"].startswith("FAIL") and "Division ZZZ does not exist" in \
        lines["m3 company/division"] and "fix: set M3_DIVI" in lines["m3 company/division"]
    assert WRONG_STRIPE_KEY not in output and WRONG_GP_KEY not in output


def test_a_company_the_user_may_not_use_names_m3_cono(doctor_environment, monkeypatch):
    monkeypatch.setenv("M3_CONO", "999")
    code, lines, _ = doctor()
    assert code == 1
    assert "Not authorized for company 999" in lines["m3 company/division"] and "fix: set M3_CONO" in \
        lines["m3 company/division"]


def test_an_m3_program_that_does_not_answer_fails_its_check(doctor_environment, monkeypatch):
    monkeypatch.delitem(m3_api.PROGRAMS, "GLS840MI")
    code, lines, _ = doctor()
    assert code == 1
    assert lines["m3 GLS840MI"].startswith("FAIL") and "Program GLS840MI does not exist" in lines["m3 GLS840MI"]
    assert "posting GL vouchers" in lines["m3 GLS840MI"]
    assert [name for name in ("m3 ARS200MI", "m3 GLS200MI", "m3 ARS040MI") if not lines[name].startswith("OK ")] == []


def test_vendors_without_variables_are_skipped_not_failed(doctor_environment, monkeypatch):
    for variable in ("STRIPE_API_KEY", "PAYTRACE_USERNAME", "GP_API_APP_ID", "M3_IONAPI_FILE", "M3_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    code, lines, _ = doctor()
    assert code == 0
    for name in ("stripe", "paytrace", "heartland", "m3"):
        assert lines[name].startswith("SKIP") and "not configured" in lines[name]


def test_a_warehouse_file_held_by_another_process_fails_with_the_way_out(doctor_environment):
    warehouse = str(doctor_environment / "warehouse.duckdb")
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('holding', flush=True); time.sleep(60)", warehouse],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        code, lines, _ = doctor()
    finally:
        holder.kill()
        holder.wait()
    assert code == 1
    assert lines["warehouse"].startswith("FAIL") and "held open by another process" in lines["warehouse"]
    assert "M3_RECON_WAREHOUSE=ducklake" in lines["warehouse"]


def test_an_unreachable_postgres_instance_is_named_without_its_password(doctor_environment, monkeypatch):
    monkeypatch.setenv("M3_RECON_INSTANCE", "postgres")
    monkeypatch.setenv("M3_RECON_DAGSTER_POSTGRES_URL", "postgresql+psycopg2://dagster:s3cret@127.0.0.1:9/dagster")
    code, lines, output = doctor()
    assert code == 1
    assert lines["dagster instance"].startswith("FAIL") and "PostgreSQL refused the connection" in \
        lines["dagster instance"] and "fix: check M3_RECON_DAGSTER_POSTGRES_URL" in lines["dagster instance"]
    assert "s3cret" not in output



def test_the_doctor_probes_every_posting_transaction_without_writing_to_m3(doctor_environment, sandbox):
    """It asks M3 about exactly what posting and verification run, and M3 records no write at all."""
    app = sandbox.apps["m3"]
    before = len(app.executed)
    code, lines, _ = doctor()
    ran = app.executed[before:]
    assert code == 0
    assert [t for _, t in ran if not t.startswith(READ_PREFIXES)] == []  # reads only
    assert set(ran) >= {("ARS200MI", "LstInvByDivi"), ("ARS200MI", "GetInvTotInfo"), ("GLS200MI", "SearchGenLedger"),
                        ("GLS200MI", "LstVouchersByDt"), ("GLS200MI", "LstVoucherLines"),
                        ("MRS001MI", "LstTransactions")}
    for program, transactions in (("GLS840MI", "AddBatchHead, AddBatchLine, CtrlBatch, UpdBatch"),
                                  ("ARS040MI", "AddBatchHead, AddBatchLine, ControlBatch")):
        assert lines[f"m3 {program}"].startswith("OK ") and transactions in lines[f"m3 {program}"]


def test_without_search_gen_ledger_the_doctor_warns_and_names_the_fallback(doctor_environment, sandbox, monkeypatch):
    monkeypatch.setattr(sandbox.apps["m3"], "quirks", frozenset({"m3_no_search_gen_ledger"}))
    code, lines, _ = doctor()
    assert code == 0
    assert lines["m3 GLS200MI"].startswith("WARN") and "SearchGenLedger not served (XTR0001)" in lines["m3 GLS200MI"]
    assert "by date and lines" in lines["m3 GLS200MI"]

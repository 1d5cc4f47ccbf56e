"""``m3-recon doctor``: checks every configured connection and prints one line per check, with a fix.

Vendors are checked through the same resources the pipeline uses, built from the environment
(``*_resource_from_env``), with few attempts and a short timeout so a wrong URL fails in seconds:
Stripe (key accepted, test or live mode, balance transactions and payouts readable), PayTrace (OAuth
token, a batch export), GP API (access token, the settlement-reporting account, a deposit list) and
Infor M3 (sign-in, company/division access, and every MI transaction posting and verification use).
Then the storage: the warehouse (DuckDB file writable and not locked, or the DuckLake catalog
attached) and the Dagster instance (storage reachable, pool limits, daemon heartbeat).

A vendor whose variables are not set is reported as not configured and does not fail the doctor.
Checks only read and never write to M3: read transactions are called (without their key where they
need one, so M3 answers "… must be entered"), and the transactions that write (GLS840MI, ARS040MI) are
looked up in M3's own program metadata (``MRS001MI/LstTransactions``) rather than called. Messages
never contain credentials.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, TextIO

import dagster as dg
import duckdb

from m3_recon.errors import VendorAuthError, VendorError, VendorRequestError, VendorUnavailableError

DOCTOR_ATTEMPTS = 2
DOCTOR_TIMEOUT_SECONDS = 10.0
WRITER_POOL = "duckdb_writer"
DAEMON_HEARTBEAT_STALE_SECONDS = 120
READ_PREFIXES = ("Get", "Lst", "Sel", "Search")
# (program, transactions the pipeline runs, what for). Read transactions are called (without their key
# where they need one); writing ones are only looked up in MRS001MI/LstTransactions.
M3_PROGRAMS = (
    ("ARS200MI", ("GetInvTotInfo",), "open customer invoices and confirming cash application"),
    ("CRS610MI", ("LstByNumber",), "the customer master, whose payers the open-item read goes through"),
    ("GLS840MI", ("AddBatchHead", "AddBatchLine", "CtrlBatch", "UpdBatch"), "posting GL vouchers"),
    ("GLS200MI", ("SearchGenLedger", "LstVouchersByDt", "LstVoucherLines"), "verifying posted vouchers"),
    ("ARS040MI", ("AddBatchHead", "AddBatchLine", "ControlBatch"), "cash application"),
)
FALLBACK_FOR = {"SearchGenLedger": "verification finds vouchers by date and lines instead"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok / warn / fail / skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix and self.status in ("fail", "warn") else ""
        return f"{self.status.upper():<4}  {self.name:<22} {self.detail}{fix}"


def _quick(resource):
    """The resource with few attempts and a short timeout: the doctor diagnoses, it does not wait out outages."""
    values = {name: getattr(resource, name) for name in type(resource).model_fields}
    values["max_attempts"] = min(values["max_attempts"], DOCTOR_ATTEMPTS)
    values["timeout_seconds"] = min(values["timeout_seconds"], DOCTOR_TIMEOUT_SECONDS)
    return type(resource)(**values)


def _initialised(resource):
    """The resource as a run would see it: ``EnvVar`` secrets resolved."""
    with dg.build_resources({"resource": resource}) as built:
        return built.resource


def _failure(name: str, exc: Exception, credentials: str, url_variable: str, url: str) -> Check:
    if isinstance(exc, VendorAuthError):
        fix = f"set {credentials} to credentials this account accepts"
    elif isinstance(exc, VendorUnavailableError):
        fix = f"check {url_variable} ({url}) and that this machine can reach it"
    elif isinstance(exc, VendorRequestError):
        fix = f"check {url_variable} ({url}) points at the vendor's API"
    else:
        fix = f"check {credentials} and {url_variable} ({url})"
    return Check(name, "fail", str(exc) or type(exc).__name__, fix)


def _not_configured(name: str, variables: str) -> Check:
    return Check(name, "skip", f"not configured (set {variables} to check it)")


def _yesterday() -> datetime:
    return datetime.now(timezone.utc) - timedelta(days=1)


# -- vendors ------------------------------------------------------------------------------------------
def stripe_mode(api_key: str) -> str:
    """``test`` / ``live`` from the key's prefix (``sk_test_``, ``rk_live_``…), ``unknown`` otherwise."""
    for mode in ("test", "live"):
        if api_key.startswith((f"sk_{mode}_", f"rk_{mode}_")):
            return mode
    return "unknown"


def check_stripe() -> list[Check]:
    if not os.environ.get("STRIPE_API_KEY"):
        return [_not_configured("stripe", "STRIPE_API_KEY")]
    from m3_recon.defs.stripe.definitions import stripe_resource_from_env

    stripe = _initialised(_quick(stripe_resource_from_env())).client()
    mode = stripe_mode(stripe.api_key)
    try:
        next(iter(stripe.list_all("balance_transactions", {})), None)
        payout = next(iter(stripe.list_all("payouts", {})), None)
    except (VendorError, ValueError) as exc:
        return [_failure("stripe", exc, "STRIPE_API_KEY", "STRIPE_API_BASE", stripe.api_base)]
    if payout is not None and "livemode" in payout and payout["livemode"] != (mode == "live"):
        return [Check("stripe", "fail", f"the key looks like a {mode}-mode key but Stripe answered with "
                      f"{'live' if payout['livemode'] else 'test'}-mode objects",
                      "use the key of the mode you mean to reconcile (sk_live_… for real money)")]
    checks = [Check("stripe", "ok", f"key accepted, {mode} mode; balance transactions and payouts readable "
                    f"at {stripe.api_base}")]
    if mode != "live":
        checks.append(Check("stripe mode", "warn", f"the key is {mode}-mode: no real money is reconciled",
                            "set STRIPE_API_KEY to the live key (sk_live_… or rk_live_…) in production"))
    return checks


def check_paytrace() -> list[Check]:
    if not (os.environ.get("PAYTRACE_USERNAME") and os.environ.get("PAYTRACE_PASSWORD")):
        return [_not_configured("paytrace", "PAYTRACE_USERNAME and PAYTRACE_PASSWORD")]
    from m3_recon.clients.paytrace import CREDENTIAL_HINT
    from m3_recon.defs.paytrace.definitions import paytrace_resource_from_env

    paytrace = _initialised(_quick(paytrace_resource_from_env())).client()
    session = paytrace.session
    try:
        session.authenticator.headers(session)
    except (VendorError, ValueError) as exc:
        return [_failure("paytrace token", exc, CREDENTIAL_HINT, "PAYTRACE_API_BASE", paytrace.api_base)]
    checks = [Check("paytrace token", "ok", f"OAuth password grant accepted at {paytrace.api_base}")]
    day = _yesterday().astimezone(paytrace.zone()).date()
    try:
        batches = paytrace.batches(day, day)
    except (VendorError, ValueError) as exc:
        return checks + [_failure("paytrace reports", exc, CREDENTIAL_HINT, "PAYTRACE_API_BASE", paytrace.api_base)]
    return checks + [Check("paytrace reports", "ok", f"batch export answers ({len(batches)} batch(es) on {day})")]


def check_heartland() -> list[Check]:
    if not (os.environ.get("GP_API_APP_ID") and os.environ.get("GP_API_APP_KEY")):
        return [_not_configured("heartland", "GP_API_APP_ID and GP_API_APP_KEY")]
    from m3_recon.clients.heartland import CREDENTIAL_HINT
    from m3_recon.defs.heartland.definitions import heartland_resource_from_env

    heartland = _initialised(_quick(heartland_resource_from_env())).client()
    session = heartland.session
    token = heartland.access_token
    try:
        granted = token.data_account_name(session)
    except (VendorError, ValueError) as exc:
        return [_failure("gp api token", exc, CREDENTIAL_HINT, "GP_API_BASE", heartland.api_base)]
    checks = [Check("gp api token", "ok", f"access token granted at {heartland.api_base}")]
    if heartland.account_name and heartland.account_name not in token.accounts:
        return checks + [Check("gp api account", "fail", f"GP_API_ACCOUNT_NAME={heartland.account_name} is not among "
                               f"the accounts the token grants ({', '.join(sorted(token.accounts)) or 'none'})",
                               "set GP_API_ACCOUNT_NAME to one of them, or leave it empty to use the granted "
                               "settlement-reporting (DAA_) account")]
    account = heartland.account_name or granted
    day = _yesterday().date()
    try:
        deposits = heartland.deposits(day, day)
    except (VendorError, ValueError) as exc:
        return checks + [_failure("gp api account", exc, CREDENTIAL_HINT, "GP_API_BASE", heartland.api_base)]
    return checks + [Check("gp api account", "ok", f"{account} reads settlement reports ({len(deposits)} "
                           f"deposit(s) on {day})")]


def _read_probe(client, program: str, transaction: str) -> None:
    """Call a read transaction with harmless inputs (nothing, or yesterday's date range)."""
    day = _yesterday().strftime("%Y%m%d")
    fields = {"SearchGenLedger": {"SQRY": "KEY1:M3RECONDOCTOR"},
              "LstVouchersByDt": {"FRDT": day, "TODT": day}}.get(transaction, {})
    client.execute(program, transaction, maxrecs=1, **fields)


def _m3_program_check(client, program: str, transactions: tuple[str, ...], purpose: str) -> Check:
    """Every transaction of ``program`` the pipeline runs, probed without writing anything."""
    from m3_recon.clients.m3 import M3Error
    from m3_recon.posting.config import LINE_FORM_FIELDS, posting_config_from_env
    from m3_recon.posting.route import not_served

    name = f"m3 {program}"
    if posting_config_from_env().line_form == LINE_FORM_FIELDS:
        transactions = tuple("AddBatchLineFld" if t == "AddBatchLine" and program == "GLS840MI" else t
                             for t in transactions)
    notes = []
    try:
        writes = [t for t in transactions if not t.startswith(READ_PREFIXES)]
        if writes:
            listed = {row.get("TRNM", "") for row in client.execute("MRS001MI", "LstTransactions", maxrecs=0,
                                                                    MINM=program)}
            missing = [t for t in writes if t not in listed]
            if missing:
                return Check(name, "fail", f"M3 does not list {', '.join(missing)} in {program}",
                             f"ask the M3 administrator to make {program} {', '.join(missing)} available to the "
                             f"API user (needed for {purpose})")
        for transaction in transactions:
            if transaction in writes:
                continue
            try:
                _read_probe(client, program, transaction)
            except M3Error as exc:
                if exc.code and not not_served(exc):
                    continue  # "… must be entered": the transaction is there
                if transaction in FALLBACK_FOR and exc.code:
                    notes.append(f"{transaction} not served ({exc.code}): {FALLBACK_FOR[transaction]}")
                    continue
                raise
    except M3Error as exc:
        if exc.code.startswith("XAU") or not_served(exc):
            return Check(name, "fail", f"not authorized ({exc.message})",
                         f"grant the M3 user {exc.program}/{exc.transaction} in company {client.cono} "
                         f"(needed for {purpose})")
        return Check(name, "fail", f"{exc.program}/{exc.transaction} does not answer: {exc.message}",
                     f"ask the M3 administrator to make {program} available to the API user (needed for {purpose})")
    except VendorError as exc:
        return Check(name, "fail", str(exc), "see the m3 sign-in check above")
    if notes:
        return Check(name, "warn", f"answers ({purpose}); " + "; ".join(notes),
                     "nothing to do unless you want the faster search: grant the API user GLS200MI/SearchGenLedger")
    return Check(name, "ok", f"{', '.join(transactions)} answer ({purpose}; probed without writing)")


def check_m3() -> list[Check]:
    if not (os.environ.get("M3_IONAPI_FILE") or os.environ.get("M3_BASE_URL")):
        return [_not_configured("m3", "M3_IONAPI_FILE (ION API) or M3_BASE_URL with M3_USERNAME / M3_PASSWORD")]
    from m3_recon.clients.m3 import IonApiAuth, M3Error
    from m3_recon.defs.m3.definitions import m3_resource_from_env

    m3 = _initialised(_quick(m3_resource_from_env()))
    where = "M3_IONAPI_FILE" if m3.ionapi_file else "M3_BASE_URL"
    credentials = (f"the .ionapi file named by M3_IONAPI_FILE ({m3.ionapi_file})" if m3.ionapi_file
                   else "M3_USERNAME / M3_PASSWORD")
    try:
        client = m3.client()
        if isinstance(client.session.authenticator, IonApiAuth):
            client.session.authenticator.headers(client.session)
    except (VendorError, ValueError) as exc:
        return [_failure("m3 sign-in", exc, credentials, where, m3.ionapi_file or m3.base_url)]
    route = "ION API token granted" if m3.ionapi_file else "on-premise basic auth (checked by the next call)"
    checks = [Check("m3 sign-in", "ok", f"{route} ({client.session.base_url})")]
    try:
        client.execute("ARS200MI", "LstInvByDivi", maxrecs=1, FDIV=client.divi, TDIV=client.divi)
    except M3Error as exc:
        variable = "M3_CONO" if exc.field == "CONO" or exc.code.startswith("XAU") else "M3_DIVI"
        return checks + [Check("m3 company/division", "fail", f"company {client.cono} / division {client.divi}: "
                               f"{exc.message}", f"set {variable} to a company/division the M3 user may use")]
    except VendorError as exc:
        return checks + [_failure("m3 company/division", exc, credentials, where, client.session.base_url)]
    checks.append(Check("m3 company/division", "ok", f"company {client.cono}, division {client.divi} accessible"))
    return checks + [_m3_program_check(client, *spec) for spec in M3_PROGRAMS]


# -- storage ------------------------------------------------------------------------------------------
def check_warehouse() -> list[Check]:
    from m3_recon import settings, storage

    try:
        backend = storage.warehouse_backend()
        resource = storage.warehouse_resource_from_env()
    except settings.SettingsError as exc:
        return [Check("warehouse", "fail", str(exc), f"fix {storage.WAREHOUSE_VARIABLE} and its variables")]
    if backend == "ducklake":
        return [_check_ducklake(storage, _initialised(resource))]
    return [_check_duckdb_file(settings.duckdb_path())]


def _check_duckdb_file(path: str) -> Check:
    if not os.path.exists(path):
        existing = os.path.dirname(os.path.abspath(path))
        while not os.path.isdir(existing):
            existing = os.path.dirname(existing)
        if os.access(existing, os.W_OK):
            return Check("warehouse", "ok", f"DuckDB file {path} does not exist yet; the first run creates it")
        return Check("warehouse", "fail", f"cannot create the DuckDB file {path} ({existing} is not writable)",
                     "set M3_RECON_DUCKDB_PATH to a writable location")
    from m3_recon.storage import WarehouseLockedError, connect_file

    try:
        with connect_file(path, wait_seconds=0) as conn:
            tables = conn.execute("SELECT count(*) FROM duckdb_tables()").fetchone()[0]
    except WarehouseLockedError as exc:
        return Check("warehouse", "fail", str(exc),
                     "close the program holding it (an analyst's DuckDB or BI session blocks every write), "
                     "or switch to M3_RECON_WAREHOUSE=ducklake")
    except duckdb.IOException as exc:
        return Check("warehouse", "fail", f"DuckDB file {path}: {exc}", "set M3_RECON_DUCKDB_PATH to a writable file")
    except duckdb.Error as exc:
        return Check("warehouse", "fail", f"DuckDB file {path}: {exc}",
                     "set M3_RECON_DUCKDB_PATH to a DuckDB file written by this DuckDB version")
    return Check("warehouse", "ok", f"DuckDB file {path} opens read-write ({tables} tables)")


def _check_ducklake(storage, lake) -> Check:
    try:
        with lake.get_connection() as conn:
            tables = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = ?",
                                  [storage.LAKE_NAME]).fetchone()[0]
    except (storage.WarehouseUnavailableError, duckdb.Error) as exc:
        return Check("warehouse", "fail", f"DuckLake: {exc}",
                     f"check {storage.CATALOG_VARIABLE} and {storage.DATA_PATH_VARIABLE}")
    if "://" not in lake.data_path and not os.access(lake.data_path, os.W_OK):
        return Check("warehouse", "fail", f"DuckLake data path {lake.data_path} is not writable",
                     f"set {storage.DATA_PATH_VARIABLE} to a directory every run can write")
    return Check("warehouse", "ok", f"DuckLake catalog attached ({tables} tables), data in {lake.data_path}")


def check_instance() -> list[Check]:
    from m3_recon.cli import POSTGRES_URL_VARIABLE, ensure_dagster_home, instance_mode
    from m3_recon.settings import SettingsError

    try:
        home = ensure_dagster_home()
        if instance_mode() == "postgres":
            unreachable = _postgres_unreachable(os.environ[POSTGRES_URL_VARIABLE])
            if unreachable:
                return [Check("dagster instance", "fail", f"PostgreSQL refused the connection: {unreachable}",
                              f"check {POSTGRES_URL_VARIABLE} (postgresql+psycopg2://user:password@host:5432/db) "
                              "and that the database accepts connections from this machine")]
        instance = dg.DagsterInstance.get()
    except SettingsError as exc:
        return [Check("dagster instance", "fail", str(exc), "fix the variable named")]
    except Exception as exc:  # noqa: BLE001 - any failure to open the instance is the finding
        return [Check("dagster instance", "fail", f"cannot open the instance in {os.environ['DAGSTER_HOME']}: "
                      f"{type(exc).__name__}: {_without_secrets(str(exc))}",
                      "check $DAGSTER_HOME/dagster.yaml and the variables it reads")]
    with instance:
        kind = type(instance.run_storage).__name__.removesuffix("RunStorage")
        checks = [Check("dagster instance", "ok", f"{kind} storage for {home} reachable "
                        f"({instance.get_runs_count()} runs recorded)")]
        checks.append(_check_writer_pool(instance))
        checks.extend(_check_held_slots(instance))
        checks.append(_check_daemon(instance))
    return checks


def _postgres_unreachable(url: str) -> str:
    """Why PostgreSQL refuses a connection (libpq's own words, without the URL), or "" when it accepts one."""
    import psycopg2

    from m3_recon.storage import libpq_url

    try:
        psycopg2.connect(libpq_url(url), connect_timeout=int(DOCTOR_TIMEOUT_SECONDS)).close()
    except psycopg2.Error as exc:
        return " ".join(_without_secrets(str(exc)).split())
    return ""


def _without_secrets(text: str) -> str:
    url = os.environ.get("M3_RECON_DAGSTER_POSTGRES_URL", "")
    return text.replace(url, "<M3_RECON_DAGSTER_POSTGRES_URL>") if url else text


def _check_writer_pool(instance: dg.DagsterInstance) -> Check:
    from m3_recon.storage import warehouse_backend

    config = instance.event_log_storage.get_pool_config()
    limits = {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}
    limit = limits.get(WRITER_POOL, config.default_pool_limit)
    file_backend = warehouse_backend() == "duckdb"
    if limit is None:
        return Check("writer pool", "warn", f"pool {WRITER_POOL} has no limit: writers of parallel runs overlap",
                     "set concurrency: pools: default_limit: 1 in dagster.yaml, or "
                     f"`dagster instance concurrency set {WRITER_POOL} 1`")
    if limit != 1 and file_backend:
        return Check("writer pool", "fail", f"pool {WRITER_POOL} allows {limit} writers at once, but a DuckDB file "
                     "takes one", f"`dagster instance concurrency set {WRITER_POOL} 1`")
    per_run = getattr(config.pool_granularity, "value", None) == "run"
    if per_run and file_backend and _close_executor() != dg.in_process_executor.name:
        return Check("writer pool", "warn", f"pool {WRITER_POOL} serialises whole runs, but the close runs each step "
                     "in its own process, so steps of one run contend for the DuckDB file",
                     "give the code location executor=dg.in_process_executor (m3_recon/definitions.py)")
    return Check("writer pool", "ok", f"pool {WRITER_POOL}: {limit} writer {'run' if per_run else 'step'}(s) at a time")


def _check_held_slots(instance: dg.DagsterInstance) -> list[Check]:
    """Who holds a pool slot now; a slot held by a dead or ended run blocks every later writer."""
    from m3_recon.run_guard import slot_holders

    checks = []
    for holder in slot_holders(instance):
        if holder.stale:
            checks.append(Check("pool slot", "fail", f"{holder.pool} held by {holder.describe()}",
                                "the next `m3-recon backfill` frees it before starting, or free it in the UI "
                                "(Deployment > Concurrency)"))
        else:
            checks.append(Check("pool slot", "ok", f"{holder.pool} held by {holder.describe()}"))
    return checks


def _close_executor() -> str:
    from m3_recon.definitions import defs

    return defs.resolve_job_def("payout_close").executor_def.name


def _check_daemon(instance: dg.DagsterInstance) -> Check:
    beats = instance.get_daemon_heartbeats()
    if not beats:
        return Check("dagster daemon", "warn", "no daemon has reported to this instance: schedules, sensors and "
                     "queued runs do not start", "run `dagster-daemon run` with the same DAGSTER_HOME")
    age = time.time() - max(beat.timestamp for beat in beats.values())
    if age > DAEMON_HEARTBEAT_STALE_SECONDS:
        return Check("dagster daemon", "warn", f"last daemon heartbeat {age / 60:.0f} min ago",
                     "start `dagster-daemon run` (or its systemd unit) with the same DAGSTER_HOME")
    return Check("dagster daemon", "ok", f"running ({len(beats)} daemons, heartbeat {age:.0f} s ago)")


# -- the command --------------------------------------------------------------------------------------
CHECKS: tuple[Callable[[], list[Check]], ...] = (
    check_stripe, check_paytrace, check_heartland, check_m3, check_warehouse, check_instance)


def run_checks(checks: Iterable[Callable[[], list[Check]]] = CHECKS) -> list[Check]:
    """Every check; one that crashes becomes a failed line rather than ending the doctor."""
    results: list[Check] = []
    for check in checks:
        try:
            results.extend(check())
        except Exception as exc:  # noqa: BLE001 - a crashing check is itself a finding
            name = check.__name__.removeprefix("check_")
            results.append(Check(name, "fail", f"{type(exc).__name__}: {_without_secrets(str(exc))}",
                                 "see the message; the variables for this check are listed in README.md"))
    return results


def run_doctor(out: TextIO = sys.stdout) -> int:
    results = run_checks()
    for result in results:
        print(result.line(), file=out)
    failed = sum(result.status == "fail" for result in results)
    print(f"{failed} check(s) failed" if failed else "all configured connections work", file=out)
    return 1 if failed else 0

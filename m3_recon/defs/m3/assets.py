"""M3 staging assets: daily snapshots of open customer invoices, and the latest one typed for matching.

M3 can only say what is open *now*. A run for partition day D therefore reads the open items once and
stores, for each day of its partition range, the invoices dated on or before that day with their
outstanding amount at the time of reading (``taken_at_utc``); the nightly run just after D ends makes
that D's closing open-item list. Re-running a day replaces its snapshot in one transaction. Amounts
are converted to integer minor units with ``Decimal`` in the client; the GetInvTotInfo record itself
is kept in ``raw`` so an auditor can see exactly what M3 said.
"""

# No `from __future__ import annotations` here: Dagster reads the asset annotations at runtime.
import json
import warnings
from datetime import datetime, timedelta, timezone

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from m3_recon import settings, wire
from m3_recon.clients.m3 import m3_date, minor_units
from m3_recon.defs.m3.resources import M3Resource
from m3_recon.defs.metadata import markdown_table, money_totals
from m3_recon.money import money
from m3_recon.partitions import daily_partitions
from m3_recon.reconcile.matching import MatchingRules, normalised
from m3_recon.warehouse import documents_table, naive_utc, replace_snapshot, replace_window

warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is beta in 1.13

GROUP = "m3"
OWNERS = ["team:finance-systems"]


def _m3_date(field: str) -> str:
    return wire.calendar_date_sql(f"raw->>'$.{field}'")  # yyyyMMdd (or ISO 8601); blank or 0 is no date


OPEN_INVOICES_DDL = """
CREATE TABLE IF NOT EXISTS raw_m3_open_invoices (
    snapshot_date DATE NOT NULL, taken_at_utc TIMESTAMP NOT NULL,
    cono INTEGER NOT NULL, divi VARCHAR NOT NULL, payer VARCHAR NOT NULL, customer VARCHAR NOT NULL,
    invoice_number VARCHAR NOT NULL, invoice_year INTEGER NOT NULL, currency VARCHAR NOT NULL,
    exchange_rate DECIMAL(13, 6), original_minor BIGINT NOT NULL, outstanding_minor BIGINT NOT NULL,
    local_currency VARCHAR, outstanding_local_minor BIGINT, invoice_date DATE, due_date DATE, reco INTEGER,
    accounting_year INTEGER, journal_number INTEGER, journal_sequence INTEGER, raw JSON NOT NULL,
    loaded_at_utc TIMESTAMP NOT NULL, dagster_run_id VARCHAR
)"""

OPEN_INVOICES_SELECT = f"""
SELECT snapshot_date, taken_at_utc,
       CAST(raw->>'$.CONO' AS INTEGER), raw->>'$.DIVI', raw->>'$.PYNO', raw->>'$.CUNO', raw->>'$.CINO',
       CAST(raw->>'$.INYR' AS INTEGER), raw->>'$.CUCD', CAST(raw->>'$.ARAT' AS DECIMAL(13, 6)),
       original_minor, outstanding_minor, raw->>'$.LOCD', outstanding_local_minor,
       {_m3_date('IVDT')}, {_m3_date('DUDT')}, CAST(raw->>'$.RECO' AS INTEGER),
       CAST(raw->>'$.YEA4' AS INTEGER), CAST(raw->>'$.JRNO' AS INTEGER), CAST(raw->>'$.JSNO' AS INTEGER),
       raw, loaded_at_utc, dagster_run_id
FROM (SELECT CAST(raw AS JSON) AS raw, * EXCLUDE (raw) FROM docs)"""



def core_open_invoices_sql(rules: MatchingRules) -> str:
    """The latest snapshot; the reference is normalised exactly as the matcher normalises payments'."""
    return f"""
CREATE OR REPLACE TABLE core_open_invoices AS
SELECT customer, payer, invoice_number, invoice_year, currency, original_minor, outstanding_minor,
       local_currency, outstanding_local_minor, exchange_rate, invoice_date, due_date,
       {normalised('invoice_number', rules)} AS reference_normalised, cono, divi, snapshot_date, taken_at_utc
FROM raw_m3_open_invoices
WHERE snapshot_date = (SELECT max(snapshot_date) FROM raw_m3_open_invoices)
ORDER BY customer, invoice_date, invoice_number"""


def _snapshot_docs(records: list[dict], days: list, taken_at: datetime, run_id: str) -> pa.Table:
    """One row per (day, invoice dated on or before that day), amounts in minor units."""
    columns: dict[str, list] = {name: [] for name in (
        "raw", "snapshot_date", "original_minor", "outstanding_minor", "outstanding_local_minor")}
    typed = [(record, m3_date(record["IVDT"]), json.dumps(record, separators=(",", ":"))) for record in records]
    for day in days:
        for record, invoice_date, raw in typed:
            if invoice_date is not None and invoice_date > day:
                continue
            columns["raw"].append(raw)
            columns["snapshot_date"].append(day)
            columns["original_minor"].append(minor_units(record["CUAM"], record["CUCD"]))
            columns["outstanding_minor"].append(minor_units(record["OCUA"], record["CUCD"]))
            columns["outstanding_local_minor"].append(minor_units(record.get("OAMT", ""), record.get("LOCD", "")))
    n = len(columns["raw"])
    return pa.table({
        "raw": pa.array(columns["raw"], pa.string()),
        "snapshot_date": pa.array(columns["snapshot_date"], pa.date32()),
        "taken_at_utc": pa.array([naive_utc(taken_at)] * n, pa.timestamp("us")),
        "original_minor": pa.array(columns["original_minor"], pa.int64()),
        "outstanding_minor": pa.array(columns["outstanding_minor"], pa.int64()),
        "outstanding_local_minor": pa.array(columns["outstanding_local_minor"], pa.int64()),
        "loaded_at_utc": pa.array([naive_utc(datetime.now(timezone.utc))] * n, pa.timestamp("us")),
        "dagster_run_id": pa.array([run_id] * n, pa.string()),
    })


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"m3", "duckdb"}, pool="duckdb_writer",
    description="Open customer invoices of the M3 division (ARS200MI LstInvByDivi per payer of CRS610MI + "
                "GetInvTotInfo, proven complete against LstInvoices per customer; an incomplete read fails) as a "
                "daily snapshot: per partition day, the invoices dated on or before it with their outstanding "
                "amount when the snapshot was taken.",
)
def raw_m3_open_invoices(context: dg.AssetExecutionContext, m3: M3Resource,
                         duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = context.partition_time_window
    start, end = window.start.astimezone(timezone.utc), window.end.astimezone(timezone.utc)
    days = [(start + timedelta(days=i)).date() for i in range((end - start).days)]
    taken_at = datetime.now(timezone.utc)
    records = m3.client().open_invoices()  # raises, and nothing is stored, when the read cannot be shown complete
    context.log.info(f"M3 reports {len(records)} open invoices, read per {m3.open_items_paging} and checked against "
                     f"ARS200MI/LstInvoices per customer; snapshot days {days[0]}..{days[-1]}")
    docs = _snapshot_docs(records, days, taken_at, context.run.run_id)
    with duckdb.get_connection() as conn:
        rows = replace_window(conn, table="raw_m3_open_invoices", ddl=OPEN_INVOICES_DDL,
                              insert_select=OPEN_INVOICES_SELECT, docs=docs, window_column="snapshot_date",
                              start=start, end=end)
        by_currency = conn.execute(
            "SELECT currency, count(*), sum(outstanding_minor) FROM raw_m3_open_invoices WHERE snapshot_date = ? "
            "GROUP BY 1 ORDER BY 1", [days[-1]]).fetchall()
    return dg.MaterializeResult(metadata={
        "rows": rows,
        "snapshot_days": len(days),
        "open_items_paging": m3.open_items_paging,
        "open_invoices_read": len(records),
        "taken_at_utc": taken_at.isoformat(timespec="seconds"),
        "open_invoices_last_day": sum(n for _, n, _ in by_currency),
        "outstanding_last_day": markdown_table(["currency", "invoices", "outstanding"],
                                               [(c, n, money(s, c)) for c, n, s in by_currency]),
    })


@dg.asset(
    deps=[raw_m3_open_invoices], group_name=GROUP, owners=OWNERS, kinds={"m3", "duckdb"}, pool="duckdb_writer",
    description="The latest open-invoice snapshot, typed for matching: customer, invoice number and year, "
                "currency, original and outstanding minor units, invoice and due dates, and the reference "
                "normalised by the matching rules (data/matching_rules.toml).",
)
def core_open_invoices(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        conn.execute(core_open_invoices_sql(MatchingRules.load()))
        by_currency = conn.execute(
            "SELECT currency, count(*), sum(outstanding_minor), max(snapshot_date) FROM core_open_invoices "
            "GROUP BY 1 ORDER BY 1").fetchall()
    return dg.MaterializeResult(metadata={
        "rows": sum(n for _, n, _, _ in by_currency),
        "snapshot_date": str(max((d for *_, d in by_currency), default=None)),
        **money_totals("outstanding", [(c, s) for c, _, s, _ in by_currency]),
    })


def customers_select(email_field: str) -> str:
    """The customer master's typed columns; values are trimmed (M3 pads them to the field length)."""
    return f"""
SELECT trim(raw->>'$.CUNO') AS customer, trim(raw->>'$.CUNM') AS name, trim(raw->>'$.CUCD') AS currency,
       trim(raw->>'$.STAT') AS status, nullif(trim(raw->>'$.{email_field}'), '') AS email,
       raw, loaded_at_utc, dagster_run_id
FROM (SELECT CAST(raw AS JSON) AS raw, loaded_at_utc, dagster_run_id FROM snapshot_docs)
WHERE nullif(trim(raw->>'$.CUNO'), '') IS NOT NULL"""


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"m3", "duckdb"}, pool="duckdb_writer",
    description="M3's customer master (CRS610MI LstByNumber, every page): customer number, name, currency, "
                "status and e-mail (field M3_CUSTOMER_EMAIL_FIELD, default EMAL), for the customer cross-reference.",
)
def raw_m3_customers(context: dg.AssetExecutionContext, m3: M3Resource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    records = m3.client().customers()
    email_field = settings.m3_customer_email_field()
    with duckdb.get_connection() as conn:
        rows = replace_snapshot(conn, table="raw_m3_customers", select_sql=customers_select(email_field),
                                docs=documents_table(records, context.run.run_id))
        with_email = conn.execute("SELECT count(email) FROM raw_m3_customers").fetchone()[0]
    return dg.MaterializeResult(metadata={"customers": rows, "with_email": with_email, "email_field": email_field})

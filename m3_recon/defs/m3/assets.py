"""M3 staging assets: daily snapshots of open customer invoices, and the latest one typed for matching.

M3 can only say what is open *now*. A run for partition day D therefore reads the open items once and
stores, for each day of its partition range, the invoices dated on or before that day with their
outstanding amount at the time of reading (``taken_at_utc``); the nightly run just after D ends makes
that D's closing open-item list. Re-running a day replaces its snapshot in one transaction. Each
GetInvTotInfo record is typed once, in DuckDB, whatever the number of days: amounts become integer
minor units by string arithmetic (never a float), and a record whose amounts or invoice date do not
read fails the run with the client's own reader's message (``minor_units`` / ``m3_date``). The record
itself is kept in ``raw`` so an auditor can see exactly what M3 said.
"""

# No `from __future__ import annotations` here: Dagster reads the asset annotations at runtime.
import json
import warnings
from datetime import datetime, timedelta, timezone
from typing import Iterable

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from m3_recon import settings, wire
from m3_recon.heap import bulk_work
from m3_recon.clients.m3 import m3_date, minor_units
from m3_recon.defs.m3.resources import M3Resource
from m3_recon.defs.metadata import markdown_table, money_totals
from m3_recon.errors import VendorRequestError
from m3_recon.money import exponent_sql, money
from m3_recon.partitions import daily_partitions
from m3_recon.reconcile.matching import MatchingRules, normalised
from m3_recon.warehouse import documents_table, naive_utc, replace_snapshot, replace_window

warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is beta in 1.13

GROUP = "m3"
OWNERS = ["team:finance-systems"]


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

# The GetInvTotInfo fields the typed columns come from, each read from the record's JSON in one pass.
RECORD_FIELDS = ("CONO", "DIVI", "PYNO", "CUNO", "CINO", "INYR", "CUCD", "ARAT", "CUAM", "OCUA", "LOCD", "OAMT",
                 "IVDT", "DUDT", "RECO", "YEA4", "JRNO", "JSNO")
REQUIRED_FIELDS = ("CUCD", "CUAM", "OCUA", "IVDT")  # the snapshot cannot be cut or valued without them
AMOUNTS = {"original": ("CUAM", "CUCD"), "outstanding": ("OCUA", "CUCD"), "outstanding_local": ("OAMT", "LOCD")}


def _field(name: str) -> str:
    return f"f[{RECORD_FIELDS.index(name) + 1}]"


def _amount_sql(text: str, places: str) -> tuple[str, str]:
    """DuckDB: whether the trimmed amount text ``text`` with ``places`` decimals (SQL expressions) reads as
    ``minor_units`` reads it, and its minor units. The grammar of ``wire.PLAIN_DECIMAL`` by one full match, then
    string arithmetic: ``wire.minor_units_sql`` reads the parts by regular-expression groups, which cost 3 s for
    the 450,000 amounts of a 150,000-invoice snapshot. Kept as two columns and combined in a later projection:
    DuckDB evaluates the two, put into one ``CASE``, five times slower."""
    unsigned = f"ltrim({text}, '+-')"
    whole, fraction = f"split_part({unsigned}, '.', 1)", f"split_part({unsigned}, '.', 2)"
    digits = f"ltrim({whole} || rpad(left({fraction}, {places}), {places}, '0'), '0')"
    sign = f"CASE WHEN starts_with({text}, '-') THEN '-' ELSE '' END"
    reads = (f"regexp_full_match({text}, '^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)$') "
             f"AND rtrim(substr({fraction}, {places} + 1), '0') = ''")
    value = f"nullif(TRY_CAST({sign} || coalesce(nullif({digits}, ''), '0') AS BIGINT), {-wire.BIGINT_MAX - 1})"
    return reads, value


# One row per GetInvTotInfo record (``records``: raw, ordinal) with its typed columns, the JSON read once; a
# ``readable`` flag says whether its amounts and invoice date read (``minor_units``/``m3_date`` say why not).
TYPED_RECORDS_SQL = f"""
WITH fields AS (
    SELECT ordinal, raw, json_extract_string(raw, {[f'$.{name}' for name in RECORD_FIELDS]}) AS f FROM records
), amount_texts AS (
    SELECT *, {", ".join(f"trim(coalesce({_field(amount)}, '')) AS {name}_text, "
                         f"{exponent_sql(f'coalesce({_field(currency)}, {chr(39)}{chr(39)})')} AS {name}_places"
                         for name, (amount, currency) in AMOUNTS.items())}
    FROM fields
), amounts AS (
    SELECT *, {", ".join(f"{reads} AS {name}_reads, {value} AS {name}_value"
                         for name in AMOUNTS for reads, value in [_amount_sql(f'{name}_text', f'{name}_places')])}
    FROM amount_texts
)
SELECT ordinal, raw, CAST({_field('CONO')} AS INTEGER) AS cono, {_field('DIVI')} AS divi,
       {_field('PYNO')} AS payer, {_field('CUNO')} AS customer, {_field('CINO')} AS invoice_number,
       CAST({_field('INYR')} AS INTEGER) AS invoice_year, {_field('CUCD')} AS currency,
       CAST({_field('ARAT')} AS DECIMAL(13, 6)) AS exchange_rate,
       {", ".join(f"CASE WHEN {name}_text = '' THEN 0 WHEN {name}_reads THEN {name}_value END AS {name}_minor"
                  for name in AMOUNTS)},
       {_field('LOCD')} AS local_currency,
       {wire.calendar_date_sql(_field('IVDT'))} AS invoice_date, {wire.calendar_date_sql(_field('DUDT'))} AS due_date,
       CAST({_field('RECO')} AS INTEGER) AS reco, CAST({_field('YEA4')} AS INTEGER) AS accounting_year,
       CAST({_field('JRNO')} AS INTEGER) AS journal_number, CAST({_field('JSNO')} AS INTEGER) AS journal_sequence,
       {" AND ".join(f"{_field(name)} IS NOT NULL" for name in REQUIRED_FIELDS)}
       AND (trim({_field('IVDT')}) IN ('', '0')) = (invoice_date IS NULL)
       AND {" AND ".join(f"{name}_minor IS NOT NULL" for name in AMOUNTS)} AS readable
FROM amounts"""

# Per snapshot day (``$days``), the invoices dated on or before it (or undated).
SNAPSHOT_DOCS_SQL = """
SELECT r.* EXCLUDE (ordinal, readable), d.snapshot_date, $taken_at AS taken_at_utc,
       $loaded_at AS loaded_at_utc, $run_id AS dagster_run_id
FROM typed_records r, (SELECT unnest($days::DATE[]) AS snapshot_date) d
WHERE r.invoice_date IS NULL OR r.invoice_date <= d.snapshot_date
ORDER BY d.snapshot_date, r.ordinal"""

OPEN_INVOICES_SELECT = """
SELECT snapshot_date, taken_at_utc, cono, divi, payer, customer, invoice_number, invoice_year, currency, exchange_rate,
       original_minor, outstanding_minor, local_currency, outstanding_local_minor, invoice_date, due_date, reco,
       accounting_year, journal_number, journal_sequence, CAST(raw AS JSON), loaded_at_utc, dagster_run_id
FROM docs"""


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


_compact_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # one encoder for every record


def _taken(records: Iterable[dict]) -> tuple[list[dict], list[str]]:
    """Each record and its JSON text, serialised as it is taken (while M3 still answers the later ones)."""
    taken, texts = [], []
    for record in records:
        taken.append(record)
        texts.append(_compact_json(record))
    return taken, texts


def _snapshot_docs(conn, records: list[dict], texts: list[str], days: list, taken_at: datetime,
                   run_id: str) -> pa.Table:
    """One row per (day, invoice dated on or before that day) with its typed columns and amounts in minor units:
    each record's text (``texts``, from ``_taken``) read once, in DuckDB, whatever the number of days. A record whose
    amounts or invoice date do not read fails the snapshot with the reader's own message."""
    raw = pa.array(texts, pa.string())
    conn.register("records", pa.table({"ordinal": pa.array(range(len(records)), pa.int64()), "raw": raw}))
    try:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE typed_records AS {TYPED_RECORDS_SQL}")
    finally:
        conn.unregister("records")
    try:
        unreadable = conn.execute("SELECT ordinal FROM typed_records WHERE NOT readable ORDER BY ordinal "
                                  "LIMIT 1").fetchone()
        if unreadable is not None:
            raise _unreadable(records[unreadable[0]])
        return conn.execute(SNAPSHOT_DOCS_SQL, {"days": days, "taken_at": naive_utc(taken_at), "run_id": run_id,
                                                "loaded_at": naive_utc(datetime.now(timezone.utc))}).to_arrow_table()
    finally:
        conn.execute("DROP TABLE IF EXISTS typed_records")


def _unreadable(record: dict) -> Exception:
    """Why a GetInvTotInfo record cannot be snapshotted: a missing field, or ``minor_units``' / ``m3_date``'s message."""
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        return VendorRequestError("M3", f"ARS200MI/GetInvTotInfo answered invoice {record.get('CINO', '?')} without "
                                  f"{', '.join(missing)}")
    try:
        for value, currency in ((record["CUAM"], record["CUCD"]), (record["OCUA"], record["CUCD"]),
                                (record.get("OAMT", ""), record.get("LOCD", ""))):
            minor_units(value, currency)
        m3_date(record["IVDT"])
    except (VendorRequestError, ValueError) as exc:
        return exc
    return VendorRequestError("M3", f"ARS200MI/GetInvTotInfo answered an unreadable record: {record}")


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
    # raises, and nothing is stored, when the read cannot be shown complete
    with bulk_work():  # 10^5 records and their texts, kept until the read is done
        records, texts = _taken(m3.client().iter_open_invoices())
    context.log.info(f"M3 reports {len(records)} open invoices, read per {m3.open_items_paging} and checked against "
                     f"ARS200MI/LstInvoices per customer; snapshot days {days[0]}..{days[-1]}")
    with duckdb.get_connection() as conn:
        docs = _snapshot_docs(conn, records, texts, days, taken_at, context.run.run_id)
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

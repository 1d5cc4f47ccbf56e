"""The DuckDB warehouse: how tables are created and how a window of rows is replaced atomically.

Every staging write in m3-recon is "delete the window, insert what the vendor returned for it" inside
one transaction, so re-materialising a day replaces that day and never duplicates a row. Typed
columns are projected from the vendor's raw JSON in SQL (set-based), with the JSON kept for audit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb
import pandas as pd
import pyarrow as pa

from m3_recon import decimal_json
from m3_recon.sql import ensure_table, literal


QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS core_quarantine (
    processor VARCHAR NOT NULL, source_id VARCHAR, table_name VARCHAR NOT NULL, partition_date DATE NOT NULL,
    reason VARCHAR NOT NULL, raw_payload JSON, quarantined_at_utc TIMESTAMP NOT NULL, dagster_run_id VARCHAR
)"""


@dataclass(frozen=True)
class Rejection:
    """How a raw table turns away vendor objects it cannot store: ``reason_sql`` is a SQL expression
    over the VARCHAR column ``raw`` giving a reason (or NULL to keep the row); rejected objects go to
    ``core_quarantine`` under ``processor`` with ``source_id_sql`` and the window's first day."""

    processor: str
    reason_sql: str
    source_id_sql: str = "CASE WHEN json_valid(raw) THEN json_extract_string(raw, '$.id') END"


def json_fields(text_paths: Iterable[str], json_paths: Iterable[str] = (), column: str = "raw") -> str:
    """SQL: the JSON text ``column`` parsed once (``json_transform``) into a STRUCT of the dotted paths in
    ``text_paths``, each read as ``->>`` reads it (a string's value, any other value's JSON text, NULL when missing
    or null), and of those in ``json_paths`` as JSON text (as ``->``, but a JSON null is NULL). A projection that
    reads ``doc.source.id`` instead of ``raw->>'$.source.id'`` parses each document once, not once per field.
    ``column`` must be valid JSON (``json_transform`` raises otherwise)."""
    structure: dict = {}
    for paths, kind in ((text_paths, "VARCHAR"), (json_paths, "JSON")):
        for path in paths:
            *parents, leaf = path.split(".")
            node = structure
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = kind
    return f"json_transform({column}, {literal(decimal_json.dumps(structure))})"


def replace_window(conn: duckdb.DuckDBPyConnection, *, table: str, ddl: str, insert_select: str,
                   docs: pa.Table, window_column: str, start: datetime, end: datetime,
                   rejection: Rejection | None = None, run_id: str | None = None) -> int:
    """Replace the rows of ``table`` whose ``window_column`` lies in [start, end) with ``insert_select``.

    ``insert_select`` is a SELECT over the view ``docs`` (the Arrow table registered as ``docs_all``,
    less rejected objects). With a rejection, each object's reason is computed once, into a temporary
    table that the insert and the quarantine both read. Rejected objects replace this table's quarantine
    rows for the same window, so reloading a window never duplicates a quarantine entry. Returns rows
    inserted.
    """
    bounds = [naive_utc(start), naive_utc(end)]
    reason = rejection.reason_sql if rejection else "NULL"
    kind = "TABLE" if rejection else "VIEW"
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(ddl)
        conn.register("docs_all", docs)
        conn.execute(f"CREATE OR REPLACE TEMP {kind} docs_checked AS "
                     f"SELECT *, ({reason}) AS reject_reason FROM docs_all")
        conn.execute("CREATE OR REPLACE TEMP VIEW docs AS "
                     "SELECT * EXCLUDE (reject_reason) FROM docs_checked WHERE reject_reason IS NULL")
        conn.execute(f"DELETE FROM {table} WHERE {window_column} >= ? AND {window_column} < ?", bounds)
        inserted = conn.execute(f"INSERT INTO {table} {insert_select}").fetchone()[0]
        if rejection is not None:
            conn.execute(QUARANTINE_DDL)
            conn.execute("DELETE FROM core_quarantine WHERE table_name = ? AND partition_date >= CAST(? AS DATE) "
                         "AND partition_date < CAST(? AS DATE)", [table, *bounds])
            conn.execute(
                f"INSERT INTO core_quarantine SELECT ?, {rejection.source_id_sql}, ?, CAST(? AS DATE), reject_reason, "
                f"CASE WHEN json_valid(raw) THEN raw::JSON ELSE to_json(raw) END, ?, ? "
                f"FROM docs_checked WHERE reject_reason IS NOT NULL",
                [rejection.processor, table, bounds[0], naive_utc(datetime.now(timezone.utc)), run_id])
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    finally:
        conn.execute("DROP VIEW IF EXISTS docs")
        conn.execute(f"DROP {kind} IF EXISTS docs_checked")
        conn.unregister("docs_all")
    return inserted


def documents_table(objects: list[dict], run_id: str, **extra_columns: pa.Array) -> pa.Table:
    """Vendor objects as an Arrow table for ``replace_window``: ``raw`` JSON text, load time, run id, extras."""
    loaded_at = naive_utc(datetime.now(timezone.utc))
    n = len(objects)
    return pa.table({
        "raw": pa.array([decimal_json.dumps(obj) for obj in objects], pa.string()),
        "loaded_at_utc": pa.array([loaded_at] * n, pa.timestamp("us")),
        "dagster_run_id": pa.array([run_id] * n, pa.string()),
        **extra_columns,
    })


def page_documents(pages: list[str], key: str, run_id: str) -> pa.Table:
    """``documents_table`` of the objects listed under ``key`` in vendor list pages given as their JSON text:
    DuckDB splits the pages (each object written back as compact JSON, its values as sent), so no object is
    re-serialised in Python. A page that is not JSON fails loudly."""
    loaded_at = naive_utc(datetime.now(timezone.utc))
    with duckdb.connect() as conn:
        conn.register("vendor_pages", pa.table({"page": pa.array(pages, pa.string())}))
        listed = f"json_transform(page, {literal(decimal_json.dumps({key: ['JSON']}))}).{key}"
        return conn.execute(f"SELECT CAST(unnest({listed}) AS VARCHAR) AS raw, CAST(? AS TIMESTAMP) AS loaded_at_utc, "
                            "CAST(? AS VARCHAR) AS dagster_run_id FROM vendor_pages", [loaded_at, run_id]).to_arrow_table()


def rollback_quietly(conn: duckdb.DuckDBPyConnection) -> None:
    """Roll back after a failure without burying it: if COMMIT itself failed there is no transaction left."""
    try:
        conn.execute("ROLLBACK")
    except duckdb.Error:
        pass


def table_exists(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the warehouse (the connection's current database and schema, not a temp table) has ``name``."""
    return conn.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                        "AND schema_name = current_schema() AND table_name = ?", [name]).fetchone()[0] > 0


def naive_utc(moment: datetime) -> datetime:
    """DuckDB TIMESTAMP columns in m3-recon hold UTC wall time without a zone; convert explicitly."""
    if moment.tzinfo is None:
        raise ValueError("refusing a naive datetime: pass an aware UTC datetime")
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


_NULLABLE_INTEGERS = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
                      pa.int64(): pd.Int64Dtype()}


def query_frame(conn: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> pd.DataFrame:
    """A query result as pandas with nullable integers, so a NULL never turns money into floats."""
    table = conn.execute(sql, params or []).to_arrow_table()
    return table.to_pandas(types_mapper=_NULLABLE_INTEGERS.get)


def replace_days(conn: duckdb.DuckDBPyConnection, *, first_day, end_day, writes: list[tuple[str, dict[str, str], str]],
                 date_column: str = "settlement_date") -> None:
    """In one transaction, for each (table, columns, select_sql): create the table if needed, delete its rows
    with ``date_column`` in [first_day, end_day), and insert ``select_sql`` (which must yield those columns)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        for table, columns, select_sql in writes:
            ensure_table(conn, table, columns)
            conn.execute(f"DELETE FROM {table} WHERE {date_column} >= ? AND {date_column} < ?", [first_day, end_day])
            conn.execute(f"INSERT INTO {table} BY NAME {select_sql}")
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


def replace_snapshot(conn: duckdb.DuckDBPyConnection, *, table: str, select_sql: str, docs: pa.Table) -> int:
    """Replace a whole snapshot table (a vendor's master data read in full) with ``select_sql`` over ``docs``
    in one statement, so readers see the old snapshot or the new one. Returns the row count."""
    conn.register("snapshot_docs", docs)
    try:
        conn.execute(f"CREATE OR REPLACE TABLE {table} AS {select_sql}")
    finally:
        conn.unregister("snapshot_docs")
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

"""The DuckDB warehouse: how tables are created and how a window of rows is replaced atomically.

Every staging write in m3-recon is "delete the window, insert what the vendor returned for it" inside
one transaction, so re-materialising a day replaces that day and never duplicates a row. Typed
columns are projected from the vendor's raw JSON in SQL (set-based), with the JSON kept for audit.
"""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pyarrow as pa


def replace_window(conn: duckdb.DuckDBPyConnection, *, table: str, ddl: str, insert_select: str,
                   docs: pa.Table, window_column: str, start: datetime, end: datetime) -> int:
    """Replace the rows of ``table`` whose ``window_column`` lies in [start, end) with ``insert_select``.

    ``insert_select`` is a SELECT over the registered Arrow table ``docs``. Returns rows inserted.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(ddl)
        conn.execute(f"DELETE FROM {table} WHERE {window_column} >= ? AND {window_column} < ?",
                     [naive_utc(start), naive_utc(end)])
        conn.register("docs", docs)
        conn.execute(f"INSERT INTO {table} {insert_select}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.unregister("docs")
    return docs.num_rows


def naive_utc(moment: datetime) -> datetime:
    """DuckDB TIMESTAMP columns in m3-recon hold UTC wall time without a zone; convert explicitly."""
    if moment.tzinfo is None:
        raise ValueError("refusing a naive datetime: pass an aware UTC datetime")
    return moment.astimezone(timezone.utc).replace(tzinfo=None)

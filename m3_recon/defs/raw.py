"""Raw-layer wiring shared by the vendor assets: store one fetch window of vendor documents and read that window's
summaries for the run's metadata, on one connection."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from m3_recon.partitions import FetchWindow
from m3_recon.warehouse import Rejection, naive_utc, replace_window


def store_vendor_objects(duckdb: DuckDBResource, context: dg.AssetExecutionContext, window: FetchWindow,
                         docs: pa.Table, *, table: str, ddl: str, insert_select: str, window_column: str,
                         rejection: Rejection, summaries: Sequence[str] = ()) -> tuple[int, list[list[tuple]]]:
    """Replace ``window`` of ``table`` with the vendor's objects in ``docs`` (``documents_table`` or
    ``page_documents``: their JSON kept, the ones ``rejection`` turns away quarantined), then run each ``summaries``
    query with the window's [start, end) as its two parameters. Returns the rows stored and each summary's rows."""
    with duckdb.get_connection() as conn:
        rows = replace_window(conn, table=table, ddl=ddl, insert_select=insert_select, docs=docs,
                              window_column=window_column, start=window.start, end=window.end, rejection=rejection,
                              run_id=context.run.run_id)
        bounds = [naive_utc(window.start), naive_utc(window.end)]
        return rows, [conn.execute(sql, bounds).fetchall() for sql in summaries]

"""``core_settlement_lines`` and ``core_payouts``: thin Dagster wrappers over the canonical mappings.

Each run maps the processors' staging rows for its window to canonical candidates (SQL), splits
them with the pandera schema into valid rows and quarantined rows (``split_valid``), and replaces
the window of both tables in one transaction. A blocking check re-validates what was written.
"""
# No `from __future__ import annotations` here: Dagster reads the config annotation at runtime.
import warnings
from datetime import datetime, timezone

import dagster as dg
import duckdb
import pandas as pd
import pandera.pandas as pa
from dagster_duckdb import DuckDBResource

from m3_recon.canonical import heartland, paytrace, stripe
from m3_recon.canonical.model import PAYOUT_COLUMNS, PAYOUT_SCHEMA, SETTLEMENT_LINE_COLUMNS, SETTLEMENT_LINE_SCHEMA, split_valid
from m3_recon.canonical.references import with_text_references
from m3_recon.defs.metadata import markdown_table
from m3_recon.money import money
from m3_recon.partitions import LookbackConfig, FetchWindow, daily_partitions, fetch_window
from m3_recon.reconcile.matching import MatchingRules
from m3_recon.sql import create_table, nullable
from m3_recon.warehouse import QUARANTINE_DDL, naive_utc, query_frame, rollback_quietly, table_exists

warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is beta in 1.13

GROUP = "reconcile"
OWNERS = ["team:finance-systems"]


# One mapping per processor (m3_recon/canonical/<processor>.py); a placeholder is None until written.
MAPPINGS = tuple(m for m in (stripe.MAPPING, paytrace.MAPPING, heartland.MAPPING) if m is not None)


def load_candidates(conn: duckdb.DuckDBPyConnection, window: FetchWindow, sql_of, deps_of) -> pd.DataFrame:
    """Every processor's candidate rows for the window (processors with no staging yet contribute none)."""
    bounds = {"start": naive_utc(window.start), "end": naive_utc(window.end)}
    frames = [query_frame(conn, sql_of(m), bounds) for m in MAPPINGS if all(table_exists(conn, t) for t in deps_of(m))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def replace_canonical(conn: duckdb.DuckDBPyConnection, *, table: str, columns: dict[str, str], window: FetchWindow,
                      valid: pd.DataFrame, rejected: pd.DataFrame, run_id: str) -> None:
    """Replace the window of ``table`` with ``valid`` and of its quarantine entries with ``rejected``."""
    first, last = window.start.date(), window.end.date()
    select = ", ".join(f"CAST({c} AS {nullable(t)})" for c, t in columns.items())
    quarantined_at = naive_utc(datetime.now(timezone.utc))
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(create_table(table, columns))
        conn.execute(QUARANTINE_DDL)
        conn.execute(f"DELETE FROM {table} WHERE settlement_date >= ? AND settlement_date < ?", [first, last])
        conn.execute("DELETE FROM core_quarantine WHERE table_name = ? AND partition_date >= ? AND partition_date < ?",
                     [table, first, last])
        if len(valid):
            conn.register("valid_rows", valid)
            conn.execute(f"INSERT INTO {table} SELECT {select} FROM valid_rows")
        if len(rejected):
            identity = "source_id" if "source_id" in rejected.columns else "payout_id"
            conn.register("rejected_rows", rejected[["processor", identity, "partition_date", "reason", "raw_payload"]]
                          .rename(columns={identity: "source_id"}))
            conn.execute("INSERT INTO core_quarantine SELECT processor, source_id, ?, coalesce(partition_date, ?), "
                         "reason, raw_payload::JSON, ?, ? FROM rejected_rows", [table, first, quarantined_at, run_id])
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    finally:
        for name in ("valid_rows", "rejected_rows"):
            conn.unregister(name)


def conformity_check(conn: duckdb.DuckDBPyConnection, table: str, schema: pa.DataFrameSchema,
                     window: FetchWindow) -> dg.AssetCheckResult:
    """Re-validate what was written for the window with the pandera schema."""
    written = query_frame(conn, f"SELECT * FROM {table} WHERE settlement_date >= ? AND settlement_date < ?",
                          [window.start.date(), window.end.date()])
    try:
        schema.validate(written, lazy=True)
    except pa.errors.SchemaErrors as errors:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata={
            "failures": len(errors.failure_cases),
            "first_failures": dg.MetadataValue.md(errors.failure_cases.head(10).to_markdown(index=False))})
    return dg.AssetCheckResult(passed=True, metadata={"rows_checked": len(written)})


def _materialize(context, config, duckdb_resource, *, table, columns, schema, sql_of, deps_of, summarize):
    window = fetch_window(context.partition_time_window, config.lookback_days)
    with duckdb_resource.get_connection() as conn:
        candidates = load_candidates(conn, window, sql_of, deps_of)
        if candidates.empty:
            valid, rejected = candidates, candidates
        else:
            valid, rejected = split_valid(candidates, schema)
        replace_canonical(conn, table=table, columns=columns, window=window, valid=valid, rejected=rejected,
                          run_id=context.run.run_id)
        check = conformity_check(conn, table, schema, window)
        metadata = {"rows": len(valid), "quarantined": len(rejected), "fetch_window": str(window),
                    **summarize(conn, window)}
    if len(rejected):
        reasons = rejected["reason"].value_counts().head(10)
        metadata["quarantine_reasons"] = markdown_table(["reason", "rows"], reasons.items())
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def _lines_summary(conn, window) -> dict:
    by = conn.execute(
        "SELECT processor, currency, count(*), sum(amount_minor), sum(fee_minor), sum(net_minor) "
        "FROM core_settlement_lines WHERE settlement_date >= ? AND settlement_date < ? GROUP BY ALL ORDER BY ALL",
        [window.start.date(), window.end.date()]).fetchall()
    return {"totals_by_processor": markdown_table(
        ["processor", "currency", "lines", "amount", "fee", "net"],
        [(p, c, n, money(a, c), money(f, c), money(t, c)) for p, c, n, a, f, t in by], text_columns=2)}


def _payouts_summary(conn, window) -> dict:
    by = conn.execute(
        "SELECT processor, status, currency, count(*), sum(amount_minor) FROM core_payouts "
        "WHERE settlement_date >= ? AND settlement_date < ? GROUP BY ALL ORDER BY ALL",
        [window.start.date(), window.end.date()]).fetchall()
    return {"payouts_by_status": markdown_table(["processor", "status", "payouts", "amount"],
                                                [(p, s, n, money(a, c)) for p, s, c, n, a in by], text_columns=2)}


def _deps(name: str) -> list[dg.AssetKey]:
    keys = {dep for m in MAPPINGS for dep in getattr(m, name)}
    return [dg.AssetKey(k) for k in sorted(keys)]


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"duckdb", "pandera"}, pool="duckdb_writer", deps=_deps("settlement_line_deps"),
    check_specs=[dg.AssetCheckSpec("conforms_to_schema", asset="core_settlement_lines", blocking=True,
                                   description="Every written row passes the pandera schema.")],
    description="One row per money movement from any processor, in one canonical model (integer minor "
                "units, UTC instants, the processor's settlement day); rows that fail validation are in "
                "core_quarantine with a reason.",
)
def core_settlement_lines(context: dg.AssetExecutionContext, config: LookbackConfig,
                          duckdb: DuckDBResource) -> dg.MaterializeResult:
    text_references = MatchingRules.load().text_references  # invoice numbers written in free text
    return _materialize(context, config, duckdb, table="core_settlement_lines", columns=SETTLEMENT_LINE_COLUMNS,
                        schema=SETTLEMENT_LINE_SCHEMA,
                        sql_of=lambda m: with_text_references(m.settlement_lines_sql, m.processor, text_references),
                        deps_of=lambda m: m.settlement_line_deps, summarize=_lines_summary)


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"duckdb", "pandera"}, pool="duckdb_writer", deps=_deps("payout_deps"),
    check_specs=[dg.AssetCheckSpec("conforms_to_schema", asset="core_payouts", blocking=True,
                                   description="Every written row passes the pandera schema.")],
    description="One row per payout / deposit / batch: processor, id, currency, amount, arrival date, "
                "status, and whether its lines are itemised.",
)
def core_payouts(context: dg.AssetExecutionContext, config: LookbackConfig,
                 duckdb: DuckDBResource) -> dg.MaterializeResult:
    return _materialize(context, config, duckdb, table="core_payouts", columns=PAYOUT_COLUMNS, schema=PAYOUT_SCHEMA,
                        sql_of=lambda m: m.payouts_sql, deps_of=lambda m: m.payout_deps, summarize=_payouts_summary)

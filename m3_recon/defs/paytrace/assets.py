"""PayTrace staging assets: settlement batches and the transactions each batch settled.

A daily partition key is a PayTrace *business date*: the Pacific day whose 8:00 p.m. auto-settlement
closed the batch (a sale at 8:30 p.m. belongs to the next day's batch and partition). Each run reads
the batch dates of its partitions plus a look-back, then replaces that window of batch dates in DuckDB
in one transaction, keeping PayTrace's JSON in ``raw`` (a transaction's exactly as PayTrace sent it, never
re-serialised). Typed columns are computed in Python rather than projected in SQL: PayTrace's amounts
are decimal dollars, which DuckDB's JSON functions would read as doubles, and its timestamps are zone-less wall times that need the account's zone to become UTC.
A transaction or batch whose type, amount, created or settled time is missing or unreadable is still
stored, with that column empty, the defect named in ``defects`` (field -> what is wrong with it) and its
JSON kept: ``core_settlement_lines`` / ``core_payouts`` quarantine it with that defect and the batch's
tie-out shows it missing, instead of one bad row stopping the day's load. A batch record without a
settlement time (some PayTrace readings send none) settled at its business date's auto-settlement
cut-off, 8 p.m. in the account's zone: that time is used and ``settled_time_assumed`` says so.
"""

# No `from __future__ import annotations` here: Dagster reads the config annotation at runtime.
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource
from duckdb import DuckDBPyConnection

from m3_recon import decimal_json, wire
from m3_recon.clients.paytrace import VENDOR, cents, local_timestamp
from m3_recon.defs.metadata import money_totals
from m3_recon.defs.paytrace.resources import PayTraceResource
from m3_recon.errors import VendorRequestError
from m3_recon.partitions import LookbackConfig, FetchWindow, daily_partitions, logged_fetch_window
from m3_recon.sql import add_column, create_table
from m3_recon.warehouse import naive_utc, replace_window

warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is beta in 1.13

GROUP = "paytrace"
OWNERS = ["team:finance-systems"]
BATCH_WORKERS = 4

# (column, DuckDB type, Arrow type) in table order; every table ends with the raw JSON and load facts.
LOAD_COLUMNS = [("raw", "JSON NOT NULL", pa.string()), ("loaded_at_utc", "TIMESTAMP NOT NULL", pa.timestamp("us")),
                ("dagster_run_id", "VARCHAR", pa.string())]
BATCH_COLUMNS = [
    ("batch_number", "BIGINT NOT NULL", pa.int64()), ("batch_date", "DATE NOT NULL", pa.date32()),
    ("settled_at_utc", "TIMESTAMP", pa.timestamp("us")), ("transaction_count", "INTEGER", pa.int32()),
    ("sales_count", "INTEGER", pa.int32()), ("sales_amount_cents", "BIGINT", pa.int64()),
    ("refund_count", "INTEGER", pa.int32()), ("refund_amount_cents", "BIGINT", pa.int64()),
    ("net_amount_cents", "BIGINT", pa.int64()), ("currency", "VARCHAR NOT NULL", pa.string()),
    ("time_zone", "VARCHAR NOT NULL", pa.string()), *LOAD_COLUMNS,
    ("settled_time_assumed", "BOOLEAN", pa.bool_()), ("defects", "JSON", pa.string()),
]
TRANSACTION_COLUMNS = [
    ("transaction_id", "BIGINT NOT NULL", pa.int64()), ("batch_number", "BIGINT NOT NULL", pa.int64()),
    ("batch_date", "DATE NOT NULL", pa.date32()), ("transaction_type", "VARCHAR", pa.string()),
    ("amount_cents", "BIGINT", pa.int64()), ("signed_amount_cents", "BIGINT", pa.int64()),
    ("tax_amount_cents", "BIGINT", pa.int64()), ("currency", "VARCHAR NOT NULL", pa.string()),
    ("invoice_id", "VARCHAR", pa.string()), ("customer_id", "VARCHAR", pa.string()),
    ("customer_reference_id", "VARCHAR", pa.string()), ("description", "VARCHAR", pa.string()),
    ("card_last4", "VARCHAR", pa.string()), ("created_at_utc", "TIMESTAMP", pa.timestamp("us")),
    ("created_date_local", "DATE", pa.date32()), ("settled_at_utc", "TIMESTAMP", pa.timestamp("us")),
    ("approval_code", "VARCHAR", pa.string()), ("status_code", "VARCHAR", pa.string()),
    ("created_through", "VARCHAR", pa.string()), ("time_zone", "VARCHAR NOT NULL", pa.string()), *LOAD_COLUMNS,
    ("defects", "JSON", pa.string()),
]
# Columns added after the first release: a warehouse made by an older release gains them (at the end,
# so ``INSERT_SELECT``'s positions still match).
ADDED_COLUMNS = ("settled_time_assumed", "defects")
# PayTrace's v1 API carries no currency; a PayTrace merchant account settles in US dollars.
CURRENCY = "USD"
AUTO_SETTLE_TIME = time(20)  # PayTrace's default auto-settlement, in the account's zone: the batch cut-off


def _ddl(table: str, columns: list) -> str:
    return "; ".join([create_table(table, {name: kind for name, kind, _ in columns}),
                      *(add_column(table, name, kind) for name, kind, _ in columns if name in ADDED_COLUMNS)])


INSERT_SELECT = "SELECT * REPLACE (CAST(raw AS JSON) AS raw) FROM docs"


def _docs(columns: list, rows: list[dict]) -> pa.Table:
    return pa.table({name: pa.array([row[name] for row in rows], arrow) for name, _, arrow in columns})


RAW_TABLES = {"raw_paytrace_batches": BATCH_COLUMNS, "raw_paytrace_transactions": TRANSACTION_COLUMNS}


def store_window(conn: DuckDBPyConnection, table: str, rows: list[dict], window: FetchWindow) -> int:
    """Replace the batch dates of ``window`` in ``table`` with ``rows`` (from ``batch_row`` / ``transaction_row``)."""
    columns = RAW_TABLES[table]
    return replace_window(conn, table=table, ddl=_ddl(table, columns), insert_select=INSERT_SELECT,
                          docs=_docs(columns, rows), window_column="batch_date", start=window.start, end=window.end)




def _window(context: dg.AssetExecutionContext, config: LookbackConfig) -> FetchWindow:
    """The batch dates to replace, as UTC midnights: partitions plus look-back, never before the first one."""
    return logged_fetch_window(context, config, "PayTrace batch dates")


def _utc(moment: datetime | None) -> datetime | None:
    return naive_utc(moment) if moment is not None else None


def _typed(kind: str, identifier, build):
    """Run a row builder; a record that cannot be identified or parsed at all fails loudly, naming it."""
    try:
        return build()
    except (KeyError, TypeError, ValueError) as exc:
        raise VendorRequestError(VENDOR, f"{kind} {identifier} has a value m3-recon cannot read ({exc}); "
                                 "the raw response is not stored until this is resolved") from None


class _Reader:
    """Reads the fields of one PayTrace record; a value that cannot be read is None and its defect is kept."""

    def __init__(self):
        self.defects: dict[str, str] = {}

    def __call__(self, field: str, read):
        try:
            return read()
        except wire.WireValueError as exc:
            self.defects[field] = str(exc)
        except (AttributeError, KeyError, TypeError, ValueError):
            pass
        return None

    def count(self, record: dict, field: str) -> int | None:
        return self(field, lambda: wire.count(record.get(field)))

    def defects_json(self) -> str | None:
        return decimal_json.dumps(self.defects) if self.defects else None


def _no_value(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def batch_row(day: date, batch: dict, zone: ZoneInfo, run_id: str, loaded_at: datetime) -> dict:
    read = _Reader()
    assumed = _no_value(batch.get("settled"))
    settled = (datetime.combine(day, AUTO_SETTLE_TIME, tzinfo=zone) if assumed
               else read("settled", lambda: local_timestamp(batch["settled"], zone)))
    return {
        "batch_number": int(batch["number"]), "batch_date": day, "settled_at_utc": _utc(settled),
        "transaction_count": read.count(batch, "transaction_count"), "sales_count": read.count(batch, "sales_count"),
        "sales_amount_cents": read("sales_amount", lambda: cents(batch.get("sales_amount"))),
        "refund_count": read.count(batch, "refund_count"),
        "refund_amount_cents": read("refund_amount", lambda: cents(batch.get("refund_amount"))),
        "net_amount_cents": read("net_amount", lambda: cents(batch.get("net_amount"))),
        "currency": CURRENCY, "time_zone": zone.key,
        "raw": decimal_json.dumps(batch), "loaded_at_utc": loaded_at, "dagster_run_id": run_id,
        "settled_time_assumed": assumed, "defects": read.defects_json(),
    }


def transaction_row(batch_number: int, batch_date: date, txn: dict, zone: ZoneInfo, run_id: str,
                    loaded_at: datetime, raw: str | None = None) -> dict:
    """The typed row of one transaction; ``raw`` is its JSON as PayTrace sent it (else written from ``txn``)."""
    read = _Reader()
    amount = read("amount", lambda: cents(txn["amount"]))
    created = read("created.at", lambda: local_timestamp(txn["created"]["at"], zone))
    type_ = None if txn.get("transaction_type") is None else str(txn["transaction_type"])
    refund = type_ is not None and type_.strip().upper() == "REFUND"
    last4 = str((txn.get("credit_card") or {}).get("masked_number") or "")[-4:]
    return {
        "transaction_id": int(txn["transaction_id"]), "batch_number": batch_number, "batch_date": batch_date,
        "transaction_type": type_, "amount_cents": amount,
        "signed_amount_cents": None if amount is None else -amount if refund else amount,
        "tax_amount_cents": read("tax_amount", lambda: cents(txn.get("tax_amount"))), "currency": CURRENCY,
        "invoice_id": txn.get("invoice_id") or None, "customer_id": txn.get("customer_id") or None,
        "customer_reference_id": txn.get("customer_reference_id") or None,
        "description": txn.get("description") or None, "card_last4": last4 if last4.isdigit() else None,
        "created_at_utc": _utc(created), "created_date_local": created.date() if created else None,
        "settled_at_utc": _utc(read("settled", lambda: local_timestamp(txn.get("settled", ""), zone))),
        "approval_code": txn.get("approval_code") or None, "status_code": txn.get("status_code") or None,
        "created_through": read("created.through", lambda: txn["created"]["through"]) or None,
        "time_zone": zone.key, "raw": decimal_json.dumps(txn) if raw is None else raw, "loaded_at_utc": loaded_at,
        "dagster_run_id": run_id,
        "defects": read.defects_json(),
    }


def _loaded_at() -> datetime:
    return naive_utc(datetime.now(timezone.utc))


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"paytrace", "duckdb"}, pool="duckdb_writer",
    description="PayTrace settlement batches by business date (the Pacific day whose 8 p.m. auto-settlement "
                "closed them) with sales, refund and net totals in cents; the closest PayTrace figure to a deposit.",
)
def raw_paytrace_batches(context: dg.AssetExecutionContext, config: LookbackConfig,
                         paytrace: PayTraceResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = _window(context, config)
    client = paytrace.client()
    zone, loaded_at, run_id = client.zone(), _loaded_at(), context.run.run_id
    first, last = window.first_day, window.last_day
    rows = [_typed("batch", batch.get("number"), lambda: batch_row(day, batch, zone, run_id, loaded_at))
            for day, batch in client.batches(first, last)]
    with duckdb.get_connection() as conn:
        inserted = store_window(conn, "raw_paytrace_batches", rows, window)
    dates_with_batch = {row["batch_date"] for row in rows}
    all_dates = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    return dg.MaterializeResult(metadata={
        "rows": inserted,
        "batch_dates": f"{first}..{last} ({zone.key})",
        **money_totals("net_amount", [(CURRENCY, sum(row["net_amount_cents"] or 0 for row in rows))]),
        "batches_settled_time_assumed": sum(row["settled_time_assumed"] for row in rows),
        "dates_without_batch": dg.MetadataValue.json([d.isoformat() for d in all_dates if d not in dates_with_batch]),
    })


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"paytrace", "duckdb"}, pool="duckdb_writer", deps=[raw_paytrace_batches],
    check_specs=[dg.AssetCheckSpec("batches_sum_to_their_transactions", asset="raw_paytrace_transactions",
                                   description="Every batch of the window has as many transactions as it counts, and "
                                               "their signed amounts sum to its net total (the batch identity).")],
    description="The transactions each PayTrace batch settled (sales and refunds), by the batch's business "
                "date, with M3 invoice / customer references, amounts in cents and UTC timestamps.",
)
def raw_paytrace_transactions(context: dg.AssetExecutionContext, config: LookbackConfig,
                              paytrace: PayTraceResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = _window(context, config)
    client = paytrace.client()
    zone, loaded_at, run_id = client.zone(), _loaded_at(), context.run.run_id
    bounds = [window.start.date(), window.end.date()]
    with duckdb.get_connection() as conn:
        batches = conn.execute("SELECT batch_number, batch_date FROM raw_paytrace_batches "
                               "WHERE batch_date >= ? AND batch_date < ? ORDER BY batch_number", bounds).fetchall()
    with ThreadPoolExecutor(max_workers=BATCH_WORKERS) as pool:
        itemised = list(pool.map(lambda batch: client.batch_transactions_as_sent(batch[0]), batches))
    rows = [_typed("transaction", txn.get("transaction_id"),
                   lambda: transaction_row(number, day, txn, zone, run_id, loaded_at, raw))
            for (number, day), txns in zip(batches, itemised) for txn, raw in txns]
    awaiting = client.transactions(window.last_day, window.last_day, transaction_type="PENDING")
    with duckdb.get_connection() as conn:
        inserted = store_window(conn, "raw_paytrace_transactions", rows, window)
        out_of_balance = conn.execute(
            "SELECT b.batch_number FROM raw_paytrace_batches b LEFT JOIN ("
            "  SELECT batch_number, count(*) AS n, sum(signed_amount_cents) AS net FROM raw_paytrace_transactions"
            "  WHERE batch_date >= ? AND batch_date < ? GROUP BY batch_number) t USING (batch_number) "
            "WHERE b.batch_date >= ? AND b.batch_date < ? "
            "AND (coalesce(t.n, 0) <> b.transaction_count OR coalesce(t.net, 0) <> b.net_amount_cents) "
            "ORDER BY 1", bounds + bounds).fetchall()
    return dg.MaterializeResult(metadata={
        "rows": inserted,
        "batches_itemised": len(batches),
        "batches_out_of_balance": dg.MetadataValue.json([number for (number,) in out_of_balance]),
        **money_totals("sales", [(CURRENCY, sum(row["amount_cents"] or 0 for row in rows
                                                if row["transaction_type"] == "SALE"))]),
        **money_totals("refunds", [(CURRENCY, sum(row["amount_cents"] or 0 for row in rows
                                                  if row["transaction_type"] == "REFUND"))]),
        "unsettled_created_on_last_date": dg.MetadataValue.int(len(awaiting)),
    }, check_results=[dg.AssetCheckResult(
        check_name="batches_sum_to_their_transactions", passed=not out_of_balance, severity=dg.AssetCheckSeverity.WARN,
        metadata={"batches_checked": len(batches), "batches_out_of_balance": len(out_of_balance),
                  "examples": dg.MetadataValue.json([number for (number,) in out_of_balance[:10]])})])

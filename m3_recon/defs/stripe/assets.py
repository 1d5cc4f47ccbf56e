"""Stripe staging assets: balance transactions, payouts, and the itemised lines of each payout.

Each asset reads one fetch window (the partitions of the run plus a look-back), then replaces that
window in DuckDB in one transaction. Typed columns are projected from Stripe's JSON in SQL; the JSON
itself is kept in ``raw`` so an auditor can see exactly what Stripe said.
"""

# No `from __future__ import annotations` here: Dagster reads the config annotation at runtime.
import warnings
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from m3_recon import wire
from m3_recon.defs.metadata import markdown_table, money_totals
from m3_recon.defs.raw import store_vendor_objects
from m3_recon.defs.stripe.resources import StripeResource
from m3_recon.money import money
from m3_recon.partitions import LookbackConfig, FetchWindow, daily_partitions, logged_fetch_window
from m3_recon.warehouse import (Rejection, documents_table, json_fields, naive_utc, page_documents, replace_snapshot,
                                replace_window)

warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is beta in 1.13

GROUP = "stripe"
OWNERS = ["team:finance-systems"]
PAYOUT_LINE_WORKERS = 4


def _epoch_ts(text: str) -> str:
    return f"make_timestamp(TRY_CAST({text} AS BIGINT) * 1000000)"

def _integer(text: str) -> str:
    """Stripe minor units (a JSON integer, or its string) as BIGINT; a fraction is NULL, never rounded."""
    return wire.minor_units_sql(text, 0)

def rejection(object_name: str, amounts: tuple[str, ...] = ("amount",)) -> Rejection:
    """Objects without an id or a usable ``created`` cannot be placed in a day, and one whose ``amounts``
    are missing or unreadable cannot be booked: quarantine them, naming the defect."""
    unreadable = "".join(
        f"""
            WHEN coalesce(doc.{field}, '') = '' THEN 'the {object_name} has no {field}'
            WHEN {wire.amount_defect_sql(f'doc.{field}', 0)} IS NOT NULL
                THEN 'the {object_name} {field} ' || {wire.amount_defect_sql(f'doc.{field}', 0)}"""
        for field in amounts)
    return Rejection("stripe", f"""CASE
        WHEN NOT json_valid(raw) THEN 'the {object_name} is not valid JSON'
        ELSE list_transform([{json_fields(['id', 'created', *amounts])}], lambda doc: CASE
            WHEN doc.id IS NULL THEN 'the {object_name} has no id'
            WHEN TRY_CAST(doc.created AS BIGINT) IS NULL
                THEN 'the {object_name} has no usable created timestamp (got ' || coalesce(doc.created, 'nothing')
                     || ')'{unreadable}
            END)[1]
        END""")

BALANCE_TRANSACTIONS_DDL = """
CREATE TABLE IF NOT EXISTS raw_stripe_balance_transactions (
    id VARCHAR NOT NULL, type VARCHAR, reporting_category VARCHAR,
    amount BIGINT, fee BIGINT, net BIGINT, currency VARCHAR, exchange_rate DECIMAL(18, 8),
    status VARCHAR, balance_type VARCHAR, description VARCHAR,
    created_at_utc TIMESTAMP NOT NULL, available_on_utc TIMESTAMP,
    source_id VARCHAR, source_object VARCHAR, charge_id VARCHAR,
    m3_invoice VARCHAR, m3_customer VARCHAR, source_amount BIGINT, source_currency VARCHAR,
    card_brand VARCHAR, card_last4 VARCHAR, fee_details JSON, raw JSON NOT NULL,
    loaded_at_utc TIMESTAMP NOT NULL, dagster_run_id VARCHAR
)"""

# Each balance transaction is parsed once into ``doc``, and its ``source`` (an id, or the expanded object) once into
# ``src``; only a fee_details that is null (NULL in ``doc``) is read again, so the column keeps JSON's null.
BALANCE_TRANSACTION_FIELDS = json_fields(
    ["id", "type", "reporting_category", "amount", "fee", "net", "currency", "exchange_rate", "status",
     "balance_type", "description", "created", "available_on"], ["source", "fee_details"])
SOURCE_FIELDS = json_fields(
    ["id", "object", "charge", "metadata.m3_invoice", "metadata.m3_customer", "amount", "currency",
     "payment_method_details.card.brand", "payment_method_details.card.last4"], column="doc.source")

BALANCE_TRANSACTIONS_SELECT = f"""
SELECT doc.id, doc.type, doc.reporting_category,
       {_integer('doc.amount')}, {_integer('doc.fee')}, {_integer('doc.net')},
       doc.currency, TRY_CAST(doc.exchange_rate AS DECIMAL(18, 8)),
       doc.status, doc.balance_type, doc.description,
       {_epoch_ts('doc.created')}, {_epoch_ts('doc.available_on')},
       CASE WHEN starts_with(doc.source, '{{') THEN src.id ELSE doc.source->>'$' END,
       src.object,
       CASE src.object WHEN 'charge' THEN src.id WHEN 'refund' THEN src.charge WHEN 'dispute' THEN src.charge END,
       src.metadata.m3_invoice, src.metadata.m3_customer,
       {_integer('src.amount')}, src.currency,
       src.payment_method_details.card.brand, src.payment_method_details.card.last4,
       coalesce(doc.fee_details, raw->'$.fee_details'), raw, loaded_at_utc, dagster_run_id
FROM (SELECT *, {SOURCE_FIELDS} AS src
      FROM (SELECT CAST(raw AS JSON) AS raw, {BALANCE_TRANSACTION_FIELDS} AS doc, loaded_at_utc, dagster_run_id
            FROM docs))"""

PAYOUTS_DDL = """
CREATE TABLE IF NOT EXISTS raw_stripe_payouts (
    id VARCHAR NOT NULL, amount BIGINT, currency VARCHAR, status VARCHAR, arrival_date DATE,
    created_at_utc TIMESTAMP NOT NULL, automatic BOOLEAN, reconciliation_status VARCHAR,
    method VARCHAR, payout_type VARCHAR, balance_transaction_id VARCHAR,
    failure_balance_transaction_id VARCHAR, failure_code VARCHAR, failure_message VARCHAR,
    destination_id VARCHAR, trace_id VARCHAR, raw JSON NOT NULL,
    loaded_at_utc TIMESTAMP NOT NULL, dagster_run_id VARCHAR
)"""

PAYOUT_FIELDS = json_fields(
    ["id", "amount", "currency", "status", "arrival_date", "created", "automatic", "reconciliation_status", "method",
     "type", "balance_transaction", "failure_balance_transaction", "failure_code", "failure_message", "destination",
     "trace_id.value"])

PAYOUTS_SELECT = f"""
SELECT doc.id, {_integer('doc.amount')}, doc.currency, doc.status,
       CAST({_epoch_ts('doc.arrival_date')} AS DATE), {_epoch_ts('doc.created')},
       CAST(doc.automatic AS BOOLEAN), doc.reconciliation_status, doc.method,
       doc.type, doc.balance_transaction, doc.failure_balance_transaction,
       doc.failure_code, doc.failure_message, doc.destination, doc.trace_id.value,
       CAST(raw AS JSON), loaded_at_utc, dagster_run_id
FROM (SELECT *, {PAYOUT_FIELDS} AS doc FROM docs)"""

PAYOUT_LINES_DDL = """
CREATE TABLE IF NOT EXISTS raw_stripe_payout_lines (
    payout_id VARCHAR NOT NULL, payout_created_at_utc TIMESTAMP NOT NULL,
    balance_transaction_id VARCHAR NOT NULL, type VARCHAR, reporting_category VARCHAR,
    amount BIGINT, fee BIGINT, net BIGINT, currency VARCHAR, created_at_utc TIMESTAMP,
    source_id VARCHAR, raw JSON NOT NULL, loaded_at_utc TIMESTAMP NOT NULL, dagster_run_id VARCHAR
)"""

PAYOUT_LINE_FIELDS = json_fields(["id", "type", "reporting_category", "amount", "fee", "net", "currency", "created",
                                  "source"])

PAYOUT_LINES_SELECT = f"""
SELECT payout_id, payout_created_at_utc, doc.id, doc.type, doc.reporting_category,
       {_integer('doc.amount')}, {_integer('doc.fee')}, {_integer('doc.net')},
       doc.currency, {_epoch_ts('doc.created')}, doc.source, CAST(raw AS JSON), loaded_at_utc, dagster_run_id
FROM (SELECT *, {PAYOUT_LINE_FIELDS} AS doc FROM docs)"""

def _window(context: dg.AssetExecutionContext, config: LookbackConfig) -> FetchWindow:
    return logged_fetch_window(context, config, "Stripe created days (UTC)")

@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"stripe", "duckdb"}, pool="duckdb_writer",
    description="Every Stripe balance transaction by UTC `created` day, with the charge / refund / "
                "dispute it came from expanded so invoice and customer metadata are kept.",
)
def raw_stripe_balance_transactions(context: dg.AssetExecutionContext, config: LookbackConfig,
                                    stripe: StripeResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = _window(context, config)
    pages = stripe.client().balance_transaction_pages(window.start_epoch, window.end_epoch)
    docs = page_documents(pages, "data", context.run.run_id)
    rows, (by_category, [(pending,)]) = store_vendor_objects(
        duckdb, context, window, docs, table="raw_stripe_balance_transactions", ddl=BALANCE_TRANSACTIONS_DDL,
        insert_select=BALANCE_TRANSACTIONS_SELECT, window_column="created_at_utc",
        rejection=rejection("balance transaction", ("amount", "fee", "net")),
        summaries=["SELECT reporting_category, upper(currency), count(*), sum(net) "
                   "FROM raw_stripe_balance_transactions WHERE created_at_utc >= ? AND created_at_utc < ? "
                   "GROUP BY ALL ORDER BY ALL",
                   "SELECT count(*) FROM raw_stripe_balance_transactions WHERE status = 'pending' "
                   "AND created_at_utc >= ? AND created_at_utc < ?"])
    return dg.MaterializeResult(metadata={
        "rows": rows,
        "quarantined": docs.num_rows - rows,
        "fetch_window": str(window),
        "pending": pending,
        "by_reporting_category": markdown_table(["category", "rows", "net"],
                                                [(c, n, money(s, cur)) for c, cur, n, s in by_category]),
    })

@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"stripe", "duckdb"}, pool="duckdb_writer",
    description="Stripe payouts by UTC `created` day, re-read over the look-back so a payout that "
                "turns from paid to failed is updated.",
)
def raw_stripe_payouts(context: dg.AssetExecutionContext, config: LookbackConfig,
                       stripe: StripeResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = _window(context, config)
    objects = stripe.client().payouts(window.start_epoch, window.end_epoch)
    rows, (by_status, paid_out) = store_vendor_objects(
        duckdb, context, window, documents_table(objects, context.run.run_id), table="raw_stripe_payouts",
        ddl=PAYOUTS_DDL, insert_select=PAYOUTS_SELECT, window_column="created_at_utc", rejection=rejection("payout"),
        summaries=["SELECT status, count(*) FROM raw_stripe_payouts WHERE created_at_utc >= ? AND created_at_utc < ? "
                   "GROUP BY 1",
                   "SELECT upper(currency), sum(amount) FROM raw_stripe_payouts WHERE created_at_utc >= ? "
                   "AND created_at_utc < ? AND status <> 'failed' GROUP BY 1 ORDER BY 1"])
    return dg.MaterializeResult(metadata={
        "rows": rows, "quarantined": len(objects) - rows, "fetch_window": str(window),
        "by_status": dg.MetadataValue.json(dict(by_status)),
        **money_totals("paid_out", paid_out),
    })

@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"stripe", "duckdb"}, pool="duckdb_writer", deps=[raw_stripe_payouts],
    check_specs=[dg.AssetCheckSpec("payout_lines_net_to_zero", asset="raw_stripe_payout_lines",
                                   description="Every itemised payout's balance transactions, its own payout line "
                                               "included, net to zero (the payout identity).")],
    description="The balance transactions settled by each automatic payout (Stripe's `payout=` filter), "
                "including the payout's own `type=payout` line; payouts still `in_progress` wait for a "
                "later run within the look-back.",
)
def raw_stripe_payout_lines(context: dg.AssetExecutionContext, config: LookbackConfig,
                            stripe: StripeResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = _window(context, config)
    bounds = [naive_utc(window.start), naive_utc(window.end)]
    with duckdb.get_connection() as conn:
        payouts = conn.execute(
            "SELECT id, created_at_utc, reconciliation_status FROM raw_stripe_payouts "
            "WHERE automatic AND created_at_utc >= ? AND created_at_utc < ? ORDER BY created_at_utc", bounds,
        ).fetchall()
    ready = [(pid, created) for pid, created, status in payouts if status == "completed"]
    client = stripe.client()
    with ThreadPoolExecutor(max_workers=PAYOUT_LINE_WORKERS) as pool:
        itemised = list(pool.map(lambda p: client.payout_lines(p[0]), ready))
    objects, payout_ids, payout_created = [], [], []
    for (payout_id, created), lines in zip(ready, itemised):
        objects.extend(lines)
        payout_ids.extend([payout_id] * len(lines))
        payout_created.extend([created] * len(lines))
    docs = documents_table(objects, context.run.run_id, payout_id=pa.array(payout_ids, pa.string()),
                 payout_created_at_utc=pa.array(payout_created, pa.timestamp("us")))
    with duckdb.get_connection() as conn:
        rows = replace_window(conn, table="raw_stripe_payout_lines", ddl=PAYOUT_LINES_DDL,
                              insert_select=PAYOUT_LINES_SELECT, docs=docs,
                              window_column="payout_created_at_utc", start=window.start, end=window.end)
        unbalanced = conn.execute(
            "SELECT count(*) FROM (SELECT payout_id FROM raw_stripe_payout_lines WHERE payout_created_at_utc >= ? "
            "AND payout_created_at_utc < ? GROUP BY payout_id HAVING sum(net) <> 0)", bounds).fetchone()[0]
    return dg.MaterializeResult(metadata={
        "rows": rows, "fetch_window": str(window), "payouts_itemised": len(ready),
        "payouts_awaiting_itemisation": len(payouts) - len(ready),
        "payouts_with_nonzero_net": unbalanced,
    }, check_results=[dg.AssetCheckResult(
        check_name="payout_lines_net_to_zero", passed=not unbalanced, severity=dg.AssetCheckSeverity.WARN,
        metadata={"payouts_checked": len(ready), "payouts_with_nonzero_net": unbalanced})])


CUSTOMERS_SELECT = f"""
SELECT raw->>'$.id' AS id, raw->>'$.email' AS email, raw->>'$.name' AS name,
       coalesce(raw->'$.metadata', '{{}}'::JSON) AS metadata, {_epoch_ts("raw->>'$.created'")} AS created_at_utc,
       raw, loaded_at_utc, dagster_run_id
FROM (SELECT CAST(raw AS JSON) AS raw, loaded_at_utc, dagster_run_id FROM snapshot_docs)
WHERE raw->>'$.id' IS NOT NULL"""

@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"stripe", "duckdb"}, pool="duckdb_writer",
    description="Every Stripe customer (id, e-mail, name, metadata) as read now, for the customer cross-reference.",
)
def raw_stripe_customers(context: dg.AssetExecutionContext, stripe: StripeResource,
                         duckdb: DuckDBResource) -> dg.MaterializeResult:
    objects = stripe.client().customers()
    with duckdb.get_connection() as conn:
        rows = replace_snapshot(conn, table="raw_stripe_customers", select_sql=CUSTOMERS_SELECT,
                                docs=documents_table(objects, context.run.run_id))
    return dg.MaterializeResult(metadata={"customers": rows})

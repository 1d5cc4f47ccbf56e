"""Heartland (GP API) staging assets: settlement transactions, deposits and settlement disputes.

All three are partitioned by **deposit date**: the bank business date GP stamps on a deposit
(``YYYY-MM-DD``, no time and no zone; it is the merchant's funding day, not a UTC instant). Partition
key ``2026-10-05`` holds deposit ``2026-10-05``, the sales and refunds it funded and the chargebacks
and reversals it carried, so one partition balances on its own. Instants (``time_created``, batch
close) are stored as UTC; ``created_at_merchant_local`` keeps GP's merchant-local wall time.

Each run reads the deposit dates of its partitions plus a look-back (a held deposit turning
RELEASED, a dispute closing) and replaces exactly those dates in DuckDB in one transaction. Money is
BIGINT minor units parsed from GP's strings (or JSON numbers) in SQL by ``m3_recon.wire``, times in any
ISO 8601 form; GP's JSON is kept in ``raw``. A value that cannot be read (an amount like "12.50", a
malformed time) is stored as NULL, never rounded or guessed, and the canonical layer quarantines the
row with the reason. Discounts and fees are stored with the sign that makes the deposit's identity
hold, whichever sign GP sent (``fee_signs`` says which; NULL when neither ties). An object without an
id or a usable deposit date cannot be placed in a partition and goes to ``core_quarantine`` here.
"""

# No `from __future__ import annotations` here: Dagster reads the config annotation at runtime.
import warnings
from datetime import date

import dagster as dg
from dagster_duckdb import DuckDBResource

from m3_recon import wire
from m3_recon.defs.heartland.resources import HeartlandResource
from m3_recon.defs.metadata import markdown_table
from m3_recon.defs.raw import store_vendor_objects
from m3_recon.money import money_sql
from m3_recon.partitions import LookbackConfig, FetchWindow, daily_partitions, logged_fetch_window
from m3_recon.sql import add_column, quoted
from m3_recon.warehouse import Rejection, documents_table, json_fields, naive_utc, page_documents

warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is beta in 1.13

GROUP = "heartland"
OWNERS = ["team:finance-systems"]
TRANSACTIONS_TABLE = "raw_heartland_settlement_transactions"
DEPOSITS_TABLE = "raw_heartland_deposits"
DISPUTES_TABLE = "raw_heartland_disputes"




def _minor(text: str) -> str:
    """A GP minor-unit amount (string or JSON number, as text) as BIGINT; anything else (missing, "", "12.50",
    beyond BIGINT) is NULL, never rounded."""
    return wire.minor_units_sql(text, 0)


def _group_minor(text: str) -> str:
    """A deposit group's minor-unit amount: GP sends "" (or nothing) for an empty group, which is zero."""
    return f"CASE WHEN coalesce({text}, '') = '' THEN 0 ELSE {_minor(text)} END"


def _utc(text: str) -> str:
    """A GP time in any ISO 8601 form as UTC (GP writes ``…sssZ``, and settlement dispute times without zone
    or milliseconds, which are UTC), or NULL when missing or malformed (the canonical layer says why)."""
    return wire.instant_sql(text)


def _day(text: str) -> str:
    """A GP business date (``YYYY-MM-DD``, or the date part of a time as written)."""
    return wire.calendar_date_sql(text)


def rejection(object_name: str, date_field: str) -> Rejection:
    """An object without an id or a usable deposit date cannot be placed in a partition: quarantine it."""
    return Rejection("heartland", f"""CASE
        WHEN NOT json_valid(raw) THEN 'the GP {object_name} is not valid JSON'
        ELSE list_transform([{json_fields(['id', date_field])}], lambda doc: CASE
            WHEN coalesce(doc.id, '') = '' THEN 'the GP {object_name} has no id'
            WHEN {wire.calendar_date_sql(f'doc.{date_field}')} IS NULL
                THEN 'the GP {object_name} has no usable deposit date in {date_field} (got '
                     || {quoted(f'doc.{date_field}', 'nothing')} || '), so no partition can hold it'
            END)[1]
        END""")


def _parsed(fields: str) -> str:
    """FROM clause: the accepted documents, each parsed once into ``doc`` (``fields``), ``raw`` as JSON."""
    return f"(SELECT CAST(raw AS JSON) AS raw, {fields} AS doc, loaded_at_utc, dagster_run_id FROM docs)"


TRANSACTIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {TRANSACTIONS_TABLE} (
    id VARCHAR NOT NULL, type VARCHAR, status VARCHAR, channel VARCHAR,
    amount BIGINT, signed_amount BIGINT, currency VARCHAR,
    reference VARCHAR, description VARCHAR, parent_transaction_id VARCHAR,
    created_at_utc TIMESTAMP, created_at_merchant_local TIMESTAMP,
    batch_id VARCHAR, batch_closed_at_utc TIMESTAMP,
    deposit_id VARCHAR, deposit_status VARCHAR, deposit_date DATE NOT NULL, deposit_amount BIGINT,
    merchant_id VARCHAR, merchant_hierarchy VARCHAR, card_brand VARCHAR, masked_card_number VARCHAR,
    arn VARCHAR, auth_code VARCHAR, brand_reference VARCHAR, cardholder_name VARCHAR, entry_mode VARCHAR,
    raw JSON NOT NULL, loaded_at_utc TIMESTAMP NOT NULL, dagster_run_id VARCHAR
)"""

TRANSACTION_FIELDS = json_fields([
    "id", "type", "status", "channel", "amount", "currency", "reference", "description", "parent_resource_id",
    "time_created", "time_created_reference", "batch_id", "batch_time_created", "deposit_id", "deposit_status",
    "deposit_time_created", "deposit_amount", "system.mid", "system.hierarchy", "payment_method.card.brand",
    "payment_method.card.masked_number_first6last4", "payment_method.card.arn", "payment_method.card.authcode",
    "payment_method.card.brand_reference", "payment_method.name", "payment_method.entry_mode"])

TRANSACTIONS_SELECT = f"""
SELECT doc.id, doc.type, doc.status, doc.channel,
       {_minor('doc.amount')},
       CASE doc.type WHEN 'REFUND' THEN -{_minor('doc.amount')} ELSE {_minor('doc.amount')} END,
       doc.currency, NULLIF(doc.reference, ''), doc.description, NULLIF(doc.parent_resource_id, ''),
       {_utc('doc.time_created')}, {_utc('doc.time_created_reference')},
       NULLIF(doc.batch_id, ''), {_utc('doc.batch_time_created')},
       doc.deposit_id, doc.deposit_status, {_day('doc.deposit_time_created')}, {_minor('doc.deposit_amount')},
       doc.system.mid, doc.system.hierarchy, doc.payment_method.card.brand,
       doc.payment_method.card.masked_number_first6last4, doc.payment_method.card.arn,
       doc.payment_method.card.authcode, doc.payment_method.card.brand_reference,
       doc.payment_method.name, doc.payment_method.entry_mode,
       raw, loaded_at_utc, dagster_run_id
FROM {_parsed(TRANSACTION_FIELDS)}"""

DEPOSITS_DDL = f"""
CREATE TABLE IF NOT EXISTS {DEPOSITS_TABLE} (
    id VARCHAR NOT NULL, deposit_date DATE NOT NULL, status VARCHAR, funding_type VARCHAR,
    amount BIGINT, net_amount BIGINT, currency VARCHAR, aggregation_model VARCHAR,
    bank_account_last4 VARCHAR, bank_code VARCHAR,
    merchant_id VARCHAR, merchant_hierarchy VARCHAR, merchant_name VARCHAR, merchant_dba VARCHAR,
    sales_count INTEGER, sales_amount BIGINT, refunds_count INTEGER, refunds_amount BIGINT,
    discounts_count INTEGER, discounts_amount BIGINT, tax_count INTEGER, tax_amount BIGINT,
    fees_amount BIGINT, chargebacks_count INTEGER, chargebacks_amount BIGINT,
    reversals_count INTEGER, reversals_amount BIGINT,
    raw JSON NOT NULL, loaded_at_utc TIMESTAMP NOT NULL, dagster_run_id VARCHAR, fee_signs VARCHAR
); {add_column(DEPOSITS_TABLE, "fee_signs", "VARCHAR")}"""

# Which signs of GP's discounts and fees make the deposit's identity hold (summed in 128 bits, so components too
# large to add up leave the deposit untied and quarantined instead of aborting the load) (deposit = sales − refunds −
# chargebacks + reversals − discounts − fees + tax), first match wins: GP's own convention (money out
# negative, as sent), both sent as positive money out, or one of them a credit. None: quarantined.
FEE_SIGNS = (("as sent", 1, 1), ("both negated", -1, -1), ("discounts negated", -1, 1), ("fees negated", 1, -1))

DEPOSIT_FIELDS = json_fields([
    "id", "time_created", "status", "funding_type", "amount", "currency", "aggregation_model",
    "bank_transfer.masked_account_number_last4", "bank_transfer.bank.code", "system.mid", "system.hierarchy",
    "system.name", "system.dba", *(f"{group}.{part}" for group in ("sales", "refunds", "discounts", "tax", "fees",
                                                                    "disputes.chargebacks", "disputes.reversals")
                                   for part in ("count", "amount"))])

DEPOSITS_SELECT = f"""
WITH sent AS (
    SELECT *, {_minor('doc.amount')} AS amount,
           CASE doc.funding_type WHEN 'DEBIT' THEN -{_minor('doc.amount')} ELSE {_minor('doc.amount')} END AS net,
           abs({_group_minor('doc.sales.amount')}) AS sales, -abs({_group_minor('doc.refunds.amount')}) AS refunds,
           -abs({_group_minor('doc.disputes.chargebacks.amount')}) AS chargebacks,
           abs({_group_minor('doc.disputes.reversals.amount')}) AS reversals, {_group_minor('doc.tax.amount')} AS tax,
           {_group_minor('doc.discounts.amount')} AS discounts, {_group_minor('doc.fees.amount')} AS fees
    FROM {_parsed(DEPOSIT_FIELDS)}
), signed AS (
    SELECT *, CASE {" ".join(f"WHEN net = CAST(sales AS HUGEINT) + refunds + chargebacks + reversals + tax "
                             f"+ {d} * discounts + {f} * fees THEN '{name}'" for name, d, f in FEE_SIGNS)} END AS fee_signs
    FROM sent
), chosen AS (
    SELECT *, CASE fee_signs {" ".join(f"WHEN '{name}' THEN {d}" for name, d, _ in FEE_SIGNS)} ELSE 1 END AS d_sign,
           CASE fee_signs {" ".join(f"WHEN '{name}' THEN {f}" for name, _, f in FEE_SIGNS)} ELSE 1 END AS f_sign
    FROM signed
)
SELECT doc.id, {_day('doc.time_created')}, doc.status, doc.funding_type, amount, net,
       doc.currency, doc.aggregation_model,
       right(doc.bank_transfer.masked_account_number_last4, 4), doc.bank_transfer.bank.code,
       doc.system.mid, doc.system.hierarchy, doc.system.name, doc.system.dba,
       TRY_CAST(doc.sales.count AS INTEGER), sales, TRY_CAST(doc.refunds.count AS INTEGER), refunds,
       TRY_CAST(doc.discounts.count AS INTEGER), d_sign * discounts,
       TRY_CAST(doc.tax.count AS INTEGER), tax, f_sign * fees,
       TRY_CAST(doc.disputes.chargebacks.count AS INTEGER), chargebacks,
       TRY_CAST(doc.disputes.reversals.count AS INTEGER), reversals,
       raw, loaded_at_utc, dagster_run_id, fee_signs
FROM chosen"""

DISPUTES_DDL = f"""
CREATE TABLE IF NOT EXISTS {DISPUTES_TABLE} (
    id VARCHAR NOT NULL, stage VARCHAR, status VARCHAR, result VARCHAR, funding_type VARCHAR,
    amount BIGINT, signed_amount BIGINT, currency VARCHAR,
    stage_created_at_utc TIMESTAMP, deposit_id VARCHAR, deposit_date DATE NOT NULL,
    reason_code VARCHAR, reason_description VARCHAR, respond_by_utc TIMESTAMP,
    last_adjustment_amount BIGINT, last_adjustment_funding VARCHAR, last_adjustment_at_utc TIMESTAMP,
    merchant_id VARCHAR, transaction_type VARCHAR, transaction_amount BIGINT, transaction_reference VARCHAR,
    transaction_created_at_utc TIMESTAMP, card_brand VARCHAR, masked_card_number VARCHAR, arn VARCHAR,
    raw JSON NOT NULL, loaded_at_utc TIMESTAMP NOT NULL, dagster_run_id VARCHAR
)"""

DISPUTE_FIELDS = json_fields([
    "id", "stage", "status", "result", "funding_type", "amount", "currency", "stage_time_created", "deposit_id",
    "deposit_time_created", "reason_code", "reason_description", "time_to_respond_by", "last_adjustment_amount",
    "last_adjustment_funding", "last_adjustment_time_created", "system.mid", "transaction.type", "transaction.amount",
    "transaction.reference", "transaction.time_created", "transaction.payment_method.card.brand",
    "transaction.payment_method.card.masked_number_first6last4", "transaction.payment_method.card.arn"])

DISPUTES_SELECT = f"""
SELECT doc.id, doc.stage, doc.status, doc.result, doc.funding_type,
       {_minor('doc.amount')},
       CASE doc.funding_type WHEN 'DEBIT' THEN -{_minor('doc.amount')} ELSE {_minor('doc.amount')} END,
       doc.currency, {_utc('doc.stage_time_created')},
       doc.deposit_id, {_day('doc.deposit_time_created')},
       doc.reason_code, doc.reason_description, {_utc('doc.time_to_respond_by')},
       {_minor('doc.last_adjustment_amount')}, NULLIF(doc.last_adjustment_funding, ''),
       {_utc('doc.last_adjustment_time_created')},
       doc.system.mid, doc.transaction.type, {_minor('doc.transaction.amount')},
       NULLIF(doc.transaction.reference, ''), {_utc('doc.transaction.time_created')},
       doc.transaction.payment_method.card.brand, doc.transaction.payment_method.card.masked_number_first6last4,
       doc.transaction.payment_method.card.arn,
       raw, loaded_at_utc, dagster_run_id
FROM {_parsed(DISPUTE_FIELDS)}"""

TRANSACTIONS_REJECTION = rejection("settlement transaction", "deposit_time_created")
DEPOSITS_REJECTION = rejection("deposit", "time_created")
DISPUTES_REJECTION = rejection("settlement dispute", "deposit_time_created")

# A deposit is explained when its net equals the lines that carry its id, less the fees on the deposit.
UNEXPLAINED_DEPOSITS = f"""
WITH lines AS (
    SELECT deposit_id, sum(signed_amount) AS amount FROM {TRANSACTIONS_TABLE}
    WHERE deposit_date >= ? AND deposit_date < ? GROUP BY 1
), adjustments AS (
    SELECT deposit_id, sum(signed_amount) AS amount FROM {DISPUTES_TABLE}
    WHERE deposit_date >= ? AND deposit_date < ? GROUP BY 1
)
SELECT d.id FROM {DEPOSITS_TABLE} d
LEFT JOIN lines l ON l.deposit_id = d.id LEFT JOIN adjustments a ON a.deposit_id = d.id
WHERE d.deposit_date >= ? AND d.deposit_date < ?
  AND d.net_amount <> COALESCE(l.amount, 0) + COALESCE(a.amount, 0) + d.discounts_amount + d.fees_amount
                      + d.tax_amount
ORDER BY d.deposit_date"""

# GP's own components of a deposit must add up to its net (with the fee signs that make them: see FEE_SIGNS).
UNBALANCED_DEPOSITS = f"""
SELECT count(*) FILTER (fee_signs IS NULL), count(*) FILTER (fee_signs <> 'as sent') FROM {DEPOSITS_TABLE}
WHERE deposit_date >= ? AND deposit_date < ?"""


def _window(context: dg.AssetExecutionContext, config: LookbackConfig) -> tuple[FetchWindow, date, date]:
    """The run's window and its inclusive first and last deposit dates (GP's date filters are inclusive)."""
    window = logged_fetch_window(context, config, "GP API deposit dates")
    return window, window.first_day, window.last_day


def _summed(amount: str) -> str:
    """SQL: the group's total of ``amount`` as ``1,234.56 USD`` (the query groups by currency: never summed across)."""
    return money_sql(f"sum({amount})", "upper(currency)")


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"gpapi", "duckdb"}, pool="duckdb_writer",
    description="GP API settlement transactions (sales and refunds, with batch, card and the M3 invoice the "
                "clerk keyed in `reference`) by the date of the deposit that funded them.",
)
def raw_heartland_settlement_transactions(context: dg.AssetExecutionContext, config: LookbackConfig,
                                          heartland: HeartlandResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    window, first_day, last_day = _window(context, config)
    pages = heartland.client().settlement_transaction_pages(first_day, last_day)
    rows, (by_type,) = store_vendor_objects(
        duckdb, context, window, page_documents([text for _, text in pages], "transactions", context.run.run_id),
        table=TRANSACTIONS_TABLE,
        ddl=TRANSACTIONS_DDL, insert_select=TRANSACTIONS_SELECT, window_column="deposit_date",
        rejection=TRANSACTIONS_REJECTION,
        summaries=[f"SELECT type, count(*), {_summed('signed_amount')} FROM {TRANSACTIONS_TABLE} "
                   "WHERE deposit_date >= ? AND deposit_date < ? GROUP BY type, currency ORDER BY ALL"])
    return dg.MaterializeResult(metadata={
        "rows": rows, "deposit_dates": f"{first_day}..{last_day}",
        "without_reference": sum(1 for items, _ in pages for o in items if not o.get("reference")),
        "by_type": markdown_table(["type", "rows", "signed amount"], by_type),
    })


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"gpapi", "duckdb"}, pool="duckdb_writer",
    description="GP API settlement disputes by deposit date: one row per money movement (the CHARGEBACK "
                "debit, and the REVERSAL credit of a dispute won), keyed by (id, stage).",
)
def raw_heartland_disputes(context: dg.AssetExecutionContext, config: LookbackConfig,
                           heartland: HeartlandResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    window, first_day, last_day = _window(context, config)
    objects = heartland.client().disputes(first_day, last_day)
    rows, (by_stage,) = store_vendor_objects(
        duckdb, context, window, documents_table(objects, context.run.run_id), table=DISPUTES_TABLE, ddl=DISPUTES_DDL,
        insert_select=DISPUTES_SELECT, window_column="deposit_date", rejection=DISPUTES_REJECTION,
        summaries=[f"SELECT stage, result, count(*), {_summed('signed_amount')} FROM {DISPUTES_TABLE} "
                   "WHERE deposit_date >= ? AND deposit_date < ? GROUP BY stage, result, currency ORDER BY ALL"])
    return dg.MaterializeResult(metadata={
        "rows": rows, "deposit_dates": f"{first_day}..{last_day}",
        "by_stage": markdown_table(["stage", "result", "rows", "signed amount"], by_stage, text_columns=2),
    })


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
    owners=OWNERS, kinds={"gpapi", "duckdb"}, pool="duckdb_writer",
    deps=[raw_heartland_settlement_transactions, raw_heartland_disputes],
    check_specs=[
        dg.AssetCheckSpec("deposit_totals_add_up", asset="raw_heartland_deposits",
                          description="Every deposit's net equals its sales − refunds − discount − fees − "
                                      "chargebacks + reversals (with either fee sign)."),
        dg.AssetCheckSpec("deposits_sum_to_their_lines", asset="raw_heartland_deposits",
                          description="Every deposit's net equals the settlement transactions and disputes loaded "
                                      "for it plus its discount, fee and tax amounts as GP signs them (the deposit "
                                      "identity)."),
    ],
    description="GP API daily net deposits with their sales, refunds, discount, fee, chargeback and reversal "
                "totals, checked against the transactions and disputes loaded for the same dates.",
)
def raw_heartland_deposits(context: dg.AssetExecutionContext, config: LookbackConfig,
                           heartland: HeartlandResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    window, first_day, last_day = _window(context, config)
    objects = heartland.client().deposits(first_day, last_day)
    bounds = [naive_utc(window.start), naive_utc(window.end)]
    rows, (by_status,) = store_vendor_objects(
        duckdb, context, window, documents_table(objects, context.run.run_id), table=DEPOSITS_TABLE, ddl=DEPOSITS_DDL,
        insert_select=DEPOSITS_SELECT, window_column="deposit_date", rejection=DEPOSITS_REJECTION,
        summaries=[f"SELECT status, count(*), {_summed('net_amount')} FROM {DEPOSITS_TABLE} "
                   "WHERE deposit_date >= ? AND deposit_date < ? GROUP BY status, currency ORDER BY ALL"])
    with duckdb.get_connection() as conn:
        unbalanced, fees_resigned = conn.execute(UNBALANCED_DEPOSITS, bounds).fetchone()
        unexplained = [r[0] for r in conn.execute(UNEXPLAINED_DEPOSITS, bounds * 3).fetchall()]
    if unexplained:
        context.log.warning(f"{len(unexplained)} GP deposits differ from their loaded transactions and "
                            f"disputes: {', '.join(unexplained[:10])}")
    return dg.MaterializeResult(metadata={
        "rows": rows, "deposit_dates": f"{first_day}..{last_day}",
        "by_status": markdown_table(["status", "deposits", "net"], by_status),
        "deposits_not_summing": unbalanced,
        "deposits_with_fee_signs_chosen_by_identity": fees_resigned,
        "deposits_unexplained_by_lines": len(unexplained),
    }, check_results=[
        dg.AssetCheckResult(check_name="deposit_totals_add_up", passed=not unbalanced,
                            severity=dg.AssetCheckSeverity.WARN,
                            metadata={"deposits_checked": rows, "deposits_not_summing": unbalanced}),
        dg.AssetCheckResult(check_name="deposits_sum_to_their_lines", passed=not unexplained,
                            severity=dg.AssetCheckSeverity.WARN,
                            metadata={"deposits_checked": rows, "deposits_unexplained_by_lines": len(unexplained),
                                      "examples": dg.MetadataValue.json(unexplained[:10])}),
    ])

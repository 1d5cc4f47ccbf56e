"""Stripe's staging tables as canonical settlement lines and payouts (DuckDB SQL).

Line types come from ``reporting_category`` (Stripe's own accounting grouping), with the reserve
category split by sign. A category outside Stripe's published list is not guessed at but not lost
either: Stripe signs every amount, so the row becomes line type ``unknown_category`` (its payout still
ties; journals book it to the suspense account and the register raises an ``unknown_category``
exception naming the category, see ``CATEGORY_SQL``). A row without any category is rejected with a
reason and lands in ``core_quarantine``. Refunds and disputes inherit the invoice and
customer references of the charge they reverse, and keep its id in ``original_source_id``.
"""

from __future__ import annotations

from m3_recon.canonical.model import ProcessorMapping
from m3_recon.sql import values

# Stripe's 37 reporting categories (Report Run filter enum, stripe-python 16.1.0).
KNOWN_CATEGORIES = (
    "advance", "advance_funding", "anticipation_repayment", "charge", "charge_failure", "climate_order_purchase",
    "climate_order_refund", "connect_collection_transfer", "connect_reserved_funds", "contribution", "dispute",
    "dispute_reversal", "fee", "financing_paydown", "financing_paydown_reversal", "financing_payout",
    "financing_payout_reversal", "issuing_authorization_hold", "issuing_authorization_release", "issuing_dispute",
    "issuing_transaction", "network_cost", "other_adjustment", "partial_capture_reversal", "payout",
    "payout_reversal", "platform_earning", "platform_earning_refund", "refund", "refund_failure",
    "risk_reserved_funds", "tax", "topup", "topup_reversal", "transfer", "transfer_reversal",
    "unreconciled_customer_funds",
)
# Categories with a canonical meaning; the other known categories become line type "other".
CATEGORY_LINE_TYPES = {
    "charge": "charge", "charge_failure": "charge", "refund": "refund", "refund_failure": "refund",
    "partial_capture_reversal": "refund", "dispute": "dispute", "dispute_reversal": "dispute_reversal",
    "fee": "fee", "network_cost": "fee", "other_adjustment": "adjustment", "payout": "payout",
    "payout_reversal": "payout_failure",
}


def _category_line_types() -> str:
    mapped = dict.fromkeys(KNOWN_CATEGORIES, "other") | CATEGORY_LINE_TYPES
    return values(sorted(mapped.items()))


SETTLEMENT_LINES_SQL = f"""
WITH txn AS (
    SELECT * FROM raw_stripe_balance_transactions
    WHERE created_at_utc >= $start AND created_at_utc < $end
    QUALIFY row_number() OVER (PARTITION BY id ORDER BY loaded_at_utc DESC) = 1
), charge AS (
    SELECT charge_id, id AS charge_txn_id, m3_invoice, m3_customer, card_brand, card_last4
    FROM raw_stripe_balance_transactions
    WHERE source_object = 'charge'
    QUALIFY row_number() OVER (PARTITION BY charge_id ORDER BY loaded_at_utc DESC) = 1
), paid_out AS (
    SELECT balance_transaction_id, payout_id FROM raw_stripe_payout_lines
    QUALIFY row_number() OVER (PARTITION BY balance_transaction_id ORDER BY loaded_at_utc DESC) = 1
), category(reporting_category, line_type) AS (VALUES {_category_line_types()})
SELECT
    'stripe' AS processor,
    txn.id AS source_id,
    CASE WHEN txn.reporting_category = 'risk_reserved_funds'
         THEN CASE WHEN txn.amount < 0 THEN 'reserve_hold' ELSE 'reserve_release' END
         ELSE coalesce(category.line_type, 'unknown_category') END AS line_type,
    txn.created_at_utc AS occurred_at_utc,
    CAST(txn.created_at_utc AS DATE) AS settlement_date,
    coalesce(paid_out.payout_id, CASE WHEN txn.type = 'payout' THEN txn.source_id END) AS payout_id,
    upper(txn.currency) AS currency,
    txn.amount AS amount_minor, txn.fee AS fee_minor, txn.net AS net_minor,
    upper(coalesce(txn.source_currency, txn.currency)) AS presentment_currency,
    CASE WHEN txn.source_amount IS NULL OR txn.source_object = 'payout' THEN txn.amount
         ELSE sign(txn.amount) * txn.source_amount END AS presentment_amount_minor,
    txn.exchange_rate AS fx_rate,
    coalesce(txn.m3_customer, charge.m3_customer) AS customer_ref,
    coalesce(txn.m3_invoice, charge.m3_invoice) AS invoice_ref,
    CASE WHEN txn.source_object IN ('refund', 'dispute') THEN coalesce(charge.charge_txn_id, txn.charge_id) END
        AS original_source_id,
    coalesce(txn.card_brand, charge.card_brand) AS card_brand,
    coalesce(txn.card_last4, charge.card_last4) AS card_last4,
    txn.description AS description,
    CASE WHEN nullif(trim(txn.reporting_category), '') IS NULL THEN
        'the balance transaction has no reporting_category (type ' || coalesce('''' || txn.type || '''', 'null')
        || '), so what it is cannot be told: ask Stripe'
    END AS reject_reason,
    CAST(txn.created_at_utc AS DATE) AS partition_date,
    CAST(txn.raw AS VARCHAR) AS raw_payload
FROM txn
LEFT JOIN category USING (reporting_category)
-- an equi-join on the charge a refund or dispute reverses (NULL for anything else, which matches nothing): a condition
-- on txn alone in ON would make this a nested-loop join of every transaction with every charge
LEFT JOIN charge ON charge.charge_id = CASE WHEN txn.source_object IN ('refund', 'dispute') THEN txn.charge_id END
LEFT JOIN paid_out ON paid_out.balance_transaction_id = txn.id
"""

PAYOUTS_SQL = """
WITH payout AS (
    SELECT * FROM raw_stripe_payouts WHERE created_at_utc >= $start AND created_at_utc < $end
    QUALIFY row_number() OVER (PARTITION BY id ORDER BY loaded_at_utc DESC) = 1
), itemised AS (
    SELECT payout_id, count(DISTINCT balance_transaction_id) AS line_count
    FROM raw_stripe_payout_lines GROUP BY payout_id
)
SELECT 'stripe' AS processor, payout.id AS payout_id, upper(payout.currency) AS currency,
       payout.amount AS amount_minor, payout.created_at_utc,
       CAST(payout.created_at_utc AS DATE) AS settlement_date, payout.arrival_date,
       payout.status, itemised.payout_id IS NOT NULL AS itemised, coalesce(itemised.line_count, 0) AS line_count,
       CAST(NULL AS VARCHAR) AS reject_reason, CAST(payout.created_at_utc AS DATE) AS partition_date,
       CAST(payout.raw AS VARCHAR) AS raw_payload
FROM payout LEFT JOIN itemised ON itemised.payout_id = payout.id
"""

# The processor's own category of each unknown_category line, for the exception a person works.
CATEGORY_SQL = """
SELECT 'stripe' AS processor, id AS source_id, any_value(reporting_category) AS category
FROM raw_stripe_balance_transactions GROUP BY id
"""

# The Stripe customer each charge names (an id, or the object when expanded), for the customer cross-reference.
PAYERS_SQL = """
SELECT 'stripe' AS processor, id AS source_id,
       any_value(CASE WHEN json_type(raw, '$.source.customer') = 'OBJECT' THEN raw->>'$.source.customer.id'
                      ELSE raw->>'$.source.customer' END) AS processor_customer_id
FROM raw_stripe_balance_transactions WHERE source_object = 'charge' GROUP BY id
"""

MAPPING = ProcessorMapping("stripe", SETTLEMENT_LINES_SQL, PAYOUTS_SQL,
                           ("raw_stripe_balance_transactions", "raw_stripe_payout_lines"),
                           ("raw_stripe_payouts", "raw_stripe_payout_lines"))

"""PayTrace's staging tables as canonical settlement lines and payouts (DuckDB SQL).

A PayTrace settlement batch is the payout: its number is the ``payout_id``, its business date (the
account-zone day whose 8 p.m. auto-settlement closed it, Pacific by default) is the settlement date of
the batch and of every transaction in it, and its net (sales less refunds) is the amount. PayTrace
reports no processing fees (the acquirer charges them outside PayTrace), so fees are 0, and no
currency (a PayTrace account settles in US dollars).

Line types come from ``transaction_type``, compared in upper case. Sales of every kind (keyed, forced
with a voice authorization, store-and-forward, captured authorizations) are charges; refunds are
refunds, with negative amounts. Types that move no money (voids, declines, uncaptured authorizations,
pending rows), the bare state SETTLED (which cannot tell a sale from a refund) and rows without a
settled time are never booked: the row is rejected with a reason and lands in ``core_quarantine``
(a settled batch should not list them, so each one is worth a look). A type outside PayTrace's known
list is not guessed at either. A transaction delivered twice is one line (the latest load wins).
PayTrace's transaction record names no original transaction for a refund, so ``original_source_id``
stays empty; refunds carry the invoice and customer references the clerk keyed.
"""

from __future__ import annotations

from m3_recon.canonical.model import ProcessorMapping
from m3_recon.sql import literal, quoted, values

# PayTrace transaction types that move money (``transaction_type`` values of the v1 export and the
# legacy API's TRANXTYPE: SALE, Force / FORCED SALE, Str/FWD, Capture, Refund).
MONEY_TYPES = {
    "SALE": "charge", "FORCE": "charge", "FORCED SALE": "charge", "STR/FWD": "charge", "CAPTURE": "charge",
    "REFUND": "refund",
}
# PayTrace types and states that are no money movement, with why (completed by NOT_BOOKED_ADVICE).
NOT_BOOKED = {
    "VOID": "a voided transaction never settles, so it moves no money",
    "DECLINED": "a declined transaction moves no money",
    "AUTHORIZATION": "an authorization only reserves funds on the card; money moves when it is captured",
    "PENDING": "a pending transaction has not settled, so it has moved no money yet",
    "SETTLED": "SETTLED is a settlement state, not a transaction kind: a sale cannot be told from a refund",
}
NOT_BOOKED_ADVICE = ("; it is not booked as a money movement. If PayTrace counts it in the batch totals, "
                     "the batch will not tie out: raise it with PayTrace support")


def _kinds() -> str:
    return values([(t, line_type, None) for t, line_type in sorted(MONEY_TYPES.items())]
                  + [(t, None, why) for t, why in sorted(NOT_BOOKED.items())])


def _sent(alias: str, path: str) -> str:
    """SQL: what PayTrace sent at a JSON path of the row's raw record, quoted, or 'nothing'."""
    return quoted(f"json_extract_string({alias}.raw, '{path}')", "nothing")


def _defect(alias: str, field: str) -> str:
    """SQL: what is wrong with ``field`` of the row (as the loader read it), else what PayTrace sent."""
    return f"coalesce({alias}.defects->>'$.\"{field}\"', 'PayTrace sent ' || {_sent(alias, '$.' + field)})"


SETTLEMENT_LINES_SQL = f"""
WITH txn AS (
    SELECT *, CAST(transaction_id AS VARCHAR) AS source_id,
           'PayTrace transaction ' || transaction_id || ' (batch ' || batch_number || ', batch date '
               || batch_date || ')' AS named
    FROM raw_paytrace_transactions
    QUALIFY row_number() OVER (PARTITION BY transaction_id ORDER BY loaded_at_utc DESC, batch_number DESC) = 1
), kind(transaction_type, line_type, not_booked) AS (VALUES {_kinds()})
SELECT
    'paytrace' AS processor,
    txn.source_id,
    kind.line_type,
    txn.created_at_utc AS occurred_at_utc,
    txn.batch_date AS settlement_date,
    CAST(txn.batch_number AS VARCHAR) AS payout_id,
    txn.currency,
    txn.signed_amount_cents AS amount_minor, CAST(0 AS BIGINT) AS fee_minor, txn.signed_amount_cents AS net_minor,
    txn.currency AS presentment_currency, txn.signed_amount_cents AS presentment_amount_minor,
    CAST(NULL AS DECIMAL(18, 8)) AS fx_rate,
    txn.customer_id AS customer_ref,
    txn.invoice_id AS invoice_ref,
    CAST(NULL AS VARCHAR) AS original_source_id,
    CAST(NULL AS VARCHAR) AS card_brand,
    txn.card_last4,
    txn.description,
    CASE
        WHEN kind.transaction_type IS NULL THEN
            'unknown PayTrace transaction_type ' || coalesce('''' || txn.transaction_type || '''', 'null')
            || ' on ' || txn.named || ': add it to m3_recon/canonical/paytrace.py once finance has decided '
            || 'how it is booked'
        WHEN kind.line_type IS NULL THEN
            txn.named || ' is a ' || kind.transaction_type || ' row: ' || kind.not_booked
            || {literal(NOT_BOOKED_ADVICE)}
        WHEN txn.settled_at_utc IS NULL AND (txn.defects->>'$.settled') IS NOT NULL THEN
            txn.named || ' has no usable settled time (' || {_defect('txn', 'settled')} || '): have PayTrace '
            || 'correct it, then re-materialise batch date ' || txn.batch_date
        WHEN txn.settled_at_utc IS NULL THEN
            txn.named || ' has no settled time (PayTrace sent ' || {_sent('txn', '$.settled')} || '): an unsettled '
            || 'transaction has moved no money yet; it is booked when a load within the look-back shows it settled'
        WHEN txn.amount_cents IS NULL THEN
            txn.named || ' has no usable amount (' || {_defect('txn', 'amount')} || '): have PayTrace '
            || 'correct it, then re-materialise batch date ' || txn.batch_date
        WHEN txn.created_at_utc IS NULL THEN
            txn.named || ' has no usable created.at time (' || {_defect('txn', 'created.at')}
            || '): have PayTrace correct it, then re-materialise batch date ' || txn.batch_date
    END AS reject_reason,
    txn.batch_date AS partition_date,
    CAST(txn.raw AS VARCHAR) AS raw_payload
FROM txn
LEFT JOIN kind ON kind.transaction_type = upper(trim(txn.transaction_type))
WHERE txn.batch_date >= CAST($start AS DATE) AND txn.batch_date < CAST($end AS DATE)
"""

# A batch that PayTrace lists has settled: PayTrace's last batch state. It has handed the batch to the
# acquirer for funding and reports nothing after that (no deposit API), so a settled batch is 'paid'.
# ``source_id`` (the batch number) is the id core_quarantine files a rejected batch under.
PAYOUTS_SQL = f"""
WITH batch AS (
    SELECT * FROM raw_paytrace_batches
    QUALIFY row_number() OVER (PARTITION BY batch_number ORDER BY loaded_at_utc DESC) = 1
), itemised AS (
    SELECT DISTINCT batch_number FROM raw_paytrace_transactions
)
SELECT 'paytrace' AS processor, CAST(batch.batch_number AS VARCHAR) AS payout_id,
       CAST(batch.batch_number AS VARCHAR) AS source_id, batch.currency,
       batch.net_amount_cents AS amount_minor, batch.settled_at_utc AS created_at_utc,
       batch.batch_date AS settlement_date, CAST(NULL AS DATE) AS arrival_date, 'paid' AS status,
       itemised.batch_number IS NOT NULL AS itemised, CAST(batch.transaction_count AS BIGINT) AS line_count,
       CASE WHEN batch.settled_at_utc IS NULL THEN
           'PayTrace batch ' || batch.batch_number || ' (batch date ' || batch.batch_date || ') has no usable '
           || 'settled time (' || {_defect('batch', 'settled')} || '): have PayTrace correct it, then '
           || 're-materialise batch date ' || batch.batch_date
            WHEN batch.net_amount_cents IS NULL THEN
           'PayTrace batch ' || batch.batch_number || ' (batch date ' || batch.batch_date || ') has no usable '
           || 'net_amount (' || {_defect('batch', 'net_amount')} || '): have PayTrace correct it, then '
           || 're-materialise batch date ' || batch.batch_date
            WHEN batch.transaction_count IS NULL THEN
           'PayTrace batch ' || batch.batch_number || ' (batch date ' || batch.batch_date || ') has no usable '
           || 'transaction_count (' || {_defect('batch', 'transaction_count')} || '): have PayTrace correct it, '
           || 'then re-materialise batch date ' || batch.batch_date
       END AS reject_reason,
       batch.batch_date AS partition_date, CAST(batch.raw AS VARCHAR) AS raw_payload
FROM batch LEFT JOIN itemised USING (batch_number)
WHERE batch.batch_date >= CAST($start AS DATE) AND batch.batch_date < CAST($end AS DATE)
"""

MAPPING = ProcessorMapping("paytrace", SETTLEMENT_LINES_SQL, PAYOUTS_SQL,
                           ("raw_paytrace_transactions",), ("raw_paytrace_batches", "raw_paytrace_transactions"))

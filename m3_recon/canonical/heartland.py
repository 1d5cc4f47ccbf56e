"""Heartland's (GP API) staging tables as canonical settlement lines and payouts (DuckDB SQL).

Heartland pays out through GP deposits: one net bank deposit per business day, dated with GP's
deposit date (a bank business date), which is every line's ``settlement_date`` and its partition.
The lines of a deposit are every money movement it carried:

* each settlement transaction it funded (``source_id`` = GP's ``TRN_`` id): SALE → charge,
  REFUND → refund (a refund's ``original_source_id`` is the sale GP names in ``parent_resource_id``);
* each dispute movement it carried (``source_id`` = ``<DIS_ id>:<stage>``), typed by the direction of
  the money for every stage GP publishes: DEBIT → dispute, CREDIT → dispute_reversal. GP names the
  disputed transaction only by its ARN, so a dispute is linked to the one transaction with that ARN
  and type (none when it is not loaded or not unique);
* its discount (rate) fees, other fees and tax, which GP reports only as deposit totals: one line
  each (``<DEP_ id>:DISCOUNTS`` / ``:FEES`` / ``:TAX``), none when zero.

So sum(net) of a deposit's lines is the deposited amount (GP's identity: net = sales + refunds +
discounts + tax + fees + chargebacks + reversals, with money out negative in the deposit's groups).
GP readings differ on the sign of discounts and fees: the staging table keeps the sign that makes this
identity hold, and a deposit that ties with neither sign is quarantined with its components named.
``core_payouts`` has one row per deposit: its signed net, its status, and ``line_count`` = the lines
GP itemised for it (its transaction and dispute counts plus one per non-zero total above).

References: the M3 invoice is GP's ``reference``. GP's settlement transactions have no customer
field, so the M3 customer number is read from the start of ``description`` (``Customer <number>``,
what the merchant's payment page writes; see ``CUSTOMER_IN_DESCRIPTION``). Refunds and disputes
inherit both references from the transaction they reverse. A type, stage, funding direction or
status outside GP's published lists, an amount that is not whole minor units and a malformed time
are not guessed at: the row is rejected with a reason and lands in ``core_quarantine``.
"""

from __future__ import annotations

from m3_recon import wire
from m3_recon.canonical.model import ProcessorMapping
from m3_recon.sql import literal_list, quoted, values

TRANSACTION_LINE_TYPES = {"SALE": "charge", "REFUND": "refund"}
# GP's settlement dispute stages (Disputes-2021-03-22 `stage` filter enum).
DISPUTE_STAGES = ("RETRIEVAL", "CHARGEBACK", "REVERSAL", "SECOND_CHARGEBACK", "PRE_ARBITRATION", "ARBITRATION",
                  "PRE_COMPLIANCE", "COMPLIANCE", "GOODFAITH")
DISPUTE_FUNDING_LINE_TYPES = {"DEBIT": "dispute", "CREDIT": "dispute_reversal"}
# Deposit totals without itemised transactions: (source_id suffix, raw column, GP field, line type, description).
DEPOSIT_COMPONENTS = (
    ("DISCOUNTS", "discounts_amount", "discounts.amount", "fee", "GP discount (rate) fees"),
    ("FEES", "fees_amount", "fees.amount", "fee", "GP fees"),
    ("TAX", "tax_amount", "tax.amount", "adjustment", "GP tax"),
)
# GP deposit statuses (Deposits-2021-03-22, php-sdk DepositStatus). IRREG: not funded by GP.
DEPOSIT_STATUSES = {"FUNDED": "paid", "SPLIT_FUNDING": "paid", "RELEASED": "paid", "DELAYED": "pending",
                    "RESERVED": "pending", "IRREG": "failed"}
FUNDED_ON_DEPOSIT_DATE = ("FUNDED", "SPLIT_FUNDING")  # the deposit date is also the day the bank got it
DEPOSIT_FUNDING_TYPES = ("CREDIT", "DEBIT")
CUSTOMER_IN_DESCRIPTION = r"^Customer ([^\s,;]+)"
MAPPING_FILE = "m3_recon/canonical/heartland.py"
REPULL = "re-pull its deposit date, and raise it with Global Payments if it persists"


def _unusable(row: str, column: str, field: str, defect) -> str:
    """Reason SQL when ``row.column`` (read from GP's ``field``) is NULL: GP sent none, or what ``defect``
    (a ``m3_recon.wire`` defect SQL builder) says is wrong with what it sent."""
    got = f"{row}.raw->>'$.{field}'"
    return (f"CASE WHEN {row}.{column} IS NULL THEN CASE WHEN coalesce({got}, '') = '' THEN 'GP sent no {field}' "
            f"ELSE 'GP {field} ' || {defect(got)} END || ': {REPULL}' END")


def _not_cents(text: str) -> str:
    """Reason SQL: what is wrong with the GP minor-unit amount in SQL text ``text``."""
    return wire.amount_defect_sql(text, 0, "cents")


IDENTITY = "sales − refunds − chargebacks + reversals − discounts − fees + tax"


def _latest(table: str, key: str, where: str | None = None) -> str:
    """The newest delivery of each object: a row GP delivered twice is one row."""
    return (f"SELECT * FROM {table} {f'WHERE {where} ' if where else ''}"
            f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY loaded_at_utc DESC) = 1")


def _customer_ref(description: str) -> str:
    return f"nullif(regexp_extract({description}, '{CUSTOMER_IN_DESCRIPTION}', 1), '')"


IN_WINDOW = "deposit_date >= $start AND deposit_date < $end"
COMPONENT_AMOUNT = "CASE component " + " ".join(
    f"WHEN '{suffix}' THEN {column}" for suffix, column, *_ in DEPOSIT_COMPONENTS) + " END"
COMPONENT_FIELD = "CASE component " + " ".join(
    f"WHEN '{suffix}' THEN '{field}'" for suffix, _, field, *_ in DEPOSIT_COMPONENTS) + " END"
COMPONENTS_READ = " AND ".join(f"component.{c} IS NOT NULL" for c in (
    "net_amount", "sales_amount", "refunds_amount", "chargebacks_amount", "reversals_amount", "discounts_amount",
    "fees_amount", "tax_amount"))
# Why a deposit whose discounts and fees tie with no sign is quarantined (see FEE_SIGNS in the GP assets).
UNTIED = ("'GP deposit ' || component.id || ' amount ' || component.net_amount || ' does not equal " + IDENTITY
          + " with discounts and fees of either sign (sales ' || component.sales_amount || ', refunds ' || "
          "-component.refunds_amount || ', chargebacks ' || -component.chargebacks_amount || ', reversals ' || "
          "component.reversals_amount || ', discounts ' || coalesce(component.raw->>'$.discounts.amount', 'none') "
          "|| ', fees ' || coalesce(component.raw->>'$.fees.amount', 'none') || ', tax ' || component.tax_amount "
          f"|| '): {REPULL}'")
COMPONENTS_ITEMISED = " + ".join(
    f"CAST({column} IS DISTINCT FROM 0 AS INTEGER)" for _, column, *_ in DEPOSIT_COMPONENTS)


def _rejected(row: str, unmapped: str, occurred_column: str, occurred_field: str) -> str:
    """SQL columns of a GP transaction or dispute ``row``: ``reject_reason``, the first of ``unmapped`` (a GP code
    finance has not mapped), an unusable amount and an unusable time; its partition date and raw payload."""
    return f"""coalesce(
        {unmapped},
        {_unusable(row, 'signed_amount', 'amount', _not_cents)},
        {_unusable(row, occurred_column, occurred_field, wire.instant_defect_sql)}
    ) AS reject_reason,
    {row}.deposit_date AS partition_date, CAST({row}.raw AS VARCHAR) AS raw_payload"""


TXN_REJECTED = _rejected("txn", f"""CASE WHEN txn_type.line_type IS NULL
        THEN 'unknown GP settlement transaction type ' || {quoted('txn.type', 'null')}
             || ': add it to TRANSACTION_LINE_TYPES in {MAPPING_FILE} once finance has decided how it is booked'
        END""", "created_at_utc", "time_created")
DISPUTE_REJECTED = _rejected("dispute", f"""CASE WHEN stage.stage IS NULL
        THEN 'unknown GP dispute stage ' || {quoted('dispute.stage', 'null')}
             || ': add it to DISPUTE_STAGES in {MAPPING_FILE} once finance has decided how it is booked'
             WHEN funding.line_type IS NULL THEN 'GP dispute funding_type ' || {quoted('dispute.funding_type', 'null')}
             || ' is neither DEBIT nor CREDIT, so the direction of the money is unknown: ask Global Payments, '
             || 'then map it in DISPUTE_FUNDING_LINE_TYPES in {MAPPING_FILE}'
        END""", "stage_created_at_utc", "stage_time_created")

SETTLEMENT_LINES_SQL = f"""
WITH txn AS ({_latest('raw_heartland_settlement_transactions', 'id', IN_WINDOW)}
), known_txn AS (
    SELECT id, type, arn, reference AS invoice_ref, {_customer_ref('description')} AS customer_ref
    FROM ({_latest('raw_heartland_settlement_transactions', 'id')})
), txn_by_arn AS (
    SELECT arn, type, min(id) AS id FROM known_txn WHERE arn IS NOT NULL GROUP BY ALL HAVING count(*) = 1
), dispute AS ({_latest('raw_heartland_disputes', 'id, stage', IN_WINDOW)}
), component AS (
    SELECT deposit.*, c.component, c.line_type, c.label
    FROM ({_latest('raw_heartland_deposits', 'id', IN_WINDOW)}) deposit
    CROSS JOIN (VALUES {values((s, t, d) for s, _, _, t, d in DEPOSIT_COMPONENTS)}) c(component, line_type, label)
), txn_type(type, line_type) AS (VALUES {values(TRANSACTION_LINE_TYPES.items())}
), stage(stage) AS (VALUES {values((s,) for s in DISPUTE_STAGES)}
), funding(funding_type, line_type) AS (VALUES {values(DISPUTE_FUNDING_LINE_TYPES.items())})
SELECT
    'heartland' AS processor, txn.id AS source_id, txn_type.line_type,
    txn.created_at_utc AS occurred_at_utc, txn.deposit_date AS settlement_date, txn.deposit_id AS payout_id,
    upper(txn.currency) AS currency,
    txn.signed_amount AS amount_minor, CAST(0 AS BIGINT) AS fee_minor, txn.signed_amount AS net_minor,
    upper(txn.currency) AS presentment_currency, txn.signed_amount AS presentment_amount_minor,
    CAST(NULL AS DECIMAL(18, 8)) AS fx_rate,
    coalesce({_customer_ref('txn.description')}, parent.customer_ref) AS customer_ref,
    coalesce(txn.reference, parent.invoice_ref) AS invoice_ref,
    CASE WHEN txn.type = 'REFUND' THEN txn.parent_transaction_id END AS original_source_id,
    lower(txn.card_brand) AS card_brand, right(txn.masked_card_number, 4) AS card_last4,
    txn.description,
    {TXN_REJECTED}
FROM txn
LEFT JOIN txn_type USING (type)
-- an equi-join (a condition on txn alone in ON would make this a nested-loop join of every pair of transactions)
LEFT JOIN known_txn parent ON parent.id = CASE WHEN txn.type = 'REFUND' THEN txn.parent_transaction_id END
UNION ALL BY NAME
SELECT
    'heartland' AS processor, dispute.id || ':' || coalesce(dispute.stage, '') AS source_id, funding.line_type,
    dispute.stage_created_at_utc AS occurred_at_utc, dispute.deposit_date AS settlement_date,
    dispute.deposit_id AS payout_id, upper(dispute.currency) AS currency,
    dispute.signed_amount AS amount_minor, CAST(0 AS BIGINT) AS fee_minor, dispute.signed_amount AS net_minor,
    upper(dispute.currency) AS presentment_currency, dispute.signed_amount AS presentment_amount_minor,
    CAST(NULL AS DECIMAL(18, 8)) AS fx_rate,
    disputed.customer_ref, coalesce(disputed.invoice_ref, dispute.transaction_reference) AS invoice_ref,
    txn_by_arn.id AS original_source_id,
    lower(dispute.card_brand) AS card_brand, right(dispute.masked_card_number, 4) AS card_last4,
    dispute.stage || ' ' || coalesce(dispute.reason_code, '') || ': ' || coalesce(dispute.reason_description, '')
        AS description,
    {DISPUTE_REJECTED}
FROM dispute
LEFT JOIN stage USING (stage)
LEFT JOIN funding USING (funding_type)
LEFT JOIN txn_by_arn ON txn_by_arn.arn = dispute.arn AND txn_by_arn.type = dispute.transaction_type
LEFT JOIN known_txn disputed ON disputed.id = txn_by_arn.id
UNION ALL BY NAME
SELECT
    'heartland' AS processor, component.id || ':' || component.component AS source_id, component.line_type,
    CAST(component.deposit_date AS TIMESTAMP) AS occurred_at_utc, component.deposit_date AS settlement_date,
    component.id AS payout_id, upper(component.currency) AS currency,
    {COMPONENT_AMOUNT} AS amount_minor, CAST(0 AS BIGINT) AS fee_minor, {COMPONENT_AMOUNT} AS net_minor,
    upper(component.currency) AS presentment_currency, {COMPONENT_AMOUNT} AS presentment_amount_minor,
    CAST(NULL AS DECIMAL(18, 8)) AS fx_rate, CAST(NULL AS VARCHAR) AS customer_ref,
    CAST(NULL AS VARCHAR) AS invoice_ref, CAST(NULL AS VARCHAR) AS original_source_id,
    CAST(NULL AS VARCHAR) AS card_brand, CAST(NULL AS VARCHAR) AS card_last4,
    component.label || ' in deposit ' || component.id AS description,
    CASE WHEN {COMPONENT_AMOUNT} IS NULL THEN 'GP deposit ' || {COMPONENT_FIELD} || ' '
        || {_not_cents(f"json_extract_string(component.raw, '$.' || {COMPONENT_FIELD})")} || ': {REPULL}'
         WHEN component.fee_signs IS NULL AND component.component IN ('DISCOUNTS', 'FEES') AND {COMPONENTS_READ}
             THEN {UNTIED}
    END AS reject_reason,
    component.deposit_date AS partition_date, CAST(component.raw AS VARCHAR) AS raw_payload
FROM component WHERE {COMPONENT_AMOUNT} IS DISTINCT FROM 0
"""

PAYOUTS_SQL = f"""
WITH deposit AS ({_latest('raw_heartland_deposits', 'id', IN_WINDOW)}
), status(gp_status, status) AS (VALUES {values(DEPOSIT_STATUSES.items())})
-- source_id names a rejected deposit in core_quarantine; GP itemises every deposit in its own totals.
SELECT 'heartland' AS processor, deposit.id AS payout_id, deposit.id AS source_id,
       upper(deposit.currency) AS currency,
       deposit.net_amount AS amount_minor, CAST(deposit.deposit_date AS TIMESTAMP) AS created_at_utc,
       deposit.deposit_date AS settlement_date,
       CASE WHEN deposit.status IN {literal_list(FUNDED_ON_DEPOSIT_DATE)} THEN deposit.deposit_date END AS arrival_date,
       status.status, TRUE AS itemised,
       CAST(coalesce(deposit.sales_count, 0) + coalesce(deposit.refunds_count, 0)
            + coalesce(deposit.chargebacks_count, 0) + coalesce(deposit.reversals_count, 0) + {COMPONENTS_ITEMISED}
            AS BIGINT) AS line_count,
       CASE WHEN status.status IS NULL THEN 'unknown GP deposit status ' || {quoted('deposit.status', 'null')}
                 || ': add it to DEPOSIT_STATUSES in {MAPPING_FILE} once finance has decided whether the money '
                 || 'reached the bank'
            WHEN deposit.funding_type NOT IN {literal_list(DEPOSIT_FUNDING_TYPES)} OR deposit.funding_type IS NULL
                 THEN 'GP deposit funding_type ' || {quoted('deposit.funding_type', 'null')}
                 || ' is neither CREDIT nor DEBIT, so the sign of the deposit is unknown: ask Global Payments'
            WHEN deposit.net_amount IS NULL THEN {_unusable('deposit', 'net_amount', 'amount', _not_cents)}
            WHEN deposit.fee_signs IS NULL AND {COMPONENTS_READ.replace('component.', 'deposit.')}
                 THEN {UNTIED.replace('component.', 'deposit.')}
       END AS reject_reason,
       deposit.deposit_date AS partition_date, CAST(deposit.raw AS VARCHAR) AS raw_payload
FROM deposit LEFT JOIN status ON status.gp_status = deposit.status
"""

MAPPING = ProcessorMapping("heartland", SETTLEMENT_LINES_SQL, PAYOUTS_SQL,
                           ("raw_heartland_settlement_transactions", "raw_heartland_disputes",
                            "raw_heartland_deposits"),
                           ("raw_heartland_deposits",))

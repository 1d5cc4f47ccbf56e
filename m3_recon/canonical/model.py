"""Columns, line types and pandera schemas of ``core_settlement_lines`` and ``core_payouts``, and
the split of candidate rows into valid rows and rows for ``core_quarantine``."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

PROCESSORS = ("stripe", "paytrace", "heartland")
LINE_TYPES = ("charge", "refund", "dispute", "dispute_reversal", "fee", "adjustment", "reserve_hold",
              "reserve_release", "payout", "payout_failure", "other", "unknown_category")
PAYOUT_STATUSES = ("pending", "in_transit", "paid", "failed", "canceled")
CURRENCY = pa.Check.str_matches(r"^[A-Z]{3}$", error="currency must be an upper-case ISO 4217 code")

# Order matters: it is the column order of the DuckDB table.
SETTLEMENT_LINE_COLUMNS = {
    "processor": "VARCHAR NOT NULL", "source_id": "VARCHAR NOT NULL", "line_type": "VARCHAR NOT NULL",
    "occurred_at_utc": "TIMESTAMP NOT NULL", "settlement_date": "DATE NOT NULL", "payout_id": "VARCHAR",
    "currency": "VARCHAR NOT NULL", "amount_minor": "BIGINT NOT NULL", "fee_minor": "BIGINT NOT NULL",
    "net_minor": "BIGINT NOT NULL", "presentment_currency": "VARCHAR", "presentment_amount_minor": "BIGINT",
    "fx_rate": "DECIMAL(18, 8)", "customer_ref": "VARCHAR", "invoice_ref": "VARCHAR",
    "original_source_id": "VARCHAR", "card_brand": "VARCHAR", "card_last4": "VARCHAR",
    "description": "VARCHAR",
}
PAYOUT_COLUMNS = {
    "processor": "VARCHAR NOT NULL", "payout_id": "VARCHAR NOT NULL", "currency": "VARCHAR NOT NULL",
    "amount_minor": "BIGINT NOT NULL", "created_at_utc": "TIMESTAMP NOT NULL", "settlement_date": "DATE NOT NULL",
    "arrival_date": "DATE", "status": "VARCHAR NOT NULL", "itemised": "BOOLEAN NOT NULL",
    "line_count": "BIGINT NOT NULL",
}


@dataclass(frozen=True)
class ProcessorMapping:
    """How one processor's staging tables become canonical candidates for a window [$start, $end).

    Both SQL statements take named parameters ``$start`` / ``$end`` (naive UTC timestamps at midnight;
    compare them with the processor's settlement date) and return the schema's columns plus
    ``reject_reason`` (NULL, or why the row cannot be canonical), ``partition_date`` and ``raw_payload``.
    The dependency tuples name the staging tables (= asset keys) the SQL reads.
    """

    processor: str
    settlement_lines_sql: str
    payouts_sql: str
    settlement_line_deps: tuple[str, ...]
    payout_deps: tuple[str, ...]


def _money(nullable: bool = False) -> pa.Column:
    return pa.Column("Int64", nullable=nullable)


SETTLEMENT_LINE_SCHEMA = pa.DataFrameSchema(
    {
        "processor": pa.Column(str, pa.Check.isin(PROCESSORS)),
        "source_id": pa.Column(str, pa.Check.str_length(1, 255)),
        "line_type": pa.Column(str, pa.Check.isin(LINE_TYPES)),
        "occurred_at_utc": pa.Column("datetime64[ns]", coerce=True),
        "settlement_date": pa.Column("datetime64[ns]", coerce=True),
        "payout_id": pa.Column(str, nullable=True),
        "currency": pa.Column(str, CURRENCY),
        "amount_minor": _money(), "fee_minor": _money(), "net_minor": _money(),
        "presentment_currency": pa.Column(str, CURRENCY, nullable=True),
        "presentment_amount_minor": _money(nullable=True),
        "fx_rate": pa.Column(nullable=True),
        "customer_ref": pa.Column(str, pa.Check.str_length(1, 64), nullable=True),
        "invoice_ref": pa.Column(str, pa.Check.str_length(1, 255), nullable=True),  # may list several invoices
        "original_source_id": pa.Column(str, nullable=True),
        "card_brand": pa.Column(str, nullable=True),
        "card_last4": pa.Column(str, pa.Check.str_matches(r"^\d{4}$"), nullable=True),
        "description": pa.Column(str, pa.Check.str_length(0, 500), nullable=True),
    },
    checks=[pa.Check(lambda df: df["net_minor"] == df["amount_minor"] - df["fee_minor"],
                     error="net_minor must equal amount_minor - fee_minor")],
    unique=["processor", "source_id"],
    strict=True, ordered=True, name="core_settlement_lines",
)

PAYOUT_SCHEMA = pa.DataFrameSchema(
    {
        "processor": pa.Column(str, pa.Check.isin(PROCESSORS)),
        "payout_id": pa.Column(str, pa.Check.str_length(1, 255)),
        "currency": pa.Column(str, CURRENCY),
        "amount_minor": _money(),
        "created_at_utc": pa.Column("datetime64[ns]", coerce=True),
        "settlement_date": pa.Column("datetime64[ns]", coerce=True),
        "arrival_date": pa.Column("datetime64[ns]", coerce=True, nullable=True),
        "status": pa.Column(str, pa.Check.isin(PAYOUT_STATUSES)),
        "itemised": pa.Column(bool),
        "line_count": pa.Column("Int64", pa.Check.ge(0)),
    },
    unique=["processor", "payout_id"], strict=True, ordered=True, name="core_payouts",
)


def split_valid(candidates: pd.DataFrame, schema: pa.DataFrameSchema) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split candidate rows into (valid rows in schema order, rejected rows with a ``reason``).

    Candidates carry the schema's columns plus ``reject_reason`` (set by the SQL mapping for problems
    it can name precisely, e.g. an unknown Stripe category), ``partition_date`` and ``raw_payload``.
    Every remaining row is checked with pandera; a row failing any check is rejected with every
    failure listed. No row is dropped: len(valid) + len(rejected) == len(candidates).
    """
    candidates = candidates.reset_index(drop=True)
    rejected_reason = candidates["reject_reason"].copy()
    pending = candidates[rejected_reason.isna()]
    columns = list(schema.columns)
    checked = None  # the validated (coerced) rows when every pending row passed: no second validation then
    try:
        checked = schema.validate(pending[columns], lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
        row_cases = cases[cases["index"].notna()]
        for index, group in row_cases.groupby("index"):
            reasons = [_describe(case) for case in group.itertuples()]
            rejected_reason.loc[int(index)] = "; ".join(sorted(set(reasons)))
        if len(row_cases) < len(cases):  # a failure not tied to rows (e.g. a dtype) is a bug, not bad data
            raise
    rejected = candidates[rejected_reason.notna()].assign(reason=rejected_reason[rejected_reason.notna()])
    valid = checked if checked is not None else schema.validate(candidates.loc[rejected_reason.isna(), columns],
                                                                lazy=True)
    return valid.reset_index(drop=True), rejected.reset_index(drop=True)


def _describe(case) -> str:
    if case.schema_context == "DataFrameSchema":
        return str(case.check)  # a check across columns: its message says it all
    column = case.column
    value = case.failure_case
    shown = json.dumps(value, default=str) if value is not None and not pd.isna(value) else "missing"
    return f"{column} failed {case.check} (value {shown[:80]})"

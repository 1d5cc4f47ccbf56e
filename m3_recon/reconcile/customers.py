"""The customer cross-reference: which M3 customer (``CUNO``) each processor customer is, as DuckDB SQL.

``build_customer_xref`` maps a processor customer (today: Stripe) to an M3 customer by the number in
its metadata under a configurable key (default ``erp_customer_id``), else by its e-mail address
(trimmed, case-insensitive) when exactly one M3 customer has it. What cannot be decided is a
``customer_xref_conflict`` and maps to nobody: metadata naming a customer M3 does not have,
metadata disagreeing with the e-mail, an e-mail several M3 customers share. One processor customer
maps to at most one M3 customer (checked when the table is stored); several may map to the same one.
"""

from __future__ import annotations

import re
from datetime import date

import duckdb

DEFAULT_METADATA_KEY = "erp_customer_id"
XREF_COLUMNS = {
    "processor": "VARCHAR NOT NULL", "processor_customer_id": "VARCHAR NOT NULL", "customer": "VARCHAR NOT NULL",
    "matched_by": "VARCHAR NOT NULL", "email": "VARCHAR",
}
XREF_REASONS = {"customer_xref_conflict": "the processor's customer cannot be tied to one M3 customer (see detail)"}


def metadata_path(key: str) -> str:
    """The JSON path of a metadata key; keys are Stripe's (letters, digits, ``_`` and ``-``, ≤ 40)."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,40}", key):
        raise ValueError(f"customer metadata key {key!r} must be 1-40 letters, digits, '_' or '-' "
                         "(M3_RECON_CUSTOMER_METADATA_KEY)")
    return f'$."{key}"'


def build_customer_xref(conn: duckdb.DuckDBPyConnection, *, processor_customers: str, m3_customers: str,
                        metadata_key: str = DEFAULT_METADATA_KEY) -> None:
    """Create temp tables ``customer_xref`` (XREF_COLUMNS) and ``customer_xref_conflicts`` (processor,
    processor_customer_id, email, named, matches, detail).

    ``processor_customers``: processor, processor_customer_id, email, metadata (JSON).
    ``m3_customers``: customer (CUNO), email.
    """
    path = metadata_path(metadata_key)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE customer_xref_candidates AS
        WITH pc AS (
            SELECT processor, processor_customer_id, nullif(lower(trim(email)), '') AS email,
                   nullif(trim(json_extract_string(metadata, '{path}')), '') AS named
            FROM {processor_customers}
        ), m3 AS (
            SELECT DISTINCT trim(customer) AS customer, nullif(lower(trim(email)), '') AS email FROM {m3_customers}
        ), by_email AS (
            SELECT pc.processor, pc.processor_customer_id, list(DISTINCT m3.customer ORDER BY m3.customer) AS matches
            FROM pc JOIN m3 ON m3.email = pc.email GROUP BY ALL
        )
        SELECT pc.*, coalesce(e.matches, []) AS matches,
               pc.named IN (SELECT customer FROM m3) AS named_known
        FROM pc LEFT JOIN by_email e USING (processor, processor_customer_id)""")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE customer_xref_decided AS
        SELECT *, CASE
            WHEN named IS NOT NULL AND NOT named_known THEN
                'metadata {metadata_key}=' || named || ' names no M3 customer'
            WHEN named IS NOT NULL AND len(matches) > 0 AND NOT list_contains(matches, named) THEN
                'metadata {metadata_key}=' || named || ' but the e-mail ' || email || ' is M3 customer '
                || array_to_string(matches, ', ')
            WHEN named IS NULL AND len(matches) > 1 THEN
                'the e-mail ' || email || ' belongs to several M3 customers: ' || array_to_string(matches, ', ')
            END AS conflict,
            CASE WHEN named IS NOT NULL THEN named WHEN len(matches) = 1 THEN matches[1] END AS customer,
            CASE WHEN named IS NOT NULL THEN 'metadata' ELSE 'email' END AS matched_by
        FROM customer_xref_candidates""")
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE customer_xref AS
        SELECT processor, processor_customer_id, customer, matched_by, email FROM customer_xref_decided
        WHERE conflict IS NULL AND customer IS NOT NULL""")
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE customer_xref_conflicts AS
        SELECT processor, processor_customer_id, email, named, matches, conflict AS detail
        FROM customer_xref_decided WHERE conflict IS NOT NULL""")


def xref_exceptions(conn: duckdb.DuckDBPyConnection, *, conflicts: str | None, day: date) -> None:
    """Create temp table ``xref_exceptions`` (exception-register columns): one ``customer_xref_conflict``
    per conflicting processor customer (``conflicts``, or none before the first cross-reference), dated
    ``day`` (the close that found it)."""
    conflicts = conflicts or ("(SELECT NULL::VARCHAR AS processor, NULL::VARCHAR AS processor_customer_id, "
                              "NULL::VARCHAR[] AS matches, NULL::VARCHAR AS detail WHERE false)")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE xref_exceptions AS
        SELECT 'EX-' || upper(substr(md5('customer_xref_conflict|' || processor || '|' || processor_customer_id),
                                     1, 12)) AS exception_id,
               'customer_xref_conflict' AS reason_code, processor, processor_customer_id AS source_id,
               CAST($day AS DATE) AS settlement_date, NULL::VARCHAR AS currency, NULL::BIGINT AS amount_minor,
               NULL::BIGINT AS unapplied_minor, to_json(matches) AS candidates,
               processor || ' customer ' || processor_customer_id || ': ' || detail
               || '; payments naming only this customer stay unmatched until it is fixed' AS detail
        FROM {conflicts}""", {"day": day})

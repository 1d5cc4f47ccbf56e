"""``core_customer_xref``: each Stripe customer's M3 customer, from both customer masters.

A thin wrapper over ``m3_recon.reconcile.customers``: reads ``raw_stripe_customers`` and
``raw_m3_customers``, replaces ``core_customer_xref`` (one M3 customer per processor customer, checked
before the table is replaced) and ``core_customer_xref_conflicts`` (raised as ``customer_xref_conflict`` exceptions by
the close), and reports how many were mapped by metadata and by e-mail.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from m3_recon import settings
from m3_recon.reconcile.customers import XREF_COLUMNS, build_customer_xref
from m3_recon.sql import column_list

GROUP = "customers"
OWNERS = ["team:finance-systems"]
STRIPE_CUSTOMERS = ("SELECT 'stripe' AS processor, id AS processor_customer_id, email, metadata "
                    "FROM raw_stripe_customers")


def refresh_customer_xref(conn, metadata_key: str) -> dict[str, int]:
    """Rebuild ``core_customer_xref`` and ``core_customer_xref_conflicts`` in one transaction; returns counts."""
    build_customer_xref(conn, processor_customers=f"({STRIPE_CUSTOMERS})", m3_customers="raw_m3_customers",
                        metadata_key=metadata_key)
    store_customer_xref(conn)
    counts = dict(conn.execute("SELECT matched_by, count(*) FROM core_customer_xref GROUP BY 1").fetchall())
    counts["conflicts"] = conn.execute("SELECT count(*) FROM core_customer_xref_conflicts").fetchone()[0]
    counts["processor_customers"] = conn.execute(f"SELECT count(*) FROM ({STRIPE_CUSTOMERS})").fetchone()[0]
    return counts


def store_customer_xref(conn) -> None:
    """Replace the core tables with the temp ``customer_xref`` / ``customer_xref_conflicts`` in one transaction.

    One processor customer maps to at most one M3 customer. The rule is checked here, not by a primary key,
    because a DuckLake warehouse has no constraints: a second mapping fails the refresh and keeps the old table.
    """
    twice = conn.execute("SELECT processor, processor_customer_id, list(DISTINCT customer ORDER BY customer) "
                         "FROM customer_xref GROUP BY ALL HAVING count(*) > 1 LIMIT 5").fetchall()
    if twice:
        raise ValueError("the customer cross-reference maps a processor customer to several M3 customers: "
                         + "; ".join(f"{p} {c} -> {', '.join(m)}" for p, c, m in twice))
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"CREATE OR REPLACE TABLE core_customer_xref ({column_list(XREF_COLUMNS)})")
        conn.execute("INSERT INTO core_customer_xref SELECT * FROM customer_xref")
        conn.execute("CREATE OR REPLACE TABLE core_customer_xref_conflicts AS SELECT * FROM customer_xref_conflicts")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"duckdb"}, pool="duckdb_writer",
    deps=["raw_stripe_customers", "raw_m3_customers"],
    description="Stripe customer → M3 customer (CUNO): by the M3 number in the customer's metadata "
                "(M3_RECON_CUSTOMER_METADATA_KEY, default erp_customer_id), else by a unique e-mail match. "
                "Conflicts map to nobody and land in core_customer_xref_conflicts (exception "
                "customer_xref_conflict). Matching uses it for payments that name only their Stripe customer.",
)
def core_customer_xref(duckdb: DuckDBResource) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        counts = refresh_customer_xref(conn, settings.customer_metadata_key())
    return dg.MaterializeResult(metadata={
        "stripe_customers": counts["processor_customers"], "by_metadata": counts.get("metadata", 0),
        "by_email": counts.get("email", 0), "conflicts": counts["conflicts"],
        "unmapped": counts["processor_customers"] - counts.get("metadata", 0) - counts.get("email", 0)
                    - counts["conflicts"]})

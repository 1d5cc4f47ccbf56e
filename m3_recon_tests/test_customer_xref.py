"""The customer cross-reference: one M3 customer per Stripe customer at most, conflicts raised, write-back."""

import duckdb
import pytest

from m3_recon.defs.customers.assets import refresh_customer_xref, store_customer_xref
from m3_recon.reconcile.customers import build_customer_xref

STRIPE = [("cus_meta", "a@x.com", '{"erp_customer_id": "C1"}'), ("cus_mail", " A@X.COM ", "{}"),
          ("cus_shared", "ap@group.com", "{}"), ("cus_shared_named", "ap@group.com", '{"erp_customer_id": "C3"}'),
          ("cus_disagree", "a@x.com", '{"erp_customer_id": "C2"}'), ("cus_unknown", None, '{"erp_customer_id": "C9"}'),
          ("cus_private", "me@home.com", "{}"), ("cus_other_key", "b@x.com", '{"m3": "C2"}')]
M3 = [("C1", "a@x.com"), ("C2", "ap@group.com"), ("C3", "ap@group.com"), ("C1", "a@x.com"), ("C4", None)]


@pytest.fixture
def conn():
    with duckdb.connect() as connection:
        connection.execute("CREATE TABLE raw_stripe_customers (id VARCHAR, email VARCHAR, metadata JSON)")
        connection.executemany("INSERT INTO raw_stripe_customers VALUES (?, ?, ?)", STRIPE)
        connection.execute("CREATE TABLE raw_m3_customers (customer VARCHAR, email VARCHAR)")
        connection.executemany("INSERT INTO raw_m3_customers VALUES (?, ?)", M3)
        yield connection


def test_the_cross_reference_never_maps_one_stripe_customer_to_two_m3_customers(conn):
    counts = refresh_customer_xref(conn, "erp_customer_id")
    mapped = dict(conn.execute("SELECT processor_customer_id, customer FROM core_customer_xref").fetchall())
    assert mapped == {"cus_meta": "C1", "cus_mail": "C1", "cus_shared_named": "C3"}
    conflicts = dict(conn.execute("SELECT processor_customer_id, detail FROM core_customer_xref_conflicts").fetchall())
    assert set(conflicts) == {"cus_shared", "cus_disagree", "cus_unknown"}
    assert "several M3 customers: C2, C3" in conflicts["cus_shared"]
    assert "erp_customer_id=C2 but the e-mail a@x.com is M3 customer C1" in conflicts["cus_disagree"]
    assert counts == {"metadata": 2, "email": 1, "conflicts": 3, "processor_customers": 8}
    conn.execute("INSERT INTO customer_xref VALUES ('stripe', 'cus_meta', 'C2', 'email', NULL)")
    with pytest.raises(ValueError, match="cus_meta -> C1, C2"):  # storing refuses a second M3 customer
        store_customer_xref(conn)
    assert conn.execute("SELECT customer FROM core_customer_xref WHERE processor_customer_id = 'cus_meta'"
                        ).fetchall() == [("C1",)]  # and the stored table stays as it was


def test_the_metadata_key_is_configurable_and_checked(conn):
    build_customer_xref(conn, processor_customers="(SELECT 'stripe' AS processor, id AS processor_customer_id, "
                        "email, metadata FROM raw_stripe_customers)", m3_customers="raw_m3_customers",
                        metadata_key="m3")
    assert ("cus_other_key", "C2", "metadata") in conn.execute(
        "SELECT processor_customer_id, customer, matched_by FROM customer_xref").fetchall()
    with pytest.raises(ValueError, match="M3_RECON_CUSTOMER_METADATA_KEY"):
        build_customer_xref(conn, processor_customers="raw_stripe_customers", m3_customers="raw_m3_customers",
                            metadata_key="a'); DROP TABLE x; --")

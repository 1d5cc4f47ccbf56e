"""Comparing two worlds after a run: the warehouse's tables and what M3 holds, without what differs by nature
(wall-clock times, run ids, the numbers M3 assigns in posting order)."""

import duckdb

from m3_recon.sandbox import Sandbox

# Columns that differ between any two runs: the wall-clock time, the run that wrote a row, and the voucher
# number M3 assigns in posting order.
VOLATILE_COLUMNS = {"loaded_at_utc", "dagster_run_id", "taken_at_utc", "quarantined_at_utc", "first_seen_at_utc",
                    "last_seen_at_utc", "updated_at_utc", "sent_at_utc", "raised_at_utc", "m3_voucher_number"}
# M3's open invoices as each close read them. Posting applies cash in M3, so a close that ran after some posting
# (the posting sensor acting between parallel closes, or a crash in the middle of posting) reads other balances
# than one before any; what M3 holds in the end is compared instead (``m3_postings``).
M3_SNAPSHOTS = frozenset({"raw_m3_open_invoices", "core_open_invoices"})


def warehouse_rows(conn: duckdb.DuckDBPyConnection, ignore: frozenset[str] = frozenset(),
                   skip_tables: frozenset[str] = frozenset()) -> dict[str, list[tuple]]:
    """Every table of the connection's default catalog but ``skip_tables``, rows sorted, without the volatile
    columns (and ``ignore``)."""
    rows = {}
    tables = conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                          "AND schema_name = current_schema() ORDER BY 1").fetchall()
    for (table,) in tables:
        if table in skip_tables:
            continue
        columns = [name for (name,) in conn.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() AND "
            "schema_name = current_schema() AND table_name = ? ORDER BY column_index", [table]).fetchall()
            if name not in VOLATILE_COLUMNS | ignore]
        rows[table] = conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY ALL").fetchall()
    return rows


def file_rows(path: str, ignore: frozenset[str] = frozenset(),
              skip_tables: frozenset[str] = frozenset()) -> dict[str, list[tuple]]:
    with duckdb.connect(path, read_only=True) as conn:
        return warehouse_rows(conn, ignore, skip_tables)


def assert_same_rows(actual: dict, expected: dict, at_least: int = 1000) -> None:
    assert sorted(actual) == sorted(expected)
    differing = {}
    for table, rows in expected.items():
        if actual[table] != rows:
            only_actual, only_expected = set(actual[table]) - set(rows), set(rows) - set(actual[table])
            differing[table] = {"rows": (len(actual[table]), len(rows)), "only here": sorted(only_actual)[:2],
                                "only in the reference": sorted(only_expected)[:2]}
    assert not differing, f"tables differing: {differing}"
    assert sum(len(rows) for rows in expected.values()) > at_least


def m3_postings(vendors: Sandbox) -> tuple[list, list]:
    """What M3 holds: GL transactions and customer-ledger lines, without the numbers M3 assigns in posting order."""
    now = vendors.clock.now()
    gl = sorted((line.batch_key, line.accounting_date, line.accounts, line.currency, line.amount_minor, line.rate,
                 line.local_minor, line.text) for line in vendors.m3.gl_lines(now))
    ledger = sorted((line.trcd, line.payer, line.customer, line.invoice, line.invoice_year, line.currency,
                     line.amount_minor, line.local_minor, line.accounting_date) for line in vendors.m3.lines(now))
    return gl, ledger

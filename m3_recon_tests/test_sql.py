"""The one SQL helper module: literals survive quotes, and an older table gains the columns added since."""

import duckdb

from m3_recon import sql


def test_literals_and_quoted_messages_keep_quotes_and_nulls():
    conn = duckdb.connect()
    name, rows = "O'Brien", [("a", None), ("b", "it's")]
    assert conn.execute(f"SELECT {sql.literal(name)}, {sql.literal(None)}").fetchone() == (name, None)
    assert conn.execute(f"SELECT * FROM (VALUES {sql.values(rows)})").fetchall() == rows
    assert conn.execute(f"SELECT 'x' IN {sql.literal_list(['x', 'y'])}").fetchone() == (True,)
    assert conn.execute(f"SELECT {sql.quoted('NULL::VARCHAR')}, {sql.quoted('NULL::VARCHAR', 'nothing')}, "
                        f"{sql.quoted(sql.literal('x'))}").fetchone() == (None, "nothing", "'x'")


def test_ensure_table_creates_then_adds_missing_columns_as_nullable():
    conn = duckdb.connect()
    conn.execute("CREATE TABLE ledger (entry VARCHAR NOT NULL)")
    conn.execute("INSERT INTO ledger VALUES ('E1')")
    columns = {"entry": "VARCHAR NOT NULL", "amount_minor": "BIGINT NOT NULL", "currency": "VARCHAR"}
    sql.ensure_table(conn, "ledger", columns)
    sql.ensure_table(conn, "ledger", columns)  # idempotent
    assert conn.execute("SELECT * FROM ledger").fetchall() == [("E1", None, None)]
    assert [(name, kind) for name, kind, *_ in conn.execute("DESCRIBE ledger").fetchall()] == [
        ("entry", "VARCHAR"), ("amount_minor", "BIGINT"), ("currency", "VARCHAR")]
    sql.ensure_table(conn, "fresh", columns)
    assert conn.execute("SELECT count(*) FROM fresh").fetchone() == (0,)

"""SQL text the warehouse code builds, one way each: string literals, quoted values in messages, table
definitions and column migrations (a table made by an older release gains the columns added since)."""

from __future__ import annotations

from typing import Iterable, Mapping

import duckdb

NOT_NULL = " NOT NULL"


def literal(text: str | None) -> str:
    """A SQL string literal (``O'Brien`` -> ``'O''Brien'``); ``None`` -> ``NULL``."""
    return "NULL" if text is None else "'" + str(text).replace("'", "''") + "'"


def literal_list(texts: Iterable[str | None]) -> str:
    """``('a', 'b', NULL)``: one row of a ``VALUES`` list, or the list of an ``IN``."""
    return "(" + ", ".join(map(literal, texts)) + ")"


def values(rows: Iterable[Iterable[str | None]]) -> str:
    """The rows of a ``VALUES`` list of string literals: ``('a', 'b'), ('c', NULL)``."""
    return ", ".join(map(literal_list, rows))


def quoted(expression: str, missing: str | None = None) -> str:
    """SQL: the text of ``expression`` in single quotes, for a message; NULL, or ``missing`` when given, if
    the expression is NULL."""
    text = f"'''' || ({expression}) || ''''"
    return text if missing is None else f"coalesce({text}, {literal(missing)})"


def nullable(kind: str) -> str:
    """A column type without its ``NOT NULL`` (a migrated column has no value for existing rows)."""
    return kind.replace(NOT_NULL, "")


def column_list(columns: Mapping[str, str]) -> str:
    """``name TYPE, …`` of a table definition, from {column: type}."""
    return ", ".join(f"{column} {kind}" for column, kind in columns.items())


def create_table(table: str, columns: Mapping[str, str]) -> str:
    return f"CREATE TABLE IF NOT EXISTS {table} ({column_list(columns)})"


def add_column(table: str, column: str, kind: str) -> str:
    """The migration of one column added after a table's first release (nullable: old rows have none)."""
    return f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {nullable(kind)}"


def ensure_table(conn: duckdb.DuckDBPyConnection, table: str, columns: Mapping[str, str]) -> None:
    """Create ``table`` if missing; a table made by an older release gains the columns it lacks."""
    conn.execute(create_table(table, columns))
    for column, kind in columns.items():
        conn.execute(add_column(table, column, kind))

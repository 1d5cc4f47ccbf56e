"""The M3 postings outbox ``out_m3_postings``: every voucher the journals hold, and how far it got in M3.

``enqueue`` reconciles the outbox with ``core_gl_journal_lines`` (route ``gl``) and
``core_cash_applications`` (route ``cash_application``) in one transaction:

* a new voucher becomes ``pending``, or ``held`` when any of its lines carries a ``held_reason`` or a
  blocking check failed for the processor-day of any of its lines (``core_posting_blocks``);
* a voucher M3 has never seen (``sent_at_utc`` NULL) follows its source: new content, held or not,
  and it leaves the outbox when it leaves the journals;
* a voucher that was sent keeps the content hash of what was sent. If its lines change or vanish
  afterwards that is a conflict a person must resolve — it becomes ``failed`` (a ``verified`` one
  stays ``verified``: M3 has it) with the reason in ``last_error`` — never a second posting.

Each voucher is assigned its M3 batch when it is first seen: the GLS840 ``KEY1`` is the voucher key
itself; the ARS040 payment batch number (``PBID``, ten digits) is derived from the voucher key and
made unique among the outbox's batches. The poster marks a voucher ``sent`` (write-ahead) before its
first M3 call, then ``verified`` (read back from M3), ``posted_unverified`` (M3 accepted the batch
but the voucher could not be read back yet: never resent, verified again by the next run) or
``failed`` (M3 refused it). Deleting a ``failed`` row makes the next run enqueue
it again and resume whatever M3 already holds for its batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime

import duckdb

from m3_recon.posting.contract import CASH_APPLICATION_COLUMNS, GL_JOURNAL_LINE_COLUMNS, POSTING_COLUMNS
from m3_recon.posting.gates import BLOCKS, held_reasons_sql
from m3_recon.sql import create_table
from m3_recon.warehouse import table_exists

OUTBOX = "out_m3_postings"
GL_SOURCE = "core_gl_journal_lines"
CASH_SOURCE = "core_cash_applications"
ROUTE_GL = "gl"
ROUTE_CASH = "cash_application"
SOURCES = {ROUTE_GL: GL_SOURCE, ROUTE_CASH: CASH_SOURCE}
PENDING, SENT, VERIFIED, FAILED, HELD = "pending", "sent", "verified", "failed", "held"
POSTED_UNVERIFIED = "posted_unverified"  # M3 accepted the batch; the voucher was not read back yet
PBID_FIRST, PBID_SPAN = 1_000_000_000, 9_000_000_000  # ten-digit payment batch numbers

OUTBOX_DDL = create_table(OUTBOX, POSTING_COLUMNS)

# What each route's content hash covers: everything that reaches M3, in line order.
# A line's local amount counts where it is not the amount itself (a foreign line's ACAM); NULL adds nothing,
# so a local-currency voucher hashes as it did before local amounts existed.
_GL_HASHED = ("line_number", "accounting_date", "ait1", "ait2", "ait3", "ait4", "ait5", "ait6", "ait7", "currency",
              "amount_minor", "voucher_text", "nullif(local_minor, amount_minor)")
_CASH_HASHED = ("line_number", "accounting_date", "customer", "invoice_number", "invoice_year", "currency",
                "amount_minor")


@dataclass(frozen=True)
class Voucher:
    """A voucher the poster works on: its outbox row at the start of the run and its source lines."""

    route: str
    key: str
    status: str  # at the start of the run: pending, sent (resumed) or posted_unverified (to verify again)
    m3_batch: str
    accounting_date: date
    lines: tuple[dict, ...]

    @property
    def resumed(self) -> bool:
        return self.status == SENT


@dataclass(frozen=True)
class Conflict:
    """A voucher whose journal lines changed or vanished after it was sent to M3."""

    route: str
    key: str
    status: str
    message: str


def payment_batch_id(voucher_key: str) -> int:
    """The ARS040 payment batch number a cash voucher key maps to before collisions are resolved."""
    digest = hashlib.sha256(voucher_key.encode("utf-8")).digest()
    return PBID_FIRST + int.from_bytes(digest[:8], "big") % PBID_SPAN


def _digest_sql(columns: tuple[str, ...], nullable: set[str]) -> str:
    parts = ", ".join(f"coalesce(CAST({c} AS VARCHAR), '')" if c in nullable else f"CAST({c} AS VARCHAR)"
                      for c in columns)
    return f"sha256(string_agg(concat_ws('|', {parts}), chr(10) ORDER BY line_number))"


def _source_sql(conn: duckdb.DuckDBPyConnection) -> str:
    """One row per voucher in the journals: key, route, date, line count, content hash, held reasons."""
    parts = []
    gated = table_exists(conn, BLOCKS)
    if table_exists(conn, GL_SOURCE):
        nullable = {c for c, t in GL_JOURNAL_LINE_COLUMNS.items() if "NOT NULL" not in t}
        parts.append(f"""
            SELECT voucher_key, '{ROUTE_GL}' AS route, min(accounting_date) AS accounting_date,
                   count(*) AS line_count, {_digest_sql(_GL_HASHED, nullable)} AS content_hash,
                   string_agg(DISTINCT held_reason, '; ' ORDER BY held_reason) AS held_reason
            FROM {GL_SOURCE} WHERE route = '{ROUTE_GL}' GROUP BY voucher_key""")
        if gated:
            parts[-1] = _with_blocks(parts[-1], held_reasons_sql(
                f"(SELECT * FROM {GL_SOURCE} WHERE route = '{ROUTE_GL}')", "coalesce(l.source_date, l.accounting_date)"))
    if table_exists(conn, CASH_SOURCE):
        nullable = {c for c, t in CASH_APPLICATION_COLUMNS.items() if "NOT NULL" not in t}
        parts.append(f"""
            SELECT voucher_key, '{ROUTE_CASH}' AS route, min(accounting_date) AS accounting_date,
                   count(*) AS line_count, {_digest_sql(_CASH_HASHED, nullable)} AS content_hash,
                   NULL::VARCHAR AS held_reason
            FROM {CASH_SOURCE} GROUP BY voucher_key""")
        if gated:
            parts[-1] = _with_blocks(parts[-1], held_reasons_sql(CASH_SOURCE, "l.accounting_date"))
    if not parts:
        return ("SELECT NULL::VARCHAR AS voucher_key, NULL::VARCHAR AS route, NULL::DATE AS accounting_date, "
                "NULL::INTEGER AS line_count, NULL::VARCHAR AS content_hash, NULL::VARCHAR AS held_reason LIMIT 0")
    return " UNION ALL ".join(parts)


def _with_blocks(vouchers: str, blocks: str) -> str:
    """``vouchers`` with the reasons blocking checks hold them added to their ``held_reason``."""
    return f"""
        SELECT v.* REPLACE (nullif(concat_ws('; ', v.held_reason, b.block_reason), '') AS held_reason)
        FROM ({vouchers}) v LEFT JOIN ({blocks}) b USING (voucher_key)"""


def enqueue(conn: duckdb.DuckDBPyConnection, now: datetime) -> list[Conflict]:
    """Bring the outbox in line with the journals (see the module docstring); returns the conflicts.

    ``now`` is naive UTC.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(OUTBOX_DDL)
        conn.execute(f"CREATE OR REPLACE TEMP TABLE posting_source AS {_source_sql(conn)}")
        conn.execute(f"""
            INSERT INTO {OUTBOX} BY NAME
            SELECT s.voucher_key, s.route, s.accounting_date, s.line_count, s.content_hash,
                   CASE WHEN s.held_reason IS NULL THEN '{PENDING}' ELSE '{HELD}' END AS status, 0 AS attempts,
                   s.held_reason AS last_error, CAST(? AS TIMESTAMP) AS updated_at_utc,
                   CASE WHEN s.route = '{ROUTE_GL}' THEN s.voucher_key END AS m3_batch
            FROM posting_source s ANTI JOIN {OUTBOX} o USING (route, voucher_key)""", [now])
        # Never sent: follow the journals. A failed row keeps failing until its content changes.
        conn.execute(f"""
            UPDATE {OUTBOX} o SET accounting_date = s.accounting_date, line_count = s.line_count,
                content_hash = s.content_hash, status = s.new_status, last_error = s.new_error, updated_at_utc = ?
            FROM (SELECT s.*, o.route AS r, o.voucher_key AS k,
                         CASE WHEN s.held_reason IS NOT NULL THEN '{HELD}'
                              WHEN o.status = '{FAILED}' AND o.content_hash = s.content_hash THEN '{FAILED}'
                              ELSE '{PENDING}' END AS new_status,
                         CASE WHEN s.held_reason IS NOT NULL THEN s.held_reason
                              WHEN o.status = '{FAILED}' AND o.content_hash = s.content_hash THEN o.last_error
                         END AS new_error
                  FROM posting_source s JOIN {OUTBOX} o USING (route, voucher_key)
                  WHERE o.sent_at_utc IS NULL) s
            WHERE o.route = s.r AND o.voucher_key = s.k
              AND (o.content_hash <> s.content_hash OR o.status <> s.new_status
                   OR o.last_error IS DISTINCT FROM s.new_error)""", [now])
        conn.execute(f"""
            DELETE FROM {OUTBOX} o WHERE o.sent_at_utc IS NULL
              AND NOT EXISTS (SELECT 1 FROM posting_source s WHERE s.route = o.route AND s.voucher_key = o.voucher_key)""")
        conflicts = _flag_conflicts(conn, now)
        _assign_payment_batches(conn)
        conn.execute("DROP TABLE posting_source")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return conflicts


def _flag_conflicts(conn: duckdb.DuckDBPyConnection, now: datetime) -> list[Conflict]:
    rows = conn.execute(f"""
        SELECT o.route, o.voucher_key, o.status, o.m3_batch, o.content_hash, s.content_hash
        FROM {OUTBOX} o LEFT JOIN posting_source s USING (route, voucher_key)
        WHERE o.sent_at_utc IS NOT NULL AND s.content_hash IS DISTINCT FROM o.content_hash
        ORDER BY o.route, o.voucher_key""").fetchall()
    conflicts = []
    for route, key, status, batch, sent_hash, new_hash in rows:
        what = (f"changed after it was sent to M3 as batch {batch} (sent content {sent_hash[:12]}, the journal "
                f"now holds {new_hash[:12]})" if new_hash else
                f"left {SOURCES[route]} after it was sent to M3 as batch {batch}")
        message = (f"voucher {key} {what}: M3 keeps what was sent and nothing is posted again; correct it in M3 "
                   "or with a new voucher")
        new_status = status if status in (VERIFIED, POSTED_UNVERIFIED) else FAILED
        conn.execute(f"UPDATE {OUTBOX} SET status = ?, last_error = ?, updated_at_utc = ? "
                     "WHERE route = ? AND voucher_key = ? AND (status <> ? OR last_error IS DISTINCT FROM ?)",
                     [new_status, message, now, route, key, new_status, message])
        conflicts.append(Conflict(route, key, new_status, message))
    return conflicts


def _assign_payment_batches(conn: duckdb.DuckDBPyConnection) -> None:
    """Give every new cash voucher a payment batch number no other outbox row holds."""
    new = [k for (k,) in conn.execute(f"SELECT voucher_key FROM {OUTBOX} WHERE route = ? AND m3_batch IS NULL "
                                      "ORDER BY voucher_key", [ROUTE_CASH]).fetchall()]
    if not new:
        return
    used = {b for (b,) in conn.execute(f"SELECT m3_batch FROM {OUTBOX} WHERE route = ? AND m3_batch IS NOT NULL",
                                       [ROUTE_CASH]).fetchall()}
    for key in new:
        candidate = payment_batch_id(key)
        while str(candidate) in used:
            candidate = PBID_FIRST + (candidate - PBID_FIRST + 1) % PBID_SPAN
        used.add(str(candidate))
        conn.execute(f"UPDATE {OUTBOX} SET m3_batch = ? WHERE route = ? AND voucher_key = ?",
                     [str(candidate), ROUTE_CASH, key])


def held(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """(route, voucher key, reason) of every held voucher."""
    return conn.execute(f"SELECT route, voucher_key, last_error FROM {OUTBOX} WHERE status = ? "
                        "ORDER BY route, voucher_key", [HELD]).fetchall()


def work(conn: duckdb.DuckDBPyConnection, route: str) -> list[Voucher]:
    """The route's vouchers to post: ``posted_unverified`` (to verify again) and ``sent`` ones (to resume)
    first, then ``pending``, oldest first."""
    heads = conn.execute(f"""
        SELECT voucher_key, status, m3_batch, accounting_date FROM {OUTBOX}
        WHERE route = ? AND status IN (?, ?, ?)
        ORDER BY status = ?, accounting_date, voucher_key""",
                         [route, PENDING, SENT, POSTED_UNVERIFIED, PENDING]).fetchall()
    if not heads:
        return []
    source = SOURCES[route]
    columns = GL_JOURNAL_LINE_COLUMNS if route == ROUTE_GL else CASH_APPLICATION_COLUMNS
    filter_route = f"AND l.route = '{ROUTE_GL}'" if route == ROUTE_GL else ""
    cursor = conn.execute(f"""
        SELECT {', '.join('l.' + c for c in columns)} FROM {source} l
        JOIN {OUTBOX} o ON o.voucher_key = l.voucher_key AND o.route = ? AND o.status IN (?, ?, ?)
        WHERE true {filter_route} ORDER BY l.voucher_key, l.line_number""", [route, PENDING, SENT, POSTED_UNVERIFIED])
    names = [d[0] for d in cursor.description]
    lines: dict[str, list[dict]] = {}
    for row in cursor.fetchall():
        record = dict(zip(names, row))
        lines.setdefault(record["voucher_key"], []).append(record)
    return [Voucher(route, key, status, batch, day, tuple(lines.get(key, ()))) for key, status, batch, day in heads]


def mark_sent(conn: duckdb.DuckDBPyConnection, vouchers: list[Voucher], now: datetime) -> None:
    """Write-ahead: from here on M3 may hold these vouchers' batches."""
    _update(conn, [(v.route, v.key) for v in vouchers],
            f"status = '{SENT}', attempts = attempts + 1, sent_at_utc = coalesce(sent_at_utc, $1), updated_at_utc = $1",
            [now])


def note_error(conn: duckdb.DuckDBPyConnection, vouchers: list[Voucher], error: str, now: datetime) -> None:
    """Keep the status (the next run resumes), record why this run stopped."""
    _update(conn, [(v.route, v.key) for v in vouchers], "last_error = $1, updated_at_utc = $2", [error, now])


def _values(rows: list[tuple], first: int, casts: tuple[str, ...] = ()) -> str:
    """A VALUES list of numbered parameters starting at ``$first`` (DuckDB binds ``?`` in FROM first)."""
    width = len(rows[0])
    cells = [f"CAST(${first + i * width + j} AS {casts[j]})" if j < len(casts) and casts[j] else
             f"${first + i * width + j}" for i in range(len(rows)) for j in range(width)]
    return ", ".join("(" + ", ".join(cells[i * width:(i + 1) * width]) + ")" for i in range(len(rows)))


def _update(conn: duckdb.DuckDBPyConnection, keys: list[tuple[str, str]], assignments: str, params: list) -> None:
    """``assignments`` use ``$1``..``$n`` for ``params``."""
    if not keys:
        return
    conn.execute(f"UPDATE {OUTBOX} o SET {assignments} FROM (VALUES {_values(keys, len(params) + 1)}) "
                 "v(route, voucher_key) WHERE o.route = v.route AND o.voucher_key = v.voucher_key",
                 params + [part for key in keys for part in key])


def record_outcomes(conn: duckdb.DuckDBPyConnection, outcomes: list[tuple[Voucher, str, str | None, str | None]],
                    now: datetime) -> None:
    """(voucher, status, M3 voucher number, error) for each voucher, in one statement."""
    if not outcomes:
        return
    rows = [(voucher.route, voucher.key, status, number, error) for voucher, status, number, error in outcomes]
    conn.execute(f"""
        UPDATE {OUTBOX} o SET status = v.status, m3_voucher_number = coalesce(v.number, o.m3_voucher_number),
            last_error = v.error, updated_at_utc = $1
        FROM (VALUES {_values(rows, 2, ("", "", "", "VARCHAR", "VARCHAR"))}) v(route, voucher_key, status, number, error)
        WHERE o.route = v.route AND o.voucher_key = v.voucher_key""", [now] + [p for row in rows for p in row])

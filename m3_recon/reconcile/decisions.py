"""Finance's decisions on exceptions: recorded with who, when and why, honoured by every later run.

Decisions live in a reviewed, append-only JSON-lines file (``data/exception_decisions.jsonl`` by
default, ``M3_RECON_DECISIONS_FILE``); the latest decision per exception wins and nothing is ever
rewritten, so reruns cannot lose one. Actions:

* ``assign`` — apply the payment to a named invoice (``invoice_number``, optional ``invoice_year``);
* ``accept`` — accept the suggestion: apply the payment to its single candidate invoice (or to the
  named one among several candidates); a suggested list of invoices (one reference naming several)
  is accepted as a whole, oldest invoice first;
* ``write_off`` — book a payment's unapplied excess (an overpayment) to the write-off account instead
  of unapplied cash, within the tolerance in ``data/gl_accounts.toml``;
* ``dismiss`` — close the exception without booking anything different, with a reason.

``decide`` is the one gate both the ``m3-recon exceptions resolve`` command and the ``resolve_exception``
job (Dagster Launchpad) pass: the action must fit the exception (assign / accept only for a payment
exception, write_off only for an overpayment within the limit), the invoice must be open in M3, and a
decision on an exception that already has one names the decision it supersedes. ``apply_decisions``
rewrites the matcher's temp tables for decided payments before they are stored, so a decided payment
is posted like any automatic match (rule ``manual``); ``decisions_m3_cannot_follow`` turns a dismissal
of a payment M3 already holds applied into a ``posted_voucher_changed`` exception for a person.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb

from m3_recon.money import money
from m3_recon.settings import PROJECT_ROOT
from m3_recon.warehouse import table_exists

ACTIONS = ("assign", "accept", "write_off", "dismiss")
MAX_TEXT = 500
# Exceptions about a payment that was not applied to an invoice: the only ones an invoice can resolve. Every
# other reason code (payouts, vouchers, categories, anomalies) is about something an invoice cannot settle.
PAYMENT_REASONS = frozenset({
    "ambiguous_amount", "ambiguous_invoice_group", "ambiguous_reference", "competing_payments", "currency_mismatch",
    "customer_mismatch", "invoice_already_paid", "invoice_claimed", "invoice_list_unresolved", "invoice_not_found",
    "no_matching_invoice", "no_reference", "overpayment"})
NOT_PAYMENT_REASONS = frozenset({"payout_mismatch", "unknown_category", "voucher_held", "voucher_unverified",
                                 "posted_voucher_changed", "reversal_of_unapplied_payment", "payout_not_banked",
                                 "unexplained_bank_credit", "customer_xref_conflict", "fee_rate_drift",
                                 "unusual_payout", "refund_spike", "dispute_spike"})
# A payment exception M3 can only hold applied because finance assigned or accepted it (an overpayment's payment
# is applied automatically; dismissing it only leaves the excess unapplied).
APPLYING_REASONS = PAYMENT_REASONS - {"overpayment"}


def decisions_path() -> Path:
    return Path(os.environ.get("M3_RECON_DECISIONS_FILE", str(PROJECT_ROOT / "data" / "exception_decisions.jsonl")))


class DecisionError(ValueError):
    """A decision that cannot be recorded as given; the message says what to change."""


@dataclass(frozen=True)
class Decision:
    exception_id: str
    action: str
    decided_by: str
    reason: str
    decided_at_utc: str
    invoice_number: str | None = None
    invoice_year: int | None = None
    supersedes: str | None = None  # the earlier decision on the same exception this one replaces

    def summary(self) -> str:
        invoice = f" {self.invoice_number}" if self.invoice_number else ""
        return f"{self.action}{invoice} by {self.decided_by} at {self.decided_at_utc}"

    def validate(self) -> None:
        if self.action not in ACTIONS:
            raise DecisionError(f"action must be one of {', '.join(ACTIONS)}, not {self.action!r}")
        if not self.exception_id.startswith("EX-"):
            raise DecisionError(f"{self.exception_id!r} is not an exception id (they look like EX-1A2B3C4D5E6F)")
        if not self.decided_by.strip() or not self.reason.strip():
            raise DecisionError("a decision needs who decided (--by) and why (--why)")
        if len(self.reason) > MAX_TEXT or len(self.decided_by) > 100:
            raise DecisionError(f"keep --why under {MAX_TEXT} characters and --by under 100")
        if self.action == "assign" and not self.invoice_number:
            raise DecisionError("assign needs --invoice (the M3 invoice number)")


def record(decision: Decision, path: Path | None = None) -> Path:
    """Append the decision to the decisions file (created if missing)."""
    decision.validate()
    path = path or decisions_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(decision), sort_keys=True) + "\n")
    return path


def new_decision(exception_id: str, action: str, decided_by: str, reason: str, invoice_number: str | None = None,
                 invoice_year: int | None = None) -> Decision:
    return Decision(exception_id=exception_id, action=action, decided_by=decided_by, reason=reason,
                    decided_at_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    invoice_number=invoice_number, invoice_year=invoice_year)


def read_decisions(path: Path | None = None) -> list[Decision]:
    """Every decision in the file, oldest first; a malformed line fails loudly with its line number."""
    path = path or decisions_path()
    rows = []
    if path.exists():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                decision = Decision(**json.loads(line))
                decision.validate()
            except (TypeError, ValueError) as exc:
                raise DecisionError(f"{path}:{number} is not a valid decision ({exc}); fix or remove that line") from None
            rows.append(decision)
    return rows


def latest_decisions(path: Path | None = None) -> dict[str, Decision]:
    """The decision in force per exception: the latest one recorded."""
    return {d.exception_id: d for d in read_decisions(path)}


@dataclass(frozen=True)
class Recorded:
    decision: Decision
    path: Path
    was: str                   # the exception's status in the register when decided
    notes: tuple[str, ...]     # what the person should know (superseded decision, M3 consequences)


def decide(register: duckdb.DuckDBPyConnection, decision: Decision, write_off_limit_minor: int,
           path: Path | None = None) -> Recorded:
    """Check ``decision`` against the exception register (the analysts' copy) and record it, or raise
    ``DecisionError`` saying what to change. The CLI and the ``resolve_exception`` job both come here."""
    decision.validate()
    found = register.execute("SELECT reason_code, status, unapplied_minor, candidates, currency, processor, source_id "
                             "FROM out_recon_exceptions WHERE exception_id = ?", [decision.exception_id]).fetchone()
    if found is None:
        raise DecisionError(f"no exception {decision.exception_id}; see `m3-recon exceptions list --status all`")
    reason, status, unapplied, candidates, currency, processor, source_id = found
    names = json.loads(candidates) if candidates and candidates.startswith("[") else []
    action = decision.action
    if action in ("assign", "accept") and reason not in PAYMENT_REASONS:
        raise DecisionError(f"{action} applies a payment to an invoice; {decision.exception_id} is {reason!r}, not a "
                            "payment exception (dismiss it with the reason, or correct it at its source)")
    if decision.invoice_number:
        if action not in ("assign", "accept"):
            raise DecisionError(f"--invoice only goes with assign or accept, not {action}")
        open_invoices = register.execute(
            "SELECT count(*) FROM core_open_invoices WHERE invoice_number = ? AND (? IS NULL OR invoice_year = ?)",
            [decision.invoice_number, decision.invoice_year, decision.invoice_year]).fetchone()[0]
        if not open_invoices:
            raise DecisionError(f"M3 shows no open invoice {decision.invoice_number}; check the number (and the year)")
        if open_invoices > 1:
            raise DecisionError(f"invoice {decision.invoice_number} is open in {open_invoices} invoice years; "
                                "name one with --year")
    # A suggested list of invoices (one reference naming several) is accepted as a whole: each number once.
    listed = register.execute(
        "SELECT count(*) > 0 AND count(*) = count(DISTINCT a.invoice_number) FROM core_payment_allocations a "
        "WHERE a.processor = ? AND a.source_id = ? AND a.rule = 'reference_list' AND a.status = 'suggested'",
        [processor, source_id]).fetchone()[0]
    if action == "accept" and not (len(names) == 1 or (decision.invoice_number and decision.invoice_number in names)
                                   or (listed and not decision.invoice_number)):
        raise DecisionError("accept takes the suggested invoice: this exception has "
                            f"{len(names)} candidate(s) {names}; name one with --invoice, or use assign")
    if action == "write_off":
        if reason != "overpayment":
            raise DecisionError(f"only an overpayment's unapplied excess can be written off, not {reason}")
        if unapplied is None or abs(unapplied) > write_off_limit_minor:
            raise DecisionError(f"the excess ({money(unapplied or 0, currency)}) is over the write-off limit "
                                f"({money(write_off_limit_minor, currency)}, "
                                "data/gl_accounts.toml write_off.limit_minor)")
    notes = []
    earlier = latest_decisions(path).get(decision.exception_id)
    if earlier is not None:
        decision = replace(decision, supersedes=earlier.summary())
        notes.append(f"supersedes the earlier decision {earlier.summary()} ({earlier.reason!r})")
    if action == "dismiss" and reason in APPLYING_REASONS and table_exists(register, "core_cash_applications"):
        applied = register.execute(
            "SELECT string_agg(DISTINCT invoice_number || ' (cash batch ' || voucher_key || ')', ', ') "
            "FROM core_cash_applications WHERE processor = ? AND source_id = ?", [processor, source_id]).fetchone()[0]
        if applied:
            notes.append(f"{source_id} is applied to invoice {applied}; once that is in M3, dismiss cannot take it "
                         "back: the next close raises posted_voucher_changed for a person to reverse it in M3")
    return Recorded(decision, record(decision, path), status, tuple(notes))


def load_decisions(conn: duckdb.DuckDBPyConnection, path: Path | None = None, into: str = "exception_decisions") -> int:
    """Temp table ``into``: the latest valid decision per exception. Returns how many."""
    rows = read_decisions(path)
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {into} (exception_id VARCHAR, action VARCHAR, "
                 "decided_by VARCHAR, reason VARCHAR, decided_at_utc TIMESTAMP, invoice_number VARCHAR, "
                 "invoice_year INTEGER, seq INTEGER)")
    if rows:
        conn.executemany(f"INSERT INTO {into} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [(d.exception_id, d.action, d.decided_by, d.reason, d.decided_at_utc.rstrip("Z"),
                           d.invoice_number, d.invoice_year, i) for i, d in enumerate(rows)])
    conn.execute(f"DELETE FROM {into} WHERE seq NOT IN (SELECT max(seq) FROM {into} GROUP BY exception_id)")
    return conn.execute(f"SELECT count(*) FROM {into}").fetchone()[0]


def apply_decisions(conn: duckdb.DuckDBPyConnection, *, decisions: str, payments: str, invoices: str,
                    earlier: str) -> int:
    """Rewrite ``match_allocations`` / ``match_exceptions`` for payments finance assigned or accepted in
    ``decisions`` (``load_decisions``). ``payments``: the settlement lines the matcher was given (their
    presentment and settlement amounts price the payment in the invoice's currency); ``invoices``: open
    invoices; ``earlier``: allocations from before the window that still bind invoices.

    The payment is applied to the decided invoice up to what is still outstanding (counting every other
    automatic allocation), as status ``auto`` with rule ``manual``; its exceptions of this window are
    dropped (the register shows them as resolved). Returns the number of payments rewritten.
    """
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE decided_payments AS
        WITH decided AS (
            SELECT e.processor, e.source_id, d.*, e.candidates
            FROM match_exceptions e JOIN {decisions} d USING (exception_id)
            WHERE d.action IN ('assign', 'accept')
        ), target AS (
            SELECT d.processor, d.source_id,
                   coalesce(d.invoice_number, CASE WHEN json_array_length(d.candidates) = 1
                                                   THEN d.candidates->>0 END) AS invoice_number, d.invoice_year
            FROM decided d
            UNION  -- accepting a suggested list of invoices (rule reference_list) takes every invoice of it
            SELECT a.processor, a.source_id, a.invoice_number, a.invoice_year
            FROM decided d JOIN match_allocations a USING (processor, source_id)
            WHERE d.action = 'accept' AND d.invoice_number IS NULL AND a.rule = 'reference_list'
              AND a.status = 'suggested'
        ), named AS (
            SELECT t.processor, t.source_id, i.invoice_number, i.invoice_year, i.customer, i.currency, i.invoice_date,
                   i.outstanding_minor - coalesce((SELECT sum(allocated_minor) FROM match_allocations a
                                                    WHERE a.status = 'auto' AND a.invoice_number = i.invoice_number
                                                      AND a.invoice_year = i.invoice_year
                                                      AND (a.processor, a.source_id) <> (t.processor, t.source_id)), 0)
                                        - coalesce((SELECT sum(allocated_minor) FROM {earlier} a
                                                    WHERE a.status = 'auto' AND a.invoice_number = i.invoice_number
                                                      AND a.invoice_year = i.invoice_year), 0) AS remaining,
                   count(*) OVER (PARTITION BY t.processor, t.source_id, t.invoice_number) AS years
            FROM target t JOIN {invoices} i ON i.invoice_number = t.invoice_number
                 AND (t.invoice_year IS NULL OR i.invoice_year = t.invoice_year)
        )
        -- a number open in several years without a year names no one invoice: not applied, stays open
        SELECT * EXCLUDE (years) FROM named QUALIFY max(years) OVER (PARTITION BY processor, source_id) = 1""")
    rewritten = conn.execute("SELECT count(DISTINCT (processor, source_id)) FROM decided_payments").fetchone()[0]
    if not rewritten:
        return 0
    # Several decided invoices (an accepted list) take the payment oldest first, as the matcher would.
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE decided_rows AS
        WITH payment AS (
            SELECT DISTINCT ON (processor, source_id) processor, source_id, line_type, settlement_date,
                   payment_currency, payment_amount_minor, linked_source_id
            FROM match_allocations WHERE (processor, source_id) IN (SELECT (processor, source_id) FROM decided_payments)
        ), priced AS (
            SELECT a.*, d.customer, d.invoice_number, d.invoice_year, d.currency AS invoice_currency, d.invoice_date,
                   greatest(d.remaining, 0) AS remaining,
                   CASE WHEN d.currency = p.presentment_currency THEN p.presentment_amount_minor
                        WHEN d.currency = p.currency THEN p.amount_minor END AS pay_inv
            FROM payment a JOIN decided_payments d USING (processor, source_id)
            JOIN (SELECT * FROM {payments} WHERE line_type = 'charge' AND amount_minor > 0) p USING (processor, source_id)
        )
        SELECT processor, source_id, line_type, settlement_date, customer, invoice_number, invoice_year,
               invoice_currency, payment_currency, payment_amount_minor, pay_inv,
               greatest(least(remaining, pay_inv - coalesce(sum(remaining) OVER (
                   PARTITION BY processor, source_id ORDER BY invoice_date, invoice_number, invoice_year
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)), 0) AS allocated_minor,
               'manual' AS rule, CAST(1 AS DECIMAL(4, 3)) AS confidence, 'auto' AS status, linked_source_id
        FROM priced WHERE pay_inv IS NOT NULL""")
    # An invoice of an accepted list that nothing is left for gets no allocation (unless it is the only one).
    conn.execute("""DELETE FROM decided_rows d WHERE allocated_minor = 0 AND EXISTS (
                        SELECT 1 FROM decided_rows o WHERE (o.processor, o.source_id) = (d.processor, d.source_id)
                        AND o.allocated_minor > 0)""")
    conn.execute("DELETE FROM match_allocations WHERE (processor, source_id) IN "
                 "(SELECT (processor, source_id) FROM decided_rows)")
    conn.execute("""INSERT INTO match_allocations BY NAME
                    SELECT * EXCLUDE (pay_inv), pay_inv AS payment_invoice_amount_minor,
                           CASE WHEN allocated_minor = pay_inv THEN payment_amount_minor
                                ELSE CAST((CAST(payment_amount_minor AS HUGEINT) * allocated_minor * 2 + pay_inv)
                                          // (2 * CAST(pay_inv AS HUGEINT)) AS BIGINT) END AS allocated_settlement_minor
                    FROM decided_rows""")
    conn.execute("DELETE FROM match_exceptions WHERE (processor, source_id) IN "
                 "(SELECT (processor, source_id) FROM decided_rows)")
    # What the decided invoices could not absorb stays unapplied, as an overpayment exception.
    conn.execute("""INSERT INTO match_exceptions BY NAME
                    SELECT 'EX-' || upper(substr(md5('overpayment|' || d.processor || '|' || d.source_id), 1, 12))
                               AS exception_id, 'overpayment' AS reason_code, d.processor, d.source_id,
                           any_value(d.settlement_date) AS settlement_date, any_value(d.payment_currency) AS currency,
                           any_value(d.payment_amount_minor) AS amount_minor,
                           any_value(d.pay_inv) - sum(d.allocated_minor) AS unapplied_minor,
                           to_json(list(d.invoice_number ORDER BY d.invoice_number)) AS candidates,
                           'the decided invoice had less outstanding than the payment; the excess is unapplied'
                               AS detail
                    FROM decided_rows d GROUP BY d.processor, d.source_id
                    HAVING sum(d.allocated_minor) < any_value(d.pay_inv)""")
    return rewritten


def decisions_m3_cannot_follow(conn: duckdb.DuckDBPyConnection, first_day: date, end_day: date, *, decisions: str,
                               into: str = "dismissals_m3_holds") -> str:
    """Temp table ``into``, in the exception register's shape: payments of [first_day, end_day) that M3 holds applied
    to an invoice (their cash application was sent, after an assign or accept) while the decision in force on their
    exception (``decisions``) now dismisses it: the close keeps what M3 holds, and a person must reverse it in M3.
    Returns ``into``."""
    if not all(table_exists(conn, t) for t in ("out_recon_exceptions", "core_cash_applications", "out_m3_postings")):
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS "
                     "SELECT NULL::VARCHAR AS exception_id, NULL::VARCHAR AS reason_code, NULL::VARCHAR AS processor, "
                     "NULL::VARCHAR AS source_id, NULL::DATE AS settlement_date, NULL::VARCHAR AS currency, "
                     "NULL::BIGINT AS amount_minor, NULL::BIGINT AS unapplied_minor, NULL::JSON AS candidates, "
                     "NULL::VARCHAR AS detail WHERE false")
        return into
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE {into} AS
        WITH held AS (
            SELECT r.exception_id, any_value(r.processor) AS processor, any_value(r.source_id) AS source_id,
                   any_value(r.settlement_date) AS settlement_date, any_value(r.currency) AS currency,
                   any_value(r.amount_minor) AS amount_minor,
                   list(DISTINCT c.invoice_number ORDER BY c.invoice_number) AS invoices,
                   string_agg(DISTINCT c.invoice_number || ' by batch ' || c.voucher_key, ', ') AS applications
            FROM out_recon_exceptions r
            JOIN core_cash_applications c ON c.processor = r.processor AND c.source_id = r.source_id
            JOIN out_m3_postings p ON p.voucher_key = c.voucher_key AND p.route = 'cash_application'
                 AND p.sent_at_utc IS NOT NULL
            WHERE list_contains($reasons, r.reason_code)
              AND r.settlement_date >= $first AND r.settlement_date < $end
            GROUP BY r.exception_id
        )
        SELECT 'EX-' || upper(substr(md5('posted_voucher_changed|' || d.exception_id || '|' || d.action), 1, 12))
                   AS exception_id, 'posted_voucher_changed' AS reason_code, h.processor, h.source_id,
               h.settlement_date, h.currency, h.amount_minor, NULL::BIGINT AS unapplied_minor,
               to_json(h.invoices) AS candidates,
               'finance decided ' || d.action || ' on ' || d.exception_id || ' (' || d.decided_by || ', '
                   || strftime(d.decided_at_utc, '%Y-%m-%d %H:%M') || ') but M3 holds the payment applied to invoice '
                   || h.applications || ': reverse the application in M3 by hand, or assign it again' AS detail
        FROM {decisions} d JOIN held h USING (exception_id) WHERE d.action = 'dismiss'""",
                 {"reasons": sorted(APPLYING_REASONS), "first": first_day, "end": end_day})
    return into

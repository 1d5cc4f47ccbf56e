"""Matching card payments to open M3 invoices: ordered rules, set-based in DuckDB SQL.

``match_payments`` takes three relations in a DuckDB connection — the window's canonical settlement
lines, the open invoices, and allocations already made by earlier windows and not yet posted — and
creates two temp tables, ``match_allocations`` and ``match_exceptions``. Rules (``data/matching_rules.toml``):

1. exact invoice reference (customer must agree when both are known); payments for one invoice are
   applied oldest first, so instalments leave the residual open and an excess is an overpayment. A
   number open in several invoice years is decided by the customer the payment names, else by the only
   open one; only a real tie is suggested;
1b. a reference naming several invoices ("2601831, 2601832 and 2601840"): applied oldest first, the last
   one partly when the payment is smaller, the excess an overpayment when it is larger; suggested when
   any named invoice cannot be told (see ``_reference_list``);
2. customer + exactly the outstanding amount within a date window: one candidate is applied,
   several are suggested, and a second payment for an invoice already claimed is an exception;
3. one payment for several invoices of one customer summing exactly to it (bounded subset search);
4. foreign-currency invoices are compared in the invoice currency through the presentment amount;
   the allocation keeps both the invoice-currency and the settlement-currency amount (for FX);
5. refunds and disputes are linked to the allocation of the charge they reverse.

Nothing is applied twice: invoices' remaining amounts count earlier unposted allocations, and a
payment whose auto allocation would push an invoice past its outstanding amount is demoted to a
suggestion. Everything not applied becomes an exception with a reason code.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import duckdb

from m3_recon.canonical.references import TextReference, load_text_references
from m3_recon.settings import PROJECT_ROOT
from m3_recon.sql import literal

DEFAULT_RULES_FILE = PROJECT_ROOT / "data" / "matching_rules.toml"

ALLOCATION_COLUMNS = {
    "processor": "VARCHAR NOT NULL", "source_id": "VARCHAR NOT NULL", "line_type": "VARCHAR NOT NULL",
    "settlement_date": "DATE NOT NULL", "customer": "VARCHAR", "invoice_number": "VARCHAR",
    "invoice_year": "INTEGER", "invoice_currency": "VARCHAR", "payment_currency": "VARCHAR NOT NULL",
    "payment_amount_minor": "BIGINT NOT NULL", "payment_invoice_amount_minor": "BIGINT",
    "allocated_minor": "BIGINT NOT NULL", "allocated_settlement_minor": "BIGINT NOT NULL",
    "rule": "VARCHAR NOT NULL", "confidence": "DECIMAL(4, 3) NOT NULL", "status": "VARCHAR NOT NULL",
    "linked_source_id": "VARCHAR",
    "allocated_local_minor": "BIGINT",  # M3's booked local value of allocated_minor, fixed when allocated
}
EXCEPTION_COLUMNS = {
    "exception_id": "VARCHAR NOT NULL", "reason_code": "VARCHAR NOT NULL", "processor": "VARCHAR NOT NULL",
    "source_id": "VARCHAR NOT NULL", "settlement_date": "DATE NOT NULL", "currency": "VARCHAR",
    "amount_minor": "BIGINT", "unapplied_minor": "BIGINT", "candidates": "JSON", "detail": "VARCHAR NOT NULL",
}
REASON_CODES = {
    "overpayment": "the payment is larger than the invoice's outstanding amount; the excess is unapplied",
    "invoice_already_paid": "the referenced invoice has nothing left outstanding",
    "customer_mismatch": "the referenced invoice belongs to another customer than the payment names",
    "ambiguous_reference": "the reference matches several open invoices",
    "currency_mismatch": "the invoice is in a currency the payment was neither presented nor settled in",
    "ambiguous_amount": "several open invoices of the customer have exactly this amount outstanding",
    "invoice_claimed": "another payment was already applied to the only invoice with this amount",
    "ambiguous_invoice_group": "several groups of the customer's invoices add up to the payment",
    "competing_payments": "several payments would be applied to the same invoices",
    "invoice_list_unresolved": "the reference names several invoices and at least one is not an open invoice",
    "invoice_not_found": "the reference names no open invoice",
    "no_reference": "the payment names neither an invoice nor a customer",
    "no_matching_invoice": "no open invoice or group of invoices of the customer matches the amount",
    "reversal_of_unapplied_payment": "a refund or dispute of a charge that was never applied to an invoice",
    "payout_mismatch": "the payout's amount differs from the sum of its lines",
    "unknown_category": "a processor category the mapping does not know: booked to suspense (or held without one)",
    "voucher_held": "a voucher cannot be posted (see its reason); map the account and rerun",
    "posted_voucher_changed": "something M3 already holds would have to change; correct it in M3 by hand",
    "voucher_unverified": "M3 accepted the voucher but it was not read back yet; never resent, verified again by "
                          "the next posting run",
}


# Where one reference names several invoices: commas, semicolons, slashes, ampersands, plus signs, "and", spaces.
DEFAULT_LIST_SEPARATORS = r"\s*(?:[,;/&+]|\bAND\b)\s*|\s+"


@dataclass(frozen=True)
class MatchingRules:
    strip_prefixes: tuple[str, ...] = ("INV", "INVOICE")
    list_separators: str = DEFAULT_LIST_SEPARATORS
    text_references: tuple[TextReference, ...] = ()
    days_before_payment: int = 120
    days_after_payment: int = 3
    max_candidates: int = 10
    max_invoices: int = 3
    confidence_reference: float = 1.0
    confidence_customer_amount: float = 0.9
    confidence_multi_invoice: float = 0.8

    @classmethod
    def load(cls, path: Path = DEFAULT_RULES_FILE) -> "MatchingRules":
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
        rules = cls(
            strip_prefixes=tuple(raw["reference"]["strip_prefixes"]),
            list_separators=str(raw["reference"].get("list_separators", DEFAULT_LIST_SEPARATORS)),
            text_references=load_text_references(raw.get("free_text", []), path),
            days_before_payment=int(raw["customer_amount"]["days_before_payment"]),
            days_after_payment=int(raw["customer_amount"]["days_after_payment"]),
            max_candidates=int(raw["multi_invoice"]["max_candidates"]),
            max_invoices=int(raw["multi_invoice"]["max_invoices"]),
            confidence_reference=float(raw["confidence"]["exact_reference"]),
            confidence_customer_amount=float(raw["confidence"]["customer_amount"]),
            confidence_multi_invoice=float(raw["confidence"]["multi_invoice"]),
        )
        if not 2 <= rules.max_invoices <= 5 or not 2 <= rules.max_candidates <= 25:
            raise ValueError(f"{path}: multi_invoice.max_invoices must be 2..5 and max_candidates 2..25 "
                             "(the subset search grows combinatorially)")
        try:
            with duckdb.connect() as conn:
                conn.execute(f"SELECT {reference_tokens(chr(39) + 'A, B' + chr(39), rules)}").fetchall()
        except duckdb.Error as exc:
            raise ValueError(f"{path}: reference.list_separators {rules.list_separators!r} is not a usable "
                             f"regular expression ({exc})") from None
        return rules


def _prefixes(rules: MatchingRules) -> list[str]:
    """The prefixes as a reference is compared (upper case, letters and digits only), longest first."""
    return sorted({re.sub(r"[^A-Z0-9]", "", prefix.upper()) for prefix in rules.strip_prefixes} - {""},
                  key=lambda p: (-len(p), p))


def normalised(expr: str, rules: MatchingRules) -> str:
    """SQL for a reference compared loosely: upper case, no punctuation, no INV prefix, no leading zeros.

    Hyphens, the common separator ("INV-2601831"), go first with ``replace``: the regular expression then
    finds nothing to rewrite in most references, which is cheaper than rewriting. A prefix is compared as the
    reference is (upper case, letters and digits only) and is escaped, so "INV." strips "INV" and no prefix
    can act as a regular expression or break the statement."""
    cleaned = f"regexp_replace(replace(upper({expr}), '-', ''), '[^A-Z0-9]', '', 'g')"
    alternatives = "|".join(re.escape(prefix) for prefix in _prefixes(rules))
    # One anchored rewrite takes the prefix and the leading zeros after it (ltrim would copy every reference).
    return f"nullif(regexp_replace({cleaned}, '^(?:{alternatives})?0*', ''), '')"


def _short_reference(expr: str, rules: MatchingRules) -> str:
    """SQL: the normalised reference of a reference of the common shape — a prefix or none, one hyphen or
    none, digits ("INV-0030000123", "inv30000123", "30000123") — in one regular expression that only reads
    it: its digits without leading zeros; '' for any other shape (``normalised`` then decides). That is
    what ``normalised`` gives: the reference holds nothing but the hyphen to remove, and when every prefix
    is letters only, the first prefix ``normalised`` tries that starts the reference is the one that
    precedes the digits (a longer one would reach into them; a shorter one comes after it). Always '' when a
    prefix has digits."""
    prefixes = _prefixes(rules)
    if not all(prefix.isalpha() for prefix in prefixes):
        return "''"
    alternatives = f"(?:{'|'.join(prefixes)})?" if prefixes else ""
    return f"regexp_extract(upper({expr}), '^{alternatives}-?0*([1-9][0-9]*)$', 1)"


def _normalised_reference(expr: str, short: str, rules: MatchingRules) -> str:
    """SQL: ``normalised(expr)``, taken from ``short`` (a column holding ``_short_reference(expr)``) when that
    found the common shape, so the rewrites run only on the other references."""
    return f"CASE WHEN {short} <> '' THEN {short} ELSE {normalised(expr, rules)} END"


def _normalised_number(column: str, rules: MatchingRules) -> str:
    """``normalised`` for a column of invoice numbers: one of digits only (as M3 numbers invoices) is already
    clean but for its leading zeros — one scan instead of two rewrites, and none without a leading zero (the
    number itself, not a trimmed copy) — unless a prefix is digits itself."""
    if any(prefix.isdigit() for prefix in _prefixes(rules)):
        return normalised(column, rules)
    return (f"CASE WHEN regexp_full_match({column}, '[1-9][0-9]*') THEN {column} "
            f"WHEN regexp_full_match({column}, '[0-9]+') THEN nullif(ltrim({column}, '0'), '') "
            f"ELSE {normalised(column, rules)} END")


def reference_tokens(expr: str, rules: MatchingRules) -> str:
    """SQL: the distinct normalised references a reference text names, split at the list separators."""
    return (f"list_distinct(list_filter(list_transform(string_split_regex(upper({expr}), "
            f"{literal(rules.list_separators)}), "
            f"lambda t: {normalised('t', rules)}), lambda t: t IS NOT NULL))")


# The payment's amount in the invoice's currency: its presentment amount if the customer paid in the
# invoice currency, its settlement amount if it settled in it; otherwise not comparable.
def in_invoice_currency(p: str, i: str) -> str:
    return (f"CASE WHEN {i}.currency = {p}.presentment_currency THEN {p}.presentment_amount_minor "
            f"WHEN {i}.currency = {p}.currency THEN {p}.amount_minor END")


def _settlement_share(amount: str, part: str, whole: str) -> str:
    """``amount × part / whole`` rounded half up, in integers (HUGEINT: no overflow, no floats)."""
    return (f"CAST((CAST({amount} AS HUGEINT) * {part} * 2 + {whole}) // (2 * CAST({whole} AS HUGEINT)) AS BIGINT)")


def fill_customers_from_xref(conn: duckdb.DuckDBPyConnection, *, lines: str, payers: str, xref: str,
                             into: str) -> int:
    """Create temp view ``into``: ``lines`` where a payment that names no M3 customer takes the one its
    processor customer maps to (``payers``: processor, source_id, processor_customer_id; ``xref``:
    processor, processor_customer_id, customer), so the customer rules can reach it. Returns how many
    lines were filled."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP VIEW {into} AS
        SELECT l.* REPLACE (coalesce(l.customer_ref, x.customer) AS customer_ref)
        FROM {lines} l
        LEFT JOIN {payers} p ON p.processor = l.processor AND p.source_id = l.source_id
        LEFT JOIN {xref} x ON x.processor = p.processor AND x.processor_customer_id = p.processor_customer_id""")
    return conn.execute(f"SELECT count(*) FROM {lines} l JOIN {into} f USING (processor, source_id) "
                        "WHERE l.customer_ref IS NULL AND f.customer_ref IS NOT NULL").fetchone()[0]


def match_payments(conn: duckdb.DuckDBPyConnection, rules: MatchingRules, *, lines: str, invoices: str,
                   earlier: str, history: str | None = None) -> None:
    """Create temp tables ``match_allocations`` and ``match_exceptions`` (see the module docstring).

    ``lines``: canonical settlement lines (core_settlement_lines columns). ``invoices``: open invoices with
    invoice_number, invoice_year, customer, currency, outstanding_minor, invoice_date. ``earlier``:
    allocations (core_payment_allocations columns) from before this window that still bind invoices.
    ``history``: allocations refunds and disputes may link to beyond this window (default: ``earlier``).
    """
    sources = Sources(payments=lines if _addressable(conn, lines) else "m_lines",
                      invoices=invoices if _addressable(conn, invoices) else "m_invoices")
    for statement in _statements(rules, lines, invoices, earlier, history or earlier, sources):
        conn.execute(statement)


@dataclass(frozen=True)
class Sources:
    """The tables the rules address by rowid: a payment is the rowid of its row in ``payments`` (``pid``; only
    its charges count, ``_payments``) and an invoice the rowid of its row in ``invoices`` (``iid``), so the rules
    join on integers, never on text, and read text only where they need it. A table given to ``match_payments``
    is addressed where it is (no copy of a million rows); a view or a registered frame is copied first
    (``m_lines``, ``m_invoices``)."""

    payments: str
    invoices: str


def _addressable(conn: duckdb.DuckDBPyConnection, relation: str) -> bool:
    """Whether ``relation`` is a table, whose rows have a rowid (a view or a registered frame has none)."""
    try:
        conn.execute(f"SELECT rowid FROM {relation} LIMIT 0")
    except duckdb.BinderException:
        return False
    return True


def _statements(rules: MatchingRules, lines: str, invoices: str, earlier: str, history: str,
                sources: Sources) -> list[str]:
    """The rules in order, each a list of statements over the temp tables the ones before it created.

    ``m_open`` holds what is left of each invoice that rule 1 did not settle; each later rule takes what it
    applies off it. Rule 4 (foreign currency) is ``in_invoice_currency`` in every rule.
    """
    return [*_inputs(lines, invoices, earlier, sources), *_exact_reference(rules, sources),
            *_reference_list(rules, sources), *_customer_amount(rules), *_multi_invoice(rules),
            _allocations(rules, sources), _reversals(lines, history), _exceptions(sources)]


def _inputs(lines: str, invoices: str, earlier: str, sources: Sources) -> list[str]:
    """The copies ``sources`` needs of inputs that are not tables (the window's charges, the invoices), and
    ``m_claimed``: what earlier unposted auto allocations claim of each invoice (``_invoices`` subtracts it)."""
    copies = []
    if sources.payments != lines:
        copies.append(f"CREATE OR REPLACE TEMP TABLE {sources.payments} AS "
                      f"SELECT line_type, {_PAYMENT_COLUMNS} FROM {lines} WHERE {_CHARGES}")
    if sources.invoices != invoices:
        copies.append(f"""CREATE OR REPLACE TEMP TABLE {sources.invoices} AS
            SELECT invoice_number, invoice_year, customer, currency, outstanding_minor, invoice_date FROM {invoices}""")
    return [*copies, f"""CREATE OR REPLACE TEMP TABLE m_claimed AS
        SELECT i.rowid AS iid, sum(e.allocated_minor) AS claimed
        FROM {sources.invoices} i JOIN {earlier} e USING (invoice_number, invoice_year)
        WHERE e.status = 'auto' GROUP BY i.rowid"""]


_CHARGES = "line_type = 'charge' AND amount_minor > 0"
_PAYMENT_COLUMNS = ("processor, source_id, settlement_date, occurred_at_utc, customer_ref, invoice_ref, currency, "
                    "amount_minor, presentment_currency, presentment_amount_minor")


def _payments(sources: Sources, rules: MatchingRules | None = None, only: str = "true") -> str:
    """SQL relation: the charges (those where ``only``) with their ``pid``, and with ``rules`` their normalised
    reference ``ref_norm``, computed after ``only`` has chosen them. Most payment references have the common
    shape (``_short_reference``), computed once in the inner projection so the CASE does not compute it twice."""
    charges = f"SELECT rowid AS pid, * FROM {sources.payments} WHERE {_CHARGES} AND {only}"
    if rules is None:
        return f"({charges})"
    return (f"(SELECT * EXCLUDE (short_ref), {_normalised_reference('invoice_ref', 'short_ref', rules)} AS ref_norm "
            f"FROM (SELECT *, {_short_reference('invoice_ref', rules)} AS short_ref FROM ({charges})))")


def _invoices(sources: Sources, rules: MatchingRules | None = None) -> str:
    """SQL relation: the invoices with their ``iid`` and ``remaining``, the outstanding amount less what earlier
    unposted auto allocations claim (``m_claimed``), and with ``rules`` their normalised number ``ref_norm``."""
    number = f", {_normalised_number('i.invoice_number', rules)} AS ref_norm" if rules else ""
    return (f"(SELECT i.rowid AS iid, i.*, i.outstanding_minor - coalesce(c.claimed, 0) AS remaining{number} "
            f"FROM {sources.invoices} i LEFT JOIN m_claimed c ON c.iid = i.rowid)")


def _exact_reference(rules: MatchingRules, sources: Sources) -> list[str]:
    """Rule 1: the payment's normalised reference is an invoice's. A number of several invoice years is
    decided by ``_deciding_invoices``; another customer's invoice or another currency is a problem (suggested
    or unmatched). Several payments of one invoice are applied oldest first (occurred_at_utc, processor,
    source_id), each up to what is left: an instalment leaves the residual open, the excess of a payment
    is an overpayment. Creates ``m_r1`` (pid, iid, pay_inv, problem, allocated) and ``m_open``."""
    pay_inv = in_invoice_currency("p", "i")
    return [
        f"""CREATE OR REPLACE TEMP TABLE m_r1 AS
            WITH candidates AS MATERIALIZED (
                SELECT p.pid, i.iid, i.remaining, {pay_inv} AS pay_inv,
                       coalesce(i.customer = p.customer_ref, false) AS own,
                       coalesce(i.customer <> p.customer_ref, false) AS other_customer, i.remaining > 0 AS open
                FROM {_payments(sources, rules)} p JOIN {_invoices(sources, rules)} i ON p.ref_norm = i.ref_norm
            ), reused AS (  -- a number of several invoices (years): only its hits need deciding
                {_repeated('pid', 'candidates')}
            ), shared AS (  -- invoices several payments may be applied to: only they need an order
                {_repeated('iid', 'candidates WHERE pay_inv IS NOT NULL')}
            ), hits AS NOT MATERIALIZED (  -- read twice; not worth a copy
                SELECT pid, iid, remaining, pay_inv,
                       CASE WHEN n_left > 1 THEN 'ambiguous_reference'
                            WHEN pay_inv IS NULL THEN 'currency_mismatch'
                            WHEN other_customer THEN 'customer_mismatch'
                       END AS problem
                FROM (SELECT *, 1 AS n_left FROM candidates WHERE pid NOT IN (SELECT pid FROM reused)
                      UNION ALL BY NAME
                      {_deciding_invoices('(SELECT * FROM candidates WHERE pid IN (SELECT pid FROM reused))', 'pid')})
            )
            SELECT pid, iid, pay_inv, problem, greatest(least(pay_inv, remaining), 0) AS allocated
            FROM hits WHERE problem IS NOT NULL OR iid NOT IN (SELECT iid FROM shared)
            UNION ALL
            SELECT h.pid, h.iid, h.pay_inv, h.problem,
                   greatest(least(h.pay_inv, h.remaining - coalesce(sum(h.pay_inv) OVER (
                       PARTITION BY h.iid ORDER BY p.occurred_at_utc, p.processor, p.source_id
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)), 0)
            FROM hits h JOIN {sources.payments} p ON p.rowid = h.pid
            WHERE h.problem IS NULL AND h.iid IN (SELECT iid FROM shared)""",
        # Only invoices with something left: the later rules never apply to the others.
        # Most invoices take at most one payment: only those of several need a sum (a group-by over every
        # applied hit costs more than finding the repeated ones by sorting).
        f"""CREATE OR REPLACE TEMP TABLE m_open AS
            WITH repeated AS ({_repeated('iid', 'm_r1 WHERE problem IS NULL')})
            SELECT i.iid, i.customer, i.currency, i.invoice_date, i.remaining - coalesce(r.used, 0) AS rem
            FROM {_invoices(sources)} i
            LEFT JOIN (SELECT iid, allocated AS used FROM m_r1
                       WHERE problem IS NULL AND iid NOT IN (SELECT iid FROM repeated)
                       UNION ALL
                       SELECT iid, sum(allocated) FROM m_r1
                       WHERE problem IS NULL AND iid IN (SELECT iid FROM repeated) GROUP BY iid) r
                   ON r.iid = i.iid
            WHERE i.remaining - coalesce(r.used, 0) > 0""",
        # The payments rule 1 did not decide, the only ones the later rules look at.
        f"""CREATE OR REPLACE TEMP TABLE m_rest AS
            SELECT pid, {_PAYMENT_COLUMNS}, ref_norm
            FROM {_payments(sources, rules, only="rowid NOT IN (SELECT pid FROM m_r1)")}""",
    ]


def _repeated(key: str, rows: str) -> str:
    """SQL: the ``key`` values that occur more than once in ``rows`` (once less than they occur): each row
    compared with its neighbour in ``key`` order — an integer sort, about half the CPU of a group-by over as
    many keys."""
    return (f"SELECT {key} FROM (SELECT {key}, lag({key}) OVER (ORDER BY {key}) AS previous FROM {rows}) "
            f"WHERE {key} = previous")


def _undecided(*rule_tables: str) -> str:
    """SQL: the payments rule 1 did not decide (``m_rest``) that none of ``rule_tables`` holds."""
    return "SELECT * FROM m_rest WHERE " + " AND ".join(f"pid NOT IN (SELECT pid FROM {table})" for table in rule_tables)


def _date_window(rules: MatchingRules) -> str:
    return (f"i.invoice_date BETWEEN p.settlement_date - INTERVAL {rules.days_before_payment} DAY "
            f"AND p.settlement_date + INTERVAL {rules.days_after_payment} DAY")


def _customer_amount(rules: MatchingRules) -> list[str]:
    """Rule 2: a payment no reference decided, of a named customer, equal to what is left of one of the
    customer's open invoices dated within the window. One candidate is applied, several are suggested
    (``ambiguous_amount``); of several payments with the one same candidate only the oldest is applied, the
    others are ``invoice_claimed``. Creates ``m_r2`` (pid, iid, pay_inv, n_cand, allocated, problem)."""
    pay_inv = in_invoice_currency("p", "i")
    return [
        f"""CREATE OR REPLACE TEMP TABLE m_r2 AS
            WITH cand AS (
                SELECT p.pid, i.iid, {pay_inv} AS pay_inv, p.occurred_at_utc, p.processor, p.source_id
                FROM ({_undecided('m_rl')}) p
                JOIN m_open i ON i.customer = p.customer_ref AND i.rem > 0 AND {_date_window(rules)}
                WHERE {pay_inv} = i.rem
            ), counted AS (
                SELECT c.*, n.n_cand FROM cand c JOIN (SELECT pid, count(*) AS n_cand FROM cand GROUP BY pid) n USING (pid)
            )
            SELECT pid, iid, pay_inv, n_cand, pay_inv AS allocated,
                   CASE WHEN n_cand > 1 THEN 'ambiguous_amount'
                        WHEN row_number() OVER (PARTITION BY iid, n_cand = 1
                                                ORDER BY occurred_at_utc, processor, source_id) > 1
                        THEN 'invoice_claimed'
                   END AS problem
            FROM counted""",
        _take_off_open("m_r2", "problem IS NULL"),
    ]


def _take_off_open(rule_table: str, applied: str) -> str:
    """SQL: what ``rule_table`` applies (its rows where ``applied``) taken off the invoices' open amounts."""
    return f"""UPDATE m_open SET rem = m_open.rem - r.used
               FROM (SELECT iid, sum(allocated) AS used FROM {rule_table} WHERE {applied} GROUP BY iid) r
               WHERE m_open.iid = r.iid"""


def _multi_invoice(rules: MatchingRules) -> list[str]:
    """Rule 3: one payment for several invoices of its customer whose open amounts add up to it exactly —
    the customer's oldest ``max_candidates`` open invoices in the window, each smaller than the payment,
    searched for groups of 2..``max_invoices`` (``_subset_sql``). One group is applied; several are suggested
    (``ambiguous_invoice_group``); two payments' groups sharing an invoice are both ``competing_payments``.
    Creates ``m_r3`` (pid, iid, pay_inv, allocated, n_groups, problem)."""
    pay_inv = in_invoice_currency("p", "i")
    return [
        f"""CREATE OR REPLACE TEMP TABLE m_r3_cand AS
            SELECT * FROM (
                SELECT p.pid, i.iid, i.currency AS invoice_currency, i.rem, {pay_inv} AS pay_inv,
                       row_number() OVER (PARTITION BY p.pid ORDER BY i.invoice_date, i.iid) AS rk
                FROM ({_undecided('m_rl', 'm_r2')}) p
                JOIN m_open i ON i.customer = p.customer_ref AND i.rem > 0 AND {_date_window(rules)}
                WHERE {pay_inv} > i.rem)
            WHERE rk <= {rules.max_candidates}""",
        _subset_sql(rules.max_invoices),
        """CREATE OR REPLACE TEMP TABLE m_r3 AS
           WITH groups AS (
               SELECT *, count(*) OVER (PARTITION BY pid) AS n_groups FROM m_r3_groups
           ), members AS (
               SELECT pid, group_no, n_groups, unnest(members) AS rk FROM groups
           )
           SELECT c.pid, c.iid, c.pay_inv, c.rem AS allocated, m.n_groups,
                  CASE WHEN m.n_groups > 1 THEN 'ambiguous_invoice_group' END AS problem
           FROM members m JOIN m_r3_cand c USING (pid, rk)
           QUALIFY m.n_groups = 1 OR row_number() OVER (PARTITION BY c.pid, c.iid ORDER BY m.group_no) = 1""",
        """UPDATE m_r3 SET problem = 'competing_payments'
           WHERE problem IS NULL AND iid IN (
               SELECT iid FROM m_r3 WHERE problem IS NULL GROUP BY iid HAVING count(DISTINCT pid) > 1)""",
        """UPDATE m_r3 SET problem = 'competing_payments'
           WHERE problem IS NULL AND pid IN (SELECT pid FROM m_r3 WHERE problem = 'competing_payments')""",
    ]


def _allocations(rules: MatchingRules, sources: Sources) -> str:
    """``match_allocations``: every rule's rows with rule name, confidence and status, and one ``unmatched``
    row per payment no rule found anything for. The text columns are read once, here, through the integer
    keys. A partly applied payment's settlement amount is its share of the invoice-currency amount, rounded
    half up (``_settlement_share``)."""
    conf_ref, conf_amt, conf_multi = (rules.confidence_reference, rules.confidence_customer_amount,
                                      rules.confidence_multi_invoice)
    return f"""CREATE OR REPLACE TEMP TABLE match_allocations AS
        WITH matched AS (
            SELECT pid, iid, pay_inv, allocated, 'exact_reference' AS rule,
                   {_confidence(f"CASE WHEN problem IS NULL THEN {conf_ref} ELSE {conf_ref} / 2 END")} AS confidence,
                   CASE WHEN problem IS NULL AND allocated > 0 THEN 'auto'
                        WHEN problem IN ('ambiguous_reference', 'customer_mismatch') THEN 'suggested'
                        ELSE 'unmatched' END AS status
            FROM m_r1
            UNION ALL
            SELECT pid, iid, pay_inv, allocated, 'reference_list',
                   {_confidence(f"CASE WHEN problem IS NULL THEN {conf_ref} ELSE {conf_ref} / 2 END")}, status FROM m_rl
            UNION ALL
            SELECT pid, iid, pay_inv, allocated, 'customer_amount', {_confidence(f"{conf_amt} / n_cand")},
                   CASE WHEN problem IS NULL THEN 'auto' WHEN problem = 'ambiguous_amount' THEN 'suggested'
                        ELSE 'unmatched' END
            FROM m_r2
            UNION ALL
            SELECT pid, iid, pay_inv, allocated, 'multi_invoice', {_confidence(f"{conf_multi} / n_groups")},
                   CASE WHEN problem IS NULL THEN 'auto' ELSE 'suggested' END
            FROM m_r3
        )
        SELECT p.processor, p.source_id, 'charge' AS line_type, p.settlement_date,
               coalesce(i.customer, p.customer_ref) AS customer, i.invoice_number,
               CAST(i.invoice_year AS INTEGER) AS invoice_year, i.currency AS invoice_currency,
               p.currency AS payment_currency, p.amount_minor AS payment_amount_minor,
               m.pay_inv AS payment_invoice_amount_minor,
               CASE WHEN m.status = 'unmatched' THEN 0 ELSE coalesce(m.allocated, 0) END AS allocated_minor,
               CASE WHEN m.status = 'unmatched' OR m.allocated IS NULL OR m.pay_inv IS NULL THEN 0
                    WHEN m.allocated = m.pay_inv THEN p.amount_minor
                    ELSE {_settlement_share('p.amount_minor', 'm.allocated', 'm.pay_inv')} END
                   AS allocated_settlement_minor,
               coalesce(m.rule, 'none') AS rule,
               coalesce(m.confidence, 0) AS confidence,
               coalesce(m.status, 'unmatched') AS status, CAST(NULL AS VARCHAR) AS linked_source_id,
               CAST(NULL AS BIGINT) AS allocated_local_minor
        FROM {_payments(sources)} p LEFT JOIN matched m ON m.pid = p.pid
        LEFT JOIN {sources.invoices} i ON i.rowid = m.iid"""


def _confidence(expression: str) -> str:
    """SQL: a confidence as stored, cast where the rule computes it (a CASE of constants folds per rule)."""
    return f"CAST({expression} AS DECIMAL(4, 3))"


def _reversals(lines: str, history: str) -> str:
    """Rule 5: a refund or dispute is linked to the auto allocation of the charge it reverses, in this window
    or in ``history``; one whose charge was never applied is ``unmatched`` (an exception)."""
    return f"""INSERT INTO match_allocations
        WITH reversal AS (
            SELECT * FROM {lines}
            WHERE line_type IN ('refund', 'dispute', 'dispute_reversal') AND original_source_id IS NOT NULL
        ), charge_allocation AS (
            SELECT processor, source_id, customer, invoice_number, invoice_year, invoice_currency
            FROM match_allocations WHERE status = 'auto'
            UNION ALL
            SELECT processor, source_id, customer, invoice_number, invoice_year, invoice_currency
            FROM {history} WHERE status = 'auto' AND line_type = 'charge'
        )
        SELECT r.processor, r.source_id, r.line_type, r.settlement_date, coalesce(a.customer, r.customer_ref),
               a.invoice_number, CAST(a.invoice_year AS INTEGER), a.invoice_currency, r.currency, r.amount_minor,
               NULL, 0, 0, 'reversal_link', CAST(CASE WHEN a.source_id IS NULL THEN 0 ELSE 1 END AS DECIMAL(4, 3)),
               CASE WHEN a.source_id IS NULL THEN 'unmatched' ELSE 'auto' END, r.original_source_id, NULL
        FROM reversal r
        LEFT JOIN charge_allocation a ON a.processor = r.processor AND a.source_id = r.original_source_id"""


def _exceptions(sources: Sources) -> str:
    """``match_exceptions``: every payment not applied in full, with a reason code and the candidate invoices —
    each rule's problems, the unapplied part of a rule-1 payment (``invoice_already_paid``, ``overpayment``)
    and of a list (``m_rl_exceptions``), payments no rule found anything for, and unlinked reversals."""
    return f"""CREATE OR REPLACE TEMP TABLE match_exceptions AS
        WITH problem AS (
            SELECT pid, problem AS reason_code, 0 AS unapplied_minor, list(DISTINCT iid) AS candidates
            FROM m_r1 WHERE problem IS NOT NULL GROUP BY ALL
            UNION ALL
            SELECT pid, 'invoice_already_paid', pay_inv, [iid] FROM m_r1 WHERE problem IS NULL AND allocated = 0
            UNION ALL
            SELECT pid, 'overpayment', pay_inv - allocated, [iid]
            FROM m_r1 WHERE problem IS NULL AND allocated > 0 AND allocated < pay_inv
            UNION ALL
            SELECT pid, problem, 0, list(DISTINCT iid) FROM m_r2 WHERE problem IS NOT NULL GROUP BY ALL
            UNION ALL
            SELECT * FROM m_rl_exceptions
            UNION ALL
            SELECT pid, any_value(problem), 0, list(DISTINCT iid) FROM m_r3 WHERE problem IS NOT NULL GROUP BY pid
            UNION ALL
            SELECT pid, CASE WHEN ref_norm IS NOT NULL THEN 'invoice_not_found'
                             WHEN customer_ref IS NULL THEN 'no_reference' ELSE 'no_matching_invoice' END,
                   amount_minor, []
            FROM ({_undecided('m_rl', 'm_r2', 'm_r3')})
        ), candidate_numbers AS (
            SELECT c.pid, c.reason_code, list(i.invoice_number ORDER BY i.invoice_number) AS numbers
            FROM (SELECT pid, reason_code, unnest(candidates) AS iid FROM problem) c
            JOIN {sources.invoices} i ON i.rowid = c.iid
            GROUP BY ALL
        ), named AS (
            SELECT p.processor, p.source_id, p.settlement_date, p.currency, p.amount_minor, problem.reason_code,
                   problem.unapplied_minor, c.numbers AS candidates
            FROM problem JOIN {sources.payments} p ON p.rowid = problem.pid
            LEFT JOIN candidate_numbers c USING (pid, reason_code)
            UNION ALL
            SELECT a.processor, a.source_id, a.settlement_date, a.payment_currency, a.payment_amount_minor,
                   'reversal_of_unapplied_payment', 0, []
            FROM match_allocations a WHERE a.rule = 'reversal_link' AND a.status = 'unmatched'
        )
        SELECT 'EX-' || upper(substr(md5(reason_code || '|' || processor || '|' || source_id), 1, 12))
                   AS exception_id,
               reason_code, processor, source_id, settlement_date, currency, amount_minor, unapplied_minor,
               to_json(coalesce(candidates, [])) AS candidates,
               CASE reason_code {_reason_texts()} END AS detail
        FROM named"""


def _deciding_invoices(candidates: str, key: str) -> str:
    """SQL: of the invoices one reference hits (rows of ``candidates`` per ``key``, with booleans ``own`` and
    ``open``), those that decide it — the named customer's when the payment names the owner of one, else
    the open ones when any is open — each with ``n_left``, how many are left (more than one: a real tie)."""
    return f"""SELECT *, count(*) OVER (PARTITION BY {key}) AS n_left FROM (
                   SELECT * FROM (SELECT * FROM {candidates} QUALIFY own = max(own) OVER (PARTITION BY {key}))
                   QUALIFY open = max(open) OVER (PARTITION BY {key}))"""


def _reference_list(rules: MatchingRules, sources: Sources) -> list[str]:
    """Rule 1b: one payment whose reference names several invoices ("2601831, 2601832 and 2601840").

    Only payments whose whole reference hit no invoice in rule 1 and that name at least two references,
    one of them an invoice. Each named number is decided as in rule 1 (the named customer, else the only
    open one). When every number names one invoice of the payment's customer in the payment's currency,
    the payment is applied oldest invoice first: the last one partly when the payment is smaller than their
    remaining amounts, the excess an overpayment when it is larger. Otherwise the payment is suggested
    (reason of its first problem); two such payments naming the same invoice are ``competing_payments``.
    Creates ``m_rl`` (pid, iid, pay_inv, allocated, problem, status) and ``m_rl_exceptions`` (the shape of
    the exception union) and takes what it applies off ``m_open``.
    """
    pay_inv = in_invoice_currency("p", "h")
    return [
        # A table of its own, so only these few references are split (not every payment's).
        """CREATE OR REPLACE TEMP TABLE m_rl_unresolved AS
           SELECT pid, customer_ref, invoice_ref FROM m_rest WHERE ref_norm IS NOT NULL""",
        f"""CREATE OR REPLACE TEMP TABLE m_rl_hits AS
            WITH listed AS MATERIALIZED (
                SELECT pid, customer_ref, unnest(tokens) AS token FROM (
                    SELECT pid, customer_ref, {reference_tokens('invoice_ref', rules)} AS tokens FROM m_rl_unresolved)
                WHERE len(tokens) > 1
            ), hit AS MATERIALIZED (
                SELECT l.pid, l.token, l.customer_ref, i.iid, i.customer, i.currency, i.invoice_date,
                       i.invoice_number, coalesce(r.rem, 0) AS rem, coalesce(i.customer = l.customer_ref, false) AS own,
                       r.rem IS NOT NULL AND r.rem > 0 AS open
                FROM listed l JOIN {_invoices(sources, rules)} i ON i.ref_norm = l.token
                LEFT JOIN m_open r ON r.iid = i.iid
            )
            SELECT * FROM ({_deciding_invoices('hit', 'pid, token')})
            UNION ALL BY NAME  -- numbers naming no invoice, of payments whose other numbers do
            SELECT pid, token, customer_ref, 0 AS n_left FROM listed
            WHERE pid IN (SELECT pid FROM hit) AND (pid, token) NOT IN (SELECT (pid, token) FROM hit)""",
        f"""CREATE OR REPLACE TEMP TABLE m_rl AS
            WITH judged AS (
                SELECT h.pid, h.iid, h.rem, h.invoice_date, h.invoice_number, {pay_inv} AS pay_inv,
                       CASE WHEN h.iid IS NULL THEN 'invoice_list_unresolved'
                            WHEN h.n_left > 1 THEN 'ambiguous_reference'
                            WHEN {pay_inv} IS NULL THEN 'currency_mismatch'
                            WHEN h.customer_ref IS NOT NULL AND h.customer_ref <> h.customer THEN 'customer_mismatch'
                       END AS problem
                FROM m_rl_hits h JOIN {sources.payments} p ON p.rowid = h.pid
            ), payment AS (
                SELECT pid, coalesce(min(problem), CASE WHEN count(DISTINCT pay_inv) > 1 THEN 'currency_mismatch' END)
                           AS problem
                FROM judged GROUP BY pid
            ), contested AS (
                SELECT iid FROM judged JOIN payment USING (pid) WHERE payment.problem IS NULL
                GROUP BY iid HAVING count(DISTINCT pid) > 1
            ), flagged AS (
                SELECT j.pid, j.iid, j.rem, j.invoice_date, j.invoice_number, j.pay_inv,
                       coalesce(pp.problem, CASE WHEN bool_or(c.iid IS NOT NULL) OVER (PARTITION BY j.pid)
                                                 THEN 'competing_payments' END) AS problem
                FROM judged j JOIN payment pp USING (pid) LEFT JOIN contested c USING (iid)
                WHERE j.iid IS NOT NULL
            ), allocated AS (
                SELECT pid, iid, pay_inv, problem,
                       greatest(least(greatest(rem, 0), pay_inv - coalesce(sum(greatest(rem, 0)) OVER (
                           PARTITION BY pid ORDER BY invoice_date, invoice_number, iid
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)), 0) AS allocated
                FROM flagged
            )
            SELECT *, CASE WHEN problem IS NOT NULL THEN 'suggested'
                           WHEN sum(allocated) OVER (PARTITION BY pid) = 0 THEN 'unmatched' ELSE 'auto' END AS status
            FROM allocated""",
        "DELETE FROM m_rl WHERE status = 'auto' AND allocated = 0",  # named, but nothing left for it
        """CREATE OR REPLACE TEMP TABLE m_rl_exceptions AS
           SELECT pid, any_value(problem) AS reason_code, 0 AS unapplied_minor, list(DISTINCT iid) AS candidates
           FROM m_rl WHERE problem IS NOT NULL GROUP BY pid
           UNION ALL
           SELECT pid, CASE WHEN sum(allocated) = 0 THEN 'invoice_already_paid' ELSE 'overpayment' END,
                  any_value(pay_inv) - sum(allocated), list(DISTINCT iid)
           FROM m_rl WHERE problem IS NULL GROUP BY pid HAVING sum(allocated) < any_value(pay_inv)""",
        _take_off_open("m_rl", "status = 'auto'"),
    ]


def _reason_texts() -> str:
    return " ".join(f"WHEN '{code}' THEN '{text.replace(chr(39), chr(39) * 2)}'" for code, text in REASON_CODES.items())


def _subset_sql(max_invoices: int) -> str:
    """Groups of 2..max_invoices candidate invoices (ascending rank) whose remaining amounts sum to the payment."""
    selects = []
    for size in range(2, max_invoices + 1):
        aliases = [f"c{k}" for k in range(size)]
        joins = " ".join(
            f"JOIN m_r3_cand {a} ON {a}.pid = c0.pid "
            f"AND {a}.rk > {aliases[k - 1]}.rk AND {a}.invoice_currency = c0.invoice_currency"
            for k, a in enumerate(aliases) if k > 0)
        total = " + ".join(f"{a}.rem" for a in aliases)
        prunes = " AND ".join(f"{' + '.join(f'{a}.rem' for a in aliases[:k])} < c0.pay_inv" for k in range(2, size))
        where = f"{total} = c0.pay_inv" + (f" AND {prunes}" if prunes else "")
        members = ", ".join(f"{a}.rk" for a in aliases)
        selects.append(f"SELECT c0.pid, [{members}] AS members FROM m_r3_cand c0 {joins} WHERE {where}")
    union = " UNION ALL ".join(selects)
    return (f"CREATE OR REPLACE TEMP TABLE m_r3_groups AS SELECT *, row_number() OVER "
            f"(PARTITION BY pid ORDER BY len(members), members) AS group_no FROM ({union})")

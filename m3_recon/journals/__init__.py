"""Balanced GL journal lines and cash applications derived from canonical settlement lines (DuckDB SQL).

Clearing model: every settlement line moves the processor's clearing account by its amount and a
counter-account by the opposite amount (refunds, chargebacks, reserves, adjustments…), and its fee
moves clearing against the fee account. Payments are the exception: the part applied to an invoice
goes to M3 as cash application (ARS040MI: debit clearing, credit receivable at the invoice's booked
local value), and the GL carries only what cash application cannot: the unapplied part (unapplied
cash), the realised exchange difference between what settled and the invoice's booked value (FX
gain/loss), and a sub-tolerance rounding residue (rounding account). Payouts move clearing to the
bank on their arrival date; a failed payout's return moves it back.

``derive_journals`` creates temp tables ``journal_lines`` (GL_JOURNAL_LINE_COLUMNS) and
``cash_applications`` (CASH_APPLICATION_COLUMNS). Every voucher balances per currency by
construction (two lines per entry), and a voucher with any unmapped account is held, not posted. A
line whose processor category the mapping does not know (``unknown_category``) goes to the suspense
account, so its payout ties and the amount stays visible on the books; with no suspense account
mapped its voucher is held like any other unmapped account.
Every line's voucher text starts with its voucher key, so M3's GL shows which voucher a line belongs to
(and the poster can find a voucher by its lines where M3 offers no search by batch key).

Currencies: a line's ``amount_minor`` is in its ``currency`` (the settlement currency, or M3's local currency
for FX), ``local_minor`` in M3's local currency — the amount itself when the two are the same, else converted
at M3's rate of the accounting date (``exchange_rates``; a voucher needing a rate that is not there is held).
The FX gain or loss is booked in local currency: what the settled amount is worth locally less the invoice's
booked local value. A processor line moves clearing by the local value of its amount and of its fee, however
it is split between cash application, FX and residue, so a payout takes exactly the local value its lines
brought onto clearing (the bank receives it at that carrying value).
"""

from __future__ import annotations

import csv
import tomllib
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

import duckdb

from m3_recon.money import convert_sql, known_currency
from m3_recon.settings import PROJECT_ROOT
from m3_recon.posting.contract import CASH_APPLICATION_COLUMNS, GL_JOURNAL_LINE_COLUMNS
from m3_recon.sql import ensure_table
from m3_recon.warehouse import table_exists

DEFAULT_ACCOUNTS_FILE = PROJECT_ROOT / "data" / "gl_accounts.toml"
PROCESSOR_CODES = {"stripe": "S", "paytrace": "P", "heartland": "H"}
# The counter-account of each line type's gross amount (clearing takes the other side).
COUNTER_ACCOUNT = {"fee": "processing_fees", "refund": "refunds", "dispute": "chargebacks",
                   "dispute_reversal": "chargebacks", "reserve_hold": "reserves", "reserve_release": "reserves",
                   "adjustment": "adjustments", "payout_failure": "bank", "other": "other",
                   "unknown_category": "suspense"}
# A processor-day GL voucher of more entries is cut into parts (key + "N" + a part code), each entry whole in the
# part its source's hash picks (so it balances, and stays put when the day is closed again): M3 lists at most
# 10,000 lines of one voucher, and the poster reads a voucher back line for line. 2,500 entries are at most
# 5,000 lines; 34 parts hold a day of 85,000 entries with room for chance.
VOUCHER_ENTRIES = 2_500
PART_CODES = "23456789ABCDEFGHIJKLMNOPQSTUVWXYZ"  # no R: a revision ends in R and a digit


@dataclass(frozen=True)
class AccountMap:
    clearing: dict[str, str]
    bank: dict[str, str]
    accounts: dict[str, str]
    rounding_tolerance_minor: int
    write_off_limit_minor: int
    dimensions: dict[str, dict[str, str]]
    names: dict[str, str] = field(default_factory=dict)  # account -> what finance calls it ([names])

    @classmethod
    def load(cls, path: Path = DEFAULT_ACCOUNTS_FILE) -> "AccountMap":
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
        dimensions = {p: {k: str(v) for k, v in d.items()} for p, d in raw.get("dimensions", {}).items()}
        bad = [key for d in dimensions.values() for key in d if key not in {f"ait{n}" for n in range(2, 8)}]
        if bad:
            raise ValueError(f"{path}: dimensions may only set ait2..ait7, not {', '.join(sorted(set(bad)))}")
        return cls(clearing=dict(raw["clearing"]), bank=dict(raw["bank"]), accounts=dict(raw["accounts"]),
                   rounding_tolerance_minor=int(raw["rounding"]["tolerance_minor"]),
                   write_off_limit_minor=int(raw["write_off"]["limit_minor"]), dimensions=dimensions,
                   names={str(k): str(v) for k, v in raw.get("names", {}).items()})

    def register(self, conn: duckdb.DuckDBPyConnection) -> None:
        """The mapping as temp tables ``gl_account`` (key → account) and ``gl_dimension`` (processor → ait2..7)."""
        conn.execute("CREATE OR REPLACE TEMP TABLE gl_account (account_key VARCHAR, account VARCHAR)")
        conn.executemany("INSERT INTO gl_account VALUES (?, ?)", self.keyed_accounts())
        conn.execute("CREATE OR REPLACE TEMP TABLE gl_dimension (processor VARCHAR, ait2 VARCHAR, ait3 VARCHAR, "
                     "ait4 VARCHAR, ait5 VARCHAR, ait6 VARCHAR, ait7 VARCHAR)")
        if self.dimensions:
            conn.executemany("INSERT INTO gl_dimension VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [(p, *(d.get(f"ait{n}") for n in range(2, 8))) for p, d in self.dimensions.items()])

    def keyed_accounts(self) -> list[tuple[str, str]]:
        """(account_key, account) of every mapped account: ``clearing:<processor>``, ``bank:<currency>``, the rest."""
        return ([("clearing:" + p, a) for p, a in self.clearing.items()]
                + [("bank:" + c, a) for c, a in self.bank.items()] + list(self.accounts.items()))

    def chart(self, conn: duckdb.DuckDBPyConnection, table: str = "gl_chart") -> None:
        """Table ``table`` (account_key, account, account_name): every mapped account with its name; a temp table
        unless ``table`` is qualified with a database. ``LEDGER_LINES`` reads it."""
        temp = "" if "." in table else "TEMP "
        conn.execute(f"CREATE OR REPLACE {temp}TABLE {table} "
                     "(account_key VARCHAR, account VARCHAR, account_name VARCHAR)")
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)",
                         [(key, account, self.names.get(account, key.replace("_", " ")))
                          for key, account in self.keyed_accounts()])


# Every booking on the ledger by both routes: GLS840MI voucher lines as derived, and each ARS040MI cash
# application as the two lines M3 books for it (clearing debited, receivable credited, at the booked local
# value in the payment's settlement currency); ``local_minor`` is every line in M3's local currency, and
# ``settlement_currency`` / ``settlement_minor`` the line in the processor's settlement currency: where that is
# not the local currency, a cash application counts at what settled for the invoice and an FX line (booked in
# local currency only) at nothing. Needs ``core_gl_journal_lines``, ``core_cash_applications``,
# ``core_settlement_lines`` and a ``gl_chart`` table (``AccountMap.chart``).
LEDGER_LINES = """
    WITH settled AS (
        SELECT processor, source_id, any_value(currency) AS currency FROM core_settlement_lines GROUP BY ALL
    )
    SELECT 'GLS840MI' AS route, j.voucher_key, j.accounting_date, j.processor, j.ait1 AS account, j.currency,
           j.amount_minor, j.entry, j.payout_id, j.source_id, j.held_reason,
           coalesce(j.local_minor, j.amount_minor) AS local_minor,
           coalesce(l.currency, j.currency) AS settlement_currency,
           CASE WHEN j.entry = 'fx' AND j.currency <> l.currency THEN 0 ELSE j.amount_minor END AS settlement_minor
    FROM core_gl_journal_lines j
    LEFT JOIN settled l USING (processor, source_id)
    UNION ALL
    SELECT 'ARS040MI', c.voucher_key, c.accounting_date, c.processor, g.account, coalesce(l.currency, c.currency),
           CASE WHEN g.account_key = 'receivable' THEN -c.local_minor ELSE c.local_minor END, 'cash_application',
           c.payout_id, c.source_id, NULL,
           CASE WHEN g.account_key = 'receivable' THEN -c.local_minor ELSE c.local_minor END,
           coalesce(l.currency, c.currency),
           CASE WHEN g.account_key = 'receivable' THEN -1 ELSE 1 END * coalesce(c.settlement_minor, c.local_minor)
    FROM core_cash_applications c
    JOIN gl_chart g ON g.account_key IN ('receivable', 'clearing:' || c.processor)
    LEFT JOIN settled l USING (processor, source_id)"""


RATES_COLUMNS = "currency VARCHAR, valid_from DATE, rate DECIMAL(18, 8)"


def load_exchange_rates(conn: duckdb.DuckDBPyConnection, path: str | Path | None, local_currency: str) -> int:
    """Temp table ``exchange_rates`` (currency, valid_from, rate): M3's rates to ``local_currency`` from a CSV with
    a header ``currency,valid_from,rate`` (rate = local currency per one unit of currency, valid from that day
    until the next row of the currency); no file = no rates. A bad row fails loudly. Returns the row count."""
    rows = []
    if path is not None:
        with open(path, newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                where = f"{path} line {number}"
                try:
                    currency = known_currency(row.get("currency") or "", f"{where}: currency")
                    rate = Decimal((row.get("rate") or "").strip())
                    valid_from = date.fromisoformat((row.get("valid_from") or "").strip())
                except (ValueError, InvalidOperation) as exc:
                    raise ValueError(f"{where}: {exc}") from None
                if not rate.is_finite() or rate <= 0 or currency == local_currency:
                    raise ValueError(f"{where}: a rate must be a positive number for a currency other than the "
                                     f"local currency {local_currency}")
                rows.append((currency, valid_from, rate))
    conn.execute(f"CREATE OR REPLACE TEMP TABLE exchange_rates ({RATES_COLUMNS})")
    if rows:
        conn.executemany("INSERT INTO exchange_rates VALUES (?, ?, ?)", rows)
    return len(rows)


def _codes() -> str:
    return ", ".join(f"('{p}', '{c}')" for p, c in PROCESSOR_CODES.items())


def _mapping(pairs: dict[str, str]) -> str:
    return ", ".join(f"('{a}', '{b}')" for a, b in pairs.items())


def derive_journals(conn: duckdb.DuckDBPyConnection, accounts: AccountMap, *, lines: str, payouts: str,
                    allocations: str, overpaid: str, local_currency: str = "USD", rates: str | None = None,
                    payout_lines: str | None = None) -> None:
    """Create ``journal_lines`` and ``cash_applications`` for the window's ``lines`` and ``payouts``.

    ``local_currency``: M3's; ``rates``: (currency, valid_from, rate) to it (``load_exchange_rates``; None = none);
    ``payout_lines``: settlement lines to value payouts in another currency than the local one by (default
    ``lines``; pass every loaded line so a payout's earlier lines count);
    ``allocations``: core_payment_allocations rows of those lines (with their booked local values);
    ``overpaid``: (processor, source_id, written_off) of payments with
    an overpayment exception, whose residue is unapplied cash rather than rounding — or, where finance
    decided to write it off and it is within the write-off limit, a write-off.
    """
    accounts.register(conn)
    tolerance, write_off_limit = accounts.rounding_tolerance_minor, accounts.write_off_limit_minor
    local = known_currency(local_currency, "M3's local currency")
    if rates is None:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE no_exchange_rates ({RATES_COLUMNS})")
    rate_table = rates or "no_exchange_rates"

    def at_rate(minor: str, currency: str, day: str) -> str:
        """SQL: ``minor`` of ``currency`` in local minor units at M3's rate of ``day`` (NULL when none is known)."""
        rate = (f"(SELECT arg_max(rate_value, rate_from) FROM (SELECT currency AS rate_currency, valid_from AS "
                f"rate_from, rate AS rate_value FROM {rate_table}) WHERE rate_currency = {currency} "
                f"AND rate_from <= {day})")  # names of its own, so an unqualified outer column binds outside
        return f"CASE WHEN {currency} = '{local}' THEN {minor} ELSE {convert_sql(minor, currency, repr(local), rate)} END"

    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE applied AS
        SELECT a.processor, a.source_id, a.invoice_number, a.invoice_year, a.customer, a.invoice_currency,
               a.allocated_minor, a.allocated_settlement_minor, a.settlement_date,
               a.allocated_local_minor AS local_minor
        FROM {allocations} a
        WHERE a.status = 'auto' AND a.line_type = 'charge' AND a.invoice_number IS NOT NULL""")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE journal_entries AS
        WITH line AS (SELECT * FROM {lines}),
        counter(line_type, account_key) AS (VALUES {_mapping(COUNTER_ACCOUNT)}),
        applied_per_payment AS (
            SELECT processor, source_id, sum(allocated_settlement_minor) AS settled FROM applied GROUP BY ALL
        ), per_payment AS (
            SELECT l.processor, l.source_id, l.amount_minor - coalesce(a.settled, 0) AS residue,
                   {at_rate('l.amount_minor', 'l.currency', 'l.settlement_date')}
                   - {at_rate('coalesce(a.settled, 0)', 'l.currency', 'l.settlement_date')} AS residue_local,
                   a.settled IS NOT NULL AS applied,
                   o.source_id IS NOT NULL AS overpaid, coalesce(o.written_off, false) AS written_off
            FROM line l LEFT JOIN applied_per_payment a USING (processor, source_id)
            LEFT JOIN {overpaid} o USING (processor, source_id)
            WHERE l.line_type = 'charge'
        ), settled_so_far AS (  -- per allocation, the payment's settled amount up to and including it
            SELECT a.*, l.currency, l.payout_id,
                   sum(a.allocated_settlement_minor) OVER share AS settled_through,
                   sum(a.allocated_settlement_minor) OVER share - a.allocated_settlement_minor AS settled_before
            FROM applied a JOIN line l USING (processor, source_id)
            WINDOW share AS (PARTITION BY a.processor, a.source_id ORDER BY a.invoice_number, a.invoice_year
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        ), payout_value AS (  -- what a payout's lines brought onto clearing, in local currency
            SELECT processor, payout_id,
                   sum({at_rate('amount_minor', 'currency', 'settlement_date')}
                       - {at_rate('fee_minor', 'currency', 'settlement_date')}) AS local_minor
            FROM {payout_lines or lines} WHERE line_type <> 'payout' AND payout_id IS NOT NULL GROUP BY ALL
        )
        -- gross amount of every non-payment line against its counter-account
        SELECT l.processor, l.payout_id, l.source_id, l.settlement_date AS accounting_date, l.currency,
               l.line_type AS entry, l.amount_minor AS clearing_minor,
               {at_rate('l.amount_minor', 'l.currency', 'l.settlement_date')} AS clearing_local_minor,
               CASE WHEN c.account_key = 'bank' THEN 'bank:' || l.currency ELSE c.account_key END AS counter_key,
               l.settlement_date AS source_date
        FROM line l JOIN counter c USING (line_type)
        UNION ALL
        -- processor fees on any line
        SELECT l.processor, l.payout_id, l.source_id, l.settlement_date, l.currency,
               CASE WHEN l.line_type = 'dispute' THEN 'dispute_fee' ELSE 'processing_fee' END, -l.fee_minor,
               -{at_rate('l.fee_minor', 'l.currency', 'l.settlement_date')},
               CASE WHEN l.line_type = 'dispute' THEN 'dispute_fees' ELSE 'processing_fees' END, l.settlement_date
        FROM line l WHERE l.fee_minor <> 0
        UNION ALL
        -- payments: what cash application does not carry
        SELECT l.processor, l.payout_id, l.source_id, l.settlement_date, l.currency,
               CASE WHEN p.applied AND NOT p.overpaid AND abs(p.residue) <= {tolerance} THEN 'rounding'
                    WHEN p.written_off AND abs(p.residue) <= {write_off_limit} THEN 'write_off'
                    ELSE 'unapplied_payment' END,
               p.residue, p.residue_local,
               CASE WHEN p.applied AND NOT p.overpaid AND abs(p.residue) <= {tolerance} THEN 'rounding'
                    WHEN p.written_off AND abs(p.residue) <= {write_off_limit} THEN 'write_off'
                    ELSE 'unapplied_cash' END, l.settlement_date
        FROM line l JOIN per_payment p USING (processor, source_id) WHERE p.residue <> 0
        UNION ALL
        -- realised FX, in local currency: the local value of what settled for the invoice less its booked value
        SELECT processor, payout_id, source_id, settlement_date, '{local}', 'fx', fx_minor, fx_minor,
               'fx_gain_loss', settlement_date
        FROM (SELECT *, {at_rate('settled_through', 'currency', 'settlement_date')}
                        - {at_rate('settled_before', 'currency', 'settlement_date')} - local_minor AS fx_minor
              FROM settled_so_far)
        WHERE fx_minor <> 0
        UNION ALL
        -- payouts reach the bank on their arrival date (once they have arrived), at their carrying value
        SELECT p.processor, p.payout_id, NULL, coalesce(p.arrival_date, p.settlement_date), p.currency, 'payout',
               -p.amount_minor, CASE WHEN p.currency = '{local}' THEN -p.amount_minor ELSE -v.local_minor END,
               'bank:' || p.currency, p.settlement_date
        FROM {payouts} p LEFT JOIN payout_value v USING (processor, payout_id) WHERE p.status IN ('paid', 'failed')""")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE journal_lines AS
        WITH code(processor, code) AS (VALUES {_codes()}),
        day_keyed AS (
            SELECT e.*, c.code,
                   CASE WHEN e.entry = 'payout'
                        THEN 'G' || c.code || 'P' || strftime(e.accounting_date, '%y%m%d')
                             || upper(substr(md5(e.processor || '|' || e.payout_id), 1, 4))
                        ELSE 'G' || c.code || 'D' || strftime(e.accounting_date, '%Y%m%d') END AS day_key
            FROM journal_entries e JOIN code c USING (processor)
        ), parts AS (
            SELECT day_key, least(ceil(count(*) / {VOUCHER_ENTRIES}), {len(PART_CODES) + 1}) AS parts
            FROM day_keyed GROUP BY ALL
        ), keyed AS (
            SELECT k.* EXCLUDE (day_key, part),
                   k.day_key || CASE WHEN k.part = 0 THEN ''
                                     ELSE 'N' || substr('{PART_CODES}', CAST(k.part AS BIGINT), 1) END AS voucher_key
            FROM (SELECT d.*, CAST(('0x' || substr(md5(coalesce(d.source_id, d.payout_id, '')), 1, 8)) AS UBIGINT)
                              % CAST(p.parts AS UBIGINT) AS part
                  FROM day_keyed d JOIN parts p USING (day_key)) k
        ), sides AS (
            SELECT *, 'clearing:' || processor AS account_key, clearing_minor AS amount_minor,
                   clearing_local_minor AS local_minor, 0 AS side FROM keyed
            UNION ALL
            SELECT *, counter_key, -clearing_minor, -clearing_local_minor, 1 FROM keyed
        ), resolved AS (
            SELECT s.*, g.account FROM sides s LEFT JOIN gl_account g USING (account_key)
        ), held AS (
            SELECT voucher_key, string_agg(reason, '; ' ORDER BY reason) AS held_reason FROM (
                SELECT voucher_key, 'no GL account mapped for ' || string_agg(DISTINCT account_key, ', '
                       ORDER BY account_key) || ' in data/gl_accounts.toml' AS reason
                FROM resolved WHERE account IS NULL GROUP BY voucher_key
                UNION ALL
                SELECT voucher_key, 'no exchange rate to {local} for ' || string_agg(DISTINCT currency || ' on '
                       || accounting_date, ', ' ORDER BY currency || ' on ' || accounting_date)
                       || ' (M3_RECON_EXCHANGE_RATES)'
                FROM resolved WHERE local_minor IS NULL GROUP BY voucher_key)
            GROUP BY voucher_key
        )
        SELECT r.voucher_key,
               CAST(row_number() OVER (PARTITION BY r.voucher_key
                                       ORDER BY r.entry, r.payout_id, r.source_id, r.side, r.account_key,
                                                r.amount_minor) AS INTEGER) AS line_number,
               r.accounting_date, coalesce(r.account, '?' || r.account_key) AS ait1,
               d.ait2, d.ait3, d.ait4, d.ait5, d.ait6, d.ait7, r.currency, r.amount_minor,
               left(r.voucher_key || ' ' || r.entry || ' ' || coalesce(r.source_id, r.payout_id), 40) AS voucher_text,
               r.processor, r.payout_id, r.source_id, r.entry, 'gl' AS route, h.held_reason, r.source_date,
               r.local_minor
        FROM resolved r LEFT JOIN held h USING (voucher_key) LEFT JOIN gl_dimension d USING (processor)
        WHERE r.amount_minor <> 0""")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE cash_applications AS
        WITH code(processor, code) AS (VALUES {_codes()})
        SELECT 'C' || c.code || 'A' || strftime(a.settlement_date, '%Y%m%d') AS voucher_key,
               CAST(row_number() OVER (PARTITION BY a.processor, a.settlement_date
                                       ORDER BY a.source_id, a.invoice_number, a.invoice_year) AS INTEGER) AS line_number,
               a.settlement_date AS accounting_date, a.customer, a.invoice_number,
               CAST(a.invoice_year AS INTEGER) AS invoice_year, a.invoice_currency AS currency,
               a.allocated_minor AS amount_minor, a.processor, a.source_id, l.payout_id, a.local_minor,
               CASE WHEN l.currency = '{local}' THEN a.local_minor ELSE a.allocated_settlement_minor END
                   AS settlement_minor
        FROM applied a JOIN code c USING (processor) LEFT JOIN {lines} l USING (processor, source_id)
        WHERE a.allocated_minor > 0""")


def clearing_by_payout(conn: duckdb.DuckDBPyConnection) -> None:
    """Temp table ``clearing_by_payout``: the net clearing movement per payout in M3's local currency from the
    derived GL lines plus cash applications (at booked local value). Zero for a payout whose lines are all
    loaded and tied."""
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE clearing_by_payout AS
        SELECT processor, payout_id, sum(local_minor) AS clearing_net_minor
        FROM (SELECT processor, payout_id, local_minor FROM journal_lines WHERE ait1 = (
                  SELECT account FROM gl_account WHERE account_key = 'clearing:' || journal_lines.processor)
              UNION ALL
              SELECT processor, payout_id, local_minor FROM cash_applications)
        WHERE payout_id IS NOT NULL GROUP BY ALL""")


REVISION = r"R([0-9]+)$"  # <key>R1, R2, … R10, …: any number of revisions


def corrections(conn: duckdb.DuckDBPyConnection) -> int:
    """Never rewrite what M3 already has: for every voucher (or cash batch) of this window with anything sent,
    keep the sent versions as stored and put the difference between the newly derived content and what was sent
    into one revision voucher ``<key>R<n>``. Which payout a line was paid out in is not accounting content: it
    is often learned after the line was posted (Stripe pays a day's charges out days later), so it is compared
    without it and the kept lines take the payout known now. A cash application that would have to be taken back
    cannot be posted as a negative payment: it becomes a row of temp table ``journal_conflicts`` for a person.
    Rewrites temp tables ``journal_lines`` and ``cash_applications``; returns the number of revision vouchers."""
    conn.execute("CREATE OR REPLACE TEMP TABLE journal_conflicts (processor VARCHAR, source_id VARCHAR, "
                 "voucher_key VARCHAR, accounting_date DATE, currency VARCHAR, amount_minor BIGINT, detail VARCHAR)")
    if not (table_exists(conn, "out_m3_postings") and table_exists(conn, "core_gl_journal_lines")):
        return 0
    ensure_table(conn, "core_gl_journal_lines", GL_JOURNAL_LINE_COLUMNS)  # stored by an older release: new columns
    ensure_table(conn, "core_cash_applications", CASH_APPLICATION_COLUMNS)
    revisions = 0
    for route, derived, stored, group in (
        ("gl", "journal_lines", "core_gl_journal_lines",
         "accounting_date, ait1, ait2, ait3, ait4, ait5, ait6, ait7, currency, processor, source_id, entry, route, source_date"),
        ("cash_application", "cash_applications", "core_cash_applications",
         "accounting_date, customer, invoice_number, invoice_year, currency, processor, source_id"),
    ):
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE sent_keys AS
            SELECT voucher_key, regexp_replace(voucher_key, '{REVISION}', '') AS base,
                   coalesce(TRY_CAST(regexp_extract(voucher_key, '{REVISION}', 1) AS INTEGER), 0) AS revision
            FROM out_m3_postings WHERE route = '{route}' AND sent_at_utc IS NOT NULL""")
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE frozen_bases AS
            SELECT base, max(revision) + 1 AS next_revision FROM sent_keys
            WHERE base IN (SELECT voucher_key FROM {derived}) GROUP BY base""")
        settled = "" if route == "gl" else ", settlement_minor"
        amount = "payout_id, amount_minor, local_minor" + settled
        sums = ("max(payout_id) AS payout_id, sum(amount_minor) AS amount_minor, sum(local_minor) AS local_minor"
                + ("" if route == "gl" else ", sum(settlement_minor) AS settlement_minor"))
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE known_payout AS
            SELECT processor, source_id, max(payout_id) AS payout_id FROM {derived}
            WHERE source_id IS NOT NULL AND payout_id IS NOT NULL GROUP BY ALL""")
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE revision_lines AS
            WITH wanted AS (
                SELECT voucher_key AS base, {group}, {amount} FROM {derived}
                WHERE voucher_key IN (SELECT base FROM frozen_bases)
            ), sent AS (
                SELECT k.base, {", ".join(f"s.{c.strip()}" for c in group.split(","))},
                       s.payout_id, -s.amount_minor AS amount_minor,
                       -coalesce(s.local_minor, s.amount_minor) AS local_minor  -- a line stored before local values
                       {"" if route == "gl" else ", -coalesce(s.settlement_minor, s.local_minor) AS settlement_minor"}
                FROM {stored} s JOIN sent_keys k USING (voucher_key) WHERE k.base IN (SELECT base FROM frozen_bases)
            )
            SELECT f.base || 'R' || f.next_revision AS voucher_key, d.*
            FROM (SELECT base, {group}, {sums} FROM (SELECT * FROM wanted UNION ALL BY NAME SELECT * FROM sent)
                  GROUP BY ALL HAVING sum(amount_minor) <> 0 OR sum(local_minor) <> 0) d
            JOIN frozen_bases f USING (base)""")
        if route == "cash_application":
            conn.execute("""INSERT INTO journal_conflicts
                            SELECT processor, source_id, voucher_key, accounting_date, currency, amount_minor,
                                   'a posted cash application of ' || invoice_number || ' would have to be reduced by '
                                   || (-amount_minor) || ' ' || currency || ': reverse it in M3 by hand'
                            FROM revision_lines WHERE amount_minor < 0""")
            conn.execute("DELETE FROM revision_lines WHERE amount_minor < 0")
        revisions += conn.execute("SELECT count(DISTINCT voucher_key) FROM revision_lines").fetchone()[0]
        numbered = ("left(voucher_key || ' correction ' || entry || ' ' || coalesce(source_id, payout_id, ''), 40) "
                    "AS voucher_text, "
                    "CAST(NULL AS VARCHAR) AS held_reason" if route == "gl" else "")
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE {derived}_next AS
            SELECT * FROM {derived} WHERE voucher_key NOT IN (SELECT base FROM frozen_bases)
            UNION ALL BY NAME
            SELECT s.* REPLACE (coalesce(p.payout_id, s.payout_id) AS payout_id)
            FROM {stored} s JOIN sent_keys k USING (voucher_key) LEFT JOIN known_payout p USING (processor, source_id)
            WHERE k.base IN (SELECT base FROM frozen_bases)
            UNION ALL BY NAME
            SELECT * EXCLUDE (base), CAST(row_number() OVER (PARTITION BY voucher_key ORDER BY {group}) AS INTEGER)
                       AS line_number{", " + numbered if numbered else ""}
            FROM revision_lines""")
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {derived} AS SELECT * FROM {derived}_next")
    return revisions

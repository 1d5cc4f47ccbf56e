"""Infor M3's finance books for the sandbox: the customer ledger (FSLEDG), the general ledger (FGLEDG)
and the two interfaces that post to them, GL interface batches (GLS840, FGLINH/FGLINL) and customer
payment batches (ARS040).

One company (``CONO`` 100) and division (``DIVI`` "AAA") keep the AR open items of every customer in
the world, whatever processor they pay through. Each invoice is an FSLEDG line with transaction code
10; cash applied to it later is a line with code 20 and a negative amount on the same payer, invoice
number and invoice year, the way M3 keeps them. Lines keep when they were registered, so the API
renders the ledgers as of the sandbox clock: outstanding amounts and the reconciliation code RECO
(9 = paid) are derived from the lines visible at that moment.

GL interface batches follow GLS840: a head per ``KEY1`` (unique in the division, whatever the
interface), lines stored as entered (a position-based ``PARM`` string cut by the interface's GLS850
template, or named fields), a control that checks every line and the balance of each voucher group
per currency, and an update that turns each voucher group into a GL voucher (series ``GL``) whose
lines remember the batch key. Payment batches follow ARS040: a head per payment batch number with its
payment method (``BOPE``), lines naming invoice, invoice year, customer and payment amount (plus the
payment id ``CKNO``, payment date ``LPDT`` and an optional account ``AIT1``), and a control that books
them all as one payment voucher (series ``PY``) or none of them. The payment voucher reaches the
general ledger as M3 books it: each line debits its ``AIT1``, else the account set up for the batch's
payment method (``PAYMENT_METHOD_ACCOUNTS``, this site's configuration), else the default cash account,
and credits accounts receivable, at the invoice's booked local value.

Amounts are integer minor units of their currency (ISO 4217 decimals: yen have none); amounts in another
currency than the ledger's local one (the world's ``local_currency``, USD unless the demo says otherwise)
carry a rate (ARAT) and their local amount (ACAM). A GL interface line may bring its local amount (ACAM);
without one M3 converts at its rate of the day (``gl_rate``, also what ``exchange_rates`` lists). Everything lives in memory, or in a SQLite file when
a path is given, so postings survive sandbox restarts; a file built from another seed or period is
refused rather than mixed with this world. Status codes of interface batches (1 entered, 2 controlled
with errors, 3 controlled, 9 updated) are this sandbox's convention.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import sqlite3
import threading
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Mapping

from m3_recon.money import convert, exponent, major
from m3_recon.posting.layout import DEFAULT_LAYOUT_FILE, LayoutError, ParmLayout
from m3_recon.sandbox.world import Customer, Invoice, World, day_start_epoch

CONO = 100
DIVI = "AAA"
# What one unit of each currency the world uses is worth in USD, around which M3's rates move.
USD_VALUE = {"USD": Decimal(1), "EUR": Decimal("1.0800"), "JPY": Decimal("0.0067")}
TRCD_INVOICE = 10
TRCD_PAYMENT = 20
RECO_OPEN = 0
RECO_PAID = 9
INVOICE_SERIES = "IN"
PAYMENT_SERIES = "PY"
GL_SERIES = "GL"
PAYMENT_TERMS = "N30"
RATE_PLACES = Decimal("0.000001")  # ARAT has six decimals
GL_RECORD_TYPE = "I1"  # INRI of a GL voucher line
ACCOUNT_DIMENSIONS = 7  # AIT1..AIT7
ACCOUNT_FIELDS = tuple(f"AIT{i}" for i in range(1, ACCOUNT_DIMENSIONS + 1))
ACCOUNT_LENGTH = 10
VOUCHER_TEXT_LENGTH = 40
BATCH_ENTERED, BATCH_REJECTED, BATCH_CONTROLLED, BATCH_UPDATED = 1, 2, 3, 9
# This M3 site's accounting of customer payments: the debit account per payment method (BOPE), the
# account a payment method without one falls back to, and the receivable the payment credits.
PAYMENT_METHOD_ACCOUNTS = {"STR": "1191", "PYT": "1192", "HLD": "1193"}
DEFAULT_CASH_ACCOUNT = "1999"
RECEIVABLE_ACCOUNT = "1510"
LEDGER_FORMAT = "2"  # payment lines carry CKNO, LPDT and AIT1; payment vouchers reach the GL


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One FSLEDG record; the key is (cono, divi, year, journal, journal_seq)."""

    cono: int
    divi: str
    year: int  # YEA4, accounting year
    journal: int  # JRNO
    journal_seq: int  # JSNO
    voucher_series: str  # VSER
    voucher: int  # VONO
    trcd: int  # 10 invoice, 20 payment
    payer: str  # PYNO
    customer: str  # CUNO
    invoice: str  # CINO
    invoice_year: int  # INYR
    currency: str  # CUCD
    rate: Decimal  # ARAT, local currency per unit of CUCD
    amount_minor: int  # CUAM: positive for the invoice, negative for cash applied
    local_minor: int  # ACAM, in the ledger's local currency
    invoice_date: date  # IVDT
    due_date: date  # DUDT
    accounting_date: date  # ACDT
    registered: int  # unix seconds the line was entered (RGDT/RGTM); invisible before that

    @property
    def invoice_key(self) -> tuple[str, str, int]:
        return self.payer, self.invoice, self.invoice_year


@dataclass(frozen=True, slots=True)
class InvoiceTotals:
    """An invoice (PYNO + CINO + INYR) summed over its lines visible at one moment."""

    line: LedgerLine  # the invoice's own TRCD 10 line
    paid_minor: int
    paid_local_minor: int
    last_payment_date: date | None

    @property
    def outstanding_minor(self) -> int:
        return self.line.amount_minor - self.paid_minor

    @property
    def outstanding_local_minor(self) -> int:
        return self.line.local_minor - self.paid_local_minor

    @property
    def reco(self) -> int:
        return RECO_PAID if self.outstanding_minor == 0 else RECO_OPEN

    @property
    def reconciled_on(self) -> date | None:
        """REDE: the day the invoice became fully paid."""
        return self.last_payment_date if self.reco == RECO_PAID else None


@dataclass
class _Totals:
    """Invoice totals as of ``now`` over the first ``lines`` ledger lines; ``add`` folds in later ones."""

    now: int
    lines: int = 0
    invoices: dict[tuple[str, str, int], LedgerLine] = field(default_factory=dict)
    payments: dict[tuple[str, str, int], list[LedgerLine]] = field(default_factory=dict)
    result: dict[tuple[str, str, int], InvoiceTotals] = field(default_factory=dict)

    def add(self, lines: list[LedgerLine]) -> None:
        changed = {}  # invoice keys in line order: a new invoice lands where a fresh answer has it
        for line in lines:
            if line.registered <= self.now:
                if line.trcd == TRCD_INVOICE:
                    self.invoices[line.invoice_key] = line
                else:
                    self.payments.setdefault(line.invoice_key, []).append(line)
                changed[line.invoice_key] = None
        self.lines += len(lines)
        result = dict(self.result)  # callers may still hold the previous answer
        for key in (k for k in changed if k in self.invoices):
            paid = self.payments.get(key)
            result[key] = InvoiceTotals(self.invoices[key], 0, 0, None) if paid is None else InvoiceTotals(
                line=self.invoices[key], paid_minor=-sum(p.amount_minor for p in paid),
                paid_local_minor=-sum(p.local_minor for p in paid),
                last_payment_date=max(p.accounting_date for p in paid))
        self.result = result


@dataclass(frozen=True)
class LineIndex:
    """Ledger lines visible at one moment: per customer in registration order, and sorted as ``LstInvByDivi``
    lists them (division, payer, invoice date, invoice, year, journal) with that order's (division, payer,
    invoice date) start keys beside them for bisecting."""

    by_customer: dict[str, list[LedgerLine]]
    by_division: list[LedgerLine]
    division_starts: list[tuple[str, str, date]]

    @staticmethod
    def of(lines: list[LedgerLine]) -> LineIndex:
        by_customer: dict[str, list[LedgerLine]] = {}
        for line in lines:
            by_customer.setdefault(line.customer, []).append(line)
        ordered = sorted(lines, key=division_order)
        return LineIndex(by_customer, ordered, [(ln.divi, ln.payer, ln.invoice_date) for ln in ordered])


def division_order(line: LedgerLine) -> tuple:
    return (line.divi, line.payer, line.invoice_date, line.invoice, line.invoice_year, line.year, line.journal,
            line.journal_seq)


@dataclass(frozen=True, slots=True)
class GLLine:
    """One FGLEDG record (a GL transaction); the key is (cono, divi, year, journal, journal_seq)."""

    cono: int
    divi: str
    year: int  # YEA4
    journal: int  # JRNO
    journal_seq: int  # JSNO
    voucher_series: str  # VSER
    voucher: int  # VONO
    accounting_date: date  # ACDT
    ait1: str
    ait2: str
    ait3: str
    ait4: str
    ait5: str
    ait6: str
    ait7: str
    currency: str  # CUCD
    amount_minor: int  # CUAM: + debit, − credit
    rate: Decimal  # ARAT
    local_minor: int  # ACAM
    text: str  # VTXT
    batch_key: str  # KEY1 of the GLS840 batch that created it
    registered: int  # unix seconds (RGDT/RGTM)

    @property
    def accounts(self) -> tuple[str, ...]:
        return self.ait1, self.ait2, self.ait3, self.ait4, self.ait5, self.ait6, self.ait7


@dataclass
class GLBatch:
    """A GLS840 interface batch head (FGLINH) with its lines (FGLINL) exactly as they were entered."""

    key: str  # KEY1
    interface: str  # INTN
    description: str  # DESC
    user: str  # USID
    registered: int
    status: int = BATCH_ENTERED
    lines: dict[int, dict[str, str]] = field(default_factory=dict)  # LINE -> {"PARM": ...} or named fields
    controlled: list[GLEntry] | None = None  # the typed lines of the last control that passed (not stored)


@dataclass(frozen=True, slots=True)
class GLEntry:
    """A batch line once control has read and typed it."""

    line: int
    group: int  # GRNR: the voucher it belongs to
    accounts: tuple[str, ...]
    currency: str
    amount_minor: int
    accounting_date: date
    text: str
    local_minor: int | None = None  # ACAM as entered; None = M3 converts at its rate of the day


@dataclass(frozen=True, slots=True)
class PaymentLine:
    """One line of an ARS040 payment batch: cash for one invoice."""

    transaction: int  # TRNO
    customer: str  # CUNO
    payer: str  # PYNO (blank = the invoice's payer)
    invoice: str  # CINO
    invoice_year: int  # INYR
    amount_minor: int  # PYAM, in the invoice currency
    currency: str  # CUCD (blank = the invoice's currency)
    check_number: str = ""  # CKNO: the payment's id at the payer's side (here: the processor's payment id)
    payment_date: date | None = None  # LPDT
    account: str = ""  # AIT1: the debit account of this line, overriding the payment method's


@dataclass
class PaymentBatch:
    """An ARS040 payment batch head with its lines."""

    batch_id: int  # PBID
    batch_type: str  # BOPE
    accounting_date: date | None  # ACDT; blank = the day it is controlled
    registered: int
    status: int = BATCH_ENTERED
    lines: dict[int, PaymentLine] = field(default_factory=dict)


class LedgerError(ValueError):
    """A posting the ledger cannot accept (unknown invoice, more cash than is open, wrong file, an
    interface batch that does not pass control). ``code`` and ``field`` are M3's message ID and field."""

    def __init__(self, message: str, code: str = "", field: str = ""):
        super().__init__(message)
        self.code, self.field = code, field


def record_exists(what: str) -> LedgerError:
    return LedgerError(f"{what} already exists", "XRE0104", "")


def record_missing(what: str, field_name: str) -> LedgerError:
    return LedgerError(f"{what} does not exist", "XRE0103", field_name)


def _open_batch(batch, what: str, field_name: str):
    """A GL or payment batch that can still take lines: M3 refuses one it does not hold or has already updated."""
    if batch is None:
        raise record_missing(what, field_name)
    if batch.status == BATCH_UPDATED:
        raise LedgerError(f"{what} is already updated", field=field_name)
    return batch


_COLUMNS = [f.name for f in fields(LedgerLine)]
_GL_COLUMNS = [f.name for f in fields(GLLine)]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fsledg ({', '.join(_COLUMNS)},
    PRIMARY KEY (cono, divi, year, journal, journal_seq));
CREATE TABLE IF NOT EXISTS fgledg ({', '.join(_GL_COLUMNS)},
    PRIMARY KEY (cono, divi, year, journal, journal_seq));
CREATE TABLE IF NOT EXISTS fglinh (key1 PRIMARY KEY, interface, description, user, registered, status);
CREATE TABLE IF NOT EXISTS fglinl (key1, line, content, PRIMARY KEY (key1, line));
CREATE TABLE IF NOT EXISTS payment_batch_head (batch_id PRIMARY KEY, batch_type, accounting_date, registered,
    status);
CREATE TABLE IF NOT EXISTS payment_batch_line (batch_id, transaction_number, customer, payer, invoice,
    invoice_year, amount_minor, currency, check_number, payment_date, account,
    PRIMARY KEY (batch_id, transaction_number));
"""


def m3_rate(currency: str, local: str, draw: int) -> Decimal:
    """ARAT (local per unit of ``currency``) around the currencies' USD values; ``draw`` in [-500, 500] moves
    ``currency`` by up to ±4.6 % (EUR in a USD ledger: 1.0800 ± 0.0500)."""
    value = USD_VALUE[currency]
    return ((value + value * draw / 10_800) / USD_VALUE[local]).quantize(RATE_PLACES)


def booking_rates(world: World) -> dict[str, Decimal]:
    """ARAT per invoice in another currency than the local one, from the world's own "m3" stream."""
    rng = world.rng("m3")
    return {inv.number: m3_rate(inv.currency, world.local_currency, rng.randint(-500, 500))
            for inv in world.invoices if inv.currency != world.local_currency}


def _gl_voucher_of(line: GLLine) -> tuple[str, tuple[int, str, int]]:
    return line.batch_key, (line.year, line.voucher_series, line.voucher)


def utc_day(moment: int) -> date:
    return datetime.fromtimestamp(moment, tz=timezone.utc).date()


@functools.cache
def _field_values(cls) -> Callable[[object], tuple]:
    """The values of a dataclass's fields in order (``fields`` per record was half of writing a payment batch)."""
    return operator.attrgetter(*(spec.name for spec in fields(cls)))


def _to_row(record) -> tuple:
    """A dataclass of plain values as a SQLite row (``astuple`` deep-copies, which cost posting a day's lines)."""
    return tuple(str(v) if isinstance(v, (Decimal, date)) else v for v in _field_values(type(record))(record))


def _from_row(cls, row: tuple):
    """A dataclass from a SQLite row: ``date`` and ``Decimal`` fields come back from their text."""
    values = {}
    for spec, value in zip(fields(cls), row):
        if spec.type == "Decimal":
            value = Decimal(value)
        elif spec.type == "date":
            value = date.fromisoformat(value)
        values[spec.name] = value
    return cls(**values)


class M3Ledger:
    """The finance books of one M3 company/division, optionally persisted to SQLite."""

    def __init__(self, world: World, path: str | Path | None = None, cono: int = CONO, divi: str = DIVI,
                 gl_interfaces: Mapping[str, ParmLayout] | None = None):
        """``gl_interfaces``: the GLS850 position templates by interface name (default: the template in
        data/gls840_layout.toml, the one m3-recon's poster writes)."""
        self.world = world
        self.local_currency = world.local_currency
        self.cono, self.divi = cono, divi
        self.customers: dict[str, Customer] = {c.number: c for c in world.customers}
        if gl_interfaces is None:
            default = ParmLayout.load(DEFAULT_LAYOUT_FILE)
            gl_interfaces = {default.interface: default}
        self.gl_interfaces = dict(gl_interfaces)
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._totals_cache: _Totals | None = None
        self._index_cache: tuple[tuple[int, int], LineIndex] | None = None  # ((now, lines), index)
        self._meta = {"seed": str(world.seed), "period_start": world.period.start.isoformat(),
                      "period_days": str(world.period.days), "cono": str(cono), "divi": divi,
                      "format": LEDGER_FORMAT,
                      **({"local_currency": world.local_currency} if world.local_currency != "USD" else {})}
        self._db = self._connect() if self.path is not None else None
        self._lines: list[LedgerLine] = []
        self._gl_lines: list[GLLine] = []
        self._gl_batches: dict[str, GLBatch] = {}
        self._payment_batches: dict[int, PaymentBatch] = {}
        if not self._load():
            self._lines = self._opening_lines()
            self._write(lambda: [("INSERT INTO ledger_meta VALUES (?, ?)", sorted(self._meta.items())),
                                 (self._insert("fsledg", len(_COLUMNS)), [_to_row(line) for line in self._lines])])
        self._index()

    # -- building -----------------------------------------------------------------------------
    def _opening_lines(self) -> list[LedgerLine]:
        """One TRCD 10 line per world invoice, journalled in invoice-date order per accounting year."""
        rates = booking_rates(self.world)
        counters: dict[int, int] = {}
        lines = []
        for inv in self.world.invoices:
            counters[inv.year] = counters.get(inv.year, 0) + 1
            rate = rates.get(inv.number, Decimal(1).quantize(RATE_PLACES))
            lines.append(self._invoice_line(inv, counters[inv.year], rate))
        return lines

    def _invoice_line(self, inv: Invoice, number: int, rate: Decimal) -> LedgerLine:
        return LedgerLine(
            cono=self.cono, divi=self.divi, year=inv.invoice_date.year, journal=number, journal_seq=1,
            voucher_series=INVOICE_SERIES, voucher=number, trcd=TRCD_INVOICE, payer=inv.customer,
            customer=inv.customer, invoice=inv.number, invoice_year=inv.year, currency=inv.currency,
            rate=rate, amount_minor=inv.amount_minor, local_minor=self.to_local(inv.amount_minor, inv.currency, rate),
            invoice_date=inv.invoice_date, due_date=inv.due_date, accounting_date=inv.invoice_date,
            registered=day_start_epoch(inv.invoice_date))

    def _index(self) -> None:
        """Lookups kept next to the lines: invoices by number, cash applied, next journal and voucher numbers."""
        self._invoices = {(ln.invoice, ln.invoice_year): ln for ln in self._lines if ln.trcd == TRCD_INVOICE}
        self._applied: dict[tuple[str, str, int], tuple[int, int]] = {}
        self._journals: dict[int, int] = {}
        self._vouchers: dict[tuple[int, str], int] = {}
        self._gl_by_batch: dict[str, list[GLLine]] = {}
        self._gl_by_voucher: dict[tuple[int, str, int], list[GLLine]] = {}
        for line in self._lines:
            self._count(line)
            if line.trcd == TRCD_PAYMENT:
                paid, local = self._applied.get(line.invoice_key, (0, 0))
                self._applied[line.invoice_key] = (paid - line.amount_minor, local - line.local_minor)
        loaded, self._gl_lines = self._gl_lines, []
        self._index_gl(loaded)

    def _count(self, line: LedgerLine | GLLine) -> None:
        self._journals[line.year] = max(self._journals.get(line.year, 0), line.journal)
        series = (line.year, line.voucher_series)
        self._vouchers[series] = max(self._vouchers.get(series, 0), line.voucher)

    def _index_gl(self, lines: list[GLLine]) -> None:
        """Keep GL lines, indexed by batch and voucher; a run of lines of one voucher is counted and indexed at
        once (a batch books 10^3 lines in one voucher)."""
        self._gl_lines.extend(lines)
        for (batch, voucher), run in itertools.groupby(lines, key=_gl_voucher_of):
            run = list(run)
            self._count(run[-1])
            self._gl_by_batch.setdefault(batch, []).extend(run)
            self._gl_by_voucher.setdefault(voucher, []).extend(run)

    def _next_numbers(self, year: int, series: str) -> tuple[int, int]:
        """The next journal number of the year and voucher number of the series (not yet taken)."""
        return self._journals.get(year, 0) + 1, self._vouchers.get((year, series), 0) + 1

    # -- persistence ------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        return conn

    @staticmethod
    def _insert(table: str, width: int) -> str:
        return f"INSERT INTO {table} VALUES ({', '.join('?' * width)})"

    def _write(self, statements: Callable[[], list[tuple[str, list | tuple]]]) -> None:
        """Run ``statements()`` in one SQLite transaction: ``(sql, tuple)`` once, ``(sql, list of tuples)`` per
        row. A ledger in memory never calls it, so renders no rows (a day's posting books 10^5 lines)."""
        if self._db is None:
            return
        with self._db:
            for sql, rows in statements():
                if isinstance(rows, list):
                    self._db.executemany(sql, rows)
                else:
                    self._db.execute(sql, rows)

    def _load(self) -> bool:
        if self._db is None:
            return False
        meta = dict(self._db.execute("SELECT key, value FROM ledger_meta").fetchall())
        if not meta:
            return False
        if meta != self._meta:
            raise LedgerError(
                f"{self.path} holds an M3 ledger built for {meta}, not for this sandbox ({self._meta}); "
                "start the sandbox with the same seed and period, or delete the file to rebuild it")
        query = self._db.execute
        self._lines = [_from_row(LedgerLine, row) for row in
                       query(f"SELECT {', '.join(_COLUMNS)} FROM fsledg ORDER BY rowid")]
        self._gl_lines = [_from_row(GLLine, row) for row in
                          query(f"SELECT {', '.join(_GL_COLUMNS)} FROM fgledg ORDER BY rowid")]
        for key, interface, description, user, registered, status in query("SELECT * FROM fglinh ORDER BY rowid"):
            self._gl_batches[key] = GLBatch(key, interface, description, user, registered, status)
        for key, line, content in query("SELECT key1, line, content FROM fglinl ORDER BY rowid"):
            self._gl_batches[key].lines[line] = json.loads(content)
        for batch_id, batch_type, accounting_date, registered, status in query(
                "SELECT * FROM payment_batch_head ORDER BY rowid"):
            self._payment_batches[batch_id] = PaymentBatch(
                batch_id, batch_type, date.fromisoformat(accounting_date) if accounting_date else None,
                registered, status)
        for row in query("SELECT * FROM payment_batch_line ORDER BY rowid"):
            self._payment_batches[row[0]].lines[row[1]] = _payment_line(row[1:])
        return True

    # -- reading as of a moment -------------------------------------------------------------------
    def lines(self, now: int) -> list[LedgerLine]:
        """Every FSLEDG line registered at or before ``now``, in registration order."""
        with self._lock:
            return [line for line in self._lines if line.registered <= now]

    def totals(self, now: int) -> dict[tuple[str, str, int], InvoiceTotals]:
        """Per invoice key (PYNO, CINO, INYR): its invoice line and the cash applied up to ``now``.

        Lines are only ever added, so the answer is kept per ``now`` and brought up to date with the lines added
        since (a posting run adds thousands between its reads); a returned dict is never changed afterwards.
        """
        with self._lock:
            if self._totals_cache is None or self._totals_cache.now != now:
                self._totals_cache = _Totals(now)
            if self._totals_cache.lines < len(self._lines):
                self._totals_cache.add(self._lines[self._totals_cache.lines:])
            return self._totals_cache.result

    def line_index(self, now: int) -> LineIndex:
        """The lines visible at ``now`` per customer and in ARS200MI's division order, cached like ``totals``, so a
        list for one customer or from one payer on does not scan the whole ledger (a scaled world has 10^5 lines)."""
        with self._lock:
            key = (now, len(self._lines))
            if self._index_cache is not None and self._index_cache[0] == key:
                return self._index_cache[1]
        index = LineIndex.of(self.lines(now))
        with self._lock:
            self._index_cache = (key, index)
        return index

    def open_invoices(self, now: int) -> list[InvoiceTotals]:
        """The open items at ``now`` (RECO not 9), in journal order."""
        return [t for t in self.totals(now).values() if t.reco != RECO_PAID]

    def gl_lines(self, now: int) -> list[GLLine]:
        """Every GL transaction registered at or before ``now``, in registration order."""
        with self._lock:
            return [line for line in self._gl_lines if line.registered <= now]

    def gl_voucher(self, year: int, voucher: int, series: str | None, now: int) -> list[GLLine]:
        """The lines of one GL voucher (any series when ``series`` is None) visible at ``now``."""
        with self._lock:
            return [line for (y, s, v), lines in self._gl_by_voucher.items()
                    if y == year and v == voucher and series in (None, s)
                    for line in lines if line.registered <= now]

    def gl_lines_of_batch(self, key: str, now: int) -> list[GLLine]:
        """The GL transactions the GLS840 batch ``key`` created, visible at ``now``."""
        with self._lock:
            return [line for line in self._gl_by_batch.get(key, []) if line.registered <= now]

    def gl_rate(self, currency: str, day: date) -> Decimal:
        """The day's ARAT for a GL line in ``currency`` (deterministic per seed, currency and day)."""
        if currency == self.local_currency:
            return Decimal(1).quantize(RATE_PLACES)
        rng = self.world.rng(f"m3-gl-rate:{currency}:{day.isoformat()}")
        return m3_rate(currency, self.local_currency, rng.randint(-500, 500))

    def to_local(self, amount_minor: int, currency: str, rate: Decimal) -> int:
        if currency == self.local_currency and rate == 1:  # what convert gives, without its Decimal arithmetic
            return amount_minor
        return convert(amount_minor, currency, self.local_currency, rate)

    def exchange_rates(self, currencies: list[str], first: date, last: date) -> list[tuple[str, date, Decimal]]:
        """M3's daily rates (CRS055, as exported) of ``currencies`` to the local one from ``first`` to ``last``."""
        return [(currency, first + timedelta(days=n), self.gl_rate(currency, first + timedelta(days=n)))
                for currency in sorted(set(currencies) - {self.local_currency})
                for n in range((last - first).days + 1)]

    def invoice_currency(self, invoice: str, invoice_year: int) -> str | None:
        line = self._invoices.get((invoice, invoice_year))
        return line.currency if line else None

    # -- cash applied to invoices (FSLEDG) ---------------------------------------------------------
    def apply_cash(self, invoice: str, invoice_year: int, amount_minor: int, paid_at: int) -> LedgerLine:
        """Apply a customer payment to one invoice: a TRCD 20 line dated the payment's UTC day."""
        if amount_minor <= 0:
            raise LedgerError(f"cash applied must be positive, got {amount_minor}")
        with self._lock:
            inv = self._invoices.get((invoice, invoice_year))
            if inv is None:
                raise LedgerError(f"invoice {invoice}/{invoice_year} is not in the M3 ledger")
            lines, applied = self._payment_voucher([(inv, amount_minor)], utc_day(paid_at), paid_at)
            self._book(lines, applied)
            return lines[0]

    def _payment_voucher(self, payments: list[tuple[LedgerLine, int]], accounting_date: date,
                         registered: int) -> tuple[list[LedgerLine], dict]:
        """Cash on invoices as one payment voucher (one journal, a sequence per invoice) and the cash
        applied per invoice afterwards; nothing is booked yet.

        No invoice may receive more than is open; the payment that closes an invoice also closes its
        local amount exactly, so a fully paid foreign invoice leaves no rounding residue. Caller holds the lock.
        """
        applied = dict(self._applied)
        year = accounting_date.year
        journal, voucher = self._next_numbers(year, PAYMENT_SERIES)
        lines = []
        for seq, (inv, amount_minor) in enumerate(payments, start=1):
            paid, paid_local = applied.get(inv.invoice_key, (0, 0))
            open_minor = inv.amount_minor - paid
            if amount_minor > open_minor:
                raise LedgerError(f"invoice {inv.invoice}/{inv.invoice_year} has {open_minor} open, "
                                  f"cannot apply {amount_minor}", field="PYAM")
            open_local = inv.local_minor - paid_local
            local = open_local if amount_minor == open_minor else self.to_local(amount_minor, inv.currency, inv.rate)
            applied[inv.invoice_key] = (paid + amount_minor, paid_local + local)
            lines.append(LedgerLine(inv.cono, inv.divi, year, journal, seq, PAYMENT_SERIES, voucher, TRCD_PAYMENT,
                                    inv.payer, inv.customer, inv.invoice, inv.invoice_year, inv.currency, inv.rate,
                                    -amount_minor, -local, inv.invoice_date, inv.due_date, accounting_date,
                                    registered))
        return lines, applied

    def _book(self, lines: list[LedgerLine], applied: dict,
              statements: Callable[[], list[tuple[str, tuple]]] = list) -> None:
        """Write payment lines together with ``statements()`` in one transaction, then keep them."""
        self._write(lambda: [(self._insert("fsledg", len(_COLUMNS)), [_to_row(line) for line in lines]),
                             *statements()])
        self._lines.extend(lines)
        self._applied = applied
        if lines:
            self._count(lines[-1])  # one payment voucher: its lines share journal and voucher number

    # -- GLS840: GL interface batches ----------------------------------------------------------------
    def add_gl_batch(self, key: str, interface: str, description: str, user: str, now: int) -> None:
        """AddBatchHead: ``KEY1`` is unique in the division whatever the interface."""
        if interface not in self.gl_interfaces:
            raise LedgerError(f"Interface {interface} does not exist", field="INTN")
        with self._lock:
            if key in self._gl_batches:
                raise record_exists(f"Batch {key}")
            batch = GLBatch(key, interface, description, user, now)
            self._write(lambda: [(self._insert("fglinh", 6), (key, interface, description, user, now, batch.status))])
            self._gl_batches[key] = batch

    def add_gl_batch_line(self, key: str, line: int, content: dict[str, str]) -> None:
        """AddBatchLine (``{"PARM": ...}``) or AddBatchLineFld (named fields); checked only by control."""
        with self._lock:
            batch = self._open_gl_batch(key)
            if line in batch.lines:
                raise record_exists(f"Line {line} of batch {key}")
            self._write(lambda: [(self._insert("fglinl", 3), (key, line, json.dumps(content, sort_keys=True)))])
            batch.lines[line] = dict(content)
            batch.controlled = None
            self._set_gl_status(batch, BATCH_ENTERED)  # a new line needs a new control

    def _open_gl_batch(self, key: str) -> GLBatch:
        return _open_batch(self._gl_batches.get(key), f"Batch {key}", "KEY1")

    def control_gl_batch(self, key: str) -> list[GLEntry]:
        """CtrlBatch: read every line with the interface's template and check the vouchers it makes."""
        with self._lock:
            batch = self._open_gl_batch(key)
            return self._control(batch)

    def update_gl_batch(self, key: str, now: int) -> list[GLLine]:
        """UpdBatch: control again, then one GL voucher per voucher group; the batch becomes updated."""
        with self._lock:
            batch = self._open_gl_batch(key)
            entries = self._control(batch)
            lines = []
            for group in sorted({e.group for e in entries}):
                members = [e for e in entries if e.group == group]
                day = members[0].accounting_date
                journal, voucher = self._next_numbers(day.year, GL_SERIES)
                rates = {currency: self.gl_rate(currency, day) for currency in {e.currency for e in members}}
                for seq, entry in enumerate(members, start=1):
                    rate = rates[entry.currency]
                    local = (entry.local_minor if entry.local_minor is not None
                             else self.to_local(entry.amount_minor, entry.currency, rate))
                    line = GLLine(self.cono, self.divi, day.year, journal, seq, GL_SERIES, voucher, day,
                                  *entry.accounts, entry.currency, entry.amount_minor, rate, local, entry.text, key, now)
                    lines.append(line)
                self._count(lines[-1])
            self._write(lambda: [(self._insert("fgledg", len(_GL_COLUMNS)), [_to_row(line) for line in lines]),
                                 ("UPDATE fglinh SET status = ? WHERE key1 = ?", (BATCH_UPDATED, key))])
            batch.status, batch.controlled = BATCH_UPDATED, None  # an updated batch is never controlled again
            self._index_gl(lines)
            return lines

    def _control(self, batch: GLBatch) -> list[GLEntry]:
        """Typed lines of a batch, or the first error; the batch's status records the outcome. A batch controlled
        without error and given no line since keeps its typed lines: the same lines would pass the same way."""
        if batch.status == BATCH_CONTROLLED and batch.controlled is not None:
            return batch.controlled
        try:
            entries = self._checked_entries(batch)
        except LedgerError:
            self._set_gl_status(batch, BATCH_REJECTED)
            raise
        self._set_gl_status(batch, BATCH_CONTROLLED)
        batch.controlled = entries
        return entries

    def _set_gl_status(self, batch: GLBatch, status: int) -> None:
        if batch.status != status:
            self._write(lambda: [("UPDATE fglinh SET status = ? WHERE key1 = ?", (status, batch.key))])
            batch.status = status

    def _checked_entries(self, batch: GLBatch) -> list[GLEntry]:
        if not batch.lines:
            raise LedgerError(f"Batch {batch.key} has no lines", field="KEY1")
        layout = self.gl_interfaces[batch.interface]
        entries = [self._entry(number, batch.lines[number], layout) for number in sorted(batch.lines)]
        for group in sorted({e.group for e in entries}):
            members = [e for e in entries if e.group == group]
            if len({e.accounting_date for e in members}) > 1:
                raise LedgerError(f"Voucher group {group} has lines on several accounting dates", field="ACDT")
            for currency in sorted({e.currency for e in members}):
                debit = sum(e.amount_minor for e in members if e.currency == currency and e.amount_minor > 0)
                credit = -sum(e.amount_minor for e in members if e.currency == currency and e.amount_minor < 0)
                if debit != credit:
                    raise LedgerError(
                        f"Voucher group {group} does not balance in {currency}: debit "
                        f"{major(debit, currency)}, credit {major(credit, currency)}", field="CUAM")
        return entries

    def _entry(self, number: int, content: dict[str, str], layout: ParmLayout) -> GLEntry:
        where = f"Line {number}"
        if "PARM" in content:
            try:
                values = layout.parse(content["PARM"])
            except LayoutError as exc:
                raise LedgerError(f"{where}: {exc}", field="PARM") from None
        else:
            values = content
        if values.get("INRI", GL_RECORD_TYPE) != GL_RECORD_TYPE:
            raise LedgerError(f"{where}: record type {values['INRI']} is not defined for interface "
                              f"{layout.interface}", field="INRI")
        if values.get("DIVI", "") not in ("", self.divi):
            raise LedgerError(f"{where}: Division {values['DIVI']} does not exist", "WDI0103", "DIVI")
        group = values.get("GRNR") or "1"
        if not group.isdigit() or int(group) == 0:
            raise LedgerError(f"{where}: Numeric error in field GRNR", "XNU0000", "GRNR")
        accounts = tuple(values.get(name, "") for name in ACCOUNT_FIELDS)
        if not accounts[0]:
            raise LedgerError(f"{where}: Account must be entered", "WAI0202", "AIT1")
        for i, account in enumerate(accounts, start=1):
            if len(account) > ACCOUNT_LENGTH:
                raise LedgerError(f"{where}: Accounting dimension {i} {account} is longer than {ACCOUNT_LENGTH}",
                                  field=f"AIT{i}")
        currency = values.get("CUCD", "")
        if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
            raise LedgerError(f"{where}: Currency {currency or '(blank)'} does not exist", field="CUCD")
        amount = parse_amount(values.get("CUAM", ""), f"{where}: ", "CUAM", currency)
        local = (parse_amount(values["ACAM"], f"{where}: ", "ACAM", self.local_currency)
                 if values.get("ACAM") else None)
        raw_date = values.get("ACDT", "")
        day = _interface_date(raw_date)
        if day is None:
            raise LedgerError(f"{where}: Incorrect date {raw_date or '(blank)'} in field ACDT", "XDT0001", "ACDT")
        text = values.get("VTXT", "")
        if len(text) > VOUCHER_TEXT_LENGTH:
            raise LedgerError(f"{where}: Voucher text is longer than {VOUCHER_TEXT_LENGTH} characters", field="VTXT")
        return GLEntry(number, int(group), accounts, currency, amount, day, text, local)

    # -- ARS040: customer payment batches ------------------------------------------------------------
    def add_payment_batch(self, batch_id: int, batch_type: str, accounting_date: date | None, now: int) -> None:
        with self._lock:
            if batch_id in self._payment_batches:
                raise record_exists(f"Payment batch {batch_id}")
            batch = PaymentBatch(batch_id, batch_type, accounting_date, now)
            self._write(lambda: [(self._insert("payment_batch_head", 5),
                                  (batch_id, batch_type, accounting_date.isoformat() if accounting_date else None,
                                   now, batch.status))])
            self._payment_batches[batch_id] = batch

    def add_payment_line(self, batch_id: int, line: PaymentLine) -> None:
        with self._lock:
            batch = self._open_payment_batch(batch_id)
            if line.transaction in batch.lines:
                raise record_exists(f"Line {line.transaction} of payment batch {batch_id}")
            self._write(lambda: [(self._insert("payment_batch_line", 11), (batch_id, *_to_row(line)))])
            batch.lines[line.transaction] = line

    def _open_payment_batch(self, batch_id: int) -> PaymentBatch:
        return _open_batch(self._payment_batches.get(batch_id), f"Payment batch {batch_id}", "PBID")

    def control_payment_batch(self, batch_id: int, now: int) -> list[LedgerLine]:
        """ControlBatch: check every line against the customer ledger and book them as one payment voucher."""
        with self._lock:
            batch = self._open_payment_batch(batch_id)
            if not batch.lines:
                raise LedgerError(f"Payment batch {batch_id} has no lines", field="PBID")
            payments = []
            for number in sorted(batch.lines):
                line = batch.lines[number]
                inv = self._invoices.get((line.invoice, line.invoice_year))
                if inv is None or inv.customer != line.customer or line.payer not in ("", inv.payer):
                    raise record_missing(f"Line {number}: invoice {line.invoice}/{line.invoice_year} of customer "
                                         f"{line.customer}", "CINO")
                if line.currency not in ("", inv.currency):
                    raise LedgerError(f"Line {number}: invoice {line.invoice} is in {inv.currency}, not "
                                      f"{line.currency}", field="CUCD")
                payments.append((inv, line.amount_minor))
            lines, applied = self._payment_voucher(payments, batch.accounting_date or utc_day(now), now)
            gl_lines = self._payment_gl_lines(batch, lines)
            self._book(lines, applied, lambda: [
                ("UPDATE payment_batch_head SET status = ? WHERE batch_id = ?", (BATCH_UPDATED, batch_id)),
                (self._insert("fgledg", len(_GL_COLUMNS)), [_to_row(line) for line in gl_lines])])
            batch.status = BATCH_UPDATED
            self._index_gl(gl_lines)
            return lines

    def _payment_gl_lines(self, batch: PaymentBatch, lines: list[LedgerLine]) -> list[GLLine]:
        """The payment voucher in the general ledger: per payment line a debit on the line's AIT1, else the
        payment method's account, else the default cash account, and a credit on receivables, both at the
        booked local value (the FSLEDG line's own journal and voucher). Caller holds the lock."""
        method_account = PAYMENT_METHOD_ACCOUNTS.get(batch.batch_type, DEFAULT_CASH_ACCOUNT)
        gl, seq = [], len(lines)
        for ledger_line, number in zip(lines, sorted(batch.lines)):
            entered = batch.lines[number]
            text = (f"{batch.batch_id} {entered.check_number or ledger_line.invoice}")[:VOUCHER_TEXT_LENGTH]
            for account, sign in ((entered.account or method_account, 1), (RECEIVABLE_ACCOUNT, -1)):
                seq += 1
                gl.append(GLLine(ledger_line.cono, ledger_line.divi, ledger_line.year, ledger_line.journal, seq,
                                 ledger_line.voucher_series, ledger_line.voucher, ledger_line.accounting_date,
                                 account, "", "", "", "", "", "", ledger_line.currency,
                                 -sign * ledger_line.amount_minor, ledger_line.rate, -sign * ledger_line.local_minor,
                                 text, "", ledger_line.registered))
        return gl


@functools.lru_cache(maxsize=1024)
def _interface_date(raw: str) -> date | None:
    """An interface line's ``yyyyMMdd`` ACDT, None when it is no date (a batch's lines share a few days)."""
    try:
        if len(raw) != 8 or not raw.isdigit():
            raise ValueError
        return date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
    except ValueError:
        return None


def _payment_line(row: tuple) -> PaymentLine:
    """A PaymentLine from its SQLite row (without the batch id)."""
    *head, payment_date, account = row
    return PaymentLine(*head, date.fromisoformat(payment_date) if payment_date else None, account)


def parse_amount(raw: str, where: str, field_name: str, currency: str) -> int:
    """An MI decimal amount (``-123.45``) as minor units of ``currency``; more decimals than it has is an error."""
    try:
        value = Decimal(raw)
        if not raw or not value.is_finite():
            raise ValueError
    except (ArithmeticError, ValueError):
        raise LedgerError(f"{where}Numeric error in field {field_name}", "XNU0000", field_name) from None
    scaled = value.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise LedgerError(f"{where}Numeric error in field {field_name}: more than {exponent(currency)} decimals",
                          "XNU0000", field_name)
    return int(scaled)

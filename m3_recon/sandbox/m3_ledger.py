"""Infor M3's customer ledger (table FSLEDG) for the sandbox: every world invoice as an open item.

One company (``CONO`` 100) and division (``DIVI`` "AAA") keep the AR open items of every customer in
the world, whatever processor they pay through. Each invoice is an FSLEDG line with transaction code
10; cash applied to it later is a line with code 20 and a negative amount on the same payer, invoice
number and invoice year, the way M3 keeps them. Lines keep when they were registered, so the API
renders the ledger as of the sandbox clock: outstanding amounts and the reconciliation code RECO
(9 = paid) are derived from the lines visible at that moment.

Amounts are integer minor units (every currency the world bills in has two decimals); foreign
invoices carry the booking rate ARAT and their local (USD) amount ACAM. The ledger lives in memory,
or in a SQLite file when a path is given, so postings survive sandbox restarts; a file built from
another seed or period is refused rather than mixed with this world.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import astuple, dataclass, fields, replace
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from m3_recon.sandbox.world import Customer, Invoice, World, day_start_epoch

CONO = 100
DIVI = "AAA"
LOCAL_CURRENCY = "USD"
MINOR_UNIT_EXPONENT = 2  # USD and EUR, the currencies the world invoices in
TRCD_INVOICE = 10
TRCD_PAYMENT = 20
RECO_OPEN = 0
RECO_PAID = 9
INVOICE_SERIES = "IN"
PAYMENT_SERIES = "PY"
PAYMENT_TERMS = "N30"
RATE_PLACES = Decimal("0.000001")  # ARAT has six decimals


@dataclass(frozen=True)
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
    local_minor: int  # ACAM, in LOCAL_CURRENCY
    invoice_date: date  # IVDT
    due_date: date  # DUDT
    accounting_date: date  # ACDT
    registered: int  # unix seconds the line was entered (RGDT/RGTM); invisible before that

    @property
    def invoice_key(self) -> tuple[str, str, int]:
        return self.payer, self.invoice, self.invoice_year


@dataclass(frozen=True)
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


class LedgerError(ValueError):
    """A posting the ledger cannot accept (unknown invoice, more cash than is open, wrong file)."""


_COLUMNS = [f.name for f in fields(LedgerLine)]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fsledg ({', '.join(_COLUMNS)},
    PRIMARY KEY (cono, divi, year, journal, journal_seq));
"""


def booking_rates(world: World) -> dict[str, Decimal]:
    """ARAT per foreign invoice, from the world's own "m3" stream (USD invoices book at 1)."""
    rng = world.rng("m3")
    rates = {}
    for inv in world.invoices:
        if inv.currency != LOCAL_CURRENCY:
            rates[inv.number] = (Decimal("1.0800") + Decimal(rng.randint(-500, 500)) / 10_000).quantize(RATE_PLACES)
    return rates


def to_local(amount_minor: int, rate: Decimal) -> int:
    return int((Decimal(amount_minor) * rate).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


class M3Ledger:
    """The customer ledger of one M3 company/division, optionally persisted to SQLite."""

    def __init__(self, world: World, path: str | Path | None = None, cono: int = CONO, divi: str = DIVI):
        self.world = world
        self.cono, self.divi = cono, divi
        self.customers: dict[str, Customer] = {c.number: c for c in world.customers}
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._totals_cache: tuple[tuple[int, int], dict] | None = None  # ((now, lines), totals)
        self._meta = {"seed": str(world.seed), "period_start": world.period.start.isoformat(),
                      "period_days": str(world.period.days), "cono": str(cono), "divi": divi}
        stored = self._load() if self.path is not None else None
        if stored is None:
            self._lines = self._opening_lines()
            if self.path is not None:
                self._save_all()
        else:
            self._lines = stored

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
            rate=rate, amount_minor=inv.amount_minor, local_minor=to_local(inv.amount_minor, rate),
            invoice_date=inv.invoice_date, due_date=inv.due_date, accounting_date=inv.invoice_date,
            registered=day_start_epoch(inv.invoice_date))

    # -- persistence ------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        conn.executescript(_SCHEMA)
        return conn

    def _load(self) -> list[LedgerLine] | None:
        if not self.path.exists():
            return None
        with self._connect() as conn:
            meta = dict(conn.execute("SELECT key, value FROM ledger_meta").fetchall())
            if not meta:
                return None
            if meta != self._meta:
                raise LedgerError(
                    f"{self.path} holds an M3 ledger built for {meta}, not for this sandbox ({self._meta}); "
                    "start the sandbox with the same seed and period, or delete the file to rebuild it")
            rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM fsledg ORDER BY rowid").fetchall()
        return [self._from_row(row) for row in rows]

    def _save_all(self) -> None:
        with self._connect() as conn:
            conn.executemany("INSERT INTO ledger_meta VALUES (?, ?)", sorted(self._meta.items()))
            conn.executemany(f"INSERT INTO fsledg VALUES ({', '.join('?' * len(_COLUMNS))})",
                             [self._to_row(line) for line in self._lines])

    @staticmethod
    def _to_row(line: LedgerLine) -> tuple:
        return tuple(str(v) if isinstance(v, (Decimal, date)) else v for v in astuple(line))

    @staticmethod
    def _from_row(row: tuple) -> LedgerLine:
        values = dict(zip(_COLUMNS, row))
        values["rate"] = Decimal(values["rate"])
        for name in ("invoice_date", "due_date", "accounting_date"):
            values[name] = date.fromisoformat(values[name])
        return LedgerLine(**values)

    # -- reading as of a moment -------------------------------------------------------------------
    def lines(self, now: int) -> list[LedgerLine]:
        """Every line registered at or before ``now``, in registration order."""
        with self._lock:
            return [line for line in self._lines if line.registered <= now]

    def totals(self, now: int) -> dict[tuple[str, str, int], InvoiceTotals]:
        """Per invoice key (PYNO, CINO, INYR): its invoice line and the cash applied up to ``now``.

        Lines are only ever added, so the answer is cached per (``now``, number of lines).
        """
        with self._lock:
            key = (now, len(self._lines))
            if self._totals_cache is not None and self._totals_cache[0] == key:
                return self._totals_cache[1]
        result = self._compute_totals(now)
        with self._lock:
            self._totals_cache = (key, result)
        return result

    def _compute_totals(self, now: int) -> dict[tuple[str, str, int], InvoiceTotals]:
        invoices: dict[tuple[str, str, int], LedgerLine] = {}
        payments: dict[tuple[str, str, int], list[LedgerLine]] = {}
        for line in self.lines(now):
            if line.trcd == TRCD_INVOICE:
                invoices[line.invoice_key] = line
            else:
                payments.setdefault(line.invoice_key, []).append(line)
        result = {}
        for key, line in invoices.items():
            paid = payments.get(key, [])
            result[key] = InvoiceTotals(
                line=line, paid_minor=-sum(p.amount_minor for p in paid),
                paid_local_minor=-sum(p.local_minor for p in paid),
                last_payment_date=max((p.accounting_date for p in paid), default=None))
        return result

    def open_invoices(self, now: int) -> list[InvoiceTotals]:
        """The open items at ``now`` (RECO not 9), in journal order."""
        return [t for t in self.totals(now).values() if t.reco != RECO_PAID]

    # -- posting -----------------------------------------------------------------------------------
    def apply_cash(self, invoice: str, invoice_year: int, amount_minor: int, paid_at: int) -> LedgerLine:
        """Apply a customer payment to one invoice: a TRCD 20 line dated the payment's UTC day.

        The payment may not exceed what is open; the payment that closes the invoice also closes its
        local amount exactly, so a fully paid foreign invoice leaves no rounding residue.
        """
        if amount_minor <= 0:
            raise LedgerError(f"cash applied must be positive, got {amount_minor}")
        with self._lock:
            matches = [line for line in self._lines if line.trcd == TRCD_INVOICE and line.invoice == invoice
                       and line.invoice_year == invoice_year]
            if not matches:
                raise LedgerError(f"invoice {invoice}/{invoice_year} is not in the M3 ledger")
            inv = matches[0]
            applied = [line for line in self._lines if line.trcd == TRCD_PAYMENT
                       and line.invoice_key == inv.invoice_key]
            open_minor = inv.amount_minor + sum(line.amount_minor for line in applied)
            if amount_minor > open_minor:
                raise LedgerError(f"invoice {invoice}/{invoice_year} has {open_minor} open, "
                                  f"cannot apply {amount_minor}")
            open_local = inv.local_minor + sum(line.local_minor for line in applied)
            local = open_local if amount_minor == open_minor else to_local(amount_minor, inv.rate)
            paid_on = datetime.fromtimestamp(paid_at, tz=timezone.utc).date()
            year = paid_on.year
            journal = 1 + max((line.journal for line in self._lines if line.year == year), default=0)
            voucher = 1 + max((line.voucher for line in self._lines
                               if line.year == year and line.voucher_series == PAYMENT_SERIES), default=0)
            line = replace(inv, year=year, journal=journal, journal_seq=1, voucher_series=PAYMENT_SERIES,
                           voucher=voucher, trcd=TRCD_PAYMENT, amount_minor=-amount_minor, local_minor=-local,
                           accounting_date=paid_on, registered=paid_at)
            if self.path is not None:
                with self._connect() as conn:
                    conn.execute(f"INSERT INTO fsledg VALUES ({', '.join('?' * len(_COLUMNS))})",
                                 self._to_row(line))
            self._lines.append(line)
            return line

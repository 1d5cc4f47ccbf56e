"""Infor M3's MI REST API and the ION API gateway's OAuth2 sign-in, over the sandbox's M3 ledger.

Serves what m3-recon reads from M3, in the wire format of /work/shared/reference/m3-mi-api.md:

* ``POST /{TENANT}/as/token.oauth2``: the password grant with the service-account keys (saak/sask)
  and the refresh grant; the client may authenticate in the form or with HTTP Basic. Access tokens
  live 7,200 s and refresh tokens 8 h of sandbox-clock time.
* ``/{TENANT}/M3/m3api-rest/...`` with a bearer token (ION API) and ``/m3api-rest/...`` with HTTP
  Basic (on-premise): v2 ``GET v2/execute/{PROGRAM}/{TRANSACTION}``, v2 bulk ``POST v2/execute``
  and v1 ``GET execute/{PROGRAM}/{TRANSACTION}`` (with ``metadata=true`` field metadata).
* ARS200MI ``LstInvoices``, ``LstInvByDivi``, ``GetInvoice`` and ``GetInvTotInfo`` (customer ledger).
* CRS610MI ``LstByNumber``: the customer master in customer-number order from the start key ``CUNO``.
* MRS001MI ``LstTransactions`` (the transactions of a program: MI metadata, read-only).
* GLS840MI ``AddBatchHead``, ``AddBatchLine`` (a ``PARM`` string of at most 900 characters, cut by
  the interface's GLS850 position template), ``AddBatchLineFld`` (the same line as named fields),
  ``CtrlBatch`` and ``UpdBatch`` (GL interface batches → GL vouchers).
* GLS200MI ``GetVoucherHead``, ``LstVoucherLines`` (by year and voucher number), ``LstVouchersByDt``
  (every GL transaction with an accounting date from ``FRDT`` to ``TODT``) and ``SearchGenLedger``. Its search query is a conjunction of ``FIELD:value`` terms over ``KEY1`` (the
  GLS840 batch a transaction came from), ``YEA4``, ``VSER``, ``VONO``, ``JRNO``, ``ACDT``, ``AIT1`` and
  ``CUCD``; that the search index knows the batch key is this sandbox's reading (UNCONFIRMED).
* ARS040MI ``AddBatchHead`` (PBID, BOPE), ``AddBatchLine`` (CINO, INYR, CUNO, PYAM; CKNO, LPDT, AIT1) and
  ``ControlBatch``, which here controls and books the whole payment batch as one payment voucher, so
  ARS200MI shows the drop and the GL the debit (line AIT1, else the payment method's account, else the
  default account) against receivables.

With the quirk ``m3_no_search_gen_ledger`` this M3 does not serve ``SearchGenLedger`` (``XTR0001``, not
authorised). ``M3App.executed`` records every transaction run, as (program, transaction), so tests can
prove a caller only read.

M3 conventions kept: output values are strings (alphanumeric ones right-padded to the field length
unless ``righttrim=true``, dates ``yyyyMMdd`` with ``0`` for none), control parameters are lower
case (query or matrix ``;maxrecs=``), input fields upper case; a list transaction starts at its key
fields (restart keys) and returns at most ``maxrecs`` rows (0 = all, capped at 10,000), and a list
with no rows answers ``XRE0103``. A failed transaction is an HTTP 200 per-result error in a bulk
call and an HTTP 400 top-level error on a single GET; a bulk call that cannot run at all (unknown
program, unreadable body) is terminated with HTTP 400 ``terminationReason``.

This sandbox runs as a service user with no default company or division, so a call without
``CONO`` is "not authorized for company 0" and one without a division fails with ``WDI0102``.
Message IDs not listed in the reference follow M3's pattern (``W`` + field group + ``02`` "must be
entered" / ``03`` "does not exist"); calls to unknown programs or transactions, and interface checks
without a known message ID (an unbalanced voucher, a batch already updated), carry no code. A
duplicate batch, batch line or payment batch is ``XRE0104``.

Quirk ``m3_keys_as_filters`` (``M3App(quirks=...)``): the key inputs of the ARS200MI list transactions
filter instead of positioning. ``LstInvByDivi`` with ``PYNO`` lists that payer's lines only and with
``IVDT`` those of that invoice date only; ``LstInvoices`` with ``IVDT`` lists that date only. Without
the quirk they are start positions: ``LstInvByDivi`` starts at (division, PYNO, IVDT) in that key order
and ``LstInvoices`` at IVDT. ``CRS610MI/LstByNumber``'s ``CUNO`` is a start position either way (as in
Infor's own paging sample).

Tests make the gateway lose M3's answer with ``M3App.lose_response``: M3 has run the transaction,
but the caller gets a 502 (after an optional stall that outlasts its timeout), as when a connection
drops between M3 and the client.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import itertools
import json
import os
import secrets
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache
from http import HTTPStatus
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qsl

from m3_recon.money import major
from m3_recon.sandbox.m3_ledger import (CONO, DIVI, PAYMENT_TERMS,
                                        RECO_PAID, TRCD_INVOICE, GLLine, InvoiceTotals, LedgerError, LedgerLine,
                                        M3Ledger, PaymentLine, parse_amount)
from m3_recon.sandbox.server import Request, Response, SandboxClock, VendorApp

SANDBOX_M3_TENANT = "M3RECON_TST"
SANDBOX_M3_CLIENT_ID = "M3RECON_TST~q7Vn2xKcR8sLw4TzYp0aHd6JfUe3Mb9G"
SANDBOX_M3_CLIENT_SECRET = "Zr5tXw1vQn8kLp3sYc6mBd0fHj4gTa7eWu2iKo9xNl"
SANDBOX_M3_USERNAME = "M3RECON_TST#Fq2Lw8Zr4Kc1Vb7Nm5Xs9Ht3Jd6Gp0Ay"  # saak, also the on-premise user
SANDBOX_M3_PASSWORD = "Wn6Rt1Yq8Ue3Io5Pa0Sd7Fg2Hj9Kl4Zx"  # sask, also the on-premise password

ACCESS_TOKEN_SECONDS = 7_200
REFRESH_TOKEN_SECONDS = 8 * 3_600
DEFAULT_MAXRECS = 100
MAX_RECORDS = 10_000
NOK = "ServerReturnedNOK"
V1_MESSAGE_WIDTH = 130


@dataclass(frozen=True)
class MIField:
    type: str  # A alphanumeric, N numeric, D date
    length: int
    description: str
    decimals: int = 0


FIELDS: dict[str, MIField] = {
    "CONO": MIField("N", 3, "Company"), "DIVI": MIField("A", 3, "Division"),
    "FDIV": MIField("A", 3, "From division"), "TDIV": MIField("A", 3, "To division"),
    "YEA4": MIField("N", 4, "Year"), "JRNO": MIField("N", 7, "Journal number"),
    "JSNO": MIField("N", 7, "Journal number sequence"), "VSER": MIField("A", 3, "Voucher number series"),
    "VONO": MIField("N", 8, "Voucher number"), "TRCD": MIField("N", 2, "Transaction code"),
    "PYNO": MIField("A", 10, "Payer"), "CUNO": MIField("A", 10, "Customer number"),
    "CINO": MIField("A", 15, "Invoice number"), "INYR": MIField("N", 4, "Invoice year"),
    "AAC0": MIField("N", 1, "Only open invoices"), "RECO": MIField("N", 1, "Reconciliation code"),
    "REDE": MIField("D", 10, "Reconciliation date"), "IVDT": MIField("D", 10, "Invoice date"),
    "DUDT": MIField("D", 10, "Due date"), "ACDT": MIField("D", 10, "Accounting date"),
    "DTP5": MIField("D", 10, "Payment date"), "RGDT": MIField("D", 10, "Entry date"),
    "RGTM": MIField("N", 6, "Entry time"), "TDSC": MIField("A", 10, "Transaction description"),
    "TEPY": MIField("A", 3, "Payment terms"), "CUCD": MIField("A", 3, "Currency"),
    "LOCD": MIField("A", 3, "Local currency"), "ARAT": MIField("N", 13, "Exchange rate", 6),
    "CUAM": MIField("N", 17, "Foreign currency amount", 2), "ACAM": MIField("N", 17, "Recorded amount", 2),
    "PCUA": MIField("N", 17, "Paid amount - foreign currency", 2),
    "PAMT": MIField("N", 17, "Paid amount - local currency", 2),
    "OCUA": MIField("N", 17, "Outstanding amount - foreign currency", 2),
    "OAMT": MIField("N", 17, "Outstanding amount - local currency", 2),
    "KEY1": MIField("A", 15, "Key value"), "INTN": MIField("A", 15, "Interface"),
    "DESC": MIField("A", 40, "Description"), "USID": MIField("A", 10, "User"),
    "LINE": MIField("N", 7, "Line number"), "PARM": MIField("A", 900, "Parameter value"),
    "INRI": MIField("A", 2, "Record type"), "GRNR": MIField("N", 8, "Voucher group"),
    **{f"AIT{i}": MIField("A", 10, f"Accounting dimension {i}") for i in range(1, 8)},
    "VTXT": MIField("A", 40, "Voucher text"), "DBCR": MIField("A", 1, "Debit/credit code"),
    "DSUM": MIField("N", 17, "Debit amount", 2), "CSUM": MIField("N", 17, "Credit amount", 2),
    "SQRY": MIField("A", 1024, "Search query"),
    "PBID": MIField("N", 10, "Payment batch"), "BOPE": MIField("A", 3, "Batch payment type"),
    "TRNO": MIField("N", 7, "Transaction number"), "PYAM": MIField("N", 17, "Payment amount", 2),
    "CUNM": MIField("A", 36, "Customer name"), "CUTP": MIField("N", 1, "Customer type"),
    "STAT": MIField("A", 2, "Status"), "CSCD": MIField("A", 3, "Country"), "LMTS": MIField("N", 18, "Timestamp"),
    "EMAL": MIField("A", 80, "E-mail address"),
    "CKNO": MIField("A", 40, "Check number"),  # length UNCONFIRMED; carries a processor's payment id
    "LPDT": MIField("D", 10, "Payment date"),
    "FRDT": MIField("D", 10, "From date"), "TODT": MIField("D", 10, "To date"),
    "MINM": MIField("A", 10, "Program"), "TRNM": MIField("A", 15, "Transaction"),
    "TRDS": MIField("A", 60, "Description"),
}

# M3 message IDs for "must be entered" on the mandatory fields of the served transactions.
MUST_BE_ENTERED = {"CUNO": "WCU0202", "PYNO": "WPY0202", "CINO": "WCI0202", "INYR": "WIN0202",
                   "YEA4": "WYE0202", "JRNO": "WJR0202", "JSNO": "WJS0202", "KEY1": "WKE0202",
                   "INTN": "WIN0202", "DESC": "WDE0202", "LINE": "WLI0202", "PARM": "WPA0202",
                   "VONO": "WVO0202", "SQRY": "WSQ0202", "PBID": "WPB0202", "BOPE": "WBO0202",
                   "TRNO": "WTR0202", "PYAM": "WPY0202", "FRDT": "WFR0202", "TODT": "WTO0202",
                   "MINM": "WMI0202"}

INVOICE_OUT = ("CONO", "DIVI", "YEA4", "JRNO", "JSNO", "TRCD", "PYNO", "CUNO", "CINO", "INYR", "VSER", "VONO",
               "TDSC", "CUCD", "ARAT", "CUAM", "IVDT", "DUDT", "ACDT", "TEPY", "RECO", "REDE", "DTP5")


@dataclass(frozen=True)
class MITransaction:
    inputs: tuple[str, ...]
    mandatory: tuple[str, ...]
    outputs: tuple[str, ...]
    is_list: bool

    @functools.cached_property
    def input_fields(self) -> tuple[tuple[str, MIField, bool], ...]:
        """(name, field, mandatory) per input, looked up once: a day's posting reads 10^6 transactions' inputs."""
        return tuple((name, FIELDS[name], name in self.mandatory) for name in self.inputs)


ARS200MI = {
    "LstInvoices": MITransaction(
        ("CONO", "DIVI", "CUNO", "AAC0", "IVDT"), ("CUNO",),
        ("YEA4", "JRNO", "JSNO", "CINO", "TRCD", "INYR", "RECO", "REDE", "PYNO", "IVDT", "DUDT", "TDSC"), True),
    "LstInvByDivi": MITransaction(
        ("CONO", "FDIV", "TDIV", "PYNO", "CUNO", "AAC0", "IVDT"), (),
        ("DIVI", "PYNO", "CUNO", "CINO", "INYR", "TRCD", "YEA4", "JRNO", "JSNO", "VSER", "VONO", "CUAM", "RECO",
         "REDE", "IVDT", "DUDT", "TDSC"), True),
    "GetInvoice": MITransaction(("CONO", "DIVI", "YEA4", "JRNO", "JSNO"), ("YEA4", "JRNO", "JSNO"),
                                INVOICE_OUT, False),
    "GetInvTotInfo": MITransaction(
        ("CONO", "DIVI", "PYNO", "CINO", "INYR", "CUNO"), ("PYNO", "CINO", "INYR", "CUNO"),
        INVOICE_OUT + ("ACAM", "PCUA", "PAMT", "OCUA", "OAMT", "LOCD", "RGDT", "RGTM"), False),
}
GL_LINE_FIELDS = ("INRI", "GRNR", "AIT1", "AIT2", "AIT3", "AIT4", "AIT5", "AIT6", "AIT7", "CUCD", "CUAM", "ACAM",
                  "ACDT", "VTXT")
GL_LINE_OUT = ("CONO", "DIVI", "YEA4", "JRNO", "JSNO", "VSER", "VONO", "ACDT", "AIT1", "AIT2", "AIT3", "AIT4",
               "AIT5", "AIT6", "AIT7", "CUCD", "CUAM", "ARAT", "ACAM", "DBCR", "VTXT", "RGDT", "RGTM")
GLS840MI = {
    "AddBatchHead": MITransaction(("CONO", "DIVI", "KEY1", "INTN", "DESC", "USID"), ("KEY1", "INTN", "DESC"),
                                  (), False),
    "AddBatchLine": MITransaction(("CONO", "DIVI", "KEY1", "LINE", "PARM"), ("KEY1", "LINE", "PARM"), (), False),
    "AddBatchLineFld": MITransaction(("CONO", "DIVI", "KEY1", "LINE") + GL_LINE_FIELDS, ("KEY1", "LINE"), (), False),
    "CtrlBatch": MITransaction(("CONO", "DIVI", "KEY1"), ("KEY1",), (), False),
    "UpdBatch": MITransaction(("CONO", "DIVI", "KEY1"), ("KEY1",), (), False),
}
GLS200MI = {
    "GetVoucherHead": MITransaction(("CONO", "DIVI", "YEA4", "VONO", "VSER"), ("YEA4", "VONO"),
                                    ("CONO", "DIVI", "YEA4", "VSER", "VONO", "JRNO", "ACDT", "DSUM", "CSUM",
                                     "CUCD"), False),
    "LstVoucherLines": MITransaction(("CONO", "DIVI", "YEA4", "VONO", "VSER"), ("YEA4", "VONO"), GL_LINE_OUT, True),
    "LstVouchersByDt": MITransaction(("CONO", "DIVI", "FRDT", "TODT"), ("FRDT", "TODT"), GL_LINE_OUT, True),
    "SearchGenLedger": MITransaction(("SQRY",), ("SQRY",), GL_LINE_OUT, True),
}
ARS040MI = {
    "AddBatchHead": MITransaction(("CONO", "DIVI", "PBID", "BOPE", "ACDT"), ("PBID", "BOPE"), ("PBID",), False),
    "AddBatchLine": MITransaction(("CONO", "DIVI", "PBID", "TRNO", "CINO", "INYR", "CUNO", "PYAM", "PYNO", "CUCD",
                                   "CKNO", "LPDT", "AIT1"),
                                  ("PBID", "TRNO", "CINO", "INYR", "CUNO", "PYAM"), (), False),
    "ControlBatch": MITransaction(("CONO", "DIVI", "PBID"), ("PBID",), (), False),
}
CRS610MI = {
    "LstByNumber": MITransaction(("CONO", "CUNO", "LMTS"), (),
                                 ("CONO", "CUNO", "CUNM", "CUTP", "STAT", "CSCD", "CUCD", "TEPY", "PYNO", "EMAL",
                                  "LMTS"),
                                 True),
}
MRS001MI = {  # MI metadata; output field names UNCONFIRMED
    "LstTransactions": MITransaction(("MINM",), ("MINM",), ("MINM", "TRNM", "TRDS"), True),
}
PROGRAMS = {"ARS200MI": ARS200MI, "GLS840MI": GLS840MI, "GLS200MI": GLS200MI, "ARS040MI": ARS040MI,
            "CRS610MI": CRS610MI, "MRS001MI": MRS001MI}
CUSTOMER_STATUS_DEFINITE = "20"
KEYS_AS_FILTERS = "m3_keys_as_filters"
SEARCH_FIELDS = ("KEY1", "YEA4", "VSER", "VONO", "JRNO", "ACDT", "AIT1", "CUCD")


class MIError(Exception):
    """An MI transaction answered NOK."""

    def __init__(self, message: str, code: str = "", field: str = "", cfg: str = ""):
        super().__init__(message)
        self.message, self.code, self.field, self.cfg = message, code, field, cfg

    def v2(self, transaction: str) -> dict:
        error = {"transaction": transaction, "errorMessage": self.message, "errorType": NOK}
        if self.code:
            error.update(errorCode=self.code, errorCfg=self.cfg)
        if self.field:
            error["errorField"] = self.field
        return error

    def v1(self) -> dict:
        error = {"@type": NOK, "Message": self.message.ljust(V1_MESSAGE_WIDTH)}
        if self.code:
            error.update({"@code": self.code, "@cfg": self.cfg})
        if self.field:
            error["@field"] = self.field.ljust(10)
        return error


# The ARS200MI output fields of a customer-ledger line (with its invoice's totals and the ledger's local currency),
# each computed only when a call's output asks for it: a list answer renders a few of them per line (returncols).
LEDGER_OUTPUT: dict[str, Callable[[LedgerLine, InvoiceTotals, str], object]] = {
    "CONO": lambda ln, t, local: ln.cono, "DIVI": lambda ln, t, local: ln.divi,
    "YEA4": lambda ln, t, local: ln.year, "JRNO": lambda ln, t, local: ln.journal,
    "JSNO": lambda ln, t, local: ln.journal_seq, "TRCD": lambda ln, t, local: ln.trcd,
    "PYNO": lambda ln, t, local: ln.payer, "CUNO": lambda ln, t, local: ln.customer,
    "CINO": lambda ln, t, local: ln.invoice, "INYR": lambda ln, t, local: ln.invoice_year,
    "VSER": lambda ln, t, local: ln.voucher_series, "VONO": lambda ln, t, local: ln.voucher,
    "TDSC": lambda ln, t, local: "Invoice" if ln.trcd == TRCD_INVOICE else "Payment",
    "CUCD": lambda ln, t, local: ln.currency, "ARAT": lambda ln, t, local: ln.rate,
    "CUAM": lambda ln, t, local: amount(ln.amount_minor, ln.currency), "IVDT": lambda ln, t, local: ln.invoice_date,
    "DUDT": lambda ln, t, local: ln.due_date, "ACDT": lambda ln, t, local: ln.accounting_date,
    "TEPY": lambda ln, t, local: PAYMENT_TERMS, "RECO": lambda ln, t, local: t.reco,
    "REDE": lambda ln, t, local: t.reconciled_on, "DTP5": lambda ln, t, local: t.last_payment_date,
    "ACAM": lambda ln, t, local: amount(ln.local_minor, local),
    "PCUA": lambda ln, t, local: amount(t.paid_minor, ln.currency),
    "PAMT": lambda ln, t, local: amount(t.paid_local_minor, local),
    "OCUA": lambda ln, t, local: amount(t.outstanding_minor, ln.currency),
    "OAMT": lambda ln, t, local: amount(t.outstanding_local_minor, local),
    "LOCD": lambda ln, t, local: local, "RGDT": lambda ln, t, local: ln.invoice_date, "RGTM": lambda ln, t, local: 0,
}


class LedgerRow:
    """A customer-ledger line as ARS200MI output: ``execute`` renders the fields it answers, each computed then."""

    __slots__ = ("line", "totals", "local")

    def __init__(self, line: LedgerLine, totals: InvoiceTotals, local: str):
        self.line, self.totals, self.local = line, totals, local

    def get(self, name: str, default=None):
        value = LEDGER_OUTPUT.get(name)
        return default if value is None else value(self.line, self.totals, self.local)

    @staticmethod
    def render(rows: list[LedgerRow], formatters: tuple) -> list[dict[str, str]]:
        """``rows`` as ``execute`` renders any row (``formatters``: field and formatter), without a ``get`` per field:
        GetInvTotInfo answers all 31 fields of each of 10^5 invoices."""
        fields = _ledger_fields(formatters)
        return [{name: text(value(row.line, row.totals, row.local)) for name, text, value in fields} for row in rows]


@lru_cache(maxsize=256)
def _ledger_fields(formatters: tuple) -> tuple:
    """(field, formatter, value) per output field of a call shape over ledger rows; a field no row has is None."""
    return tuple((name, text, LEDGER_OUTPUT.get(name, lambda ln, t, local: None)) for name, text in formatters)


class RequestRejected(Exception):
    """The call as a whole cannot run (bad control parameter, unreadable bulk body, unknown program)."""


def record_not_found() -> MIError:
    return MIError("Record does not exist", "XRE0103")


@dataclass(frozen=True)
class Control:
    """Control parameters of one call (query, matrix or bulk body)."""

    cono: str = ""
    divi: str | None = None
    maxrecs: int = DEFAULT_MAXRECS
    returncols: tuple[str, ...] = ()
    excludempty: bool = False
    righttrim: bool = False
    metadata: bool = False
    extendedresult: bool = False


def _flag(value: str, name: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise RequestRejected(f"Invalid value '{value}' for parameter {name}, expected true or false")
    return value.lower() == "true"


def parse_control(params: dict[str, str]) -> Control:
    values: dict = {}
    for name, value in params.items():
        if name == "maxrecs":
            try:
                values["maxrecs"] = int(value)
            except ValueError:
                raise RequestRejected(f"Invalid value '{value}' for parameter maxrecs") from None
            if values["maxrecs"] < 0:
                raise RequestRejected(f"Invalid value '{value}' for parameter maxrecs")
        elif name == "returncols":
            values["returncols"] = tuple(c.strip().upper() for c in value.split(",") if c.strip())
        elif name in ("excludempty", "righttrim", "metadata", "extendedresult"):
            values[name] = _flag(value, name)
        elif name == "cono":
            values["cono"] = value.strip()
        elif name == "divi":
            values["divi"] = value.strip()
    return Control(**values)


@lru_cache(maxsize=4096)
def _date_text(value) -> str:
    # formatted by hand (strftime was a tenth of rendering a large answer), once per date: an answer has few dates
    return "%04d%02d%02d" % (value.year, value.month, value.day) if value else "0"


def _number_text(value) -> str:
    """Numbers plain: no exponent, no trailing zeros in a fraction, an integral value without a point."""
    if value.__class__ is int:
        return str(value)
    if value.__class__ is Decimal and value.is_finite():
        text = str(value)  # amounts are made by scaleb, so this is plain: "7591.70", "100.00"
        if "E" not in text and "e" not in text:
            text = text.rstrip("0").rstrip(".") if "." in text else text
            return "0" if text == "-0" else text
    if isinstance(value, Decimal) and value != value.to_integral_value():
        return format(value.normalize(), "f")
    return str(int(value))


def _text(value) -> str:
    return "" if value is None else str(value)


@lru_cache(maxsize=None)
def _formatter(name: str, righttrim: bool) -> Callable[[object], str]:
    """How output field ``name`` is sent: alphanumerics padded (unless right-trimmed), numbers plain, dates yyyyMMdd."""
    field = FIELDS[name]
    if field.type == "D":
        return _date_text
    if field.type == "N":
        return _number_text
    return _text if righttrim else lambda value: _text(value).ljust(field.length)


def _output_names(outputs: tuple[str, ...], returncols: tuple[str, ...]) -> tuple[str, ...]:
    """The fields a call answers: ``returncols`` (in its order) that the transaction has, else all of them."""
    return tuple(n for n in returncols if n in outputs) if returncols else outputs


@lru_cache(maxsize=256)
def _formatters(outputs: tuple[str, ...], returncols: tuple[str, ...], righttrim: bool) -> tuple:
    """(field, formatter) per output field of a call: looked up once per call shape, not per transaction."""
    return tuple((n, _formatter(n, righttrim)) for n in _output_names(outputs, returncols))


def format_value(name: str, value, righttrim: bool) -> str:
    """One output value as M3 sends it: a string, alphanumerics padded, numbers plain, dates yyyyMMdd."""
    return _formatter(name, righttrim)(value)


def amount(minor: int, currency: str) -> Decimal:
    """Minor units of ``currency`` as the decimal M3 stores (sent as ``1234.5``, ``100``: no trailing zeros)."""
    return major(minor, currency)


@dataclass
class LostResponse:
    """The answer to a call that runs ``program``/``transaction`` is lost after M3 has run it.

    ``skip`` matching calls are answered normally first; a bulk call matches when any of its
    transactions does. The caller gets a gateway 502 after ``stall_seconds``.
    """

    program: str
    transaction: str
    skip: int = 0
    stall_seconds: float = 0.0


class M3App(VendorApp):
    name = "m3"

    def __init__(self, ledger: M3Ledger, clock: SandboxClock, client_id: str, client_secret: str,
                 username: str, password: str, tenant: str, quirks: frozenset[str] = frozenset()):
        self.ledger, self.clock, self.quirks = ledger, clock, frozenset(quirks)
        self.keys_as_filters = KEYS_AS_FILTERS in quirks
        self.executed: list[tuple[str, str]] = []  # every transaction run, in order
        self.client_id, self.client_secret = client_id, client_secret
        self.username, self.password, self.tenant = username, password, tenant
        self._lock = threading.Lock()
        self._access_tokens: dict[str, int] = {}  # token -> expiry (sandbox clock)
        self._refresh_tokens: dict[str, int] = {}
        self._lost: list[LostResponse] = []
        self._handlers = {
            ("ARS200MI", "LstInvoices"): self._list_invoices,
            ("ARS200MI", "LstInvByDivi"): self._list_invoices_by_division,
            ("ARS200MI", "GetInvoice"): self._get_invoice,
            ("ARS200MI", "GetInvTotInfo"): self._get_invoice_totals,
            ("GLS840MI", "AddBatchHead"): self._add_gl_batch,
            ("GLS840MI", "AddBatchLine"): self._add_gl_line,
            ("GLS840MI", "AddBatchLineFld"): self._add_gl_line_fields,
            ("GLS840MI", "CtrlBatch"): self._control_gl_batch,
            ("GLS840MI", "UpdBatch"): self._update_gl_batch,
            ("GLS200MI", "GetVoucherHead"): self._voucher_head,
            ("GLS200MI", "LstVoucherLines"): self._voucher_lines,
            ("GLS200MI", "SearchGenLedger"): self._search_general_ledger,
            ("GLS200MI", "LstVouchersByDt"): self._vouchers_by_date,
            ("MRS001MI", "LstTransactions"): self._list_transactions,
            ("ARS040MI", "AddBatchHead"): self._add_payment_batch,
            ("ARS040MI", "AddBatchLine"): self._add_payment_line,
            ("ARS040MI", "ControlBatch"): self._control_payment_batch,
            ("CRS610MI", "LstByNumber"): self._list_customers,
        }

    # -- faults tests inject ----------------------------------------------------------------------
    def lose_response(self, program: str, transaction: str, *, skip: int = 0, stall_seconds: float = 0.0) -> None:
        """Lose the answer of the (``skip`` + 1)-th call that runs ``program``/``transaction``."""
        with self._lock:
            self._lost.append(LostResponse(program, transaction, skip, stall_seconds))

    @property
    def lost_responses_pending(self) -> int:
        with self._lock:
            return len(self._lost)

    def _answer(self, program: str, transactions: list[str], response: Response) -> Response:
        """``response``, unless a planned loss matches this call: then the gateway's 502."""
        with self._lock:
            rule = next((r for r in self._lost if r.program == program and r.transaction in transactions), None)
            if rule is not None and rule.skip > 0:
                rule.skip -= 1
                rule = None
            elif rule is not None:
                self._lost.remove(rule)
        if rule is None:
            return response
        time.sleep(rule.stall_seconds)
        return self.fault_response(502, {})

    # -- framework ---------------------------------------------------------------------------------
    def fault_response(self, status: int, headers: dict[str, str]) -> Response:
        return Response.json(status, {"status": status, "error": HTTPStatus(status).phrase}, headers)

    def handle(self, request: Request) -> Response:
        path = request.path
        if path == f"/{self.tenant}/as/token.oauth2":
            return self._token(request)
        ion_prefix = f"/{self.tenant}/M3/m3api-rest/"
        if path.startswith(ion_prefix):
            denied = self._check_bearer(request)
            rest = path[len(ion_prefix):]
        elif path.startswith("/m3api-rest/"):
            denied = self._check_basic(request)
            rest = path[len("/m3api-rest/"):]
        else:
            return Response.json(404, {"status": 404, "error": "Not Found", "path": path})
        if denied is not None:
            return denied
        return self._route(request, rest)

    # -- ION API sign-in ----------------------------------------------------------------------------
    def _token(self, request: Request) -> Response:
        if request.method != "POST":
            return Response.json(405, {"error": "invalid_request", "error_description": "POST required"})
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = _basic_credentials(request)
        if basic is not None:
            client_id, client_secret = basic
        if not _same((client_id, client_secret), (self.client_id, self.client_secret)):
            return Response.json(401, {"error": "invalid_client",
                                       "error_description": "Invalid client or client credentials."})
        now = self.clock.now()
        grant = form.get("grant_type", "")
        if grant == "password":
            if not _same((form.get("username", ""), form.get("password", "")), (self.username, self.password)):
                return Response.json(400, {"error": "invalid_grant",
                                           "error_description": "Invalid resource owner credentials."})
        elif grant == "refresh_token":
            with self._lock:
                expiry = self._refresh_tokens.pop(form.get("refresh_token", ""), None)
            if expiry is None or expiry <= now:
                return Response.json(400, {"error": "invalid_grant",
                                           "error_description": "Refresh token is invalid or expired."})
        else:
            return Response.json(400, {"error": "unsupported_grant_type",
                                       "error_description": f"Grant type '{grant}' is not supported."})
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._lock:
            for tokens in (self._access_tokens, self._refresh_tokens):  # forget expired ones
                for token in [t for t, expiry in tokens.items() if expiry <= now]:
                    del tokens[token]
            self._access_tokens[access] = now + ACCESS_TOKEN_SECONDS
            self._refresh_tokens[refresh] = now + REFRESH_TOKEN_SECONDS
        return Response.json(200, {"access_token": access, "token_type": "Bearer",
                                   "expires_in": ACCESS_TOKEN_SECONDS, "refresh_token": refresh},
                             {"Cache-Control": "no-store"})

    def _check_bearer(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            expiry = self._access_tokens.get(token) if scheme.lower() == "bearer" else None
        if expiry is not None and expiry > self.clock.now():
            return None
        description = "The access token is missing, invalid or expired"
        return Response.json(401, {"error": "invalid_token", "error_description": description},
                             {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'})

    def _check_basic(self, request: Request) -> Response | None:
        credentials = _basic_credentials(request)
        if credentials is not None and _same(credentials, (self.username, self.password)):
            return None
        return Response(401, b"Unauthorized: user name or password is incorrect",
                        {"Content-Type": "text/plain", "WWW-Authenticate": 'Basic realm="M3"'})

    # -- routing --------------------------------------------------------------------------------------
    def _route(self, request: Request, rest: str) -> Response:
        query = [(k, v) for k, v in request.query if k != "_rid"]
        control_params = {k: v for k, v in query if k.islower()}
        record = {k: v for k, v in query if not k.islower()}
        segments = rest.split("/")
        if segments[0] == "v2" and segments[1:2] == ["execute"]:
            if len(segments) == 2:
                if request.method != "POST":
                    return Response.json(405, {"status": 405, "error": "Method Not Allowed"})
                return self._bulk(request, control_params)
            if len(segments) == 4 and request.method == "GET":
                program, transaction, matrix = _split_matrix(segments[2], segments[3])
                return self._single_v2(program, transaction, record, {**control_params, **matrix})
        if segments[0] == "execute" and len(segments) == 3 and request.method == "GET":
            program, transaction, matrix = _split_matrix(segments[1], segments[2])
            return self._single_v1(program, transaction, record, {**control_params, **matrix})
        return Response.json(404, {"status": 404, "error": "Not Found", "path": request.path})

    def _single_v2(self, program: str, transaction: str, record: dict, params: dict) -> Response:
        try:
            control = parse_control(params)
            records = self.execute(program, transaction, record, control)
        except RequestRejected as exc:
            return Response.json(400, MIError(str(exc)).v2(transaction))
        except MIError as error:
            return self._answer(program, [transaction], Response.json(400, error.v2(transaction)))
        return self._answer(program, [transaction], Response.json(200, {
            "results": [{"transaction": transaction, "records": records}], "wasTerminated": "false",
            "nrOfSuccessfullTransactions": 1, "nrOfFailedTransactions": 0}))

    def _single_v1(self, program: str, transaction: str, record: dict, params: dict) -> Response:
        try:
            control = parse_control(params)
            records = self.execute(program, transaction, record, control)
        except RequestRejected as exc:
            return Response.json(400, MIError(str(exc)).v1())
        except MIError as error:
            return self._answer(program, [transaction], Response.json(200, error.v1()))
        payload: dict = {"Program": program, "Transaction": transaction}
        if control.metadata:
            names = self._output_names(PROGRAMS[program][transaction], control)
            payload["Metadata"] = {"Field": [
                {"@name": n, "@type": FIELDS[n].type, "@length": FIELDS[n].length,
                 "@description": FIELDS[n].description} for n in names]}
        payload["MIRecord"] = [{"RowIndex": i, "NameValue": [{"Name": k, "Value": v} for k, v in row.items()]}
                               for i, row in enumerate(records)]
        return self._answer(program, [transaction], Response.json(200, payload))

    def _bulk(self, request: Request, params: dict) -> Response:
        try:
            body = request.json()
            if not isinstance(body, dict) or not isinstance(body.get("transactions"), list):
                raise RequestRejected("The request body must be a JSON object with a 'transactions' list")
            program = str(body.get("program", "")).upper()
            if program not in PROGRAMS:
                raise RequestRejected(f"Program {program or '(blank)'} does not exist")
            body_params = {"cono": body.get("cono"), "divi": body.get("divi"),
                           "maxrecs": body.get("maxReturnedRecords"), "excludempty": body.get("excludeEmptyValues"),
                           "righttrim": body.get("rightTrim")}
            merged = {**params, **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                   for k, v in body_params.items() if v is not None}}
            base = parse_control(merged)
        except (RequestRejected, ValueError) as exc:
            reason = str(exc) if isinstance(exc, RequestRejected) else "The request body is not valid JSON"
            return Response.json(400, {"results": [], "wasTerminated": "true", "terminationReason": reason,
                                       "terminationErrorType": NOK, "nrOfSuccessfullTransactions": 0,
                                       "nrOfFailedTransactions": 0})
        results, ok, failed = [], 0, 0
        controls = {(): base}  # per selectedColumns: dataclasses.replace per transaction was a tenth of a bulk call
        for item in body["transactions"]:
            item = item if isinstance(item, dict) else {}
            transaction = str(item.get("transaction", ""))
            fields = item.get("record") if isinstance(item.get("record"), dict) else {}
            record = {str(k).upper(): str(v) for k, v in fields.items()}
            columns = tuple(str(c).upper() for c in item.get("selectedColumns") or ())
            if columns not in controls:
                controls[columns] = replace(base, returncols=columns)
            control = controls[columns]
            try:
                result = {"transaction": transaction, "records": self.execute(program, transaction, record, control)}
                ok += 1
            except MIError as error:
                result = error.v2(transaction)
                failed += 1
            if control.extendedresult:
                result["parameters"] = record
            results.append(result)
        return self._answer(program, [r["transaction"] for r in results], Response.json(200, {
            "results": results, "wasTerminated": "false", "nrOfSuccessfullTransactions": ok,
            "nrOfFailedTransactions": failed}))

    # -- the MI layer ---------------------------------------------------------------------------------
    def execute(self, program: str, transaction: str, record: dict[str, str], control: Control) -> list[dict]:
        """Run one transaction; returns rendered records or raises ``MIError`` / ``RequestRejected``."""
        if program not in PROGRAMS:
            raise RequestRejected(f"Program {program} does not exist")
        spec = PROGRAMS[program].get(transaction)
        if spec is None:
            raise MIError(f"Transaction {transaction} does not exist in {program}")
        with self._lock:
            self.executed.append((program, transaction))
        values = self._inputs(spec, record)
        self._company(values, control)
        try:
            rows = self._handlers[program, transaction](values)
        except LedgerError as error:
            raise MIError(str(error), error.code, error.field) from None
        if spec.is_list:
            limit = MAX_RECORDS if control.maxrecs == 0 else min(control.maxrecs, MAX_RECORDS)
            rows = list(itertools.islice(rows, limit))
            if not rows:
                raise record_not_found()
        formatters = _formatters(spec.outputs, control.returncols, control.righttrim)
        if rows and rows[0].__class__ is LedgerRow:
            rendered = LedgerRow.render(rows, formatters)
        else:
            rendered = [{n: text(row.get(n)) for n, text in formatters} for row in rows]
        if control.excludempty:
            return [{k: v for k, v in out.items() if v.strip()} for out in rendered]
        return rendered

    @staticmethod
    def _output_names(spec: MITransaction, control: Control) -> list[str]:
        return list(_output_names(spec.outputs, control.returncols))

    @staticmethod
    def _inputs(spec: MITransaction, record: dict[str, str]) -> dict:
        """Typed input values of the transaction's own fields (others are ignored, as M3 does)."""
        values: dict = {}
        for name, field, mandatory in spec.input_fields:
            raw = record.get(name, "")
            raw = raw.rstrip() if name == "PARM" else raw.strip()  # a PARM position may start with blanks
            if not raw:
                if mandatory:
                    raise MIError(f"{field.description} must be entered", MUST_BE_ENTERED[name], name)
                continue
            if field.type == "N" and field.decimals:
                digits = raw.lstrip("-").replace(".", "", 1)
                if not digits.isdigit() or len(digits) > field.length:
                    raise MIError(f"Numeric error in field {name}", "XNU0000", name)
                values[name] = raw
            elif field.type == "N":
                if not raw.lstrip("-").isdigit() or len(raw.lstrip("-")) > field.length:
                    raise MIError(f"Numeric error in field {name}", "XNU0000", name)
                values[name] = int(raw)
            elif field.type == "D":
                values[name] = _m3_date(raw, name)
            else:
                if len(raw) > field.length:
                    raise MIError(f"Input field {name} is longer than {field.length} characters", field=name)
                values[name] = raw
        return values

    def _company(self, values: dict, control: Control) -> None:
        """Check CONO and resolve the division(s) the call works on."""
        if "CONO" not in values:
            raw = control.cono or "0"
            if not raw.isdigit():
                raise MIError("Numeric error in field CONO", "XNU0000", "CONO")
            values["CONO"] = int(raw)
        if values["CONO"] != self.ledger.cono:
            raise MIError(f"Not authorized for company {values['CONO']}", "XAU0008", "CONO")
        values.setdefault("DIVI", control.divi or "")  # LstInvByDivi has no DIVI input: the call's division
        if not values["DIVI"] and "FDIV" not in values and "TDIV" not in values:
            raise MIError("Division must be entered", "WDI0102", "DIVI")
        for name in ("DIVI", "FDIV"):
            if values.get(name) and values[name] != self.ledger.divi:
                raise MIError(f"Division {values[name]} does not exist", "WDI0103", name)

    def _customer(self, number: str) -> None:
        if number not in self.ledger.customers:
            raise MIError(f"Customer number {number} does not exist", "WCU0203", "CUNO")

    # -- ARS200MI -------------------------------------------------------------------------------------
    def _lines(self, values: dict) -> tuple[list[LedgerLine], dict]:
        now = self.clock.now()
        totals = self.ledger.totals(now)
        return [ln for ln in self.ledger.lines(now) if self._listed(values, totals[ln.invoice_key])], totals

    def _list_invoices(self, values: dict) -> list[LedgerRow]:
        self._customer(values["CUNO"])
        now = self.clock.now()
        totals = self.ledger.totals(now)
        rows = [ln for ln in self.ledger.line_index(now).by_customer.get(values["CUNO"], [])
                if ln.divi == values["DIVI"] and self._listed(values, totals[ln.invoice_key])
                and self._from_date(ln, values)]
        rows.sort(key=lambda ln: (ln.invoice_date, ln.invoice, ln.invoice_year, ln.year, ln.journal, ln.journal_seq))
        return [self._line_row(ln, totals[ln.invoice_key]) for ln in rows]

    def _list_invoices_by_division(self, values: dict) -> Iterator[LedgerRow]:
        """Rows in division order from the key inputs on, rendered as ``execute`` takes them (up to maxrecs)."""
        if "CUNO" in values:
            self._customer(values["CUNO"])
        now = self.clock.now()
        totals, index = self.ledger.totals(now), self.ledger.line_index(now)
        if "FDIV" in values or "TDIV" in values:
            low, high = values.get("FDIV", ""), values.get("TDIV", "\uffff")
        else:
            low = high = values["DIVI"]
        start = (low, values.get("PYNO", ""), values.get("IVDT", date.min))
        first = 0 if self.keys_as_filters else bisect_left(index.division_starts, start)
        customer = values.get("CUNO")
        for ln in itertools.islice(index.by_division, first, None):
            if ln.divi > high:
                return
            line_totals = totals[ln.invoice_key]
            if (low <= ln.divi and (not self.keys_as_filters or self._payer_and_date(ln, values))
                    and self._listed(values, line_totals) and customer in (None, ln.customer)):
                yield self._line_row(ln, line_totals)

    @staticmethod
    def _listed(values: dict, totals: InvoiceTotals) -> bool:
        """AAC0 = 1: open items only (``totals``: the line's invoice's)."""
        return values.get("AAC0") != 1 or totals.reco != RECO_PAID

    def _from_date(self, line: LedgerLine, values: dict) -> bool:
        """LstInvoices' key input IVDT: a start position, or (quirk) a filter."""
        if "IVDT" not in values:
            return True
        return line.invoice_date == values["IVDT"] if self.keys_as_filters else line.invoice_date >= values["IVDT"]

    @staticmethod
    def _payer_and_date(line: LedgerLine, values: dict) -> bool:
        """LstInvByDivi's key inputs PYNO and IVDT read as filters (quirk). As start positions they need no check per
        line: the lines are listed from the first at or after (division, PYNO, IVDT) on, in that order."""
        return (values.get("PYNO", line.payer) == line.payer
                and values.get("IVDT", line.invoice_date) == line.invoice_date)

    def _get_invoice(self, values: dict) -> list[LedgerRow]:
        lines, totals = self._lines(values)
        key = (values["YEA4"], values["JRNO"], values["JSNO"])
        for ln in lines:
            if (ln.year, ln.journal, ln.journal_seq) == key:
                return [self._line_row(ln, totals[ln.invoice_key])]
        raise record_not_found()

    def _get_invoice_totals(self, values: dict) -> list[LedgerRow]:
        self._customer(values["CUNO"])
        totals = self.ledger.totals(self.clock.now()).get((values["PYNO"], values["CINO"], values["INYR"]))
        if totals is None or totals.line.customer != values["CUNO"] or totals.line.divi != values["DIVI"]:
            raise record_not_found()
        return [self._line_row(totals.line, totals)]

    def _line_row(self, line: LedgerLine, totals: InvoiceTotals) -> LedgerRow:
        return LedgerRow(line, totals, self.ledger.local_currency)

    # -- CRS610MI: the customer master --------------------------------------------------------------
    def _list_customers(self, values: dict) -> list[dict]:
        start = values.get("CUNO", "")
        return [{"CONO": self.ledger.cono, "CUNO": c.number, "CUNM": c.name, "CUTP": 0,
                 "STAT": CUSTOMER_STATUS_DEFINITE, "CSCD": "DE" if c.currency == "EUR" else "US", "CUCD": c.currency,
                 "TEPY": PAYMENT_TERMS, "PYNO": c.number, "EMAL": c.email, "LMTS": 0}
                for c in sorted(self.ledger.customers.values(), key=lambda c: c.number) if c.number >= start]

    # -- GLS840MI: GL interface batches ----------------------------------------------------------------
    def _add_gl_batch(self, values: dict) -> list[dict]:
        self.ledger.add_gl_batch(values["KEY1"], values["INTN"], values["DESC"], values.get("USID", ""),
                                 self.clock.now())
        return []

    def _add_gl_line(self, values: dict) -> list[dict]:
        self.ledger.add_gl_batch_line(values["KEY1"], values["LINE"], {"PARM": values["PARM"]})
        return []

    def _add_gl_line_fields(self, values: dict) -> list[dict]:
        content = {name: value.strftime("%Y%m%d") if isinstance(value, date) else str(value)
                   for name, value in values.items() if name in GL_LINE_FIELDS}
        self.ledger.add_gl_batch_line(values["KEY1"], values["LINE"], content)
        return []

    def _control_gl_batch(self, values: dict) -> list[dict]:
        self.ledger.control_gl_batch(values["KEY1"])
        return []

    def _update_gl_batch(self, values: dict) -> list[dict]:
        self.ledger.update_gl_batch(values["KEY1"], self.clock.now())
        return []

    # -- GLS200MI: GL vouchers --------------------------------------------------------------------------
    def _voucher(self, values: dict) -> list[GLLine]:
        lines = self.ledger.gl_voucher(values["YEA4"], values["VONO"], values.get("VSER"), self.clock.now())
        if not lines:
            raise record_not_found()
        return lines

    def _voucher_head(self, values: dict) -> list[dict]:
        lines = self._voucher(values)
        first, local = lines[0], self.ledger.local_currency
        return [{"CONO": first.cono, "DIVI": first.divi, "YEA4": first.year, "VSER": first.voucher_series,
                 "VONO": first.voucher, "JRNO": first.journal, "ACDT": first.accounting_date,
                 "DSUM": amount(sum(ln.local_minor for ln in lines if ln.local_minor > 0), local),
                 "CSUM": amount(-sum(ln.local_minor for ln in lines if ln.local_minor < 0), local), "CUCD": local}]

    def _voucher_lines(self, values: dict) -> list[dict]:
        return [self._gl_row(line, self.ledger.local_currency) for line in self._voucher(values)]

    def _search_general_ledger(self, values: dict) -> list[dict]:
        if "m3_no_search_gen_ledger" in self.quirks:
            raise MIError("Not authorized to transaction SearchGenLedger in GLS200MI", "XTR0001")
        terms: dict[str, str] = {}
        for term in values["SQRY"].split():
            name, colon, value = term.partition(":")
            if not colon or not value or name.upper() not in SEARCH_FIELDS:
                raise MIError(f"Search query {values['SQRY']} is not valid: use FIELD:value terms over "
                              f"{', '.join(SEARCH_FIELDS)}", field="SQRY")
            terms[name.upper()] = value
        now = self.clock.now()
        key = terms.pop("KEY1", None)
        lines = self.ledger.gl_lines(now) if key is None else self.ledger.gl_lines_of_batch(key, now)
        rows = [self._gl_row(line, self.ledger.local_currency) for line in lines]
        return [row for row in rows if all(format_value(n, row[n], True) == v for n, v in terms.items())]

    @staticmethod
    def _list_transactions(values: dict) -> list[dict]:
        """MRS001MI/LstTransactions: the transactions this M3 serves in a program (metadata only)."""
        program = values["MINM"].upper()
        if program not in PROGRAMS:
            raise MIError(f"Program {program} does not exist", field="MINM")
        return [{"MINM": program, "TRNM": name, "TRDS": name} for name in sorted(PROGRAMS[program])]

    def _vouchers_by_date(self, values: dict) -> list[dict]:
        """Every GL transaction with an accounting date in [FRDT, TODT], by voucher and line."""
        lines = [line for line in self.ledger.gl_lines(self.clock.now())
                 if values["FRDT"] <= line.accounting_date <= values["TODT"]]
        lines.sort(key=lambda ln: (ln.year, ln.voucher_series, ln.voucher, ln.journal, ln.journal_seq))
        return [self._gl_row(line, self.ledger.local_currency) for line in lines]

    @staticmethod
    def _gl_row(line: GLLine, local: str) -> dict:
        entered, at = _entry_date_time(line.registered)
        return {
            "CONO": line.cono, "DIVI": line.divi, "YEA4": line.year, "JRNO": line.journal, "JSNO": line.journal_seq,
            "VSER": line.voucher_series, "VONO": line.voucher, "ACDT": line.accounting_date,
            "AIT1": line.ait1, "AIT2": line.ait2, "AIT3": line.ait3, "AIT4": line.ait4, "AIT5": line.ait5,
            "AIT6": line.ait6, "AIT7": line.ait7,
            "CUCD": line.currency, "CUAM": amount(line.amount_minor, line.currency), "ARAT": line.rate,
            "ACAM": amount(line.local_minor, local), "DBCR": "D" if line.amount_minor >= 0 else "C", "VTXT": line.text,
            "RGDT": entered, "RGTM": at,
        }

    # -- ARS040MI: customer payment batches ------------------------------------------------------------
    def _add_payment_batch(self, values: dict) -> list[dict]:
        if values["PBID"] <= 0:
            raise MIError("Payment batch must be entered", MUST_BE_ENTERED["PBID"], "PBID")
        self.ledger.add_payment_batch(values["PBID"], values["BOPE"], values.get("ACDT"), self.clock.now())
        return [{"PBID": values["PBID"]}]

    def _add_payment_line(self, values: dict) -> list[dict]:
        self._customer(values["CUNO"])
        currency = values.get("CUCD") or self.ledger.invoice_currency(values["CINO"], values["INYR"]) or ""
        paid = parse_amount(values["PYAM"], "", "PYAM", currency)
        if paid < 0:
            raise MIError("Negative value is not permitted", "XNU0003", "PYAM")
        if paid == 0:
            raise MIError("Payment amount must be entered", MUST_BE_ENTERED["PYAM"], "PYAM")
        self.ledger.add_payment_line(values["PBID"], PaymentLine(
            values["TRNO"], values["CUNO"], values.get("PYNO", ""), values["CINO"], values["INYR"], paid,
            values.get("CUCD", ""), values.get("CKNO", ""), values.get("LPDT"), values.get("AIT1", "")))
        return []

    def _control_payment_batch(self, values: dict) -> list[dict]:
        self.ledger.control_payment_batch(values["PBID"], self.clock.now())
        return []


@functools.lru_cache(maxsize=1024)
def _entry_date_time(moment: int) -> tuple[date, int]:
    """RGDT and RGTM (hhmmss) of unix seconds: the lines of one batch share theirs (a voucher has 10^3 lines)."""
    registered = datetime.fromtimestamp(moment, tz=timezone.utc)
    return registered.date(), registered.hour * 10_000 + registered.minute * 100 + registered.second


def _split_matrix(program: str, transaction_segment: str) -> tuple[str, str, dict[str, str]]:
    """``LstInvoices;maxrecs=20;returncols=CINO`` -> transaction and its matrix control parameters."""
    transaction, *pairs = transaction_segment.split(";")
    matrix = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        matrix[name.lower()] = value
    return program.upper(), transaction, matrix


def _same(given: tuple[str, str], expected: tuple[str, str]) -> bool:
    """Constant-time comparison of a credential pair."""
    return all([hmac.compare_digest(a.encode(), b.encode()) for a, b in zip(given, expected)])


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


@lru_cache(maxsize=1024)
def _m3_date(raw: str, name: str) -> date:
    """An input date; a batch's lines share a few (10^5 payment dates a day)."""
    try:
        if len(raw) != 8:
            raise ValueError
        return date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
    except ValueError:
        raise MIError(f"Incorrect date {raw} in field {name}", "XDT0001", name) from None


def write_ionapi_file(path: str | Path, url: str, tenant: str = SANDBOX_M3_TENANT) -> Path:
    """Write the sandbox service account as an Infor ``.ionapi`` file (mode 0600) for ``url``."""
    url = url.rstrip("/")
    config = {
        "ti": tenant, "cn": "m3-recon sandbox", "dt": "12", "ci": SANDBOX_M3_CLIENT_ID,
        "cs": SANDBOX_M3_CLIENT_SECRET, "iu": url, "pu": f"{url}/{tenant}/as/", "oa": "authorization.oauth2",
        "ot": "token.oauth2", "or": "revoke_token.oauth2", "sc": [], "ev": "U147858101", "v": "1.0",
        "saak": SANDBOX_M3_USERNAME, "sask": SANDBOX_M3_PASSWORD,
    }
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)
    return path


def sandbox_env(url: str, ionapi_path: str | Path) -> dict[str, str]:
    """Environment variables that point the M3 resource at this sandbox through the ION API."""
    return {"M3_IONAPI_FILE": str(ionapi_path), "M3_CONO": str(CONO), "M3_DIVI": DIVI}

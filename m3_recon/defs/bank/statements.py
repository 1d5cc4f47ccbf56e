"""Bank statement readers: BAI2 (with the ``bai2`` package) and ISO 20022 camt.053 (standard XML parser).

``read_statement(data, name)`` tells the format from the content (a BAI2 file starts with record
``01``; camt.053 is XML with a ``BkToCstmrStmt``), and returns one ``StatementLine`` per booked
entry: bank account, statement id, the bank's line reference, booking and value date, signed amount
in minor units (credits positive), currency, transaction code and the text a person reads (where the
processor's descriptor is). camt.053 is read by local element names, so every version from
camt.053.001.02 to .08 (and their namespaces) reads alike; only booked entries (``BOOK``) count.
Anything unreadable raises ``StatementError`` naming the file and the defect; nothing is half-read.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from bai2 import bai2
from bai2.exceptions import IntegrityException, NotSupportedYetException, ParsingException

from m3_recon.money import exponent

MAX_STATEMENT_BYTES = 50 * 1024 * 1024


class StatementError(ValueError):
    """A statement file that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class StatementLine:
    format: str  # bai2 or camt053
    bank_account: str
    statement_id: str
    line_ref: str
    booking_date: date
    value_date: date | None
    amount_minor: int  # credits positive, debits negative
    currency: str
    type_code: str
    description: str


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_statement(data: bytes, name: str) -> list[StatementLine]:
    if len(data) > MAX_STATEMENT_BYTES:
        raise StatementError(f"{name}: {len(data):,} bytes is more than a statement file may be "
                             f"({MAX_STATEMENT_BYTES:,}); split it")
    head = data.lstrip(b"\xef\xbb\xbf \r\n\t")[:200]
    if head.startswith(b"01,"):
        return read_bai2(data, name)
    if head.startswith(b"<") and b"BkToCstmrStmt" in data[:4096]:
        return read_camt053(data, name)
    raise StatementError(f"{name}: neither BAI2 (first record 01) nor ISO 20022 camt.053 (BkToCstmrStmt)")


# -- BAI2 ---------------------------------------------------------------------------------------------------
def read_bai2(data: bytes, name: str) -> list[StatementLine]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise StatementError(f"{name}: a BAI2 file is ASCII, byte {exc.start} is not") from None
    try:
        parsed = bai2.parse_from_string(text, check_integrity=True)
    except IntegrityException as exc:
        raise StatementError(f"{name}: BAI2 control totals do not agree ({exc}); the file is incomplete or "
                             "altered: ask the bank to resend it") from None
    except (ParsingException, NotSupportedYetException, ValueError, KeyError) as exc:
        raise StatementError(f"{name}: not a readable BAI2 file ({type(exc).__name__}: {exc})") from None
    file_id = str(parsed.header.file_id or "").strip()
    lines: list[StatementLine] = []
    for group in parsed.children:
        as_of = group.header.as_of_date
        if as_of is None:
            raise StatementError(f"{name}: a BAI2 group (02) has no as-of date")
        for account in group.children:
            number = str(account.header.customer_account_number or "").strip()
            currency = str(account.header.currency or group.header.currency or "USD").strip().upper()
            statement_id = f"{as_of.isoformat()}:{file_id}" if file_id else as_of.isoformat()
            for index, detail in enumerate(account.children, start=1):
                kind = getattr(detail.type_code.transaction, "value", "")
                if kind not in ("credit", "debit"):
                    continue  # a non-monetary detail record
                amount = int(detail.amount or 0)
                reference = str(detail.bank_reference or "").strip() or f"{statement_id}#{index}"
                text = " ".join(part for part in (str(detail.customer_reference or "").strip(),
                                                  str(detail.text or "").strip()) if part)
                lines.append(StatementLine("bai2", number, statement_id, reference, as_of, None,
                                           amount if kind == "credit" else -amount, currency,
                                           detail.type_code.code, text))
    return lines


# -- ISO 20022 camt.053 -------------------------------------------------------------------------------------
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element | None, *path: str) -> ET.Element | None:
    for name in path:
        if element is None:
            return None
        element = next((c for c in element if _local(c.tag) == name), None)
    return element


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if _local(c.tag) == name]


def _text(element: ET.Element | None, *path: str) -> str:
    found = _child(element, *path) if path else element
    return (found.text or "").strip() if found is not None else ""


def _date(element: ET.Element | None, name: str, where: str) -> date | None:
    """``<BookgDt><Dt>`` or ``<BookgDt><DtTm>`` (the date part of a local date-time)."""
    holder = _child(element, name)
    raw = _text(holder, "Dt") or _text(holder, "DtTm")[:10]
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise StatementError(f"{where}: {name} {raw!r} is not a date") from None


def _minor(amount: str, currency: str, where: str) -> int:
    try:
        value = Decimal(amount).scaleb(exponent(currency))
    except InvalidOperation:
        raise StatementError(f"{where}: amount {amount!r} is not a number") from None
    if value != value.to_integral_value() or value < 0:
        raise StatementError(f"{where}: amount {amount!r} {currency} is not a non-negative amount in whole "
                             "minor units")
    return int(value)


def read_camt053(data: bytes, name: str) -> list[StatementLine]:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise StatementError(f"{name}: not well-formed XML ({exc})") from None
    report = _child(root, "BkToCstmrStmt") if _local(root.tag) == "Document" else root
    if report is None or _local(report.tag) != "BkToCstmrStmt":
        raise StatementError(f"{name}: no BkToCstmrStmt element (is it a camt.053 statement?)")
    lines: list[StatementLine] = []
    for statement in _children(report, "Stmt"):
        statement_id = _text(statement, "Id")
        account = _child(statement, "Acct")
        number = _text(account, "Id", "IBAN") or _text(account, "Id", "Othr", "Id")
        if not statement_id or not number:
            raise StatementError(f"{name}: a statement without Id or account (Acct/Id/IBAN or Acct/Id/Othr/Id)")
        account_currency = _text(account, "Ccy").upper()
        for index, entry in enumerate(_children(statement, "Ntry"), start=1):
            where = f"{name} statement {statement_id} entry {index}"
            status = _text(entry, "Sts", "Cd") or _text(entry, "Sts")
            if status and status.upper() != "BOOK":
                continue  # pending or information-only entries are not on the account yet
            amount_element = _child(entry, "Amt")
            currency = ((amount_element.get("Ccy") if amount_element is not None else None)
                        or account_currency or "").upper()
            if amount_element is None or not currency:
                raise StatementError(f"{where}: no Amt with a currency")
            amount = _minor(_text(amount_element), currency, where)
            direction = _text(entry, "CdtDbtInd").upper()
            if direction not in ("CRDT", "DBIT"):
                raise StatementError(f"{where}: CdtDbtInd {direction!r} is neither CRDT nor DBIT")
            if _text(entry, "RvslInd").lower() == "true":
                direction = "DBIT" if direction == "CRDT" else "CRDT"  # a reversal undoes the other direction
            booked = _date(entry, "BookgDt", where) or _date(entry, "ValDt", where)
            if booked is None:
                raise StatementError(f"{where}: neither BookgDt nor ValDt")
            details = [t for n in _children(entry, "NtryDtls") for t in _children(n, "TxDtls")]
            references = [_text(d, "Refs", "EndToEndId") for d in details]
            remittance = [_text(u) for d in details for r in _children(d, "RmtInf") for u in _children(r, "Ustrd")]
            reference = (_text(entry, "AcctSvcrRef") or _text(entry, "NtryRef")
                         or next((r for r in references if r and r != "NOTPROVIDED"), "")
                         or f"{statement_id}#{index}")
            text = " ".join(part for part in (_text(entry, "AddtlNtryInf"), *remittance,
                                              *(r for r in references if r and r != "NOTPROVIDED")) if part)
            code = (_text(entry, "BkTxCd", "Prtry", "Cd")
                    or "/".join(filter(None, (_text(entry, "BkTxCd", "Domn", "Cd"),
                                              _text(entry, "BkTxCd", "Domn", "Fmly", "Cd"),
                                              _text(entry, "BkTxCd", "Domn", "Fmly", "SubFmlyCd")))))
            lines.append(StatementLine("camt053", number, statement_id, reference, booked,
                                       _date(entry, "ValDt", where), amount if direction == "CRDT" else -amount,
                                       currency, code, text))
    if not lines and not _children(report, "Stmt"):
        raise StatementError(f"{name}: a camt.053 document without any Stmt")
    return lines

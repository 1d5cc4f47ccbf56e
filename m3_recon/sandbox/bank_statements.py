"""The sandbox's bank: the month's statements of the accounts the processors pay into (one per currency:
the USD account, a EUR account where Stripe pays out EUR, and a JPY account where the Heartland account
settles in yen).

``bank_lines`` derives what the bank booked, as of the sandbox clock: each Stripe payout that did not
fail on its arrival date; each PayTrace batch's net the business day after its batch date; each
Global Payments deposit on its deposit date (a held deposit on its release day, none while held);
plus one incoming wire nobody explains and a monthly account fee (a debit). ``write_statements``
writes one statement per business day from the period's start to the day before the clock, in the
bank's two formats by weekday (our choice, documented in README): BAI2 on Mondays, Wednesdays and
Fridays; ISO 20022 camt.053.001.08 on Tuesdays and camt.053.001.02 on Thursdays. A day without
bookings still gets its (empty) statement, so the files say how far the bank has reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from xml.sax.saxutils import escape

from m3_recon.money import exponent, major

ACCOUNT = "000123456789"  # the USD account; another currency's account ends in its code
BANK_ID = "SANDBOXBANK"
CUSTOMER_ID = "M3RECON"
CAMT_VERSION_BY_WEEKDAY = {1: "08", 3: "02"}  # Tuesday, Thursday; the other business days are BAI2
TYPE_ACH_CREDIT, TYPE_WIRE_CREDIT, TYPE_ACH_DEBIT, TYPE_SERVICE_CHARGE = "165", "195", "455", "698"


@dataclass(frozen=True)
class BankLine:
    booking_date: date
    amount_minor: int  # signed: credits positive
    type_code: str
    customer_ref: str
    text: str
    processor: str | None  # None: nobody's payout (the unexplained wire, the fee)
    payout_id: str | None
    currency: str = "USD"


def account_number(currency: str) -> str:
    return ACCOUNT if currency == "USD" else ACCOUNT[:-3] + currency


def business_day_on_or_after(day: date) -> date:
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def _utc_day(epoch: int) -> date:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).date()


def last_statement_day(sandbox) -> date:
    return _utc_day(sandbox.clock.now()) - timedelta(days=1)


def bank_lines(sandbox) -> list[BankLine]:
    """What the bank booked from the period's start to the day before the sandbox clock."""
    now, first, last = sandbox.clock.now(), sandbox.period.start, last_statement_day(sandbox)
    lines: list[BankLine] = []
    for payout in sandbox.stripe.payouts.values():
        if payout.failed_at is not None and payout.failed_at <= now:
            continue  # the bank returned it to Stripe: never on our account
        lines.append(BankLine(business_day_on_or_after(_utc_day(payout.arrival_date)), payout.amount,
                              TYPE_ACH_CREDIT, payout.id, f"STRIPE TRANSFER ST-{payout.id[-10:].upper()}",
                              "stripe", payout.id, payout.currency.upper()))
    for batch in sandbox.paytrace.batches.values():
        net = sandbox.paytrace.totals(batch).net_minor
        if net:
            lines.append(BankLine(business_day_on_or_after(batch.business_date + timedelta(days=1)), net,
                                  TYPE_ACH_CREDIT if net > 0 else TYPE_ACH_DEBIT, f"BATCH {batch.number}",
                                  f"PAYTRACE MERCH DEP BATCH {batch.number}", "paytrace", str(batch.number)))
    for deposit in sandbox.heartland.deposits.values():
        status = deposit.status_at(now)
        if status == "DELAYED" or deposit.created > now or not deposit.net:
            continue
        day = deposit.deposit_date if status == "FUNDED" else _utc_day(deposit.released_at)
        lines.append(BankLine(business_day_on_or_after(day), deposit.net,
                              TYPE_ACH_CREDIT if deposit.net > 0 else TYPE_ACH_DEBIT, deposit.id,
                              f"HEARTLAND PAYMENT SYS DEPOSIT {deposit.id}", "heartland", deposit.id,
                              sandbox.heartland.currency))
    rng = sandbox.world.rng("bank")
    wire_day = business_day_on_or_after(first + timedelta(days=sandbox.period.days // 2))
    lines.append(BankLine(wire_day, rng.randint(100_000, 2_000_000), TYPE_WIRE_CREDIT, "FEDREF",
                          "WIRE IN NORTHWIND TRADING LLC ORDER 4471", None, None))
    lines.append(BankLine(business_day_on_or_after(first + timedelta(days=1)), -rng.randint(2_000, 9_000),
                          TYPE_SERVICE_CHARGE, "", "ACCOUNT ANALYSIS SERVICE CHARGE", None, None))
    return sorted((line for line in lines if first <= line.booking_date <= last),
                  key=lambda line: (line.booking_date, line.type_code, line.text))


def write_statements(sandbox, folder: str | Path) -> list[Path]:
    """One statement file per business day (see the module docstring); returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_day: dict[date, list[BankLine]] = {}
    for line in bank_lines(sandbox):
        by_day.setdefault(line.booking_date, []).append(line)
    paths = []
    day = sandbox.period.start
    while day <= last_statement_day(sandbox):
        if day.weekday() < 5:
            lines = by_day.get(day, [])
            version = CAMT_VERSION_BY_WEEKDAY.get(day.weekday())
            if version:
                path = folder / f"statement_{day.isoformat()}.xml"
                path.write_text(camt053(day, lines, version), encoding="utf-8")
            else:
                path = folder / f"statement_{day.isoformat()}.bai2"
                path.write_text(bai2_file(day, lines), encoding="ascii")
            paths.append(path)
        day += timedelta(days=1)
    return paths


def _reference(day: date, index: int) -> str:
    return f"{day:%y%m%d}{index:05d}"


def _by_account(lines: list[BankLine]) -> dict[str, list[tuple[int, BankLine]]]:
    """The day's lines (numbered across the day) per account currency; the USD account always reports."""
    accounts: dict[str, list[tuple[int, BankLine]]] = {"USD": []}
    for i, line in enumerate(lines, start=1):
        accounts.setdefault(line.currency, []).append((i, line))
    return accounts


def bai2_file(day: date, lines: list[BankLine]) -> str:
    stamp = f"{day + timedelta(days=1):%y%m%d}"
    accounts = []
    for currency, numbered in _by_account(lines).items():  # amounts in the currency's minor units
        details = [f"16,{line.type_code},{abs(line.amount_minor)},Z,{_reference(day, i)},{line.customer_ref},"
                   f"{line.text}" for i, line in numbered]
        accounts.append([f"03,{account_number(currency)},{currency}/", *details,
                         f"49,{sum(abs(line.amount_minor) for _, line in numbered)},{len(details) + 2}/"])
    total = sum(abs(line.amount_minor) for line in lines)
    account = [record for records in accounts for record in records]
    group = [f"02,{CUSTOMER_ID},{BANK_ID},1,{day:%y%m%d},2359,USD,2/", *account,
             f"98,{total},{len(accounts)},{len(account) + 2}/"]
    records = [f"01,{BANK_ID},{CUSTOMER_ID},{stamp},0600,{day:%Y%m%d}A,,,2/", *group,
               f"99,{total},1,{len(group) + 2}/"]
    return "\n".join(records) + "\n"


def camt053(day: date, lines: list[BankLine], version: str) -> str:
    def status() -> str:
        return "<Sts><Cd>BOOK</Cd></Sts>" if version >= "06" else "<Sts>BOOK</Sts>"

    def entries(numbered: list[tuple[int, BankLine]]) -> str:
        return "".join(f"""
      <Ntry>
        <NtryRef>{i}</NtryRef>
        <Amt Ccy="{line.currency}">{major(abs(line.amount_minor), line.currency):.{exponent(line.currency)}f}</Amt>
        <CdtDbtInd>{'CRDT' if line.amount_minor > 0 else 'DBIT'}</CdtDbtInd>
        {status()}
        <BookgDt><Dt>{day.isoformat()}</Dt></BookgDt>
        <ValDt><Dt>{day.isoformat()}</Dt></ValDt>
        <AcctSvcrRef>{_reference(day, i)}</AcctSvcrRef>
        <BkTxCd><Prtry><Cd>{line.type_code}</Cd><Issr>BAI</Issr></Prtry></BkTxCd>
        <NtryDtls><TxDtls>
          <Refs><EndToEndId>{escape(line.customer_ref) or 'NOTPROVIDED'}</EndToEndId></Refs>
          <RmtInf><Ustrd>{escape(line.text)}</Ustrd></RmtInf>
        </TxDtls></NtryDtls>
      </Ntry>""" for i, line in numbered)

    statements = "".join(f"""
    <Stmt>
      <Id>STMT-{day:%Y%m%d}{'' if currency == 'USD' else '-' + currency}</Id>
      <CreDtTm>{day + timedelta(days=1)}T06:00:00</CreDtTm>
      <Acct><Id><Othr><Id>{account_number(currency)}</Id></Othr></Id><Ccy>{currency}</Ccy></Acct>{entries(numbered)}
    </Stmt>""" for currency, numbered in _by_account(lines).items())
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.{version}">
  <BkToCstmrStmt>
    <GrpHdr><MsgId>{BANK_ID}-{day:%Y%m%d}</MsgId><CreDtTm>{day + timedelta(days=1)}T06:00:00</CreDtTm></GrpHdr>{statements}
  </BkToCstmrStmt>
</Document>
"""

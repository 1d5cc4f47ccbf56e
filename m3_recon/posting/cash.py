"""Cash applications to M3 as ARS040MI payment batches, confirmed by the invoices' outstanding amounts.

One voucher is one payment batch (``PBID`` from the outbox) of one processor and day:
``AddBatchHead`` with the accounting date and the processor's payment method ``BOPE`` (whose
accounting in M3 debits that processor's clearing account), one ``AddBatchLine`` per application
naming ``CINO``, ``INYR``, ``CUNO`` and ``PYAM``, the processor's payment id as ``CKNO``, the payment
date as ``LPDT`` and, when configured, the debit account ``AIT1``; and ``ControlBatch``, which books
the batch. Before a batch is first sent, ``ARS200MI/GetInvTotInfo``
gives each invoice's outstanding amount; it is stored in ``out_m3_cash_checks`` together with the
amount applied, in the same transaction that marks the voucher ``sent``. Arrival is then judged by
reading the invoices again: every one down by exactly what was applied means verified, every one
unchanged means M3 has not booked it (yet), anything else is a failure a person must look at — an
invoice paid by someone else meanwhile, say. A resent batch answers ``XRE0104`` and a controlled one
refuses a second control, so nothing is applied twice. ``PYNO`` is taken to be the customer (the
contract names no payer).
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import pyarrow as pa

from m3_recon.clients.m3 import M3Client, M3Error
from m3_recon.money import major
from m3_recon.posting.config import PostingConfig
from m3_recon.posting.outbox import ROUTE_CASH, Voucher
from m3_recon.posting.route import ABSENT, FAILED, VERIFIED, MICall, PostingRejected, Verdict, m3_amount

CHECKS = "out_m3_cash_checks"
CHECKS_DDL = f"""
CREATE TABLE IF NOT EXISTS {CHECKS} (
    voucher_key VARCHAR NOT NULL, customer VARCHAR NOT NULL, invoice_number VARCHAR NOT NULL,
    invoice_year INTEGER NOT NULL, currency VARCHAR NOT NULL, outstanding_before_minor BIGINT NOT NULL,
    applied_minor BIGINT NOT NULL, taken_at_utc TIMESTAMP NOT NULL
)"""

Invoice = tuple[str, str, int]  # customer, invoice number, invoice year
# All a cash check reads of GetInvTotInfo (returncols): a day checks each paid invoice twice, 10^5 of them at scale.
TOTALS_COLUMNS = ("CUCD", "OCUA")


def _invoice(line: dict) -> Invoice:
    return line["customer"], line["invoice_number"], line["invoice_year"]


def _totals_call(invoice: Invoice) -> MICall:
    customer, number, year = invoice
    return "GetInvTotInfo", {"PYNO": customer, "CINO": number, "INYR": year, "CUNO": customer}


class CashRoute:
    route = ROUTE_CASH
    program = "ARS040MI"

    def __init__(self, client: M3Client, config: PostingConfig):
        self.client, self.config = client, config
        self._before: dict[str, dict[Invoice, tuple[str, int, int]]] = {}  # key -> invoice -> (currency, open, applied)

    def calls(self, voucher: Voucher) -> list[MICall]:
        batch = voucher.m3_batch
        processors = sorted({line["processor"] for line in voucher.lines})
        if len(processors) != 1:
            raise PostingRejected(f"payment batch {batch} mixes processors ({', '.join(processors)}); "
                                  "a batch carries one processor's payment method")
        method = self.config.payment_methods.get(processors[0])
        if method is None:
            raise PostingRejected(f"no M3 payment method (BOPE) for {processors[0]}: add [payment_methods."
                                  f"{processors[0]}] to data/gl_accounts.toml, or M3 books the cash on its default "
                                  "account instead of the processor's clearing account")
        head = ("AddBatchHead", {"PBID": batch, "BOPE": method.bope,
                                 "ACDT": voucher.accounting_date.strftime("%Y%m%d")})
        lines = []
        for line in voucher.lines:
            if line["amount_minor"] <= 0:
                raise PostingRejected(f"line {line['line_number']}: a payment amount must be positive, "
                                      f"got {line['amount_minor']}")
            lines.append(("AddBatchLine", {
                "PBID": batch, "TRNO": line["line_number"], "CINO": line["invoice_number"],
                "INYR": line["invoice_year"], "CUNO": line["customer"],
                "PYAM": format(major(line["amount_minor"], line["currency"]), "f"), "CUCD": line["currency"],
                "CKNO": line["source_id"], "LPDT": line["accounting_date"].strftime("%Y%m%d"),
                **({"AIT1": method.ait1} if method.ait1 else {})}))
        return [head, *lines, ("ControlBatch", {"PBID": batch})]

    def size(self, voucher: Voucher) -> int:
        return len(voucher.lines) + 2  # head, lines, control

    def touches(self, voucher: Voucher) -> set:
        """Invoices it pays: two batches paying one invoice are never in flight together."""
        return {_invoice(line) for line in voucher.lines}

    def before_send(self, vouchers: list[Voucher]) -> dict[str, str]:
        """Outstanding amounts of the invoices of first-time batches; the batches M3 cannot take, with why."""
        fresh = [v for v in vouchers if not v.resumed]
        invoices = list(dict.fromkeys(_invoice(line) for v in fresh for line in v.lines))
        answers = dict(zip(invoices, self.client.execute_each("ARS200MI", [_totals_call(i) for i in invoices],
                                                              columns=TOTALS_COLUMNS)))
        rejected = {}
        for voucher in fresh:
            applied: dict[Invoice, int] = {}
            currencies: dict[Invoice, str] = {}  # of the invoice's first line, as the batch line states it
            for line in voucher.lines:
                invoice = _invoice(line)
                applied[invoice] = applied.get(invoice, 0) + line["amount_minor"]
                currencies.setdefault(invoice, line["currency"])
            before, problems = {}, []
            for invoice, amount in applied.items():
                answer, currency = answers[invoice], currencies[invoice]
                if isinstance(answer, M3Error):
                    problems.append(f"invoice {invoice[1]}/{invoice[2]} of customer {invoice[0]}: {answer}")
                elif answer[0]["CUCD"] != currency:
                    problems.append(f"invoice {invoice[1]} is in {answer[0]['CUCD']}, the application in {currency}")
                else:
                    before[invoice] = (currency, m3_amount(answer[0]["OCUA"], currency), amount)
            if problems:
                rejected[voucher.key] = "; ".join(problems)
            else:
                self._before[voucher.key] = before
        return rejected

    def record_expectations(self, conn: duckdb.DuckDBPyConnection, vouchers: list[Voucher], now: datetime) -> None:
        fresh = [v for v in vouchers if not v.resumed]
        if not fresh:
            return
        conn.execute(CHECKS_DDL)
        conn.execute(f"DELETE FROM {CHECKS} WHERE voucher_key IN ({', '.join('?' * len(fresh))})",
                     [v.key for v in fresh])
        rows = [(v.key, *invoice, currency, before, applied)
                for v in fresh for invoice, (currency, before, applied) in self._before.pop(v.key).items()]
        checks = pa.table(list(zip(*rows)) if rows else [[]] * 7, names=[
            "voucher_key", "customer", "invoice_number", "invoice_year", "currency", "before", "applied"])
        conn.execute(f"INSERT INTO {CHECKS} SELECT voucher_key, customer, invoice_number, invoice_year, currency, "
                     "before, applied, ? FROM checks", [now])  # one set-based insert: a day has 10^4 invoices

    def verify(self, conn: duckdb.DuckDBPyConnection, vouchers: list[Voucher]) -> dict[str, Verdict]:
        conn.execute(CHECKS_DDL)
        expected: dict[str, list[tuple]] = {v.key: [] for v in vouchers}
        for key, *check in conn.execute(
                f"SELECT voucher_key, customer, invoice_number, invoice_year, currency, outstanding_before_minor, "
                f"applied_minor FROM {CHECKS} WHERE voucher_key IN ({', '.join('?' * len(vouchers))}) "
                f"ORDER BY voucher_key, invoice_year, invoice_number", [v.key for v in vouchers]).fetchall():
            expected[key].append(tuple(check))
        calls = [(v.key, _invoice_of(check)) for v in vouchers for check in expected[v.key]]
        answers = self.client.execute_each("ARS200MI", [_totals_call(invoice) for _, invoice in calls],
                                           columns=TOTALS_COLUMNS)
        now: dict[tuple[str, Invoice], int | M3Error] = {}
        for (key, invoice), answer in zip(calls, answers):
            now[key, invoice] = answer if isinstance(answer, M3Error) else m3_amount(answer[0]["OCUA"],
                                                                                    answer[0]["CUCD"])
        return {v.key: self._judge(v, expected[v.key], now) for v in vouchers}

    @staticmethod
    def _judge(voucher: Voucher, checks: list[tuple], now: dict) -> Verdict:
        batch = voucher.m3_batch
        if not checks:
            return Verdict(FAILED, error=f"no outstanding amounts were recorded before payment batch {batch} was "
                                         "sent; check it in ARS040 by hand")
        states, found = set(), []
        for check in checks:
            invoice, (_, before, applied) = _invoice_of(check), check[3:]
            current = now[voucher.key, invoice]
            if isinstance(current, M3Error):
                return Verdict(FAILED, error=f"ARS200MI could not read invoice {invoice[1]}: {current}")
            states.add(VERIFIED if current == before - applied else ABSENT if current == before else FAILED)
            found.append((invoice, current, before, applied))
        if states == {VERIFIED}:
            return Verdict(VERIFIED)
        if states == {ABSENT}:
            return Verdict(ABSENT)
        return Verdict(FAILED, error=f"payment batch {batch} left the invoices in an unexpected state: " + "; ".join(
            f"invoice {invoice[1]}/{invoice[2]} has {current} outstanding, {before} before and {applied} applied"
            for invoice, current, before, applied in found))  # written out only when it is needed: 10^4 a batch


def _invoice_of(check: tuple) -> Invoice:
    customer, number, year = check[:3]
    return customer, number, year

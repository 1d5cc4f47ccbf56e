"""GL vouchers to M3 through the generic GL interface GLS840MI, confirmed through GLS200MI.

One voucher is one GLS840 batch whose ``KEY1`` is the voucher key: ``AddBatchHead`` (the configured
interface), one ``AddBatchLine`` per journal line with a PARM string cut to the layout file (or
``AddBatchLineFld`` with the same values as fields), ``CtrlBatch`` and ``UpdBatch``, all in one voucher
group so M3 makes exactly one voucher. Whether it arrived is asked of the general ledger, never
assumed: ``GLS200MI/SearchGenLedger`` for the batch key (that its index knows ``KEY1`` is
UNCONFIRMED) must return the voucher's lines — same accounts, currency, amount, date and text, line
by line — and gives the M3 voucher number (``<year>-<series>-<number>``). Where M3 does not serve
the search (``XTR0001``, not authorised) or it shows nothing for a batch, the voucher is looked for
among the GL vouchers of its accounting date (``LstVouchersByDt``), each candidate read with
``LstVoucherLines`` and matched line for line; the journal's voucher texts carry the voucher key,
so the match is unique. Because the key is unique in M3, sending a batch again answers ``XRE0104``
instead of posting twice.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from m3_recon.clients.m3 import M3Client, M3Error, m3_date
from m3_recon.money import major
from m3_recon.posting.config import LINE_FORM_FIELDS, PostingConfig
from m3_recon.posting.layout import LayoutError
from m3_recon.posting.outbox import OUTBOX, ROUTE_GL, Voucher
from m3_recon.posting.route import (ABSENT, FAILED, VERIFIED, MICall, PostingRejected, Verdict, m3_amount,
                                    not_served)

KEY1_LENGTH = 15
RECORD_TYPE = "I1"
VOUCHER_GROUP = 1
ACCOUNTS = tuple(f"ait{i}" for i in range(1, 8))
ACCOUNT_FIELDS = tuple((name, name.upper()) for name in ACCOUNTS)
TECHNICAL_FIELDS = frozenset({"RNNO", "GRNR", "DIVI"})  # written into PARM only where the template has them
# What verifying reads of GLS200MI's GL lines (selectedColumns): the voucher number, line order and what is compared.
READ_COLUMNS = ("YEA4", "VSER", "VONO", "JSNO", "ACDT", *(upper for _, upper in ACCOUNT_FIELDS), "CUCD", "CUAM", "ACAM",
                "VTXT")


class GLRoute:
    route = ROUTE_GL
    program = "GLS840MI"

    def __init__(self, client: M3Client, config: PostingConfig):
        self.client, self.config = client, config
        self._search_served = True  # until M3 says SearchGenLedger is not served to this user

    def calls(self, voucher: Voucher) -> list[MICall]:
        key = voucher.m3_batch
        if not 1 <= len(key) <= KEY1_LENGTH or any(c.isspace() for c in key):
            raise PostingRejected(f"voucher key {key!r} cannot be an M3 KEY1 (1-{KEY1_LENGTH} characters, no blanks)")
        head = ("AddBatchHead", {"KEY1": key, "INTN": self.config.interface, "DESC": voucher.lines[0]["voucher_text"]})
        lines = [self._line(key, line) for line in voucher.lines]
        return [head, *lines, ("CtrlBatch", {"KEY1": key}), ("UpdBatch", {"KEY1": key})]

    def size(self, voucher: Voucher) -> int:
        return len(voucher.lines) + 3  # head, lines, control, update

    def _line(self, key: str, line: dict) -> MICall:
        currency = line["currency"]
        amount = major(line["amount_minor"], currency)
        accounts = {upper: line[name] for name, upper in ACCOUNT_FIELDS if line[name]}
        local = self.config.local_currency
        # a line in another currency carries its local amount, so M3 books the value the journal balanced in
        local_minor = _local(line, local) if currency != local else None
        acam = major(local_minor, local) if local_minor is not None else None
        if self.config.line_form == LINE_FORM_FIELDS:
            return ("AddBatchLineFld", {
                "KEY1": key, "LINE": line["line_number"], "INRI": RECORD_TYPE, "GRNR": VOUCHER_GROUP, **accounts,
                "CUCD": currency, "CUAM": format(amount, "f"),
                **({"ACAM": format(acam, "f")} if acam is not None else {}),
                "ACDT": line["accounting_date"].strftime("%Y%m%d"), "VTXT": line["voucher_text"]})
        layout = self.config.layout
        if acam is not None and "ACAM" not in layout.names:
            raise PostingRejected(f"line {line['line_number']} is in {currency}, not M3's local {local}, "
                                  f"and interface {layout.interface} has no position for its local amount ACAM")
        values = {"RNNO": line["line_number"], "GRNR": VOUCHER_GROUP, "DIVI": self.client.divi, **accounts,
                  "CUCD": currency, "CUAM": amount, "ACDT": line["accounting_date"], "VTXT": line["voucher_text"],
                  "ACAM": acam}
        for name in TECHNICAL_FIELDS - layout.names:  # the technical fields go where the template has a place
            del values[name]
        try:
            parm = layout.build(values)
        except LayoutError as exc:
            raise PostingRejected(f"line {line['line_number']}: {exc}") from None
        return ("AddBatchLine", {"KEY1": key, "LINE": line["line_number"], "PARM": parm})

    def touches(self, voucher: Voucher) -> set:
        return set()  # GL vouchers never depend on one another

    def before_send(self, vouchers: list[Voucher]) -> dict[str, str]:
        return {}

    def record_expectations(self, conn: duckdb.DuckDBPyConnection, vouchers: list[Voucher], now: datetime) -> None:
        return None  # the journal lines themselves are the expectation

    def verify(self, conn: duckdb.DuckDBPyConnection, vouchers: list[Voucher]) -> dict[str, Verdict]:
        """``SearchGenLedger`` by batch key while M3 serves it; a voucher it cannot show is looked for by
        accounting date and lines (``LstVouchersByDt`` + ``LstVoucherLines``)."""
        verdicts: dict[str, Verdict] = {}
        unseen = list(vouchers)
        if self._search_served:
            answers = self.client.execute_each(
                "GLS200MI", [("SearchGenLedger", {"SQRY": f"KEY1:{v.m3_batch}"}) for v in vouchers],
                columns=READ_COLUMNS)
            unseen = []
            for voucher, answer in zip(vouchers, answers):
                if isinstance(answer, M3Error):
                    self._search_served &= not not_served(answer)
                    unseen.append(voucher)
                elif not answer:
                    unseen.append(voucher)
                else:
                    verdicts[voucher.key] = self._judge(voucher, answer, self.config.local_currency)
        if unseen:
            verdicts.update(self._find_by_date(conn, unseen))
        return verdicts

    def _find_by_date(self, conn: duckdb.DuckDBPyConnection, vouchers: list[Voucher]) -> dict[str, Verdict]:
        """Each voucher among the GL vouchers of its accounting date whose lines are its lines, line for
        line (accounts, currency, amount, date and the text that carries the voucher key). A voucher number
        another outbox row already holds is not a candidate; two candidates prove nothing."""
        days = sorted({v.accounting_date for v in vouchers})
        listed = self.client.execute_each("GLS200MI", [
            ("LstVouchersByDt", {"FRDT": day.strftime("%Y%m%d"), "TODT": day.strftime("%Y%m%d")}) for day in days],
            columns=READ_COLUMNS)
        by_day: dict = {}
        for day, rows in zip(days, listed):
            if isinstance(rows, M3Error):
                raise rows  # neither read is served: M3 cannot confirm anything, so the run stops
            grouped: dict[tuple[str, str, str], list[dict]] = {}
            for row in rows:
                grouped.setdefault((row["YEA4"], row["VSER"], row["VONO"]), []).append(row)
            by_day[day] = grouped
        claimed = _claimed_numbers(conn, [v.key for v in vouchers])
        wanted = {v.key: [number for number, rows in by_day[v.accounting_date].items()
                          if _number(number) not in claimed and _may_be(v, rows)] for v in vouchers}
        numbers = list(dict.fromkeys(n for candidates in wanted.values() for n in candidates))
        lines = self.client.execute_each("GLS200MI", [
            ("LstVoucherLines", {"YEA4": year, "VSER": series, "VONO": number}) for year, series, number in numbers],
            columns=READ_COLUMNS)
        voucher_lines = {}
        for number, rows in zip(numbers, lines):
            if isinstance(rows, M3Error):
                raise rows
            voucher_lines[number] = rows
        verdicts = {}
        for voucher in vouchers:
            matches = [n for n in wanted[voucher.key]
                       if _differs(voucher, voucher_lines[n], self.config.local_currency) is None]
            if len(matches) == 1:
                verdicts[voucher.key] = Verdict(VERIFIED, m3_voucher_number=_number(matches[0]))
            else:
                verdicts[voucher.key] = Verdict(ABSENT, error=(
                    f"{len(matches)} M3 vouchers of {voucher.accounting_date} carry exactly the lines of batch "
                    f"{voucher.m3_batch}: ({', '.join(_number(n) for n in matches)})") if matches else None)
        return verdicts

    @staticmethod
    def _judge(voucher: Voucher, answer: list[dict], local: str) -> Verdict:
        batch = voucher.m3_batch
        numbers = sorted({f"{r['YEA4']}-{r['VSER']}-{r['VONO']}" for r in answer})
        if len(numbers) != 1:
            return Verdict(FAILED, error=f"batch {batch} made {len(numbers)} vouchers in M3 ({', '.join(numbers)}); "
                                         "expected one")
        difference = _differs(voucher, answer, local)
        if difference is not None:
            return Verdict(FAILED, error=f"M3 voucher {numbers[0]} of batch {batch} {difference}; it is not the "
                                         "voucher that was meant")
        return Verdict(VERIFIED, m3_voucher_number=numbers[0])


def _in_m3(rows: list[dict], local: str, compared: list[bool]) -> list[tuple]:
    """M3's lines as (date, accounts, currency, amount, local amount where ``compared``, text)."""
    ordered = sorted(rows, key=lambda r: int(r["JSNO"]))
    days = {text: m3_date(text) for text in {r["ACDT"] for r in rows}}  # a voucher's lines share their date
    return [(days[r["ACDT"]], tuple(r[name] for _, name in ACCOUNT_FIELDS), r["CUCD"],
             m3_amount(r["CUAM"], r["CUCD"]),
             m3_amount(r["ACAM"], local) if i < len(compared) and compared[i] else None, r["VTXT"])
            for i, r in enumerate(ordered)]


def _expected(voucher: Voucher, local: str) -> list[tuple]:
    return [(ln["accounting_date"], tuple((ln[name] or "").strip() for name in ACCOUNTS), ln["currency"],
             ln["amount_minor"], _local(ln, local), ln["voucher_text"].rstrip()) for ln in voucher.lines]


def _local(line: dict, local: str) -> int | None:
    """A journal line's local amount (ACAM); a line stored before local amounts were kept has it only when it is
    in the local currency (None: M3 converts it at its own rate)."""
    if line.get("local_minor") is not None:
        return line["local_minor"]
    return line["amount_minor"] if line["currency"] == local else None


def _differs(voucher: Voucher, rows: list[dict], local: str) -> str | None:
    """How M3's lines of a voucher differ from the journal's (accounts, currency, amount, local amount where M3
    lists it and the journal has one, date, text), or None when they are the same line for line."""
    expected = _expected(voucher, local)
    listed = any(r.get("ACAM") for r in rows)
    expected = [e if listed else e[:4] + (None,) + e[5:] for e in expected]
    in_m3 = _in_m3(rows, local, [e[4] is not None for e in expected])
    if in_m3 == expected:
        return None
    differ = next((i for i, (a, b) in enumerate(zip(in_m3, expected)) if a != b), min(len(in_m3), len(expected)))
    return (f"differs from the journal at line {differ + 1} ({len(in_m3)} lines in M3, {len(expected)} in the "
            "journal)")


def _may_be(voucher: Voucher, rows: list[dict]) -> bool:
    """A listed M3 voucher can be this one: where M3 lists line texts, one of them is one of the voucher's."""
    texts = {row["VTXT"].rstrip() for row in rows if "VTXT" in row}
    return not texts or bool(texts & {ln["voucher_text"].rstrip() for ln in voucher.lines})


def _number(key: tuple[str, str, str]) -> str:
    return "-".join(key)


def _claimed_numbers(conn: duckdb.DuckDBPyConnection, keys: list[str]) -> set[str]:
    """M3 voucher numbers other GL vouchers of the outbox were verified as."""
    return {n for (n,) in conn.execute(
        f"SELECT m3_voucher_number FROM {OUTBOX} WHERE route = ? AND m3_voucher_number IS NOT NULL "
        f"AND voucher_key NOT IN (SELECT unnest(?))", [ROUTE_GL, keys]).fetchall()}

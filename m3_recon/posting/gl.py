"""GL vouchers to M3 through the generic GL interface GLS840MI, confirmed through GLS200MI.

One voucher is one GLS840 batch whose ``KEY1`` is the voucher key: ``AddBatchHead`` (the configured
interface), one ``AddBatchLine`` per journal line with a PARM string cut to the layout file (or
``AddBatchLineFld`` with the same values as fields), ``CtrlBatch`` and ``UpdBatch``, all in one voucher
group so M3 makes exactly one voucher. Whether it arrived is asked of the general ledger, never
assumed: ``GLS200MI/SearchGenLedger`` for the batch key must return the voucher's lines — same
accounts, currency, amount, date and text, line by line — and gives the M3 voucher number
(``<year>-<series>-<number>``). Because the key is unique in M3, sending a batch again answers
``XRE0104`` instead of posting twice.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from m3_recon.defs.m3.client import M3Client, M3Error, m3_amount, m3_date, minor_units
from m3_recon.posting.config import LINE_FORM_FIELDS, PostingConfig
from m3_recon.posting.layout import LayoutError
from m3_recon.posting.outbox import ROUTE_GL, Voucher
from m3_recon.posting.route import ABSENT, FAILED, VERIFIED, MICall, PostingRejected, Verdict

KEY1_LENGTH = 15
RECORD_TYPE = "I1"
VOUCHER_GROUP = 1
TECHNICAL_FIELDS = ("RNNO", "GRNR", "DIVI")  # sent when the site's template has a position for them
ACCOUNTS = tuple(f"ait{i}" for i in range(1, 8))


class GLRoute:
    route = ROUTE_GL
    program = "GLS840MI"

    def __init__(self, client: M3Client, config: PostingConfig):
        self.client, self.config = client, config

    def calls(self, voucher: Voucher) -> list[MICall]:
        key = voucher.m3_batch
        if not 1 <= len(key) <= KEY1_LENGTH or any(c.isspace() for c in key):
            raise PostingRejected(f"voucher key {key!r} cannot be an M3 KEY1 (1-{KEY1_LENGTH} characters, no blanks)")
        head = ("AddBatchHead", {"KEY1": key, "INTN": self.config.interface, "DESC": voucher.lines[0]["voucher_text"]})
        lines = [self._line(key, line) for line in voucher.lines]
        return [head, *lines, ("CtrlBatch", {"KEY1": key}), ("UpdBatch", {"KEY1": key})]

    def _line(self, key: str, line: dict) -> MICall:
        amount = m3_amount(line["amount_minor"], line["currency"])
        accounts = {name.upper(): line[name] for name in ACCOUNTS if line[name]}
        if self.config.line_form == LINE_FORM_FIELDS:
            return ("AddBatchLineFld", {
                "KEY1": key, "LINE": line["line_number"], "INRI": RECORD_TYPE, "GRNR": VOUCHER_GROUP, **accounts,
                "CUCD": line["currency"], "CUAM": format(amount, "f"),
                "ACDT": line["accounting_date"].strftime("%Y%m%d"), "VTXT": line["voucher_text"]})
        layout = self.config.layout
        technical = {"RNNO": line["line_number"], "GRNR": VOUCHER_GROUP, "DIVI": self.client.divi}
        values = {**{k: v for k, v in technical.items() if k in layout.names}, **accounts, "CUCD": line["currency"],
                  "CUAM": amount, "ACDT": line["accounting_date"], "VTXT": line["voucher_text"]}
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
        answers = self.client.execute_each(
            "GLS200MI", [("SearchGenLedger", {"SQRY": f"KEY1:{v.m3_batch}"}) for v in vouchers])
        return {v.key: self._judge(v, answer) for v, answer in zip(vouchers, answers)}

    @staticmethod
    def _judge(voucher: Voucher, answer: list[dict] | M3Error) -> Verdict:
        batch = voucher.m3_batch
        if isinstance(answer, M3Error):
            return Verdict(FAILED, error=f"GLS200MI could not search for batch {batch}: {answer}")
        if not answer:
            return Verdict(ABSENT)
        numbers = sorted({f"{r['YEA4']}-{r['VSER']}-{r['VONO']}" for r in answer})
        if len(numbers) != 1:
            return Verdict(FAILED, error=f"batch {batch} made {len(numbers)} vouchers in M3 ({', '.join(numbers)}); "
                                         "expected one")
        in_m3 = [(m3_date(r["ACDT"]), tuple(r[name.upper()] for name in ACCOUNTS), r["CUCD"],
                  minor_units(r["CUAM"], r["CUCD"]), r["VTXT"]) for r in sorted(answer, key=lambda r: int(r["JSNO"]))]
        expected = [(ln["accounting_date"], tuple((ln[name] or "").strip() for name in ACCOUNTS), ln["currency"],
                     ln["amount_minor"], ln["voucher_text"].rstrip()) for ln in voucher.lines]
        if in_m3 != expected:
            differ = next((i for i, (a, b) in enumerate(zip(in_m3, expected)) if a != b), min(len(in_m3), len(expected)))
            return Verdict(FAILED, error=(
                f"M3 voucher {numbers[0]} of batch {batch} differs from the journal at line {differ + 1} "
                f"({len(in_m3)} lines in M3, {len(expected)} in the journal); it is not the voucher that was meant"))
        return Verdict(VERIFIED, m3_voucher_number=numbers[0])

"""What a posting route is: how one kind of voucher reaches M3 and how M3 is asked whether it arrived.

A route (``GLRoute`` for GLS840MI, ``CashRoute`` for ARS040MI) turns a voucher into the MI
transactions of one M3 batch (``size`` says how many before they are built), may check M3 before
anything is sent (``before_send``) and record what it expects to see afterwards
(``record_expectations``, inside the poster's write-ahead transaction), and judges from M3's own
reads whether a voucher is there (``verify``): ``verified``, ``absent`` or ``failed``. ``accepted``
says from a batch's answers whether M3 took it (its last transaction, the update or control,
answered OK or "already updated"). The poster (``m3_recon.posting.poster``) drives routes the same
way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import duckdb

from m3_recon.clients.m3 import M3Error, minor_units
from m3_recon.posting.outbox import Voucher

RECORD_ALREADY_EXISTS = "XRE0104"
NOT_SERVED_CODES = ("XTR0001",)  # the transaction is not available to this user
ALREADY_UPDATED = "already updated"  # M3's words for a batch updated before (UNCONFIRMED wording)
VERIFIED, ABSENT, FAILED = "verified", "absent", "failed"

MICall = tuple[str, dict[str, object]]

# M3's amount texts as minor units, remembered: a day's read-backs parse 10^5 amounts, most of them seen before
# (ACAM repeats CUAM on a local-currency GL line; an invoice paid in full has 0 outstanding). A text that is no
# amount raises every time, as minor_units does.
m3_amount = functools.lru_cache(maxsize=1 << 16)(minor_units)


class PostingRejected(ValueError):
    """The voucher cannot be sent as it stands (found before any M3 call)."""


@dataclass(frozen=True)
class Verdict:
    state: str  # verified / absent / failed
    m3_voucher_number: str | None = None
    error: str | None = None


class Route(Protocol):
    route: str
    program: str

    def calls(self, voucher: Voucher) -> list[MICall]: ...

    def size(self, voucher: Voucher) -> int: ...  # len(calls(voucher)), without building them

    def touches(self, voucher: Voucher) -> set: ...

    def before_send(self, vouchers: list[Voucher]) -> dict[str, str]: ...

    def record_expectations(self, conn: duckdb.DuckDBPyConnection, vouchers: list[Voucher],
                            now: datetime) -> None: ...

    def verify(self, conn: duckdb.DuckDBPyConnection, vouchers: list[Voucher]) -> dict[str, Verdict]: ...


def not_served(error: M3Error) -> bool:
    """M3 does not offer the transaction to this user (as opposed to refusing this one call)."""
    return (error.code in NOT_SERVED_CODES or error.code.startswith("XAU")
            or "not authori" in error.message.lower())


def accepted(results: list[list[dict] | M3Error]) -> bool:
    """M3 took the batch: its last transaction (GLS840 ``UpdBatch``, ARS040 ``ControlBatch``) answered OK,
    or refused because M3 had already updated the batch."""
    if not results:
        return False
    last = results[-1]
    return not isinstance(last, M3Error) or ALREADY_UPDATED in last.message.lower()


def first_error(results: list[list[dict] | M3Error]) -> str | None:
    """The first NOK of a voucher's transactions that is not "already exists" (a resumed step)."""
    for result in results:
        if isinstance(result, M3Error) and result.code != RECORD_ALREADY_EXISTS:
            return str(result)
    return None

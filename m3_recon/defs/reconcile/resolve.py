"""``resolve_exception``: finance records a decision on an exception from the Dagster UI's Launchpad.

Typed run config (exception id, action, invoice, why, by) goes through the same gate as
``m3-recon exceptions resolve`` (``m3_recon.reconcile.decisions.decide``) against the analysts' copy of
the register, and lands in the same decisions file; the next ``payout_close`` covering the exception's
day applies it. A decision that does not fit its exception fails the run with the reason, records
nothing.
"""
# No `from __future__ import annotations` here: Dagster reads the config annotations at runtime.
from enum import Enum
from typing import Optional

import dagster as dg
import duckdb
from pydantic import Field

from m3_recon import settings
from m3_recon.journals import AccountMap
from m3_recon.reconcile.decisions import DecisionError, decide, new_decision


class Action(Enum):
    assign = "assign"
    accept = "accept"
    write_off = "write_off"
    dismiss = "dismiss"


class ResolveExceptionConfig(dg.Config):
    exception_id: str = Field(description="the exception, as the register and alerts name it: EX-1A2B3C4D5E6F")
    action: Action = Field(description="assign / accept (a payment exception), write_off (an overpayment within "
                                       "the limit) or dismiss")
    why: str = Field(description="the reason, kept with the decision")
    by: str = Field(description="who decides")
    invoice: Optional[str] = Field(default=None, description="M3 invoice number (assign; or which candidate to accept)")
    invoice_year: Optional[int] = Field(default=None, description="M3 invoice year, when the number repeats")


@dg.op(description="Check the decision against the exception register and append it to the decisions file.")
def record_exception_decision(context: dg.OpExecutionContext, config: ResolveExceptionConfig) -> None:
    decision = new_decision(config.exception_id.strip(), config.action.value, config.by, config.why,
                            config.invoice or None, config.invoice_year)
    try:
        with duckdb.connect(settings.analyst_duckdb_path(), read_only=True) as register:
            recorded = decide(register, decision, AccountMap.load().write_off_limit_minor)
    except (DecisionError, duckdb.IOException) as exc:
        raise dg.Failure(description=f"Not recorded: {exc}") from None
    for note in recorded.notes:
        context.log.warning(f"{config.exception_id}: {note}")
    context.log.info(f"Recorded {decision.action} for {decision.exception_id} (was {recorded.was}) in {recorded.path}; "
                     "the next payout_close for its day applies it.")
    context.add_output_metadata({"exception_id": decision.exception_id, "action": decision.action,
                                 "was": recorded.was, "supersedes": recorded.decision.supersedes or "",
                                 "decisions_file": dg.MetadataValue.path(str(recorded.path)),
                                 "notes": dg.MetadataValue.md("\n".join(f"* {n}" for n in recorded.notes) or "none")})


@dg.job(description="Record finance's decision on one exception (assign, accept, write_off, dismiss) from the "
                    "Launchpad; the next payout_close applies it. Same checks and file as "
                    "`m3-recon exceptions resolve`.", tags={"m3_recon/kind": "decision"})
def resolve_exception():
    record_exception_decision()

"""What an operator sees while ``m3-recon backfill`` / ``demo`` run: each step as it starts and ends, who holds
a pool slot the run waits for, and a closing summary.

``RunWatch`` follows one run's step events in the instance's event log from a background thread (the run
itself executes in the calling thread). Where a terminal is attached the running step is shown on one
line that updates every second; otherwise every event is a plain line, fit for a log file. While the
run waits for a ``duckdb_writer`` slot it says, every few seconds, which run holds it and whether that
run's process is alive; a holder whose process is gone is reaped (``run_guard``) so the wait ends.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

import dagster as dg

from m3_recon import run_guard

POLL_SECONDS = 0.5
WAIT_REPORT_SECONDS = 5.0
STEP_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
               dg.DagsterEventType.ASSET_MATERIALIZATION}


def figures(metadata: dict) -> str:
    """The counts and amounts of a materialisation: its numeric metadata, and each amount as money in its currency
    (``paid_out=1.00 EUR; 2.50 USD``, the text published beside its minor units ``paid_out_minor``); minor units
    themselves are never shown, as they carry no currency."""
    shown = []
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, str) and f"{key}_minor" in metadata:
            shown.append(f"{key}={raw}")
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool) and not key.endswith(("_minor", "_cents")):
            shown.append(f"{key}={raw:,}" if isinstance(raw, int) else f"{key}={raw:g}")
    return " ".join(shown)


class RunWatch:
    """Prints a run's progress to ``out`` while it executes; use as a context manager around the execution."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, out: TextIO | None):
        self.instance, self.run_id, self.out = instance, run_id, out
        self.live = bool(out is not None and getattr(out, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"watch-{run_id[:8]}", daemon=True)
        self._cursor: str | None = None
        self._started: dict[str, float] = {}
        self._figures: dict[str, list[str]] = {}
        self._status_shown = False

    def __enter__(self) -> "RunWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()  # the last events, written after the thread's final poll
        self._clear_status()

    # -- the thread ----------------------------------------------------------------------------------------
    def _follow(self) -> None:
        last_wait_report = time.monotonic()
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._drain()
                if time.monotonic() - last_wait_report >= WAIT_REPORT_SECONDS:
                    last_wait_report = time.monotonic()
                    self._report_wait()
                self._show_status()
            except Exception as exc:  # noqa: BLE001 - progress display must never break the run
                self._say(f"  (progress display stopped: {type(exc).__name__}: {exc})", always=True)
                return

    def _drain(self) -> None:
        while True:
            page = self.instance.get_records_for_run(self.run_id, cursor=self._cursor, of_type=STEP_EVENTS,
                                                     limit=200)
            for record in page.records:
                self._event(record.event_log_entry)
            self._cursor = page.cursor
            if not page.has_more:
                return

    def _event(self, entry) -> None:
        event = entry.dagster_event
        step = event.step_key or "?"
        if event.event_type == dg.DagsterEventType.STEP_START:
            self._started[step] = entry.timestamp
            if not self.live:
                self._say(f"  started  {step}")
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            shown = figures(event.event_specific_data.materialization.metadata)
            key = event.event_specific_data.materialization.asset_key.to_user_string()
            line = f"{key}: {shown}" if shown else key
            if line not in self._figures.setdefault(step, []):  # a range run repeats it for each partition
                self._figures[step].append(line)
        else:
            seconds = entry.timestamp - self._started.pop(step, entry.timestamp)
            if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                self._say(f"  done     {step} ({seconds:.1f} s)"
                          + "".join(f"\n             {line}" for line in self._figures.pop(step, [])))
            else:
                error = event.event_specific_data.error
                reason = error.message.strip().splitlines()[0] if error else "see the run in the UI"
                self._say(f"  FAILED   {step} after {seconds:.1f} s: {reason}", always=True)

    def _report_wait(self) -> None:
        pools = run_guard.waiting_steps(self.instance, self.run_id)
        if not pools:
            return
        holders = [h for h in run_guard.slot_holders(self.instance, exclude_run=self.run_id) if h.pool in pools]
        if not holders:  # a slot being handed over between two steps
            return
        held = "; ".join(h.describe() for h in holders)
        self._say(f"  waiting  for pool {', '.join(pools)}: held by {held}", always=True)
        if any(h.stale for h in holders):
            for line in run_guard.reap_dead_runs(self.instance):
                self._say(f"  freed    {line}", always=True)

    # -- output --------------------------------------------------------------------------------------------
    def _say(self, line: str, always: bool = False) -> None:
        out = self.out if self.out is not None else (sys.stderr if always else None)
        if out is None:
            return
        self._clear_status()
        print(line, file=out, flush=True)

    def _show_status(self) -> None:
        if not self.live or not self._started:
            return
        step, began = next(iter(self._started.items()))
        self.out.write(f"\r  running  {step} … {time.time() - began:.0f} s\033[K")
        self.out.flush()
        self._status_shown = True

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\033[K")
            self._status_shown = False


def summary(results: list[dg.ExecuteInProcessResult]) -> str:
    """The close in one paragraph: payments matched, exceptions opened, vouchers posted / verified / held."""
    latest: dict[str, dict] = {}
    for result in results:
        for event in result.get_asset_materialization_events():
            materialization = event.event_specific_data.materialization
            latest[materialization.asset_key.to_user_string()] = {
                k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    lines = []
    matching = latest.get("core_payment_allocations")
    if matching:
        lines.append(f"payments: {matching.get('payments', 0):,} in the period, {matching.get('auto_matched', 0):,} "
                     f"matched, {matching.get('suggested', 0):,} suggested, {matching.get('unmatched', 0):,} unmatched")
    register = latest.get("out_recon_exceptions")
    if register:
        lines.append(f"exceptions: {register.get('new', 0):,} opened, {register.get('cleared', 0):,} cleared, "
                     f"{register.get('open', 0):,} open")
    journals = latest.get("core_gl_journal_lines")
    if journals:
        lines.append(f"journals: {journals.get('vouchers', 0):,} vouchers, {journals.get('held_vouchers', 0):,} held")
    posting = latest.get("out_m3_postings")
    if posting:
        lines.append("M3: " + ", ".join(f"{posting.get(k, 0):,} {k}" for k in ("posted", "verified", "held", "failed")
                                        if k in posting or k in ("posted", "verified")))
    return "\n".join(f"  {line}" for line in lines)

"""The exactly-once poster: vouchers from the outbox to M3 in bulk calls, each verified by reading M3 back.

``post_pending(conn, client, config)`` first brings ``out_m3_postings`` in line with the journals
(``outbox.enqueue``), then for each route (GL through GLS840MI, cash application through ARS040MI):

1. Vouchers left ``sent`` by an earlier run that stopped, and ``posted_unverified`` ones, are looked up
   in M3 first. Those M3 already has are verified without sending anything. A ``sent`` one M3 does not
   show is sent again from the start, which asks M3 whether its batch exists: a batch M3 holds
   answers ``XRE0104`` and is resumed, an updated one says so; a ``posted_unverified`` one is never
   resent and stays ``posted_unverified`` until M3 shows it.
2. Vouchers go out in waves of at most one bulk call's worth of transactions (``M3_BULK_SIZE``).
   A wave is prepared (its MI transactions built, the route's checks in M3) and then marked ``sent``
   in DuckDB (write-ahead, one transaction) before its bulk call, which carries every batch's head,
   lines, control and update. ``M3_POSTING_CONCURRENCY`` of these stages may run at once (default 2:
   the next wave is prepared, or a wave read back, while one is sent; sends one at a time in journal
   order, so M3 numbers vouchers in that order; 1 is strictly sequential), never two waves that touch
   the same thing in M3; all DuckDB writes stay on the caller's thread.
3. The wave is verified by reading M3 (GLS200MI for GL, ARS200MI for cash) and only then becomes
   ``verified`` (with the M3 voucher number). A voucher M3 does not show becomes ``posted_unverified``
   when M3 accepted its update / control, and ``failed`` (with M3's reason) when M3 refused it.

Exactly once rests on three facts: the batch key (GLS840 ``KEY1`` = the voucher key, ARS040 ``PBID``
from the outbox) is fixed before the first call; M3 refuses a second batch, line or update under a
key it already has (``XRE0104`` / "already updated"), which the poster treats as "this step is done";
and nothing is called verified until M3's own reads show it. So whatever stops a run — a crash, a
timeout after M3 did the work, 5xx or 429 beyond the retries — the next run finds the batches M3
holds and finishes them, never posting one twice. When M3 stays unreachable the run stops with
``PostingInterrupted`` (its summary attached) after noting the error on the wave's vouchers.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, TypeVar

import duckdb

from m3_recon.clients.m3 import M3Client
from m3_recon.errors import VendorError
from m3_recon.heap import bulk_work
from m3_recon.posting import outbox
from m3_recon.posting.cash import CashRoute
from m3_recon.posting.config import PostingConfig, posting_config_from_env
from m3_recon.posting.gl import GLRoute
from m3_recon.posting.outbox import FAILED, HELD, POSTED_UNVERIFIED, SENT, VERIFIED, Voucher
from m3_recon.posting.route import ABSENT, MICall, PostingRejected, Route, Verdict, accepted, first_error
from m3_recon.warehouse import naive_utc

T = TypeVar("T")

# What happened to a voucher in one run.
POSTED = "posted"  # sent for the first time and verified
RESUMED = "resumed"  # left "sent" by an earlier run; verified now (found in M3, or finished)
NOT_POSTED = "failed"  # M3 refused it, it could not be sent, or M3 shows something else
KEPT = "held"  # held: never posted
CHANGED = "changed"  # changed after it was sent: a conflict for a person
INTERRUPTED = "interrupted"  # M3 could not be reached; the next run resumes it
UNVERIFIED = "unverified"  # M3 accepted it but does not show it yet: never resent, verified again next run
ACTIONS = (POSTED, RESUMED, NOT_POSTED, KEPT, CHANGED, INTERRUPTED, UNVERIFIED)
_PREPARE, _SEND, _READ_BACK = "prepare", "send", "read back"  # a wave's stages on worker threads


@dataclass(frozen=True)
class VoucherOutcome:
    route: str
    voucher_key: str
    status: str  # the outbox status afterwards
    action: str  # one of ACTIONS
    m3_voucher_number: str | None = None
    error: str | None = None


@dataclass
class PostingSummary:
    outcomes: list[VoucherOutcome] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for o in self.outcomes if o.action == action)

    @property
    def posted(self) -> int:
        return self.count(POSTED)

    @property
    def verified(self) -> int:
        """Vouchers verified in this run (newly posted or resumed)."""
        return self.count(POSTED) + self.count(RESUMED)

    @property
    def failed(self) -> int:
        return self.count(NOT_POSTED)

    @property
    def held(self) -> int:
        return self.count(KEPT)

    @property
    def unverified(self) -> int:
        return self.count(UNVERIFIED)

    def counts(self) -> dict[str, int]:
        return {"posted": self.posted, "verified": self.verified, **{a: self.count(a) for a in ACTIONS[1:]}}


class PostingInterrupted(RuntimeError):
    """M3 could not be reached (or refused the credentials) mid-run; ``summary`` holds what was done."""

    def __init__(self, summary: PostingSummary, message: str):
        super().__init__(message)
        self.summary = summary


def _now() -> datetime:
    return naive_utc(datetime.now(timezone.utc))


def post_pending(conn: duckdb.DuckDBPyConnection, client: M3Client,
                 config: PostingConfig | None = None) -> PostingSummary:
    """Enqueue what the journals hold, post every pending voucher once, verify it in M3; see the module doc."""
    config = config or posting_config_from_env()
    summary = PostingSummary()
    for conflict in outbox.enqueue(conn, _now()):
        summary.outcomes.append(VoucherOutcome(conflict.route, conflict.key, conflict.status, CHANGED,
                                               error=conflict.message))
    for route, key, reason in outbox.held(conn):
        summary.outcomes.append(VoucherOutcome(route, key, HELD, KEPT, error=reason))
    with bulk_work():  # see m3_recon.heap: 10^5 transactions' objects alive at a time
        for route in (GLRoute(client, config), CashRoute(client, config)):
            _Run(conn, client, route, summary, config.concurrency).post()
    return summary


class _Run:
    """One route's share of a run."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, client: M3Client, route: Route, summary: PostingSummary,
                 concurrency: int = 1):
        self.conn, self.client, self.route, self.summary = conn, client, route, summary
        self.concurrency = concurrency
        self._sent: set[str] = set()  # marked sent in this run

    def post(self) -> None:
        vouchers = outbox.work(self.conn, self.route.route)
        known = [v for v in vouchers if v.status in (SENT, POSTED_UNVERIFIED)]
        found = self._guard(known, lambda: self.route.verify(self.conn, known)) if known else {}
        settled = [v for v in known if found[v.key].state != ABSENT or v.status == POSTED_UNVERIFIED]
        self._conclude([(v, found[v.key], []) for v in settled])
        settled_keys = {v.key for v in settled}
        self._post_waves(self._waves([v for v in vouchers if v.key not in settled_keys]))

    def _waves(self, vouchers: list[Voucher]) -> list[tuple[list[Voucher], set]]:
        """At most one bulk call of transactions per wave (a bigger voucher alone), and no two vouchers
        in a wave that touch the same thing in M3; each wave with what it touches."""
        waves, current, size, touched = [], [], 0, set()
        for voucher in vouchers:
            touches, transactions = self.route.touches(voucher), self.route.size(voucher)
            if current and (size + transactions > self.client.bulk_size or touches & touched):
                waves.append((current, touched))
                current, size, touched = [], 0, set()
            current.append(voucher)
            size += transactions
            touched = touched | touches
        if current:
            waves.append((current, touched))
        return waves

    def _post_waves(self, waves: list[tuple[list[Voucher], set]]) -> None:
        """Waves are prepared (MI transactions built, the route's checks in M3), sent and read back on worker
        threads, at most ``concurrency`` of these at once of which at most ``concurrency - 1`` sends: 1 is
        strictly sequential (prepare, send, read back, next wave); 2 prepares the next wave or reads one back
        while a wave is sent, sends one at a time in journal order (so M3 numbers the vouchers in that
        order); more sends independent waves in parallel. At most one wave waits prepared. Everything DuckDB
        writes (write-ahead ``sent`` once a wave is prepared, outcomes) happens here, on the caller's thread,
        so a wave is marked ``sent`` before it leaves. A wave is not prepared while one in flight or waiting
        touches the same thing in M3. When M3 cannot be reached no further wave starts; those in flight are
        concluded, then the run stops."""
        limit = max(1, self.concurrency)
        send_limit = max(1, limit - 1)
        pending = deque(waves)
        ready: deque[tuple[list[tuple[Voucher, list[MICall]]], set]] = deque()  # marked sent, in journal order
        in_flight: dict[Future, tuple[str, list, set]] = {}
        stopped: list[tuple[list[Voucher], VendorError]] = []
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix=f"m3-post-{self.route.route}") as pool:
            while pending or ready or in_flight:
                kinds = [kind for kind, _, _ in in_flight.values()]
                free = not stopped and len(in_flight) < limit
                if free and ready and kinds.count(_SEND) < send_limit:
                    wave, touches = ready.popleft()
                    in_flight[pool.submit(self._send, wave)] = (_SEND, wave, touches)
                    continue
                if (free and pending and not ready and _PREPARE not in kinds
                        and not any(pending[0][1] & touched for _, _, touched in in_flight.values())):
                    vouchers, touches = pending.popleft()
                    in_flight[pool.submit(self._prepare, vouchers)] = (_PREPARE, vouchers, touches)
                    continue
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    kind, wave, touches = in_flight.pop(future)
                    try:
                        outcome = future.result()
                    except VendorError as exc:  # M3 could not be reached
                        stopped.append((wave if kind == _PREPARE else [v for v, _ in wave], exc))
                        continue
                    if kind == _PREPARE:
                        prepared = self._start_wave(*outcome)
                        if prepared:
                            ready.append((prepared, touches))
                    elif kind == _SEND:
                        in_flight[pool.submit(self._read_back, wave, outcome)] = (_READ_BACK, wave, touches)
                    else:
                        self._conclude(outcome)
        if stopped:
            stopped += [([v for v, _ in wave], stopped[0][1]) for wave, _ in ready]  # marked sent, not sent
            raise self._interrupted(stopped) from stopped[0][1]

    def _prepare(self, vouchers: list[Voucher]) -> tuple[list[tuple[Voucher, list[MICall]]],
                                                          list[tuple[Voucher, str]]]:
        """On a worker thread: each voucher's MI transactions, then the route's checks in M3 before sending;
        the wave to send, and the vouchers that cannot be sent with why."""
        wave, refused = [], []
        for voucher in vouchers:
            try:
                wave.append((voucher, self.route.calls(voucher)))
            except PostingRejected as exc:
                refused.append((voucher, str(exc)))
        reasons = self.route.before_send([v for v, _ in wave])
        refused += [(v, reasons[v.key]) for v, _ in wave if v.key in reasons]
        return [(v, calls) for v, calls in wave if v.key not in reasons], refused

    def _start_wave(self, wave: list[tuple[Voucher, list[MICall]]],
                    refused: list[tuple[Voucher, str]]) -> list[tuple[Voucher, list[MICall]]]:
        """A prepared wave: the vouchers that cannot be sent are failed, then the write-ahead: the others are
        ``sent`` (one transaction)."""
        self._conclude([(v, Verdict(FAILED, error=reason), []) for v, reason in refused])
        vouchers = [v for v, _ in wave]
        if not wave:
            return wave
        now = _now()
        self.conn.execute("BEGIN TRANSACTION")
        try:
            outbox.mark_sent(self.conn, vouchers, now)
            self.route.record_expectations(self.conn, vouchers, now)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._sent.update(v.key for v in vouchers)
        return wave

    def _send(self, wave: list[tuple[Voucher, list[MICall]]]) -> list:
        """On a worker thread: the wave's bulk call(s); every transaction's answer, in order."""
        return self.client.execute_each(self.route.program, [call for _, calls in wave for call in calls])

    def _read_back(self, wave: list[tuple[Voucher, list[MICall]]],
                   results: list) -> list[tuple[Voucher, Verdict, list]]:
        """On a worker thread: M3's read-back of a sent wave (DuckDB read on its own cursor), judged per voucher."""
        cursor = self.conn.cursor()
        try:
            verdicts = self.route.verify(cursor, [v for v, _ in wave])
        finally:
            cursor.close()
        judged, start = [], 0
        for voucher, calls in wave:
            judged.append((voucher, verdicts[voucher.key], results[start:start + len(calls)]))
            start += len(calls)
        return judged

    def _conclude(self, judged: list[tuple[Voucher, Verdict, list]]) -> None:
        """Record verified / posted_unverified / failed vouchers. One that M3 does not show is
        ``posted_unverified`` when M3 accepted its batch (now or in an earlier run), otherwise failed
        with the first refusal M3 gave for it."""
        rows = []
        for voucher, verdict, results in judged:
            if verdict.state == VERIFIED:
                status, error = VERIFIED, None
                action = POSTED if voucher.status == outbox.PENDING else RESUMED
            elif verdict.state == ABSENT and (voucher.status == POSTED_UNVERIFIED or accepted(results)):
                status, action = POSTED_UNVERIFIED, UNVERIFIED
                error = verdict.error or (
                    f"M3 accepted batch {voucher.m3_batch} but does not show the voucher yet; it is never sent "
                    "again and the next posting run looks for it again")
            else:
                status, action = FAILED, NOT_POSTED
                error = verdict.error or first_error(results) or (
                    f"M3 accepted every transaction of batch {voucher.m3_batch} but shows nothing for it")
            rows.append((voucher, status, verdict.m3_voucher_number, error))
            self.summary.outcomes.append(VoucherOutcome(voucher.route, voucher.key, status, action,
                                                        verdict.m3_voucher_number, error))
        outbox.record_outcomes(self.conn, rows, _now())

    def _guard(self, vouchers: list[Voucher], call: Callable[[], T]) -> T:
        """Run an M3 exchange; if M3 cannot be reached, note it on the vouchers and stop the run."""
        try:
            return call()
        except VendorError as exc:
            raise self._interrupted([(vouchers, exc)]) from exc

    def _interrupted(self, stopped: list[tuple[list[Voucher], VendorError]]) -> PostingInterrupted:
        """Note on each voucher the error that stopped its exchange with M3; the run's ``PostingInterrupted``."""
        for vouchers, exc in stopped:
            message = f"stopped before M3 confirmed this voucher: {exc}"
            outbox.note_error(self.conn, vouchers, message, _now())
            for voucher in vouchers:
                status = SENT if voucher.key in self._sent else voucher.status
                self.summary.outcomes.append(VoucherOutcome(voucher.route, voucher.key, status, INTERRUPTED,
                                                            error=message))
        count, exc = sum(len(vouchers) for vouchers, _ in stopped), stopped[0][1]
        return PostingInterrupted(self.summary, (
            f"M3 posting stopped at {count} {self.route.route} voucher(s): {exc}. "
            f"{self.summary.verified} voucher(s) were verified before; the next run resumes the rest "
            "without posting any twice"))

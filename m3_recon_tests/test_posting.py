"""The exactly-once poster against the M3 sandbox over real HTTP: GLS840MI vouchers, ARS040MI payment
batches, read-back verification, and identical final M3 state after kills, lost answers and faults."""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from m3_recon.clients.m3 import M3Client
from m3_recon.posting.config import PaymentMethod, PostingConfig, posting_config_from_env
from m3_recon.posting.gates import BLOCK_COLUMNS, BLOCKS, posting_blocks
from m3_recon.posting.contract import CASH_APPLICATION_COLUMNS, GL_JOURNAL_LINE_COLUMNS
from m3_recon.posting.cash import CashRoute
from m3_recon.posting.gl import GLRoute
from m3_recon.posting.layout import LayoutError, ParmLayout
from m3_recon.posting.outbox import ROUTE_CASH, ROUTE_GL, Voucher
from m3_recon.posting.poster import PostingInterrupted, post_pending
from m3_recon.posting.summary import print_posting_summary
from m3_recon.reconcile.window import journal_exceptions
from m3_recon.sandbox.m3_api import (SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_PASSWORD,
                                     SANDBOX_M3_TENANT, SANDBOX_M3_USERNAME, M3App, write_ionapi_file)
from m3_recon.sandbox.m3_ledger import TRCD_PAYMENT, M3Ledger
from m3_recon.sandbox.server import Fault, SandboxClock, VendorServer
from m3_recon.sandbox.world import Period
from m3_recon.settings import SettingsError

SEED = 11
PERIOD = Period(date(2026, 10, 1), 10)
NOW = PERIOD.end_epoch + 86_400
BULK = 8  # transactions per bulk call: small, so a run has many waves and the big vouchers span two calls
FAST = {"sleep": lambda seconds: None, "requests_per_second": 1_000, "bulk_size": BULK}
API = f"/{SANDBOX_M3_TENANT}/M3/"
CONFIG = posting_config_from_env({})
BIG = "JV2610020001"  # 8 lines: head + 7 lines in one bulk call, line 8 + CtrlBatch + UpdBatch in the next
HELD = "JV2610040002"
SPLIT = "CA2610070001"  # 7 applications: head + 7 lines in one bulk call, ControlBatch in the next


class M3Sandbox:
    """One M3 sandbox (ledger, clock, server) for one test; restartable when its ledger is a file."""

    def __init__(self, world, folder: Path, ledger_path: Path | None = None, quirks: frozenset[str] = frozenset(),
                 **ledger_options):
        self.world, self.folder, self.ledger_path, self.ledger_options = world, folder, ledger_path, ledger_options
        self.quirks = quirks
        folder.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        self.ledger = M3Ledger(self.world, self.ledger_path, **self.ledger_options)
        self.clock = SandboxClock(NOW)
        self.app = M3App(self.ledger, self.clock, SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET,
                         SANDBOX_M3_USERNAME, SANDBOX_M3_PASSWORD, SANDBOX_M3_TENANT, quirks=self.quirks)
        self.server = VendorServer(self.app, self.clock).start()
        self.ionapi = write_ionapi_file(self.folder / "m3.ionapi", self.server.url)

    def stop(self) -> None:
        self.server.stop()

    def client(self, **options) -> M3Client:
        return M3Client.from_ionapi(self.ionapi, 100, "AAA", **{**FAST, **options})

    def state(self) -> tuple[list, list]:
        """Everything the poster can have changed in M3: GL lines and cash applied, with their numbers."""
        gl = sorted((ln.batch_key, ln.year, ln.voucher_series, ln.voucher, ln.journal, ln.journal_seq,
                     ln.accounting_date, ln.accounts, ln.currency, ln.amount_minor, ln.text)
                    for ln in self.ledger.gl_lines(NOW))
        cash = sorted((ln.invoice, ln.invoice_year, ln.amount_minor, ln.voucher, ln.journal, ln.journal_seq,
                       ln.accounting_date) for ln in self.ledger.lines(NOW) if ln.trcd == TRCD_PAYMENT)
        return gl, cash

    def outstanding(self, invoice) -> int:
        return self.ledger.totals(NOW)[invoice.customer, invoice.number, invoice.year].outstanding_minor


@pytest.fixture(scope="module")
def stopping():
    """Sandboxes stop in the background (each stop waits out the server's poll interval); joined once."""
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join()


@pytest.fixture
def sandboxes(world, tmp_path, stopping):
    made = []

    def make(**options) -> M3Sandbox:
        sandbox = M3Sandbox(world, tmp_path / f"m3-{len(made)}", **options)
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        stopping.append(threading.Thread(target=sandbox.stop))
        stopping[-1].start()


def journal_rows(world) -> tuple[list[dict], list[dict]]:
    """GL vouchers (one big, three payouts of which one in EUR, one held) and three cash vouchers."""
    gl = []

    def voucher(key: str, day: date, currency: str, lines: list[tuple], held: str | None = None) -> None:
        for number, (accounts, amount) in enumerate(lines, start=1):
            gl.append({"voucher_key": key, "line_number": number, "accounting_date": day, "currency": currency,
                       **{f"ait{i}": a for i, a in enumerate(accounts, start=1)}, "amount_minor": amount,
                       "voucher_text": f"Stripe payout po_{key[-6:]}", "processor": "stripe",
                       "payout_id": f"po_{key[-6:]}", "entry": "payout", "route": "gl",
                       "held_reason": held if number == 1 else None})

    charges = [12_345, 990, 45_000, 1_205, 77_777, 310, 8_800]
    voucher(BIG, date(2026, 10, 2), "USD",
            [(("1580", "STRIPE"), amount) for amount in charges] + [(("3010",), -sum(charges))])
    for day, key, currency, net, fee in [(3, "JV2610030001", "USD", 98_231, 2_911), (4, HELD, "USD", 500, 25),
                                         (5, "JV2610050001", "EUR", 40_000, 1_237), (6, "JV2610060001", "USD", 7, 1)]:
        voucher(key, date(2026, 10, day), currency, [(("1930", "", "BANK1"), net), (("6570", "STRIPE"), fee),
                                                     (("1580", "STRIPE"), -(net + fee))],
                held="no account mapped for category adjustment" if key == HELD else None)
    usd, eur = payable(world)
    cash = []
    for key, day, applications in [
            (SPLIT, date(2026, 10, 7), [(inv, inv.amount_minor if n < 3 else inv.amount_minor // 2)
                                        for n, inv in enumerate(usd[:7])]),
            ("CA2610070002", date(2026, 10, 7), [(usd[3], usd[3].amount_minor // 3)]),  # same invoice again
            ("CA2610080001", date(2026, 10, 8), [(eur, eur.amount_minor)])]:
        for number, (inv, amount) in enumerate(applications, start=1):
            cash.append({"voucher_key": key, "line_number": number, "accounting_date": day, "customer": inv.customer,
                         "invoice_number": inv.number, "invoice_year": inv.year, "currency": inv.currency,
                         "amount_minor": amount, "processor": "stripe", "source_id": f"ch_{key}_{number}"})
    return gl, cash


def payable(world):
    invoices = [inv for inv in world.invoices if inv.invoice_date <= PERIOD.end]
    return [inv for inv in invoices if inv.currency == "USD"][:7], next(inv for inv in invoices if inv.currency == "EUR")


def write_journals(path: Path, gl: list[dict], cash: list[dict]) -> None:
    with duckdb.connect(str(path)) as conn:
        for table, columns, rows in (("core_gl_journal_lines", GL_JOURNAL_LINE_COLUMNS, gl),
                                     ("core_cash_applications", CASH_APPLICATION_COLUMNS, cash)):
            conn.execute(f"CREATE OR REPLACE TABLE {table} ({', '.join(f'{c} {t}' for c, t in columns.items())})")
            for row in rows:
                conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                             list(row.values()))


def outbox_state(path: Path) -> list[tuple]:
    with duckdb.connect(str(path)) as conn:
        return conn.execute("SELECT route, voucher_key, status, m3_voucher_number, m3_batch, line_count, "
                            "content_hash FROM out_m3_postings ORDER BY ALL").fetchall()


def post(path: Path, client: M3Client, config: PostingConfig = CONFIG):
    with duckdb.connect(str(path)) as conn:  # a fresh connection per run, as a new process would open it
        return post_pending(conn, client, config)


@pytest.fixture
def warehouse(world, tmp_path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    write_journals(path, *journal_rows(world))
    return path


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """A fault-free run: the M3 state and outbox every faulty run must end with."""
    folder = tmp_path_factory.mktemp("reference")
    sandbox = M3Sandbox(world, folder / "m3")
    path = folder / "warehouse.duckdb"
    write_journals(path, *journal_rows(world))
    post(path, sandbox.client())
    yield sandbox.state(), outbox_state(path)
    sandbox.stop()


# -- the happy path ----------------------------------------------------------------------------------------
def test_every_voucher_is_posted_once_verified_in_m3_and_a_rerun_posts_nothing(world, sandboxes, warehouse):
    m3 = sandboxes()
    summary = post(warehouse, m3.client())
    assert summary.counts() == {"posted": 7, "verified": 7, "resumed": 0, "failed": 0, "held": 1, "changed": 0,
                                "interrupted": 0, "unverified": 0}
    outcomes = {o.voucher_key: o for o in summary.outcomes}
    assert {k: o.m3_voucher_number for k, o in outcomes.items() if o.route == ROUTE_GL} == {
        BIG: "2026-GL-1", "JV2610030001": "2026-GL-2", HELD: None, "JV2610050001": "2026-GL-3",
        "JV2610060001": "2026-GL-4"}
    assert outcomes[HELD].status == "held" and outcomes[HELD].error == "no account mapped for category adjustment"

    gl, cash = journal_rows(world)
    for key in {row["voucher_key"] for row in gl}:
        in_m3 = [(ln.accounting_date, ln.accounts, ln.currency, ln.amount_minor, ln.text)
                 for ln in sorted(m3.ledger.gl_lines_of_batch(key, NOW), key=lambda ln: ln.journal_seq)]
        journal = [(r["accounting_date"], tuple(r.get(f"ait{i}", None) or "" for i in range(1, 8)), r["currency"],
                    r["amount_minor"], r["voucher_text"]) for r in gl if r["voucher_key"] == key]
        assert in_m3 == ([] if key == HELD else journal)
    eur_voucher = m3.ledger.gl_lines_of_batch("JV2610050001", NOW)
    assert {ln.currency for ln in eur_voucher} == {"EUR"} and all(ln.rate != 1 for ln in eur_voucher)

    usd, eur = payable(world)
    assert [m3.outstanding(inv) for inv in usd] == (
        [0, 0, 0] + [usd[3].amount_minor - usd[3].amount_minor // 2 - usd[3].amount_minor // 3]
        + [inv.amount_minor - inv.amount_minor // 2 for inv in usd[4:]])
    assert m3.outstanding(eur) == 0
    [record] = m3.client().execute("ARS200MI", "GetInvTotInfo", PYNO=usd[0].customer, CINO=usd[0].number,
                                   INYR=usd[0].year, CUNO=usd[0].customer)
    assert (record["RECO"], record["OCUA"], record["DTP5"]) == ("9", "0", "20261007")
    payments = [ln for ln in m3.ledger.lines(NOW) if ln.trcd == TRCD_PAYMENT]
    assert len({ln.voucher for ln in payments}) == 3 and len(payments) == 9  # one payment voucher per batch

    statuses = {(route, key): (status, batch) for route, key, status, _, batch, *_ in outbox_state(warehouse)}
    assert statuses[ROUTE_GL, BIG] == ("verified", BIG)
    assert all(status == "verified" and len(batch) == 10 and batch.isdigit()
               for (route, _), (status, batch) in statuses.items() if route == ROUTE_CASH)

    state, served = m3.state(), m3.server.faults.served
    again = post(warehouse, m3.client())
    assert again.counts() == {"posted": 0, "verified": 0, "resumed": 0, "failed": 0, "held": 1, "changed": 0,
                              "interrupted": 0, "unverified": 0}
    assert m3.state() == state and m3.server.faults.served == served  # not a single call to M3


def test_a_cash_batch_says_how_many_transactions_it_sends_before_they_are_built(sandboxes):
    m3 = sandboxes()
    lines = tuple({"line_number": n, "processor": "stripe", "invoice_number": f"10{n}", "invoice_year": 2026,
                   "customer": "C1", "amount_minor": 100 * n, "currency": "USD", "source_id": f"ch_{n}",
                   "accounting_date": date(2026, 10, 5)} for n in (1, 2, 3))
    voucher = Voucher(ROUTE_CASH, "CA1", "pending", "CA1", date(2026, 10, 5), lines)
    route = CashRoute(m3.client(), CONFIG)
    calls = route.calls(voucher)
    assert [name for name, _ in calls] == ["AddBatchHead", *["AddBatchLine"] * 3, "ControlBatch"]
    assert route.size(voucher) == len(calls)  # waves are cut by size before the calls exist


def test_parm_strings_are_cut_to_the_gls850_template(sandboxes):
    m3 = sandboxes()
    line = {"line_number": 3, "accounting_date": date(2026, 10, 5), "ait1": "1580", "ait2": "STRIPE", "ait3": None,
            "ait4": None, "ait5": None, "ait6": None, "ait7": None, "currency": "USD", "amount_minor": -123_456,
            "voucher_text": "Stripe payout po_1"}
    voucher = Voucher(ROUTE_GL, "JV1", "pending", "JV1", line["accounting_date"], (line,))
    calls = GLRoute(m3.client(), CONFIG).calls(voucher)
    assert [name for name, _ in calls] == ["AddBatchHead", "AddBatchLine", "CtrlBatch", "UpdBatch"]
    assert GLRoute(m3.client(), CONFIG).size(voucher) == len(calls)  # waves are cut by size before calls exist
    assert calls[0][1] == {"KEY1": "JV1", "INTN": "GLUPLOAD", "DESC": "Stripe payout po_1"}
    assert calls[1][1]["PARM"] == ("I1" + "000000003" + "00000001" + "AAA" + "1580      " + "STRIPE    " + " " * 50
                                   + "USD" + "         -1234.56" + "20261005" + "Stripe payout po_1".ljust(40)
                                   + " " * 17)  # ACAM: blank on a line in M3's local currency
    assert CONFIG.layout.parse(calls[1][1]["PARM"].rstrip())["CUAM"] == "-1234.56"
    with pytest.raises(LayoutError, match="VTXT .* is 41 characters; interface GLUPLOAD holds 40"):
        CONFIG.layout.build({"VTXT": "x" * 41})


# -- exactly once: kills, lost answers, timeouts ---------------------------------------------------------------
@pytest.mark.parametrize("program, transaction, skip, where", [
    ("GLS840MI", "AddBatchHead", 0, "GL batch head and 7 lines in M3, no update yet"),
    ("GLS840MI", "UpdBatch", 0, "GL voucher updated, not yet read back"),
    ("GLS840MI", "UpdBatch", 3, "a later GL wave updated"),
    ("GLS200MI", "SearchGenLedger", 1, "GL read-back of the second wave"),
    ("ARS040MI", "AddBatchHead", 0, "payment batch and its lines in M3, not controlled"),
    ("ARS040MI", "ControlBatch", 1, "second payment batch booked, not yet read back"),
    ("ARS200MI", "GetInvTotInfo", 1, "read-back of the first payment batch"),
])
def test_a_poster_killed_anywhere_finishes_on_rerun_with_the_fault_free_m3_state(
        sandboxes, warehouse, reference, program, transaction, skip, where):
    m3 = sandboxes()
    m3.app.lose_response(program, transaction, skip=skip)
    with pytest.raises(PostingInterrupted) as killed:  # one attempt: the lost answer ends the process
        post(warehouse, m3.client(max_attempts=1))
    assert killed.value.summary.count("interrupted") >= 1, where
    assert outbox_state(warehouse) != reference[1]  # stopped before the end
    summary = post(warehouse, m3.client())
    assert m3.state() == reference[0]
    assert outbox_state(warehouse) == reference[1]
    assert summary.count("resumed") >= 1 and summary.failed == 0


def _unnumbered(state: tuple[list, list]) -> tuple[list, list]:
    """M3 state without the numbers M3 hands out in arrival order (voucher, journal, journal sequence)."""
    gl, cash = state
    return (sorted(r[:1] + r[6:] for r in gl), sorted(r[:3] + r[6:] for r in cash))


@pytest.mark.parametrize("lost", [None, ("GLS840MI", "UpdBatch", 1), ("GLS200MI", "SearchGenLedger", 1)])
def test_parallel_sends_post_every_voucher_exactly_once(sandboxes, warehouse, reference, lost):
    m3 = sandboxes()
    parallel = replace(CONFIG, concurrency=3)
    if lost:
        m3.app.lose_response(*lost[:2], skip=lost[2])
        with pytest.raises(PostingInterrupted):
            post(warehouse, m3.client(max_attempts=1), parallel)
    post(warehouse, m3.client(), parallel)
    again = post(warehouse, m3.client(), parallel)
    assert _unnumbered(m3.state()) == _unnumbered(reference[0])
    assert len({r[3] for r in m3.state()[0]}) == len({r[3] for r in reference[0][0]})  # one voucher per batch
    assert [r[:3] for r in outbox_state(warehouse)] == [r[:3] for r in reference[1]]
    assert (again.posted, again.verified, again.failed) == (0, 0, 0)


def test_a_timeout_after_m3_did_the_work_is_resumed_not_repeated(sandboxes, warehouse, reference):
    m3 = sandboxes()
    m3.app.lose_response("GLS840MI", "CtrlBatch", skip=1, stall_seconds=1.0)  # the caller gives up first
    with pytest.raises(PostingInterrupted, match="could not be reached"):
        post(warehouse, m3.client(max_attempts=1, timeout_seconds=0.3))
    post(warehouse, m3.client())
    assert m3.state() == reference[0] and outbox_state(warehouse) == reference[1]


def test_lost_answers_5xx_429_and_timeouts_are_retried_within_one_run(sandboxes, warehouse, reference):
    m3 = sandboxes()
    for program, transaction in [("GLS840MI", "AddBatchHead"), ("GLS840MI", "UpdBatch"),
                                 ("ARS040MI", "ControlBatch"), ("ARS200MI", "GetInvTotInfo")]:
        m3.app.lose_response(program, transaction, skip=1)
    m3.server.faults.configure(faults=[Fault(status=429, headers={"Retry-After": "0"}, count=2, path_prefix=API),
                                       Fault(status=503, count=2, path_prefix=API),
                                       Fault(stall_seconds=1.0, count=1, path_prefix=API)])
    summary = post(warehouse, m3.client(max_attempts=6, timeout_seconds=0.5))
    assert (summary.posted, summary.failed) == (7, 0)
    assert m3.server.faults.pending == 0 and m3.app.lost_responses_pending == 0
    assert m3.state() == reference[0] and outbox_state(warehouse) == reference[1]


def test_a_sandbox_restart_between_runs_keeps_the_half_posted_batch(world, sandboxes, warehouse, reference, tmp_path):
    m3 = sandboxes(ledger_path=tmp_path / "m3.sqlite")
    m3.app.lose_response("GLS840MI", "AddBatchHead")
    with pytest.raises(PostingInterrupted):
        post(warehouse, m3.client(max_attempts=1))
    m3.stop()
    m3.start()  # a new M3 process on the same files
    post(warehouse, m3.client())
    assert m3.state() == reference[0] and outbox_state(warehouse) == reference[1]


def test_the_field_form_posts_the_same_vouchers(sandboxes, warehouse, reference):
    m3 = sandboxes()
    post(warehouse, m3.client(), posting_config_from_env({"M3_GL_LINE_FORM": "fields"}))
    assert m3.state() == reference[0] and outbox_state(warehouse) == reference[1]


# -- what is never posted ---------------------------------------------------------------------------------------
def test_content_changed_after_sending_is_a_conflict_never_a_second_posting(world, sandboxes, warehouse):
    m3 = sandboxes()
    m3.app.lose_response("GLS840MI", "AddBatchHead")  # BIG reaches M3 half-way, then the poster dies
    with pytest.raises(PostingInterrupted):
        post(warehouse, m3.client(max_attempts=1))
    gl, cash = journal_rows(world)
    for row in gl:
        if row["voucher_key"] in (BIG, "JV2610060001") and row["line_number"] == 1:
            row["voucher_text"] = "Stripe payout corrected"
        row["held_reason"] = None  # the held voucher's mapping was fixed
    write_journals(warehouse, gl, [row for row in cash if row["voucher_key"] != SPLIT])
    summary = post(warehouse, m3.client())
    outcomes = {o.voucher_key: o for o in summary.outcomes}
    assert (outcomes[BIG].action, outcomes[BIG].status) == ("changed", "failed")
    assert "changed after it was sent to M3 as batch JV2610020001" in outcomes[BIG].error
    assert m3.ledger.gl_lines_of_batch(BIG, NOW) == []  # the half-entered batch is left alone, never updated
    assert (outcomes["JV2610060001"].action, outcomes[HELD].action) == ("posted", "posted")
    assert m3.ledger.gl_lines_of_batch("JV2610060001", NOW)[0].text == "Stripe payout corrected"
    assert outcomes["CA2610070002"].action == "posted"

    assert SPLIT not in {key for _, key, *_ in outbox_state(warehouse)}  # never sent: it simply leaves

    write_journals(warehouse, [row for row in gl if row["voucher_key"] != "JV2610030001"],
                   [row for row in cash if row["voucher_key"] not in (SPLIT, "CA2610070002")])
    state = m3.state()
    again = post(warehouse, m3.client())
    changed = {o.voucher_key: o for o in again.outcomes if o.action == "changed"}
    assert changed.keys() == {BIG, "JV2610030001", "CA2610070002"}
    assert changed[BIG].status == "failed"
    assert changed["JV2610030001"].status == "verified"  # M3 has it; a person decides what to do
    assert "left core_gl_journal_lines after it was sent to M3" in changed["JV2610030001"].error
    assert "left core_cash_applications" in changed["CA2610070002"].error
    assert again.posted == 0 and m3.state() == state


def test_vouchers_m3_refuses_or_that_cannot_be_sent_fail_with_the_reason(world, sandboxes, tmp_path):
    m3 = sandboxes()
    gl, cash = journal_rows(world)
    for row in gl:
        if row["voucher_key"] == "JV2610030001" and row["line_number"] == 1:
            row["amount_minor"] += 1  # unbalanced by one cent
        if row["voucher_key"] == "JV2610060001":
            row["voucher_key"] = "JV26100600000001"  # 16 characters: not a KEY1
        if row["voucher_key"] == "JV2610050001":
            row["voucher_text"] = "x" * 41
    usd, _ = payable(world)
    for row in cash:
        if row["voucher_key"] == "CA2610070002":
            row["amount_minor"] = usd[3].amount_minor  # more than is left open after the first batch
        if row["voucher_key"] == "CA2610080001":
            row["invoice_number"] = "99999999"
    path = tmp_path / "refused.duckdb"
    write_journals(path, gl, cash)
    summary = post(path, m3.client())
    failed = {o.voucher_key: o.error for o in summary.outcomes if o.action == "failed"}
    assert failed.keys() == {"JV2610030001", "JV26100600000001", "JV2610050001", "CA2610070002", "CA2610080001"}
    assert "does not balance in USD: debit 1011.43, credit 1011.42" in failed["JV2610030001"]
    assert "cannot be an M3 KEY1" in failed["JV26100600000001"]
    assert "VTXT 'xxxx" in failed["JV2610050001"]
    assert "cannot apply" in failed["CA2610070002"]
    assert "XRE0103" in failed["CA2610080001"]
    assert summary.posted == 2  # BIG and the split payment batch
    assert m3.ledger.gl_lines_of_batch("JV2610030001", NOW) == []
    assert m3.outstanding(usd[3]) == usd[3].amount_minor - usd[3].amount_minor // 2  # only the first batch
    assert post(path, m3.client()).counts()["failed"] == 0  # failed vouchers wait for a person


# -- configuration ----------------------------------------------------------------------------------------------
SITE_LAYOUT = """
interface = "GLJOURNAL"
decimal_separator = ","
fields = [
    { name = "INRI", from = 1,  to = 2,  format = "constant", value = "I1" },
    { name = "ACDT", from = 3,  to = 10, format = "date" },
    { name = "AIT1", from = 11, to = 18, format = "text" },
    { name = "AIT2", from = 19, to = 26, format = "text" },
    { name = "AIT3", from = 27, to = 34, format = "text" },
    { name = "CUCD", from = 35, to = 37, format = "text" },
    { name = "CUAM", from = 38, to = 52, format = "amount" },
    { name = "VTXT", from = 53, to = 92, format = "text" },
]
"""


def test_a_site_template_is_read_from_the_layout_file_by_poster_and_m3_alike(world, sandboxes, warehouse, tmp_path):
    layout_file = tmp_path / "site_layout.toml"
    layout_file.write_text(SITE_LAYOUT)
    layout = ParmLayout.load(layout_file)
    m3 = sandboxes(gl_interfaces={layout.interface: layout})
    config = posting_config_from_env({"M3_GL_LAYOUT_FILE": str(layout_file)})
    assert config.interface == "GLJOURNAL" and config.layout.length == 92
    summary = post(warehouse, m3.client(), config)
    assert summary.posted == 7
    [first] = [ln for ln in m3.ledger.gl_lines_of_batch("JV2610050001", NOW) if ln.journal_seq == 1]
    assert (first.accounts[:3], first.currency, first.amount_minor) == (("1930", "", "BANK1"), "EUR", 40_000)
    assert layout.build({"CUAM": Decimal("-12.30"), "ACDT": date(2026, 10, 5)})[:52] == (
        "I120261005" + " " * 27 + "         -12,30")

    with pytest.raises(LayoutError, match="interface GLJOURNAL has no position for AIT5"):
        layout.build({"AIT5": "X"})
    layout_file.write_text(SITE_LAYOUT.replace("from = 27", "from = 26"))
    with pytest.raises(LayoutError, match="M3_GL_LAYOUT_FILE .* AIT3 .* overlaps"):
        ParmLayout.load(layout_file)
    with pytest.raises(SettingsError, match="M3_GL_LINE_FORM"):
        posting_config_from_env({"M3_GL_LINE_FORM": "xml"})
    assert posting_config_from_env({"M3_GL_INTERFACE": "GLUPLOAD2"}).interface == "GLUPLOAD2"


def test_posting_to_an_interface_m3_does_not_know_fails_every_gl_voucher_with_m3s_reason(sandboxes, warehouse):
    m3 = sandboxes()
    summary = post(warehouse, m3.client(), posting_config_from_env({"M3_GL_INTERFACE": "GLNOTTHERE"}))
    failed = {o.voucher_key: o.error for o in summary.outcomes if o.route == ROUTE_GL and o.action == "failed"}
    assert failed.keys() == {BIG, "JV2610030001", "JV2610050001", "JV2610060001"}
    assert all("Interface GLNOTTHERE does not exist" in error for error in failed.values())
    assert summary.posted == 3  # the cash route is unaffected
    assert [line for line in m3.state()[0] if line[2] == "GL"] == []  # only the payment vouchers (series PY)


# -- cash on the processor's clearing account -----------------------------------------------------------------
def test_cash_batches_carry_the_processors_payment_method_payment_id_and_date(world, sandboxes, tmp_path):
    """M3 debits a payment line's AIT1, else its batch's payment method account, else its default account."""
    m3 = sandboxes()
    gl, cash = journal_rows(world)
    for row in cash:
        row["processor"] = {SPLIT: "stripe", "CA2610070002": "paytrace", "CA2610080001": "heartland"}[row["voucher_key"]]
    path = tmp_path / "cash.duckdb"
    write_journals(path, gl, cash)
    config = replace(CONFIG, payment_methods={"stripe": PaymentMethod("STR"), "paytrace": PaymentMethod("PYT", "1199"),
                                              "heartland": PaymentMethod("ZZZ")})
    assert post(path, m3.client(), config).failed == 0
    batches = {b.batch_type: b for b in m3.ledger._payment_batches.values()}
    assert set(batches) == {"STR", "PYT", "ZZZ"}  # one batch per processor, each with its payment method
    split = next(iter(b for b in batches.values() if len(b.lines) == 7))
    expected = {(row["line_number"], row["source_id"], row["accounting_date"]) for row in cash if row["voucher_key"] == SPLIT}
    assert {(n, ln.check_number, ln.payment_date) for n, ln in split.lines.items()} == expected  # CKNO, LPDT
    debits: dict[str, int] = {}
    for line in m3.ledger.gl_lines(NOW):
        if line.voucher_series == "PY":
            debits[line.ait1] = debits.get(line.ait1, 0) + line.local_minor
    applied = {key: sum(r["amount_minor"] for r in cash if r["voucher_key"] == key) for key in (SPLIT, "CA2610070002")}
    assert debits["1191"] == applied[SPLIT]  # STR: stripe's clearing account
    assert debits["1199"] == applied["CA2610070002"]  # the explicit AIT1 wins over PYT's account
    assert debits["1999"] > 0  # a payment method M3 has no account for: its default account
    assert sum(debits.values()) == 0 and debits["1510"] < 0  # against receivables

    del config.payment_methods["heartland"]
    write_journals(tmp_path / "again.duckdb", gl, cash)
    outcomes = {o.voucher_key: o for o in post(tmp_path / "again.duckdb", sandboxes().client(), config).outcomes}
    assert outcomes["CA2610080001"].status == "failed"
    assert "no M3 payment method (BOPE) for heartland" in outcomes["CA2610080001"].error


# -- verification without SearchGenLedger, crashes, posted_unverified ------------------------------------------
NO_SEARCH = frozenset({"m3_no_search_gen_ledger"})


def test_without_search_gen_ledger_every_voucher_is_verified_by_date_and_lines(sandboxes, warehouse, reference,
                                                                                monkeypatch):
    m3 = sandboxes(quirks=NO_SEARCH)
    summary = post(warehouse, m3.client())
    assert (summary.posted, summary.failed, summary.unverified) == (7, 0, 0)
    assert m3.state() == reference[0] and outbox_state(warehouse) == reference[1]  # same vouchers, same numbers
    assert ("GLS200MI", "LstVouchersByDt") in m3.app.executed and ("GLS200MI", "LstVoucherLines") in m3.app.executed
    assert m3.app.executed.count(("GLS200MI", "SearchGenLedger")) <= BULK  # refused once per bulk call, then left
    monkeypatch.setenv("M3_RECON_DUCKDB_PATH", str(warehouse))
    monkeypatch.delenv("M3_RECON_WAREHOUSE", raising=False)
    out = io.StringIO()
    assert print_posting_summary(out) == 1  # the held voucher needs a person
    assert "1 voucher held: no account mapped for category adjustment -> next:" in out.getvalue()
    assert "gl                verified" in out.getvalue()


@pytest.mark.parametrize("quirks", [frozenset(), NO_SEARCH])
@pytest.mark.parametrize("crash", ["before AddBatchHead", "between UpdBatch and read-back"])
def test_a_crash_ends_verified_next_run_without_a_second_voucher(sandboxes, warehouse, reference, quirks, crash):
    m3 = sandboxes(quirks=quirks)
    if crash == "before AddBatchHead":  # marked sent, then the first bulk call never reaches M3
        m3.server.faults.configure(faults=[Fault(status=503, count=1, path_prefix=API)])
    else:
        m3.app.lose_response("GLS840MI", "UpdBatch")
    with pytest.raises(PostingInterrupted):
        post(warehouse, m3.client(max_attempts=1))
    assert ("sent" in {status for _, _, status, *_ in outbox_state(warehouse)})
    summary = post(warehouse, m3.client())
    assert summary.failed == 0 and summary.count("resumed") >= 1
    assert m3.state() == reference[0] and outbox_state(warehouse) == reference[1]  # one voucher per batch


def test_a_voucher_m3_accepted_but_does_not_show_yet_is_posted_unverified_never_resent(
        sandboxes, warehouse, reference, monkeypatch):
    m3 = sandboxes(quirks=NO_SEARCH)
    monkeypatch.setattr(m3.ledger, "gl_lines", lambda now: [])  # M3's GL reads lag behind its updates
    summary = post(warehouse, m3.client())
    unverified = {o.voucher_key for o in summary.outcomes if o.status == "posted_unverified"}
    assert unverified == {BIG, "JV2610030001", "JV2610050001", "JV2610060001"} and summary.failed == 0
    assert all("never sent again" in o.error for o in summary.outcomes if o.status == "posted_unverified")
    monkeypatch.setenv("M3_RECON_DUCKDB_PATH", str(warehouse))
    monkeypatch.delenv("M3_RECON_WAREHOUSE", raising=False)
    out = io.StringIO()
    assert print_posting_summary(out) == 1
    assert "4 vouchers posted_unverified (e.g. JV2610020001: M3 accepted batch" in out.getvalue()
    assert "they are never resent" in out.getvalue()
    with duckdb.connect(str(warehouse)) as conn:  # the next close registers them as exceptions: alerted
        found = journal_exceptions(conn, date(2026, 10, 1), date(2026, 10, 31))
        alerted = conn.execute(f"SELECT source_id, processor, detail FROM {found} "
                               "WHERE reason_code = 'voucher_unverified' ORDER BY 1").fetchall()
    assert [key for key, *_ in alerted] == sorted(unverified) and alerted[0][1] == "stripe"
    assert "gl voucher JV2610020001 (M3 batch JV2610020001): M3 accepted batch" in alerted[0][2]

    again = post(warehouse, m3.client())  # still not readable: stays, and nothing is sent
    assert again.unverified == 4 and ("GLS840MI", "AddBatchHead") not in m3.app.executed[-20:]
    monkeypatch.undo()
    sent_before = m3.app.executed.count(("GLS840MI", "AddBatchHead"))
    final = post(warehouse, m3.client())
    assert final.count("resumed") == 4 and final.unverified == 0
    assert m3.app.executed.count(("GLS840MI", "AddBatchHead")) == sent_before  # verified, never resent
    assert m3.state() == reference[0] and outbox_state(warehouse) == reference[1]


# -- blocking checks hold their processor-day -------------------------------------------------------------------
def test_a_failing_blocking_check_holds_only_its_processor_days_vouchers(sandboxes, warehouse, monkeypatch):
    m3 = sandboxes()
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute(f"CREATE TABLE {BLOCKS} ({', '.join(f'{c} {t}' for c, t in BLOCK_COLUMNS.items())})")
        conn.executemany(f"INSERT INTO {BLOCKS} VALUES (?, ?, ?, ?)", [
            ("stripe", date(2026, 10, 3), "payout_ties_out", "payout po_1: residue 5 USD"),
            ("stripe", date(2026, 10, 8), "no_invoice_over_allocated", "invoice 1/2026 is allocated more than it has open"),
            ("paytrace", date(2026, 10, 5), "vouchers_balance", "voucher GPD20261005 does not balance in USD by 1")])
    summary = post(warehouse, m3.client())
    held = {o.voucher_key: o.error for o in summary.outcomes if o.status == "held"}
    assert held.keys() == {HELD, "JV2610030001", "CA2610080001"}
    assert held["JV2610030001"] == ("blocking check payout_ties_out failed: stripe 2026-10-03: "
                                    "payout po_1: residue 5 USD")
    assert summary.posted == 5  # stripe's other days, and stripe's 2026-10-05 despite paytrace's block that day
    assert m3.ledger.gl_lines_of_batch("JV2610030001", NOW) == []
    monkeypatch.setenv("M3_RECON_DUCKDB_PATH", str(warehouse))
    monkeypatch.delenv("M3_RECON_WAREHOUSE", raising=False)
    out = io.StringIO()
    assert print_posting_summary(out) == 1
    assert "1 voucher held: blocking check payout_ties_out failed -> next: resolve what the check found" in \
        out.getvalue()
    assert "1 voucher held: blocking check no_invoice_over_allocated failed" in out.getvalue()

    with duckdb.connect(str(warehouse)) as conn:  # the next close finds the checks passing
        conn.execute(f"DELETE FROM {BLOCKS}")
    after = post(warehouse, m3.client())
    assert {o.voucher_key for o in after.outcomes if o.action == "posted"} == {"JV2610030001", "CA2610080001"}


def test_a_refused_voucher_fails_the_summary_with_the_next_step(sandboxes, warehouse, monkeypatch):
    m3 = sandboxes()
    post(warehouse, m3.client(), posting_config_from_env({"M3_GL_INTERFACE": "GLNOTTHERE"}))
    monkeypatch.setenv("M3_RECON_DUCKDB_PATH", str(warehouse))
    monkeypatch.delenv("M3_RECON_WAREHOUSE", raising=False)
    out = io.StringIO()
    assert print_posting_summary(out) == 1
    assert "4 vouchers failed (e.g. JV2610020001: M3: GLS840MI/AddBatchHead answered NOK in field INTN: Interface " \
           "GLNOTTHERE does not exist (HTTP 200)) -> next: M3 refused them" in out.getvalue()
    assert "gl                failed                4 vouchers  debits 412.37 EUR; 2,475.77 USD" in out.getvalue()
    assert "posting: needs a person — 4 failed, 1 held" in out.getvalue()


def test_posting_blocks_name_each_failing_check_per_processor_day():
    """The gate over the close's tables: each failing blocking check lands on the processor-days it concerns."""
    conn = duckdb.connect()
    d = lambda day: date(2026, 10, day)  # noqa: E731
    tables = {
        "core_payout_reconciliation (processor VARCHAR, payout_id VARCHAR, settlement_date DATE, residue VARCHAR, "
        "status VARCHAR, payout_status VARCHAR)": [
            ("heartland", "dep1", d(3), "payout 100 USD vs lines net 95: residue 5 USD", "mismatch", "paid"),
            ("stripe", "po7", d(7), None, "tied", "paid"), ("paytrace", "b1", d(3), None, "tied", "paid")],
        "core_settlement_lines (processor VARCHAR, payout_id VARCHAR, settlement_date DATE)": [
            ("heartland", "dep1", d(2)), ("heartland", "dep1", d(3)), ("paytrace", "b1", d(3))],
        "journal_lines (voucher_key VARCHAR, currency VARCHAR, amount_minor BIGINT, processor VARCHAR, "
        "source_date DATE, accounting_date DATE, local_minor BIGINT)": [
            ("GSD20261004", "USD", 100, "stripe", d(4), d(4), 100), ("GSD20261004", "USD", -99, "stripe", d(4), d(4), -99),
            ("GPD20261003", "USD", 100, "paytrace", d(3), d(3), 100),
            ("GPD20261003", "USD", -100, "paytrace", d(3), d(3), -100),
            # balanced in yen, not in local currency
            ("GHD20261008", "JPY", 100, "heartland", d(8), d(8), 67), ("GHD20261008", "JPY", -100, "heartland", d(8), d(8), -66)],
        "core_payment_allocations (processor VARCHAR, source_id VARCHAR, payment_invoice_amount_minor BIGINT, "
        "allocated_minor BIGINT, status VARCHAR, line_type VARCHAR, settlement_date DATE, invoice_number VARCHAR, "
        "invoice_year INTEGER, invoice_currency VARCHAR)": [
            ("paytrace", "t5", 500, 400, "auto", "charge", d(5), "I1", 2026, "JPY"),
            ("stripe", "ch6", 300, 300, "auto", "charge", d(6), "I2", 2026, "USD"),
            ("stripe", "ch9", 300, 300, "auto", "charge", d(9), "I3", 2026, "USD")],
        "core_match_exceptions (processor VARCHAR, source_id VARCHAR, unapplied_minor BIGINT, reason_code VARCHAR)": [],
        "core_open_invoices (invoice_number VARCHAR, invoice_year INTEGER, outstanding_minor BIGINT)": [
            ("I1", 2026, 1000), ("I2", 2026, 200), ("I3", 2026, 300)],
        "applications_in_m3 (processor VARCHAR, source_id VARCHAR, invoice_number VARCHAR, invoice_year INTEGER)": [],
        "clearing_residue (processor VARCHAR, payout_id VARCHAR, payout_status VARCHAR, clearing_net_minor BIGINT)": [
            ("stripe", "po7", "paid", 12)],
    }
    for table, rows in tables.items():
        conn.execute(f"CREATE TABLE {table}")
        if rows:
            conn.executemany(f"INSERT INTO {table.split()[0]} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    posting_blocks(conn, d(1), d(9), journal_lines="journal_lines", clearing_residue="clearing_residue",
                   applications="applications_in_m3")  # day 9 lies outside the window
    assert conn.execute("SELECT processor, day, check_name FROM posting_blocks ORDER BY ALL").fetchall() == [
        ("heartland", d(2), "payout_ties_out"), ("heartland", d(3), "payout_ties_out"),
        ("heartland", d(8), "vouchers_balance"), ("paytrace", d(5), "allocations_sum_to_payment"), ("stripe", d(4), "vouchers_balance"),
        ("stripe", d(6), "no_invoice_over_allocated"), ("stripe", d(7), "clearing_nets_to_zero_per_payout")]
    (detail,) = conn.execute("SELECT detail FROM posting_blocks WHERE check_name = ?",
                             ["allocations_sum_to_payment"]).fetchone()
    assert detail == "payment t5 allocates 400 JPY + unapplied 0 JPY of 500 JPY"  # the invoice currency's decimals


def test_the_m3_posting_run_fails_when_m3_refused_a_voucher(sandboxes, warehouse, monkeypatch):
    import dagster as dg
    from dagster_duckdb import DuckDBResource

    from m3_recon.defs.m3.resources import M3Resource
    from m3_recon.defs.post.assets import out_m3_postings

    m3 = sandboxes()
    resources = {"duckdb": DuckDBResource(database=str(warehouse)),
                 "m3": M3Resource(ionapi_file=str(m3.ionapi), cono=100, divi="AAA", max_requests_per_second=1_000)}
    monkeypatch.setenv("M3_GL_INTERFACE", "GLNOTTHERE")
    refused = dg.materialize([out_m3_postings], resources=resources, raise_on_error=False)
    assert not refused.success
    assert "4 voucher(s) failed in M3 this run" in str(refused.get_step_failure_events()[0].event_specific_data.error)
    monkeypatch.delenv("M3_GL_INTERFACE")
    assert dg.materialize([out_m3_postings], resources=resources).success  # nothing new fails: the run succeeds

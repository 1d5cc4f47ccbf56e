"""PayTrace's side of the sandbox world: card sales and refunds, and the nightly settlement batches.

PayTrace auto-settles open transactions at 8:00 p.m. Pacific (America/Los_Angeles, so the cut-off moves
between 03:00 and 04:00 UTC with daylight saving time). A transaction created before 20:00 Pacific
belongs to that Pacific day's batch, one created at or after 20:00 to the next day's. Transactions and
batches keep their whole lifetime (created, settled into which batch, when the batch closed); the API
layer renders them as of the sandbox clock. PayTrace customers are all billed in USD.

What each sale pays is decided by the world's ``PaymentPlanner`` (on the sale's Pacific date), which
records the matcher's expected outcome under the sale's transaction id, its canonical source id.

Besides random business-hours sales, the generator always places a sale just before and just after
the cut-off on the period's first day and on both days around every DST change inside the period.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from m3_recon.sandbox.world import PaymentPlan, PaymentPlanner, Period, World, reference_text

PACIFIC = ZoneInfo("America/Los_Angeles")
AUTO_SETTLE_SECOND = 20 * 3_600  # 8:00 p.m. local, as seconds after local midnight
SALES_OPEN, SALES_CLOSE = 7 * 3_600, 22 * 3_600  # sales happen between 7 a.m. and 10 p.m. Pacific
REFUNDS_OPEN, REFUNDS_CLOSE = 9 * 3_600, 17 * 3_600
REFUND_RATE = 0.05
TAX_RATE_BASIS_POINTS = 825  # Level II sales tax included in the amount, when the clerk keys it
CARD_PREFIXES = (("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16))


@dataclass(frozen=True)
class Card:
    bin: str  # first six digits
    last4: str
    length: int
    expiration_month: int
    expiration_year: int  # two digits, as PayTrace shows it


@dataclass
class CardTransaction:
    id: int
    type: str  # "SALE" or "REFUND"
    amount_minor: int  # positive for both types; a REFUND returns money to the card
    tax_minor: int | None
    created: int  # unix seconds
    invoice_id: str  # the M3 invoice reference the clerk keyed ("" = none)
    customer_id: str  # the M3 customer number the clerk keyed ("" = none)
    customer_reference_id: str  # the buyer's PO number
    description: str
    billing_name: str
    billing_zip: str
    card: Card
    through: str  # "API" or "Virtual Terminal"
    approval_code: str
    refund_of: int | None = None  # the sale a refund returns money for (not a PayTrace field)
    batch: int | None = None  # the batch that settled it (not on PayTrace's transaction record)

    @property
    def signed_minor(self) -> int:
        """The transaction's effect on the batch net: sales add, refunds subtract."""
        return -self.amount_minor if self.type == "REFUND" else self.amount_minor


@dataclass
class Batch:
    number: int
    business_date: date  # the Pacific day whose 8 p.m. auto-settlement closed it
    settled_at: int  # unix seconds when settlement finished (a few minutes after 8 p.m.)
    transaction_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class BatchTotals:
    sales_count: int
    sales_minor: int
    refund_count: int
    refund_minor: int

    @property
    def transaction_count(self) -> int:
        return self.sales_count + self.refund_count

    @property
    def net_minor(self) -> int:
        return self.sales_minor - self.refund_minor


@dataclass
class PayTraceLedger:
    world: World
    transactions: dict[int, CardTransaction] = field(default_factory=dict)
    batches: dict[int, Batch] = field(default_factory=dict)

    def batch_transactions(self, batch: Batch) -> list[CardTransaction]:
        return [self.transactions[t] for t in batch.transaction_ids]

    def totals(self, batch: Batch) -> BatchTotals:
        txns = self.batch_transactions(batch)
        sales = [t.amount_minor for t in txns if t.type == "SALE"]
        refunds = [t.amount_minor for t in txns if t.type == "REFUND"]
        return BatchTotals(len(sales), sum(sales), len(refunds), sum(refunds))


def local_epoch(day: date, seconds_after_midnight: int) -> int:
    """Unix seconds of a Pacific wall-clock time (DST-aware; an ambiguous time means its first occurrence)."""
    wall = datetime.combine(day, time(0), tzinfo=PACIFIC) + timedelta(seconds=seconds_after_midnight)
    return int(wall.timestamp())


def batch_date_of(created: int) -> date:
    """The business date of the batch a transaction created at ``created`` settles into."""
    local = datetime.fromtimestamp(created, PACIFIC)
    seconds = local.hour * 3_600 + local.minute * 60 + local.second
    return local.date() + timedelta(days=1 if seconds >= AUTO_SETTLE_SECOND else 0)


def cutoff_probe_days(period: Period) -> list[date]:
    """The period's first day and the days on either side of each DST change inside the period."""
    def offset(day: date) -> timedelta:
        return datetime.combine(day, time(12), tzinfo=PACIFIC).utcoffset()

    days = {period.start}
    for day in period.dates()[1:]:
        if offset(day) != offset(day - timedelta(days=1)):
            days |= {day - timedelta(days=1), day}
    return sorted(days)


class _Builder:
    def __init__(self, world: World, scaled: bool = False):
        self.world = world
        self.rng: random.Random = world.rng("paytrace")
        self.ledger = PayTraceLedger(world=world)
        self.planner = PaymentPlanner(world, "paytrace", self.rng, recurring_edge_cases=scaled)
        self.cards = {cust.number: self.new_card() for cust in self.planner.customers}
        self.pending: list[CardTransaction] = []  # ids are assigned once every transaction is known
        self.refund_pairs: list[tuple[CardTransaction, CardTransaction]] = []  # (refund, sale)
        self.plans: list[tuple[CardTransaction, PaymentPlan, str]] = []  # (sale, its plan, customer number)

    def new_card(self) -> Card:
        rng = self.rng
        prefix, length = rng.choice(CARD_PREFIXES)
        bin_ = prefix + "".join(rng.choices(string.digits, k=6 - len(prefix)))
        return Card(bin_, f"{rng.randrange(10_000):04d}", length, rng.randint(1, 12), rng.randint(27, 31))

    def approval_code(self) -> str:
        return "".join(self.rng.choices(string.ascii_uppercase + string.digits, k=6))

    def sale(self, created: int) -> CardTransaction:
        rng = self.rng
        cust = rng.choice(self.planner.customers)
        plan = self.planner.plan(cust, datetime.fromtimestamp(created, PACIFIC).date())
        amount = plan.amount_minor
        description = {"multi": "Invoices " + ", ".join(a.invoice for a in plan.allocations),
                       "unapplied": "Payment on account"}.get(plan.kind, "")
        if plan.free_text:  # quirk free_text_refs: the clerk typed the invoices into the description only
            description = reference_text(plan.invoice_ref)
        keyed_tax = rng.random() < 0.4
        txn = CardTransaction(
            id=0, type="SALE", amount_minor=amount,
            tax_minor=amount * TAX_RATE_BASIS_POINTS // (10_000 + TAX_RATE_BASIS_POINTS) if keyed_tax else None,
            created=created, invoice_id="" if plan.free_text else plan.invoice_ref or "",
            customer_id=plan.customer_ref or "",
            customer_reference_id=f"PO-{rng.randint(40_000, 99_999)}" if rng.random() < 0.3 else "",
            description=description, billing_name=cust.name, billing_zip=f"9{rng.randrange(10_000):04d}",
            card=self.cards[cust.number], through="API" if rng.random() < 0.7 else "Virtual Terminal",
            approval_code=self.approval_code())
        self.pending.append(txn)
        self.plans.append((txn, plan, cust.number))
        return txn

    def refund(self, sale: CardTransaction) -> None:
        rng = self.rng
        day = datetime.fromtimestamp(sale.created, PACIFIC).date() + timedelta(days=rng.randint(1, 4))
        created = local_epoch(day, rng.randrange(REFUNDS_OPEN, REFUNDS_CLOSE))
        if day > self.world.period.end:
            return
        amount = sale.amount_minor if rng.random() < 0.6 else sale.amount_minor // 2
        refund = CardTransaction(
            id=0, type="REFUND", amount_minor=amount, tax_minor=None, created=created,
            invoice_id=sale.invoice_id, customer_id=sale.customer_id,
            customer_reference_id=sale.customer_reference_id, description="", billing_name=sale.billing_name,
            billing_zip=sale.billing_zip, card=sale.card, through="Virtual Terminal",
            approval_code=self.approval_code())
        self.pending.append(refund)
        self.refund_pairs.append((refund, sale))

    def assign_ids(self) -> None:
        """PayTrace ids grow with time (other merchants' transactions take the gaps)."""
        next_id = 81_000_000 + self.rng.randrange(1_000_000)
        for txn in sorted(self.pending, key=lambda t: t.created):  # stable: generation order breaks ties
            next_id += self.rng.randint(1, 40)
            txn.id = next_id
            self.ledger.transactions[txn.id] = txn
        for refund, sale in self.refund_pairs:
            refund.refund_of = sale.id
        for sale, plan, customer in self.plans:
            self.planner.record(str(sale.id), plan, customer)

    def settle(self) -> None:
        """One batch per Pacific business day that has transactions, numbered consecutively."""
        by_day: dict[date, list[CardTransaction]] = {}
        for txn in self.ledger.transactions.values():
            by_day.setdefault(batch_date_of(txn.created), []).append(txn)
        number = self.rng.randint(1_200, 4_800)
        for day in sorted(by_day):
            batch = Batch(number, day, local_epoch(day, AUTO_SETTLE_SECOND) + self.rng.randint(30, 900))
            for txn in sorted(by_day[day], key=lambda t: t.id):
                txn.batch = number
                batch.transaction_ids.append(txn.id)
            self.ledger.batches[number] = batch
            number += 1


def build_paytrace_ledger(world: World, sales_per_day: int | None = None) -> PayTraceLedger:
    """Generate the period's PayTrace sales (Pacific days), refunds a few days later, and their batches.
    ``sales_per_day``: that many sales every day (a scaled world) instead of 3-7, besides the cut-off probes."""
    builder = _Builder(world, scaled=sales_per_day is not None)
    rng, period = builder.rng, world.period
    probe_days = set(cutoff_probe_days(period))
    for day in period.dates():
        count = rng.randint(3, 7) if sales_per_day is None else sales_per_day
        seconds = [rng.randrange(SALES_OPEN, SALES_CLOSE) for _ in range(count)]
        if day in probe_days:
            seconds += [AUTO_SETTLE_SECOND - rng.randint(60, 600), AUTO_SETTLE_SECOND + rng.randint(600, 2_400)]
        for second in sorted(seconds):
            sale = builder.sale(local_epoch(day, second))
            if rng.random() < REFUND_RATE:
                builder.refund(sale)
    builder.assign_ids()
    builder.settle()
    return builder.ledger

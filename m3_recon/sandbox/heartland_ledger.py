"""Heartland's side of the sandbox world, shaped like Global Payments' GP API settlement reports.

One US merchant (one MID) takes card-not-present payments from the world's Heartland customers.
Its terminal batch auto-closes every day at 22:00 merchant time (America/New_York); each batch is
funded on the next business day by one daily net deposit ("aggregation by date") that also carries
the day's discount (rate) fees, per-item fees, chargebacks and chargeback reversals. Objects keep
their whole lifetime (created, batch closed, deposit posted, dispute resolved) and the API layer
renders them as of the sandbox clock.

Every deposit obeys: net = sales − refunds − discounts − fees − chargebacks + reversals, where sales,
refunds, chargebacks and reversals are exactly the settlement transactions and dispute adjustments
that carry that deposit's id.

What each sale pays is decided by the world's ``PaymentPlanner``, which records the outcome the
matcher should reach under the sale's id. The clerk keys the M3 invoice in GP's ``reference`` and
the payment page writes the M3 customer number as ``Customer <number>`` at the start of GP's
``description`` (GP's settlement transactions have no customer field); either is left out when the
plan has none.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from m3_recon.sandbox.world import Customer, PaymentPlanner, World, day_start_epoch, reference_text, stable_id

MERCHANT_TIMEZONE = ZoneInfo("America/New_York")
BATCH_CUTOFF = time(22, 0)  # terminal auto-close, merchant local time
DEPOSIT_POSTING = time(6, 0)  # when a deposit date's funding is posted, merchant local time
DAY = 86_400
ITEM_FEE = 10  # per sale or refund, minor units, billed daily in the deposit
CHARGEBACK_FEE = 2_500
DISCOUNT_RATE_BP = {"VISA": 260, "MASTERCARD": 260, "DISCOVER": 270, "AMEX": 315}  # basis points
CARD_BINS = {"VISA": "424242", "MASTERCARD": "545454", "DISCOVER": "601111", "AMEX": "378282"}
DELAYED_DEPOSIT_DAY = 12  # the first deposit on or after this period day is held ...
DELAY_DAYS = 2  # ... for this long, then released
MERCHANT = {"mid": "8800012345678", "hierarchy": "000-70-024-011-019", "name": "M3 RECON SANDBOX LLC",
            "dba": "M3 RECON SANDBOX", "tid": "88000001"}
DISPUTE_REASONS = (("10.4", "Other Fraud-Card Absent Environment"), ("13.1", "Merchandise/Services Not Received"),
                   ("4853", "Cardholder Dispute"), ("PM", "Paid by Other Means"))


@dataclass(frozen=True)
class Card:
    brand: str
    masked_number: str  # first six, X padding, last four (GP's masked_number_first6last4)
    arn: str
    authcode: str
    brand_reference: str
    cardholder: str
    entry_mode: str


@dataclass
class Batch:
    id: str
    business_date: date
    closed_at: int  # epoch seconds


@dataclass
class SettlementTxn:
    id: str
    type: str  # SALE | REFUND
    amount: int  # positive, minor units
    created: int
    reference: str
    description: str
    card: Card
    batch: str
    parent: str | None = None  # the sale a refund returns
    deposit: str | None = None
    discount: int = 0  # the deposit's discount fee for this sale


@dataclass
class DisputeAdjustment:
    """One money movement of a dispute: the chargeback debit or its reversal credit."""

    stage: str  # CHARGEBACK | REVERSAL
    funding_type: str  # DEBIT | CREDIT
    created: int
    deposit: str | None = None


@dataclass
class Dispute:
    id: str
    transaction: str  # the disputed sale
    amount: int
    reason_code: str
    reason_description: str
    respond_by: int
    won_at: int | None  # when the reversal credited the merchant (None: lost or still open)
    adjustments: list[DisputeAdjustment] = field(default_factory=list)

    def status_at(self, now: int) -> tuple[str, str]:
        """(status, result) as of ``now``: open until reversed or until the response deadline passes."""
        if self.won_at is not None and now >= self.won_at:
            return "CLOSED", "WON"
        if self.won_at is None and now >= self.respond_by:
            return "CLOSED", "LOST"
        return "WITH_MERCHANT", "PENDING"


@dataclass
class Deposit:
    id: str
    deposit_date: date
    created: int  # when it was posted (invisible before)
    sales_count: int = 0
    sales_amount: int = 0
    refunds_count: int = 0
    refunds_amount: int = 0  # positive magnitudes here; the wire shows money out as negative
    discounts_count: int = 0
    discounts_amount: int = 0
    fees_amount: int = 0
    chargebacks_count: int = 0
    chargebacks_amount: int = 0
    reversals_count: int = 0
    reversals_amount: int = 0
    released_at: int | None = None  # set on a held (DELAYED) deposit

    @property
    def net(self) -> int:
        return (self.sales_amount - self.refunds_amount - self.discounts_amount - self.fees_amount
                - self.chargebacks_amount + self.reversals_amount)

    def status_at(self, now: int) -> str:
        if self.released_at is None:
            return "FUNDED"
        return "RELEASED" if now >= self.released_at else "DELAYED"


@dataclass
class HeartlandLedger:
    world: World
    transactions: dict[str, SettlementTxn] = field(default_factory=dict)
    batches: dict[str, Batch] = field(default_factory=dict)
    disputes: dict[str, Dispute] = field(default_factory=dict)
    deposits: dict[str, Deposit] = field(default_factory=dict)

    @property
    def currency(self) -> str:
        """What the account settles in (GP API ``currency``: ISO code, amounts in its minor units)."""
        return self.world.heartland_currency


def local_epoch(day: date, at: time) -> int:
    return int(datetime.combine(day, at, tzinfo=MERCHANT_TIMEZONE).timestamp())


def business_date(epoch: int) -> date:
    """The batch day an instant belongs to: after the 22:00 local cut-off it is the next day's."""
    local = datetime.fromtimestamp(epoch, tz=timezone.utc).astimezone(MERCHANT_TIMEZONE)
    return local.date() if local.time() < BATCH_CUTOFF else local.date() + timedelta(days=1)


def next_weekday(day: date) -> date:
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def payment_description(customer_ref: str | None) -> str:
    """GP's ``description`` of a payment: the M3 customer number when the payer gave one."""
    return f"Customer {customer_ref}" if customer_ref else "Card payment"


def discount_fee(amount: int, brand: str) -> int:
    """The brand's discount rate on a sale, rounded half up, in integer arithmetic."""
    return (amount * DISCOUNT_RATE_BP[brand] + 5_000) // 10_000


class _Builder:
    def __init__(self, world: World):
        self.world = world
        self.rng: random.Random = world.rng("heartland")
        self.ledger = HeartlandLedger(world=world)
        self.end = world.period.end_epoch
        self.planner = PaymentPlanner(world, "heartland", self.rng)
        self.batch_by_date: dict[date, Batch] = {}

    def digits(self, n: int) -> str:
        return "".join(self.rng.choices("0123456789", k=n))

    def batch_for(self, epoch: int) -> Batch:
        day = business_date(epoch)
        if day not in self.batch_by_date:
            batch = Batch(f"BAT_{self.digits(6)}", day, local_epoch(day, BATCH_CUTOFF))
            self.batch_by_date[day] = batch
            self.ledger.batches[batch.id] = batch
        return self.batch_by_date[day]

    def card(self, cust: Customer) -> Card:
        rng = self.rng
        brand = rng.choices(list(CARD_BINS), [50, 30, 8, 12])[0]
        middle = "XXXXX" if brand == "AMEX" else "XXXXXX"
        return Card(brand=brand, masked_number=f"{CARD_BINS[brand]}{middle}{self.digits(4)}",
                    arn=self.digits(23), authcode=self.digits(6),
                    brand_reference="".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=15)),
                    cardholder=cust.name.upper(), entry_mode=rng.choice(["ECOM", "MOTO"]))

    # -- sales and what follows them --------------------------------------------------------------
    def sale(self, created: int) -> None:
        rng = self.rng
        cust = rng.choice(self.planner.customers)
        plan = self.planner.plan(cust, business_date(created))
        card = self.card(cust)
        description = payment_description(plan.customer_ref)
        if plan.free_text:  # quirk free_text_refs: the invoices only after the customer in the description
            description += " - " + reference_text(plan.invoice_ref)
        txn = SettlementTxn(id=stable_id(rng, "TRN", 30), type="SALE", amount=plan.amount_minor, created=created,
                            reference="" if plan.free_text else plan.invoice_ref or "", description=description,
                            card=card, batch=self.batch_for(created).id,
                            discount=discount_fee(plan.amount_minor, card.brand))
        self.ledger.transactions[txn.id] = txn
        self.planner.record(txn.id, plan, cust.number)
        roll = rng.random()
        if roll < 0.04:
            self.refund(txn)
        elif roll < 0.08:
            self.dispute(txn)

    def refund(self, sale: SettlementTxn) -> None:
        rng = self.rng
        created = sale.created + rng.randint(1, 4) * DAY + rng.randrange(3_600)
        if created >= self.end:
            return
        amount = sale.amount if rng.random() < 0.6 else sale.amount // 2
        refund = SettlementTxn(id=stable_id(rng, "TRN", 30), type="REFUND", amount=amount, created=created,
                               reference=sale.reference, description=f"Refund of {sale.description}",
                               card=sale.card, batch=self.batch_for(created).id, parent=sale.id)
        self.ledger.transactions[refund.id] = refund

    def dispute(self, sale: SettlementTxn) -> None:
        rng = self.rng
        charged_back = sale.created + rng.randint(3, 8) * DAY + rng.randrange(DAY)
        if charged_back >= self.end:
            return
        reason_code, reason_description = rng.choice(DISPUTE_REASONS)
        reversed_at = charged_back + rng.randint(5, 10) * DAY + rng.randrange(DAY)
        won = rng.random() < 0.5 and reversed_at < self.end
        dispute = Dispute(id=f"DIS_{stable_id(rng, 'SAND', 12)}", transaction=sale.id, amount=sale.amount,
                          reason_code=reason_code, reason_description=reason_description,
                          respond_by=charged_back + 20 * DAY, won_at=reversed_at if won else None,
                          adjustments=[DisputeAdjustment("CHARGEBACK", "DEBIT", charged_back)])
        if won:
            dispute.adjustments.append(DisputeAdjustment("REVERSAL", "CREDIT", reversed_at))
        self.ledger.disputes[dispute.id] = dispute

    # -- deposits ---------------------------------------------------------------------------------
    def deposit_for(self, deposits: dict[date, Deposit], business_day: date) -> Deposit:
        day = next_weekday(business_day)
        if day not in deposits:
            deposits[day] = Deposit(id=f"DEP_{self.digits(10)}", deposit_date=day,
                                    created=local_epoch(day, DEPOSIT_POSTING))
        return deposits[day]

    def deposits(self) -> None:
        by_date: dict[date, Deposit] = {}
        for txn in self.ledger.transactions.values():
            deposit = self.deposit_for(by_date, self.ledger.batches[txn.batch].business_date)
            txn.deposit = deposit.id
            if txn.type == "SALE":
                deposit.sales_count += 1
                deposit.sales_amount += txn.amount
                deposit.discounts_count += 1
                deposit.discounts_amount += txn.discount
            else:
                deposit.refunds_count += 1
                deposit.refunds_amount += txn.amount
            deposit.fees_amount += ITEM_FEE
        for dispute in self.ledger.disputes.values():
            for adjustment in dispute.adjustments:
                deposit = self.deposit_for(by_date, business_date(adjustment.created))
                adjustment.deposit = deposit.id
                if adjustment.stage == "CHARGEBACK":
                    deposit.chargebacks_count += 1
                    deposit.chargebacks_amount += dispute.amount
                    deposit.fees_amount += CHARGEBACK_FEE
                else:
                    deposit.reversals_count += 1
                    deposit.reversals_amount += dispute.amount
        held_from = self.world.period.start + timedelta(days=DELAYED_DEPOSIT_DAY)
        for day in sorted(by_date):
            deposit = by_date[day]
            self.ledger.deposits[deposit.id] = deposit
            if day >= held_from and not any(d.released_at for d in self.ledger.deposits.values()):
                deposit.released_at = deposit.created + DELAY_DAYS * DAY


def build_heartland_ledger(world: World) -> HeartlandLedger:
    """Generate the period's Heartland activity: fewer payments at weekends, deposits on business days."""
    builder = _Builder(world)
    rng = builder.rng
    for day in world.period.dates():
        count = rng.randint(0, 2) if day.weekday() >= 5 else rng.randint(5, 10)
        for second in sorted(rng.randrange(DAY) for _ in range(count)):
            builder.sale(day_start_epoch(day) + second)
    builder.deposits()
    return builder.ledger

"""Stripe's side of the sandbox world: charges, refunds, disputes, balance transactions and payouts.

One Stripe balance per settlement currency is simulated over the period with daily automatic payouts,
each currency's into its own bank account: USD, and EUR when the world's Stripe account settles EUR
(charges in another currency convert to USD, with the balance transaction's ``exchange_rate``). Objects keep their
whole lifetime (when created, when the funds became available, when a payout failed) and the API
layer renders them as of the sandbox clock, so status changes can be observed by re-reading.

Quirk ``stripe_unknown_category``: on a few days Stripe also books a settlement credit under a
``reporting_category`` nobody maps (``new_product_settlement``, type ``contribution``) that the next
automatic payout pays out. It draws on its own random stream, so everything else stays as without it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from m3_recon.sandbox.customer_master import CustomerMaster, build_customer_master
from m3_recon.sandbox.world import PaymentPlan, PaymentPlanner, World, day_start_epoch, reference_text, stable_id

DAY = 86_400
PAYOUT_HOUR = 6
RECONCILIATION_DELAY = 12 * 3_600  # a payout can be itemised this long after it is created
DISPUTE_FEE = 1_500
UNKNOWN_CATEGORY = "new_product_settlement"  # quirk stripe_unknown_category
UNKNOWN_CATEGORY_DAYS = (4, 17)  # period days (0-based) that carry one
CARD_BRANDS = ("visa", "mastercard", "amex", "discover")


def bank_account(currency: str) -> str:
    """The ``ba_…`` external account a currency's payouts go to (payout ``destination``)."""
    return "ba_sandboxbank0001" if currency == "usd" else f"ba_sandboxbank{currency}1"


@dataclass
class BalanceTxn:
    id: str
    type: str
    reporting_category: str
    amount: int
    fee: int
    net: int
    currency: str
    created: int
    available_on: int
    description: str | None
    source: str | None = None
    exchange_rate: Decimal | None = None
    fee_details: list[dict] = field(default_factory=list)
    payout: str | None = None  # the automatic payout that paid this out (not a Stripe field)


@dataclass
class Charge:
    id: str
    amount: int  # presentment amount, minor units
    currency: str  # presentment currency, lower case
    created: int
    customer: str
    balance_transaction: str
    metadata: dict[str, str]
    description: str
    brand: str
    last4: str
    billing_name: str
    statement_descriptor: str | None = None


@dataclass
class Refund:
    id: str
    charge: str
    amount: int  # presentment
    currency: str
    created: int
    balance_transaction: str


@dataclass
class Dispute:
    id: str
    charge: str
    amount: int  # presentment
    currency: str
    created: int
    reason: str
    balance_transactions: list[str]
    won_at: int | None = None


@dataclass
class Payout:
    id: str
    amount: int
    currency: str
    created: int
    arrival_date: int
    balance_transaction: str
    destination: str
    failed_at: int | None = None
    failure_balance_transaction: str | None = None
    failure_code: str | None = None


@dataclass
class StripeLedger:
    world: World
    charges: dict[str, Charge] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    disputes: dict[str, Dispute] = field(default_factory=dict)
    balance_transactions: dict[str, BalanceTxn] = field(default_factory=dict)
    payouts: dict[str, Payout] = field(default_factory=dict)
    customer_master: CustomerMaster | None = None

    @property
    def currencies(self) -> tuple[str, ...]:
        """What the account settles in (lower case, as Stripe writes it); USD first."""
        return tuple(currency.lower() for currency in self.world.stripe_currencies)

    def add_txn(self, txn: BalanceTxn) -> BalanceTxn:
        self.balance_transactions[txn.id] = txn
        return txn

    def source_object(self, source_id: str | None):
        if source_id is None:
            return None
        for table in (self.charges, self.refunds, self.disputes, self.payouts):
            if source_id in table:
                return table[source_id]
        return None


def stripe_fee(amount: int) -> int:
    """2.9 % + 30 cents, rounded half up, in integer arithmetic."""
    return (amount * 29 + 500) // 1000 + 30


def to_settlement(presentment: int, rate: Decimal) -> int:
    return int((Decimal(presentment) * rate).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def next_business_day(epoch_day_start: int) -> int:
    from datetime import datetime, timezone

    day = datetime.fromtimestamp(epoch_day_start, tz=timezone.utc).date() + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day_start_epoch(day)


class _Builder:
    def __init__(self, world: World):
        self.world = world
        self.rng: random.Random = world.rng("stripe")
        self.ledger = StripeLedger(world=world)
        self.end = world.period.end_epoch
        self.ledger.customer_master = build_customer_master(world)
        self.planner = PaymentPlanner(world, "stripe", self.rng,
                                      known_customers=self.ledger.customer_master.known_m3_customers)

    # -- helpers ---------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        return stable_id(self.rng, prefix)

    def eur_rate(self) -> Decimal:
        return Decimal("1.0800") + Decimal(self.rng.randint(-400, 400)) / Decimal(10_000)

    def settle(self, presentment: int, currency: str) -> tuple[int, str, Decimal | None]:
        """(settled amount, settlement currency, exchange rate or None when not converted)."""
        if currency in self.ledger.currencies:
            return presentment, currency, None
        rate = self.eur_rate()
        return to_settlement(presentment, rate), "usd", rate

    # -- charges and what follows them -------------------------------------------------------
    def charge(self, created: int) -> None:
        rng = self.rng
        cust = rng.choice(self.planner.customers)
        day = self.world.period.start + timedelta(days=(created - self.world.period.start_epoch) // DAY)
        plan = self.planner.plan(cust, day)
        named_customer = None if plan.customer_via_xref else plan.customer_ref  # else only its Stripe customer says
        metadata = {key: value for key, value in (("m3_invoice", plan.invoice_ref), ("m3_customer", named_customer))
                    if value is not None}
        description, descriptor = f"Payment by {cust.name}", None
        if plan.free_text:
            del metadata["m3_invoice"]
            description, descriptor = self.free_text(plan, metadata, description)
        currency = cust.currency.lower()
        charge_id = self.new_id("ch")
        txn_id = self.new_id("txn")
        settled, settlement, rate = self.settle(plan.amount_minor, currency)
        fee = stripe_fee(settled)
        fee_details = [{"amount": fee, "application": None, "currency": settlement,
                        "description": "Stripe processing fees", "type": "stripe_fee"}]
        self.ledger.add_txn(BalanceTxn(
            id=txn_id, type="charge", reporting_category="charge", amount=settled, fee=fee,
            net=settled - fee, currency=settlement, created=created,
            available_on=(created // DAY + 2) * DAY, description=f"Payment from {cust.name}",
            source=charge_id, exchange_rate=rate, fee_details=fee_details))
        self.ledger.charges[charge_id] = Charge(
            id=charge_id, amount=plan.amount_minor, currency=currency, created=created, customer=cust.stripe_id,
            balance_transaction=txn_id, metadata=metadata, description=description,
            brand=rng.choice(CARD_BRANDS), last4=f"{rng.randrange(10_000):04d}", billing_name=cust.name,
            statement_descriptor=descriptor)
        self.planner.record(txn_id, plan, cust.number)
        if rng.random() < 0.04:
            self.refund(charge_id, created)
        elif rng.random() < 0.02:
            self.dispute(charge_id, created)

    def free_text(self, plan: PaymentPlan, metadata: dict[str, str], description: str) -> tuple[str, str | None]:
        """Quirk free_text_refs: the invoice numbers only in the charge's description, a metadata note or
        (one invoice) its statement descriptor. Returns (description, statement descriptor)."""
        text = reference_text(plan.invoice_ref)
        place = self.planner.quirk_rng.choice(["description", "metadata"] + (["descriptor"] if "," not in text
                                                                              and " and " not in text else []))
        if place == "metadata":
            metadata["note"] = text
            return description, None
        if place == "descriptor":
            return description, text.removeprefix("Payment for ")[:22]
        return text, None

    def refund(self, charge_id: str, charge_created: int) -> None:
        rng = self.rng
        charge = self.ledger.charges[charge_id]
        created = charge_created + rng.randint(1, 4) * DAY + rng.randrange(3_600)
        if created >= self.end:
            return
        presentment = charge.amount if rng.random() < 0.6 else charge.amount // 2
        settled, settlement, rate = self.settle(presentment, charge.currency)
        refund_id, txn_id = self.new_id("re"), self.new_id("txn")
        self.ledger.refunds[refund_id] = Refund(refund_id, charge_id, presentment, charge.currency,
                                                created, txn_id)
        self.ledger.add_txn(BalanceTxn(
            id=txn_id, type="refund", reporting_category="refund", amount=-settled, fee=0, net=-settled,
            currency=settlement, created=created, available_on=created, description="REFUND FOR CHARGE",
            source=refund_id, exchange_rate=rate))

    def dispute(self, charge_id: str, charge_created: int) -> None:
        rng = self.rng
        charge = self.ledger.charges[charge_id]
        created = charge_created + rng.randint(3, 8) * DAY + rng.randrange(3_600)
        if created >= self.end:
            return
        settled, settlement, rate = self.settle(charge.amount, charge.currency)
        dispute_id, txn_id = self.new_id("dp"), self.new_id("txn")
        fee_details = [{"amount": DISPUTE_FEE, "application": None, "currency": settlement,
                        "description": "Dispute fee", "type": "stripe_fee"}]
        self.ledger.add_txn(BalanceTxn(
            id=txn_id, type="adjustment", reporting_category="dispute", amount=-settled,
            fee=DISPUTE_FEE, net=-settled - DISPUTE_FEE, currency=settlement, created=created,
            available_on=created, description="Chargeback withdrawal for " + charge_id,
            source=dispute_id, exchange_rate=rate, fee_details=fee_details))
        dispute = Dispute(dispute_id, charge_id, charge.amount, charge.currency, created,
                          rng.choice(["fraudulent", "product_not_received", "duplicate"]), [txn_id])
        won_at = created + rng.randint(5, 10) * DAY
        if rng.random() < 0.5 and won_at < self.end:
            reversal_id = self.new_id("txn")
            self.ledger.add_txn(BalanceTxn(
                id=reversal_id, type="adjustment", reporting_category="dispute_reversal",
                amount=settled, fee=0, net=settled, currency=settlement, created=won_at, available_on=won_at,
                description="Chargeback reversal for " + charge_id, source=dispute_id,
                exchange_rate=rate))
            dispute.balance_transactions.append(reversal_id)
            dispute.won_at = won_at
        self.ledger.disputes[dispute_id] = dispute

    # -- balance-only movements ------------------------------------------------------------------
    def balance_movement(self, created: int, type_: str, category: str, amount: int, description: str):
        self.ledger.add_txn(BalanceTxn(
            id=self.new_id("txn"), type=type_, reporting_category=category, amount=amount, fee=0,
            net=amount, currency="usd", created=created, available_on=created, description=description))

    def balance_movements(self) -> None:
        rng, days, start = self.rng, self.world.period.days, self.world.period.start_epoch
        noon = 12 * 3_600
        if days >= 3:
            held = rng.randint(20, 40) * 1_000
            self.balance_movement(start + 2 * DAY + noon, "reserve_hold", "risk_reserved_funds", -held,
                                  "Rolling reserve hold")
            self.balance_movement(start + (days - 1) * DAY + noon, "reserve_release",
                                  "risk_reserved_funds", held, "Rolling reserve release")
        for offset in (days // 3, 2 * days // 3):
            if 0 < offset < days:
                amount = rng.choice([-1, 1]) * rng.randint(100, 5_000)
                self.balance_movement(start + offset * DAY + rng.randrange(DAY), "adjustment",
                                      "other_adjustment", amount, "Adjustment for fee correction")
        if days > 14:
            self.balance_movement(start + 14 * DAY + 3_600, "stripe_fee", "fee", -rng.randint(1_500, 4_500),
                                  "Radar for Fraud Teams")

    def unknown_category_movements(self) -> None:
        """Quirk ``stripe_unknown_category``: a credit in a category no mapping knows, paid out like any other."""
        rng = self.world.rng("stripe_unknown_category")
        start, days = self.world.period.start_epoch, self.world.period.days
        for offset in (d for d in UNKNOWN_CATEGORY_DAYS if d < days):
            created = start + offset * DAY + rng.randrange(PAYOUT_HOUR * 3_600, DAY)
            amount = rng.randint(1_000, 25_000)
            self.ledger.add_txn(BalanceTxn(
                id=stable_id(rng, "txn"), type="contribution", reporting_category=UNKNOWN_CATEGORY, amount=amount,
                fee=0, net=amount, currency="usd", created=created, available_on=created,
                description="New product settlement"))

    # -- payouts ---------------------------------------------------------------------------------
    def payouts(self) -> None:
        """Each day, one automatic payout per settlement currency of its available balance; the first (USD)
        payout from the tenth day on fails once."""
        period = self.world.period
        failing_day = min(9, period.days - 5)
        for index, day in enumerate(period.dates()):
            payout_time = day_start_epoch(day) + PAYOUT_HOUR * 3_600
            for currency in self.ledger.currencies:
                payout = self.payout(currency, day, payout_time)
                if payout and index >= failing_day and not any(p.failed_at for p in self.ledger.payouts.values()):
                    self.fail(payout)

    def payout(self, currency: str, day: date, payout_time: int) -> Payout | None:
        eligible = [t for t in self.ledger.balance_transactions.values() if t.payout is None
                    and t.currency == currency and t.created <= payout_time and t.available_on <= payout_time]
        amount = sum(t.net for t in eligible)
        if amount <= 0:
            return None
        payout_id, txn_id = self.new_id("po"), self.new_id("txn")
        for t in eligible:
            t.payout = payout_id
        own = self.ledger.add_txn(BalanceTxn(
            id=txn_id, type="payout", reporting_category="payout", amount=-amount, fee=0, net=-amount,
            currency=currency, created=payout_time, available_on=payout_time, description="STRIPE PAYOUT",
            source=payout_id))
        own.payout = payout_id
        payout = Payout(payout_id, amount, currency, payout_time, next_business_day(day_start_epoch(day)), txn_id,
                        bank_account(currency))
        self.ledger.payouts[payout_id] = payout
        return payout

    def fail(self, payout: Payout) -> None:
        failed_at = payout.arrival_date + DAY + 14 * 3_600
        if failed_at >= self.end:
            return
        txn = self.ledger.add_txn(BalanceTxn(
            id=self.new_id("txn"), type="payout_failure", reporting_category="payout_reversal",
            amount=payout.amount, fee=0, net=payout.amount, currency=payout.currency, created=failed_at,
            available_on=failed_at, description="STRIPE PAYOUT FAILURE", source=payout.id))
        payout.failed_at = failed_at
        payout.failure_balance_transaction = txn.id
        payout.failure_code = "account_closed"


def build_stripe_ledger(world: World, quirks: frozenset[str] = frozenset(),
                        charges_per_day: int | None = None) -> StripeLedger:
    """Generate the period's Stripe activity; the last day always has a charge at 23:59:59 UTC.
    ``quirks``: ``stripe_unknown_category`` adds settlement credits in a category no mapping knows.
    ``charges_per_day``: that many charges every day (benchmarks) instead of 6-12."""
    builder = _Builder(world)
    rng, period = builder.rng, world.period
    for day in period.dates():
        count = rng.randint(6, 12) if charges_per_day is None else charges_per_day
        seconds = sorted(rng.randrange(DAY) for _ in range(count))
        if day == period.end:
            seconds[-1] = DAY - 1
        for second in seconds:
            builder.charge(day_start_epoch(day) + second)
    builder.balance_movements()
    if "stripe_unknown_category" in quirks:
        builder.unknown_category_movements()
    builder.payouts()
    return builder.ledger

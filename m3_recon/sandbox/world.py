"""The sandbox's shared business world: M3 customers and their open invoices over a period.

Every processor ledger in the sandbox is generated from one ``World`` so that payments carry real
M3 customer and invoice numbers, and the generator can state the truth each test compares against.
Everything is derived from ``seed``: the same seed and period give byte-identical data.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Customer:
    number: str  # M3 CUNO
    name: str
    currency: str  # invoice currency, upper-case ISO
    processor: str  # the processor this customer pays through
    stripe_id: str


@dataclass
class Invoice:
    number: str  # M3 CINO
    year: int  # M3 INYR
    customer: str
    currency: str
    amount_minor: int
    invoice_date: date
    due_date: date


@dataclass(frozen=True)
class Allocation:
    invoice: str
    amount_minor: int  # in the invoice currency


@dataclass(frozen=True)
class PaymentTruth:
    """What the generator meant a payment to settle; the matching engine is judged against this."""

    processor: str
    payment_id: str
    customer: str | None
    kind: str  # full, partial, over, multi, unapplied
    allocations: tuple[Allocation, ...]


@dataclass(frozen=True)
class Period:
    """Inclusive run of UTC days the sandbox simulates activity for."""

    start: date
    days: int

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days - 1)

    def dates(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]

    @property
    def start_epoch(self) -> int:
        return day_start_epoch(self.start)

    @property
    def end_epoch(self) -> int:
        """First second after the period."""
        return day_start_epoch(self.end + timedelta(days=1))


def day_start_epoch(day: date) -> int:
    return int(datetime.combine(day, time(0), tzinfo=timezone.utc).timestamp())


def stable_id(rng: random.Random, prefix: str, length: int = 24) -> str:
    return prefix + "_" + "".join(rng.choices(ALPHANUMERIC, k=length))


@dataclass
class World:
    seed: int
    period: Period
    customers: list[Customer] = field(default_factory=list)
    invoices: list[Invoice] = field(default_factory=list)
    payments: list[PaymentTruth] = field(default_factory=list)

    def rng(self, stream: str) -> random.Random:
        """An independent random stream per part, so adding a processor never shifts another's data."""
        return random.Random(f"{self.seed}:{stream}")

    def customer(self, number: str) -> Customer:
        return self._customers_by_number[number]

    def invoices_of(self, customer: str) -> list[Invoice]:
        return self._invoices_by_customer.get(customer, [])

    def customers_of(self, processor: str) -> list[Customer]:
        return [c for c in self.customers if c.processor == processor]

    def index(self) -> None:
        self._customers_by_number = {c.number: c for c in self.customers}
        self._invoices_by_customer: dict[str, list[Invoice]] = {}
        for inv in self.invoices:
            self._invoices_by_customer.setdefault(inv.customer, []).append(inv)


COMPANY_WORDS = ["Alder", "Birch", "Cedar", "Delta", "Ember", "Fjord", "Granite", "Harbor", "Iris",
                 "Juniper", "Kestrel", "Linden", "Maple", "Nordic", "Onyx", "Pioneer", "Quarry",
                 "Redwood", "Summit", "Tundra", "Union", "Valley", "Willow", "Yukon", "Zephyr"]
COMPANY_KINDS = ["Foods", "Logistics", "Machining", "Supply", "Textiles", "Hardware", "Farms", "Labs"]


PROCESSORS = ("stripe", "paytrace", "heartland")


def build_world(seed: int, period: Period, customers: int = 60, eur_customers: int = 8) -> World:
    """Customers (a few billed in EUR) and invoices dated from 45 days before the period to its end.

    Each customer pays through one processor; EUR customers pay by Stripe, which converts to USD.
    """
    world = World(seed=seed, period=period)
    rng = world.rng("world")
    for i in range(customers):
        name = f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_KINDS)} {'Inc' if i % 3 else 'GmbH'}"
        currency = "EUR" if i < eur_customers else "USD"
        processor = "stripe" if i < eur_customers else PROCESSORS[i % len(PROCESSORS)]
        world.customers.append(Customer(number=f"C{10001 + i}", name=name, currency=currency,
                                        processor=processor, stripe_id=stable_id(rng, "cus", 14)))
    first_day = period.start - timedelta(days=45)
    span = (period.end - first_day).days + 1
    next_number = 26000001
    for cust in world.customers:
        for _ in range(rng.randint(10, 20)):
            invoice_date = first_day + timedelta(days=rng.randrange(span))
            # Amounts from 50.00 to 9,000.00 with real cents.
            amount = rng.randint(5_000, 900_000)
            world.invoices.append(Invoice(number=str(next_number), year=invoice_date.year,
                                          customer=cust.number, currency=cust.currency,
                                          amount_minor=amount, invoice_date=invoice_date,
                                          due_date=invoice_date + timedelta(days=30)))
            next_number += 1
    world.invoices.sort(key=lambda inv: (inv.invoice_date, inv.number))
    world.index()
    return world

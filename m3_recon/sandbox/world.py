"""The sandbox's shared business world: M3 customers and their open invoices over a period.

Every processor ledger in the sandbox is generated from one ``World`` so that payments carry real
M3 customer and invoice numbers, and the generator can state the truth each test compares against.
Everything is derived from ``seed``: the same seed and period give byte-identical data.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone

ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Customer:
    number: str  # M3 CUNO
    name: str
    currency: str  # invoice currency, upper-case ISO
    processor: str  # the processor this customer pays through
    stripe_id: str
    email: str = ""  # the accounts-payable address M3 keeps for the customer


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
    """What the generator meant a payment to settle, and what the matcher should conclude from what
    M3 and the processor show (``expected_status`` auto / suggested / unmatched, ``expected_reason``
    an exception reason code or None); the matching engine is judged against this."""

    processor: str
    payment_id: str
    customer: str | None
    kind: str  # full, partial, over, multi, multi_ref, unapplied, ambiguous, already_paid, not_found,
    #            customer_mismatch, reused_tie
    allocations: tuple[Allocation, ...]
    expected_status: str = "auto"
    expected_reason: str | None = None
    invoice_ref: str | None = None
    customer_ref: str | None = None
    customer_via_xref: bool = False  # the payment names no customer; the processor's customer record maps to one


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
    quirks: frozenset[str] = frozenset()  # m3_recon.sandbox.quirks names this world is generated with
    reused_numbers: frozenset[str] = frozenset()  # invoice numbers also open in an earlier invoice year
    local_currency: str = "USD"  # the currency M3 keeps its books in
    heartland_currency: str = "USD"  # what the Heartland account settles in (and its customers are billed in)
    stripe_currencies: tuple[str, ...] = ("USD",)  # what the Stripe account settles in; other charges convert to USD

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
SHARED_EMAIL = "ap@shared-services.example"  # two M3 customers of one group share an accounts-payable inbox


def customer_email(number: int, customers: int) -> str:
    """M3's e-mail for a customer; the last two of the 60 share one (the case an e-mail cannot decide)."""
    return SHARED_EMAIL if number - 10001 in (customers - 6, customers - 3) else f"ap.c{number}@customers.example"


REUSED_NUMBERS = 24  # quirk invoice_number_reused: this many numbers are also open in the year before


def build_world(seed: int, period: Period, customers: int = 60, eur_customers: int = 8,
                quirks: frozenset[str] = frozenset(), local_currency: str = "USD") -> World:
    """Customers (a few billed in EUR) and invoices dated from 45 days before the period to its end.

    Each customer pays through one processor; EUR customers pay by Stripe, which converts to USD. An M3 keeping
    its books in another currency than USD belongs to a group whose Stripe account also has a EUR bank account
    (it settles EUR charges in EUR, USD ones in USD) and whose Heartland account settles in yen: its
    Heartland customers are billed in JPY (the same figures, as whole yen). With
    the quirk ``invoice_number_reused`` some USD invoice numbers are also open in the previous invoice
    year, for a customer of another processor (long before any matching window).
    """
    world = World(seed=seed, period=period, quirks=frozenset(quirks), local_currency=local_currency,
                  heartland_currency="USD" if local_currency == "USD" else "JPY",
                  stripe_currencies=("USD",) if local_currency == "USD" else ("USD", "EUR"))
    rng = world.rng("world")
    for i in range(customers):
        name = f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_KINDS)} {'Inc' if i % 3 else 'GmbH'}"
        processor = "stripe" if i < eur_customers else PROCESSORS[i % len(PROCESSORS)]
        currency = "EUR" if i < eur_customers else world.heartland_currency if processor == "heartland" else "USD"
        world.customers.append(Customer(number=f"C{10001 + i}", name=name, currency=currency,
                                        processor=processor, stripe_id=stable_id(rng, "cus", 14),
                                        email=customer_email(10001 + i, customers)))
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
    # Recurring billing: every fifth customer has two invoices for the same amount (the case where
    # customer + amount alone cannot tell which invoice a payment is for).
    for cust in world.customers[::5]:
        first, second = world.invoices_of(cust.number)[:2]
        second.amount_minor = first.amount_minor
    if "invoice_number_reused" in world.quirks:
        _reuse_numbers(world)
    return world


def _reuse_numbers(world: World) -> None:
    rng = world.rng("quirks:invoice_number_reused")
    usd = [inv for inv in world.invoices if inv.currency == "USD"]
    reused = []
    for inv in rng.sample(usd, k=min(REUSED_NUMBERS, len(usd))):
        payer = world.customer(inv.customer).processor
        owner = rng.choice([c for c in world.customers if c.currency == "USD" and c.processor != payer])
        invoice_date = date(inv.year - 1, rng.randint(1, 6), rng.randint(1, 28))
        reused.append(Invoice(number=inv.number, year=inv.year - 1, customer=owner.number, currency="USD",
                              amount_minor=rng.randint(5_000, 900_000), invoice_date=invoice_date,
                              due_date=invoice_date + timedelta(days=30)))
    world.invoices = sorted(world.invoices + reused, key=lambda inv: (inv.invoice_date, inv.number))
    world.reused_numbers = frozenset(inv.number for inv in reused)
    world.index()


def reference_text(invoice_ref: str) -> str:
    """How a customer writes the invoice numbers of a reference in free text ("Payment for INV-1 and 2")."""
    numbers = re.findall(r"\d+", invoice_ref)
    return "Payment for INV-" + (numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " and " + numbers[-1])


@dataclass(frozen=True)
class PaymentPlan:
    kind: str
    amount_minor: int  # in the invoice (customer) currency
    invoice_ref: str | None
    customer_ref: str | None
    allocations: tuple[Allocation, ...]
    expected_status: str
    expected_reason: str | None
    customer_via_xref: bool = False
    free_text: bool = False  # quirk free_text_refs: the invoice numbers are written in free text only


EDGE_CASES = ("ambiguous", "already_paid", "not_found", "customer_mismatch")
GROUP_CANDIDATES = 10  # must not exceed data/matching_rules.toml multi_invoice.max_candidates
GROUP_WINDOW_DAYS = 120  # customer_amount.days_before_payment
LOOK_AHEAD_DAYS = 3  # customer_amount.days_after_payment: the matcher also sees invoices dated this much later


class PaymentPlanner:
    """Decides what each generated payment of one processor pays, and what the matcher must conclude.

    It keeps M3's view of each invoice — the outstanding amount less what the matcher is expected to
    have applied — because that, not what the customer meant, is what a matcher can see. Payments the
    matcher cannot apply leave M3's view unchanged, as they would in the ERP.
    """

    def __init__(self, world: World, processor: str, rng: random.Random,
                 known_customers: frozenset[str] = frozenset()):
        """``known_customers``: M3 customers the processor's own customer record maps to (the customer
        cross-reference): a payment of theirs that names nobody still reaches the customer rules."""
        self.world, self.processor, self.rng = world, processor, rng
        self.known_customers = known_customers
        self.customers = world.customers_of(processor)
        self.m3_open = {inv.number: inv.amount_minor for c in self.customers for inv in world.invoices_of(c.number)}
        self.reserved: set[str] = set()  # invoices an ambiguous case depends on: left alone afterwards
        self.closed_by_reference: set[str] = set()  # fully paid by a payment naming them
        self.closed_by_group: set[str] = set()  # fully paid by a one-payment-several-invoices payment
        self.edge_cases = (["reused_tie"] if "invoice_number_reused" in world.quirks else []) + list(EDGE_CASES)
        self.quirk_rng = world.rng(f"quirks:{processor}")  # quirks draw here, so the plain world never shifts

    def open_invoices(self, customer: str, day: date) -> list[Invoice]:
        return [inv for inv in self.world.invoices_of(customer)
                if inv.invoice_date <= day and self.m3_open[inv.number] > 0 and inv.number not in self.reserved
                and (day - inv.invoice_date).days <= GROUP_WINDOW_DAYS]

    def record(self, payment_id: str, plan: PaymentPlan, customer: str) -> None:
        self.world.payments.append(PaymentTruth(
            processor=self.processor, payment_id=payment_id, customer=customer, kind=plan.kind,
            allocations=plan.allocations, expected_status=plan.expected_status,
            expected_reason=plan.expected_reason, invoice_ref=plan.invoice_ref, customer_ref=plan.customer_ref,
            customer_via_xref=plan.customer_via_xref))

    def plan(self, customer: Customer, day: date) -> PaymentPlan:
        """A payment by ``customer`` on ``day``; with the quirk ``free_text_refs`` about a third of the
        payments that name invoices write them in free text only (the matcher must read them there)."""
        plan = self._plan(customer, day)
        if "free_text_refs" in self.world.quirks and plan.invoice_ref and self.quirk_rng.random() < 0.35:
            plan = replace(plan, free_text=True)
        return plan

    def _plan(self, customer: Customer, day: date) -> PaymentPlan:
        """A payment by ``customer`` on ``day``; now and then one of the deliberate edge cases."""
        if self.edge_cases and self.rng.random() < 0.05:
            edge = self._edge_case(self.edge_cases[0], customer, day)
            if edge is not None:
                self.edge_cases.pop(0)
                return edge
        reference = self.rng.choices(["invoice", "customer", "none"], [85, 8, 7])[0]
        if reference == "none" and customer.number in self.known_customers:
            plan = self._regular(customer, day, "customer")
            return replace(plan, customer_via_xref=True) if plan.customer_ref else plan
        return self._regular(customer, day, reference)

    def _regular(self, customer: Customer, day: date, reference: str) -> PaymentPlan:
        rng = self.rng
        candidates = self.open_invoices(customer.number, day)
        kind = rng.choices(["full", "partial", "over", "multi"], [80, 10, 3, 7])[0]
        if not candidates:
            return self._unmatched("unapplied", rng.randint(2_000, 200_000), customer,
                                   "invoice" if reference == "none" else "customer")
        if kind == "multi":
            # The matcher looks for groups among the customer's oldest open invoices, where "open" cannot yet
            # count other groups found in the same run: rank with those, choose among the truly open ones.
            ranked = [inv for inv in self.world.invoices_of(customer.number)
                      if inv.invoice_date <= day and (day - inv.invoice_date).days <= GROUP_WINDOW_DAYS
                      and inv.number not in self.reserved
                      and (self.m3_open[inv.number] > 0 or inv.number in self.closed_by_group)]
            oldest = sorted(ranked, key=lambda i: (i.invoice_date, i.number))[:GROUP_CANDIDATES]
            amounts = [self.m3_open[i.number] for i in oldest]
            oldest = [i for i in oldest if self.m3_open[i.number] > 0
                      and amounts.count(self.m3_open[i.number]) == 1]  # a twin makes groups ambiguous
            if len(oldest) >= 2:
                group = rng.sample(oldest, k=min(len(oldest), rng.randint(2, 3)))
                if "multi_invoice_refs" in self.world.quirks and self.quirk_rng.random() < 0.6:
                    return self._listed(group, customer)
                allocations = tuple(Allocation(i.number, self.m3_open[i.number]) for i in group)
                for inv in group:
                    self.m3_open[inv.number] = 0
                    self.closed_by_group.add(inv.number)
                return PaymentPlan("multi", sum(a.amount_minor for a in allocations), None, customer.number,
                                   allocations, "auto", None)
            kind = "full"
        inv = rng.choice(candidates)
        open_amount = self.m3_open[inv.number]
        if kind == "partial" and open_amount > 200:
            amount = open_amount * rng.randint(40, 90) // 100
        elif kind == "over":
            amount = open_amount + rng.randint(1, 5_000)
        else:
            kind, amount = "full", open_amount
        intended = (Allocation(inv.number, min(amount, open_amount)),)  # what the customer meant to pay
        if reference == "none":
            return self._unmatched(kind, amount, customer, "none", intended)
        if reference == "customer":
            visible = self.open_invoices(customer.number, day + timedelta(days=LOOK_AHEAD_DAYS))
            same_amount = [i for i in visible if self.m3_open[i.number] == amount]
            if kind != "full":
                if same_amount:  # would look like a full payment of another invoice: keep it unambiguous
                    amount += 1
                return self._unmatched(kind, amount, customer, "customer", intended)
            if len(same_amount) > 1:
                self.reserved.update(i.number for i in same_amount)
                return PaymentPlan(kind, amount, None, customer.number,
                                   (Allocation(inv.number, amount),), "suggested", "ambiguous_amount")
            self.m3_open[inv.number] = 0
            return PaymentPlan(kind, amount, None, customer.number, (Allocation(inv.number, amount),), "auto", None)
        applied = min(amount, open_amount)
        self.m3_open[inv.number] -= applied
        if self.m3_open[inv.number] == 0:
            self.closed_by_reference.add(inv.number)
        return PaymentPlan(kind, amount, inv.number, customer.number, (Allocation(inv.number, applied),), "auto",
                           "overpayment" if amount > open_amount else None)

    def _listed(self, group: list[Invoice], customer: Customer) -> PaymentPlan:
        """Quirk multi_invoice_refs: one payment naming its invoices in one reference, applied oldest first —
        exactly their sum, less (the last one in part) or more (an overpayment)."""
        qrng = self.quirk_rng
        group = sorted(group, key=lambda i: (i.invoice_date, i.number))
        total = sum(self.m3_open[i.number] for i in group)
        last = self.m3_open[group[-1].number]
        shape = qrng.choice(["exact", "exact", "short", "over"])
        amount = {"exact": total, "short": total - qrng.randint(1, max(last - 1, 1)),
                  "over": total + qrng.randint(1, 5_000)}[shape]
        allocations, left = [], amount
        for inv in group:
            applied = min(self.m3_open[inv.number], left)
            left -= applied
            self.m3_open[inv.number] -= applied
            self.reserved.add(inv.number)  # left alone afterwards: its residue is not for later payments
            if applied:
                allocations.append(Allocation(inv.number, applied))
        separator = qrng.choice([", ", "; ", " / ", " ", " and "])
        reference = separator.join(("INV-" if qrng.random() < 0.3 else "") + i.number for i in group)
        return PaymentPlan("multi_ref", amount, reference, customer.number, tuple(allocations), "auto",
                           "overpayment" if amount > total else None)

    def _unmatched(self, kind: str, amount: int, customer: Customer, reference: str,
                   intended: tuple[Allocation, ...] = ()) -> PaymentPlan:
        """A payment the matcher cannot apply; ``intended`` is the invoice the customer meant (for people)."""
        if reference == "none":
            return PaymentPlan(kind, amount, None, None, intended, "unmatched", "no_reference")
        return PaymentPlan(kind, amount, None, customer.number, intended, "unmatched", "no_matching_invoice")

    def _edge_case(self, edge: str, customer: Customer, day: date) -> PaymentPlan | None:
        rng = self.rng
        candidates = self.open_invoices(customer.number, day)
        if edge == "ambiguous":
            by_amount: dict[int, list[Invoice]] = {}
            for inv in candidates:
                by_amount.setdefault(self.m3_open[inv.number], []).append(inv)
            twins = next((group for group in by_amount.values() if len(group) == 2), None)
            if twins is None:
                return None
            self.reserved.update(i.number for i in twins)
            amount = self.m3_open[twins[0].number]
            return PaymentPlan(edge, amount, None, customer.number, (Allocation(twins[0].number, amount),),
                               "suggested", "ambiguous_amount")
        if edge == "reused_tie":  # quirk invoice_number_reused: a number open in two years, no customer named
            tied = [inv for c in self.customers for inv in self.open_invoices(c.number, day)
                    if inv.number in self.world.reused_numbers]
            if not tied:
                return None
            inv = rng.choice(tied)
            self.reserved.add(inv.number)
            amount = self.m3_open[inv.number]
            return PaymentPlan(edge, amount, inv.number, None, (Allocation(inv.number, amount),),
                               "suggested", "ambiguous_reference")
        if edge == "already_paid":
            paid = [inv for inv in self.world.invoices_of(customer.number)
                    if inv.number in self.closed_by_reference and inv.invoice_date <= day
                    and inv.number not in self.world.reused_numbers]
            if not paid:
                return None
            return PaymentPlan(edge, rng.randint(2_000, 90_000), rng.choice(paid).number, customer.number, (),
                               "unmatched", "invoice_already_paid")
        if edge == "not_found":
            return PaymentPlan(edge, rng.randint(2_000, 90_000), f"INV-{rng.randint(90_000_000, 99_999_999)}",
                               customer.number, (), "unmatched", "invoice_not_found")
        others = [inv for c in self.customers if c.number != customer.number and c.currency == customer.currency
                  for inv in self.open_invoices(c.number, day) if inv.number not in self.world.reused_numbers]
        if not others:
            return None
        inv = rng.choice(others)
        self.reserved.add(inv.number)
        amount = self.m3_open[inv.number]
        return PaymentPlan(edge, amount, inv.number, customer.number, (Allocation(inv.number, amount),),
                           "suggested", "customer_mismatch")

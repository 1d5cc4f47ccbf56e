"""Stripe's customer objects in the sandbox, and which M3 customer each one truly is.

Every M3 customer who pays by Stripe has a Stripe customer. Some carry the M3 number in their
metadata (``erp_customer_id``), some only the same e-mail address as M3 (in another case, with
blanks), some a private address nobody can map. A few are deliberate conflicts the cross-reference
must refuse: metadata naming another M3 customer than the e-mail does, metadata naming a customer
M3 does not have, and an e-mail two M3 customers share (``world.SHARED_EMAIL``). A few Stripe
customers have no payments at all (a second card account of an M3 customer maps to it as well).
Drawn from its own random stream, so the rest of the world stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from m3_recon.sandbox.world import SHARED_EMAIL, World, stable_id

METADATA_KEY = "erp_customer_id"
UNKNOWN_M3_CUSTOMER = "C99999"


@dataclass
class StripeCustomer:
    id: str
    email: str | None
    name: str
    created: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CustomerMaster:
    """The Stripe customers and the truth: ``expected_xref`` Stripe id → M3 number (what a correct
    cross-reference maps), ``conflicts`` the Stripe ids that must become ``customer_xref_conflict``."""

    customers: dict[str, StripeCustomer]
    expected_xref: dict[str, str]
    conflicts: frozenset[str]
    known_m3_customers: frozenset[str]  # M3 customers whose charging Stripe customer maps to them


def build_customer_master(world: World) -> CustomerMaster:
    rng = world.rng("customer_master")
    created = world.period.start_epoch - 400 * 86_400
    customers: dict[str, StripeCustomer] = {}
    expected: dict[str, str] = {}
    conflicts: set[str] = set()
    paying = world.customers_of("stripe")
    for index, cust in enumerate(paying):
        record = StripeCustomer(cust.stripe_id, cust.email, cust.name, created + index * 86_400)
        if cust.email == SHARED_EMAIL:  # the e-mail names two M3 customers
            conflicts.add(cust.stripe_id)
        elif index == 1:  # metadata names another M3 customer than the e-mail does
            record.metadata[METADATA_KEY] = paying[index + 1].number
            conflicts.add(cust.stripe_id)
        elif index == 2:  # metadata names a customer M3 does not have
            record.metadata[METADATA_KEY] = UNKNOWN_M3_CUSTOMER
            record.email = None
            conflicts.add(cust.stripe_id)
        else:
            roll = rng.random()
            if roll < 0.45:
                record.metadata[METADATA_KEY] = cust.number
                expected[cust.stripe_id] = cust.number
            elif roll < 0.85:
                record.email = f" {cust.email.upper()} " if rng.random() < 0.3 else cust.email
                expected[cust.stripe_id] = cust.number
            else:
                record.email = f"{cust.name.split()[0].lower()}.owner@private.example"
        customers[record.id] = record
    for index, cust in enumerate(paying[:3]):  # second Stripe accounts of M3 customers, never charged
        extra = StripeCustomer(stable_id(rng, "cus", 14), None, f"{cust.name} (2nd card)", created + index,
                               {METADATA_KEY: cust.number})
        customers[extra.id] = extra
        expected[extra.id] = cust.number
    known = frozenset(expected[c.stripe_id] for c in paying if c.stripe_id in expected)
    return CustomerMaster(customers, expected, frozenset(conflicts), known)


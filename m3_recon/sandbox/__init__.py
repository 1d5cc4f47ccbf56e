"""The built-in sandbox: loopback servers that speak each vendor's wire format over seeded data.

``Sandbox`` builds one deterministic ``World`` for a period and serves each vendor's ledger from it
on 127.0.0.1. Tests, benchmarks and the demo use it in-process; ``m3-recon sandbox`` runs it in the
foreground for the Dagster UI or manual exploration.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from m3_recon.heap import bulk_work
from m3_recon.settings import PROJECT_ROOT, analyst_duckdb_path, duckdb_path
from m3_recon.sandbox.heartland_api import SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY, HeartlandApp
from m3_recon.sandbox.heartland_api import sandbox_env as heartland_env
from m3_recon.sandbox.heartland_ledger import build_heartland_ledger
from m3_recon.sandbox.m3_api import (SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_PASSWORD,
                                     SANDBOX_M3_TENANT, SANDBOX_M3_USERNAME, M3App, write_ionapi_file)
from m3_recon.sandbox.m3_api import sandbox_env as m3_env
from m3_recon.sandbox.m3_ledger import M3Ledger
from m3_recon.sandbox.paytrace_api import SANDBOX_PAYTRACE_PASSWORD, SANDBOX_PAYTRACE_USERNAME, PayTraceApp
from m3_recon.sandbox.paytrace_api import sandbox_env as paytrace_env
from m3_recon.sandbox.paytrace_ledger import build_paytrace_ledger
from m3_recon.sandbox.quirks import QUIRKS, QuirkError
from m3_recon.sandbox.server import SandboxClock, VendorServer
from m3_recon.sandbox.stripe_api import StripeApp
from m3_recon.sandbox.stripe_ledger import DAY, build_stripe_ledger
from m3_recon.sandbox.world import DEFAULT_CUSTOMERS, Period, build_world, payments_per_day

SANDBOX_DATA = PROJECT_ROOT / "data" / "sandbox"
DEFAULT_SEED = 7
DEFAULT_START = date(2026, 10, 1)
DEFAULT_DAYS = 31
SANDBOX_STRIPE_KEY = "sk_test_m3recon_sandbox_0000000000000001"
SETTLE_DAYS = 10  # default clock: this long after the period, every status has settled


@dataclass(frozen=True)
class Scale:
    """How big the world is (``--charges-per-day``, ``--customers``, ``--invoices``); the case mix stays the
    default world's. ``charges_per_day`` None: the default world's days (a few dozen payments each);
    ``invoices`` None: 15 per customer."""

    charges_per_day: int | None = None
    customers: int = DEFAULT_CUSTOMERS
    invoices: int | None = None

    @property
    def suffix(self) -> str:
        """``""`` for the default world, else ``_scale-<charges>c-<customers>u-<invoices>i``."""
        if self == Scale():
            return ""
        return (f"_scale-{self.charges_per_day if self.charges_per_day is not None else 'default'}c-"
                f"{self.customers}u-{self.invoices if self.invoices is not None else 'default'}i")


def flavour(quirks: frozenset[str] = frozenset(), local_currency: str = "USD", scale: Scale = Scale()) -> str:
    """How a sandbox other than the plain, default-sized USD one names its files: ``_quirks-<names>``,
    ``_local-EUR``, ``_scale-…``."""
    return (("_quirks-" + "-".join(sorted(quirks)) if quirks else "")
            + (f"_local-{local_currency}" if local_currency != "USD" else "") + scale.suffix)


def persisted_ledger_path(seed: int = DEFAULT_SEED, start: date = DEFAULT_START, days: int = DEFAULT_DAYS,
                          quirks: frozenset[str] = frozenset(), local_currency: str = "USD",
                          scale: Scale = Scale()) -> Path:
    """The one sandbox M3 ledger per seed, period, quirks, local currency and scale that ``make demo``,
    ``make ui`` and ``m3-recon sandbox`` all post into (``data/sandbox/``), so the warehouse and M3 stay in step."""
    return SANDBOX_DATA / f"m3_ledger_seed{seed}_{start}_{days}d{flavour(quirks, local_currency, scale)}.sqlite"


def reset_sandbox_state(ledger: Path) -> list[Path]:
    """Start over: remove the sandbox's M3 ledger and the warehouse and analysts' copy that posted into it (they
    would disagree with a fresh M3). Returns what was removed; finance's decisions file is kept."""
    removed = []
    for path in (ledger, Path(duckdb_path()), Path(duckdb_path() + ".wal"), Path(analyst_duckdb_path())):
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


RECOVERY_HINT = ("M3's sandbox ledger ({ledger}) and the warehouse ({warehouse}) disagree: one of them was reset, "
                 "or something else posted into this M3. Start both over with `m3-recon sandbox --reset` (or "
                 "`m3-recon demo --reset`), then run the demo again.")


class Sandbox:
    """All vendor sandboxes for one seeded period. Use as a context manager or start()/stop()."""

    def __init__(self, seed: int = DEFAULT_SEED, start: date = DEFAULT_START, days: int = DEFAULT_DAYS,
                 now: int | None = None, m3_ledger_path: str | Path | None = None,
                 quirks: frozenset[str] = frozenset(), local_currency: str = "USD",
                 charges_per_day: int | None = None, customers: int = DEFAULT_CUSTOMERS, invoices: int | None = None):
        """``m3_ledger_path``: keep M3's ledger in this SQLite file so postings survive a restart.
        ``quirks``: names from ``m3_recon.sandbox.quirks.QUIRKS`` — alternative vendor shapes to serve.
        ``local_currency``: what M3 keeps its books in; other than USD, Stripe settles EUR charges in EUR and the
        Heartland account settles in JPY.
        A scaled world: ``charges_per_day`` payments every day across the three processors (split as their
        customers are), ``customers`` M3 customers, ``invoices`` invoices in all; the same case mix."""
        unknown = set(quirks) - set(QUIRKS)
        if unknown:
            raise QuirkError(f"unknown quirk(s): {', '.join(sorted(unknown))}")
        self.quirks = frozenset(quirks)
        self.period = Period(start, days)
        self.world = build_world(seed, self.period, customers=customers, invoices=invoices, quirks=self.quirks,
                                 local_currency=local_currency)
        daily = payments_per_day(self.world, charges_per_day) if charges_per_day is not None else {}
        self.stripe = build_stripe_ledger(self.world, self.quirks, charges_per_day=daily.get("stripe"))
        self.paytrace = build_paytrace_ledger(self.world, sales_per_day=daily.get("paytrace"))
        self.heartland = build_heartland_ledger(self.world, sales_per_day=daily.get("heartland"))
        self.m3 = M3Ledger(self.world, m3_ledger_path)
        self.clock = SandboxClock(now if now is not None else self.period.end_epoch + SETTLE_DAYS * DAY)
        self.apps = {
            "stripe": StripeApp(self.stripe, self.clock, SANDBOX_STRIPE_KEY),
            "paytrace": PayTraceApp(self.paytrace, self.clock, SANDBOX_PAYTRACE_USERNAME, SANDBOX_PAYTRACE_PASSWORD,
                                    quirks=self.quirks),
            "heartland": HeartlandApp(self.heartland, self.clock, SANDBOX_GP_APP_ID, SANDBOX_GP_APP_KEY,
                                      quirks=self.quirks),
            "m3": M3App(self.m3, self.clock, SANDBOX_M3_CLIENT_ID, SANDBOX_M3_CLIENT_SECRET, SANDBOX_M3_USERNAME,
                        SANDBOX_M3_PASSWORD, SANDBOX_M3_TENANT, quirks=self.quirks),
        }
        self._ionapi_dir: Path | None = None
        self.servers: dict[str, VendorServer] = {}
        self._heap = ExitStack()  # the collector's settings while serving

    def start(self, ports: dict[str, int] | None = None) -> "Sandbox":
        self._heap.enter_context(bulk_work())  # the world outlives the serving: see m3_recon.heap
        ports = ports or {}
        for name, app in self.apps.items():
            self.servers[name] = VendorServer(app, self.clock, ports.get(name, 0)).start()
        self._ionapi_dir = Path(tempfile.mkdtemp(prefix="m3-recon-sandbox-"))
        write_ionapi_file(self.ionapi_path, self.url("m3"))
        self.write_exchange_rates(self.exchange_rates_path)
        return self

    @property
    def ionapi_path(self) -> Path:
        """The sandbox's Infor .ionapi file (service-account keys for its ION token endpoint)."""
        assert self._ionapi_dir is not None, "start the sandbox first"
        return self._ionapi_dir / "sandbox.ionapi"

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
        self._heap.close()
        if self._ionapi_dir is not None:
            shutil.rmtree(self._ionapi_dir, ignore_errors=True)
            self._ionapi_dir = None

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def url(self, vendor: str) -> str:
        return self.servers[vendor].url

    def faults(self, vendor: str):
        return self.servers[vendor].faults

    @property
    def bank_dir(self) -> Path:
        """The sandbox's own (initially empty) bank statement folder, which ``env()`` points the close at."""
        assert self._ionapi_dir is not None, "start the sandbox first"
        return self._ionapi_dir / "bank"

    def write_bank_statements(self, folder=None) -> list[Path]:
        """The bank's statements for the period up to the day before the clock (BAI2 and camt.053) in ``folder``
        (default: ``bank_dir``)."""
        from m3_recon.sandbox.bank_statements import write_statements

        return write_statements(self, folder if folder is not None else self.bank_dir)

    @property
    def exchange_rates_path(self) -> Path:
        assert self._ionapi_dir is not None, "start the sandbox first"
        return self._ionapi_dir / "exchange_rates.csv"

    def write_exchange_rates(self, path: Path) -> None:
        """M3's daily rates to its local currency for every currency a processor settles in (the
        ``M3_RECON_EXCHANGE_RATES`` file), from a week before the period to ten days after it."""
        last = self.period.end + timedelta(days=SETTLE_DAYS)
        settled = ["USD", *self.world.stripe_currencies, self.world.heartland_currency]
        rates = self.m3.exchange_rates(settled, self.period.start - timedelta(days=7), last)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["currency", "valid_from", "rate"])
            writer.writerows((currency, day.isoformat(), f"{rate:f}") for currency, day, rate in rates)

    def env(self) -> dict[str, str]:
        """Environment variables that point m3-recon's resources at this sandbox."""
        return {"STRIPE_API_KEY": SANDBOX_STRIPE_KEY, "STRIPE_API_BASE": self.url("stripe"),
                **paytrace_env(self.url("paytrace")), **heartland_env(self.url("heartland")),
                **m3_env(self.url("m3"), self.ionapi_path),
                "M3_RECON_START_DATE": self.period.start.isoformat(), "M3_RECON_END_DATE": self.period.end.isoformat(),
                "M3_RECON_BANK_DIR": str(self.bank_dir), "M3_LOCAL_CURRENCY": self.world.local_currency,
                "M3_RECON_EXCHANGE_RATES": str(self.exchange_rates_path)}

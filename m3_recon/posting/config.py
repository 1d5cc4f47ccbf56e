"""How the poster talks to a given M3 site: GL interface, PARM layout, line form, payment methods.

Read from the environment by ``posting_config_from_env`` (all optional):

* ``M3_GL_LAYOUT_FILE`` — the GLS850 position template of the GL interface (default
  ``data/gls840_layout.toml``, the GLUPLOAD layout);
* ``M3_GL_INTERFACE`` — ``INTN`` on ``GLS840MI/AddBatchHead`` (default: the layout file's ``interface``);
* ``M3_GL_LINE_FORM`` — ``parm`` (``AddBatchLine`` with a PARM string, default) or ``fields``
  (``AddBatchLineFld``, for interfaces of GLS850 usage type 2);
* ``M3_POSTING_CONCURRENCY`` — a wave's stages (preparing it with its checks in M3, its bulk send, its
  read-back) in flight at once, at most one less of them sends (default 2: the next wave prepared or a
  wave read back while one is sent, sends in journal order; 1: strictly one after another; more:
  independent waves sent in parallel, numbered by M3 as they arrive). The request budget
  ``M3_MAX_REQUESTS_PER_SECOND`` still applies.

Cash application is configured beside the GL accounts: ``[payment_methods.<processor>]`` in
``data/gl_accounts.toml`` names, per processor, the M3 payment method ``BOPE`` of its ``ARS040MI``
batches (e.g. ``STR``, set up in M3 to debit that processor's clearing account) and optionally an
explicit ``ait1`` for every payment line.
A processor without a payment method gets no cash batch (its vouchers fail with the reason): M3
would debit its default account instead of the processor's clearing account.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import tomllib
from pathlib import Path

from m3_recon.posting.layout import DEFAULT_LAYOUT_FILE, LAYOUT_VARIABLE, ParmLayout
from m3_recon.journals import DEFAULT_ACCOUNTS_FILE
from m3_recon.settings import SettingsError, local_currency

LINE_FORM_PARM = "parm"
LINE_FORM_FIELDS = "fields"
BOPE_LENGTH = 3
AIT_LENGTH = 10
DEFAULT_CONCURRENCY = 2


@dataclass(frozen=True)
class PaymentMethod:
    """How one processor's cash reaches M3: the ARS040 batch payment type and an optional line account."""

    bope: str  # BOPE on ARS040MI/AddBatchHead; M3's accounting for it debits the processor's clearing account
    ait1: str = ""  # AIT1 on every ARS040MI/AddBatchLine (overrides the payment method's account in M3)

    def __post_init__(self):
        if not 1 <= len(self.bope) <= BOPE_LENGTH or " " in self.bope:
            raise SettingsError(f"a payment method (BOPE) is 1-{BOPE_LENGTH} characters without blanks, "
                                f"got {self.bope!r}")
        if len(self.ait1) > AIT_LENGTH or " " in self.ait1:
            raise SettingsError(f"ait1 is an M3 account of at most {AIT_LENGTH} characters, got {self.ait1!r}")


def load_payment_methods(path: str | Path = DEFAULT_ACCOUNTS_FILE) -> dict[str, PaymentMethod]:
    """``[payment_methods.<processor>]`` (``bope``, optional ``ait1``) of the account file, by processor."""
    with open(path, "rb") as handle:
        raw = tomllib.load(handle).get("payment_methods", {})
    methods = {}
    for processor, entry in raw.items():
        unknown = set(entry) - {"bope", "ait1"}
        if unknown or "bope" not in entry:
            raise SettingsError(f"{path}: [payment_methods.{processor}] takes bope (required) and ait1, "
                                f"not {', '.join(sorted(unknown)) or 'nothing'}")
        try:
            methods[processor] = PaymentMethod(str(entry["bope"]).strip(), str(entry.get("ait1", "")).strip())
        except SettingsError as exc:
            raise SettingsError(f"{path}: [payment_methods.{processor}]: {exc}") from None
    return methods


@dataclass(frozen=True)
class PostingConfig:
    layout: ParmLayout
    interface: str  # GLS840 INTN
    line_form: str = LINE_FORM_PARM
    payment_methods: Mapping[str, PaymentMethod] = field(default_factory=dict)  # processor -> ARS040 BOPE/AIT1
    concurrency: int = DEFAULT_CONCURRENCY  # wave stages in flight at once
    local_currency: str = "USD"  # M3's (M3_LOCAL_CURRENCY): a GL line in another currency also carries ACAM

    def __post_init__(self):
        if self.line_form not in (LINE_FORM_PARM, LINE_FORM_FIELDS):
            raise SettingsError(f"M3_GL_LINE_FORM must be {LINE_FORM_PARM!r} or {LINE_FORM_FIELDS!r}, "
                                f"got {self.line_form!r}")
        if self.concurrency < 1:
            raise SettingsError(f"M3_POSTING_CONCURRENCY must be at least 1, got {self.concurrency}")
        if not 1 <= len(self.interface) <= 15 or " " in self.interface:
            raise SettingsError(f"M3_GL_INTERFACE must be an M3 interface name of 1-15 characters, "
                                f"got {self.interface!r}")

    @classmethod
    def for_layout(cls, layout: ParmLayout, **options) -> "PostingConfig":
        """Post through the layout's own interface unless ``interface`` says otherwise."""
        return cls(layout=layout, interface=options.pop("interface", None) or layout.interface, **options)


def posting_config_from_env(environ: Mapping[str, str] = os.environ) -> PostingConfig:
    layout = ParmLayout.load(environ.get(LAYOUT_VARIABLE) or DEFAULT_LAYOUT_FILE)
    return PostingConfig.for_layout(
        layout, interface=environ.get("M3_GL_INTERFACE", "").strip(),
        line_form=environ.get("M3_GL_LINE_FORM", LINE_FORM_PARM).strip().lower(),
        payment_methods=load_payment_methods(), concurrency=_concurrency(environ), local_currency=local_currency())


def _concurrency(environ: Mapping[str, str]) -> int:
    raw = environ.get("M3_POSTING_CONCURRENCY", "").strip()
    if not raw:
        return DEFAULT_CONCURRENCY
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"M3_POSTING_CONCURRENCY must be a whole number, got {raw!r}") from None

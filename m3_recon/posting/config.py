"""How the poster talks to a given M3 site: GL interface, PARM layout, line form, payment batch type.

Read from the environment by ``posting_config_from_env`` (all optional):

* ``M3_GL_LAYOUT_FILE`` — the GLS850 position template of the GL interface (default
  ``data/gls840_layout.toml``, the GLUPLOAD layout);
* ``M3_GL_INTERFACE`` — ``INTN`` on ``GLS840MI/AddBatchHead`` (default: the layout file's ``interface``);
* ``M3_GL_LINE_FORM`` — ``parm`` (``AddBatchLine`` with a PARM string, default) or ``fields``
  (``AddBatchLineFld``, for interfaces of GLS850 usage type 2);
* ``M3_PAYMENT_BATCH_TYPE`` — ``BOPE`` on ``ARS040MI/AddBatchHead`` (default ``1``; the values are
  defined per site).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from m3_recon.posting.layout import DEFAULT_LAYOUT_FILE, LAYOUT_VARIABLE, ParmLayout
from m3_recon.settings import SettingsError

LINE_FORM_PARM = "parm"
LINE_FORM_FIELDS = "fields"
DEFAULT_PAYMENT_BATCH_TYPE = "1"


@dataclass(frozen=True)
class PostingConfig:
    layout: ParmLayout
    interface: str  # GLS840 INTN
    line_form: str = LINE_FORM_PARM
    payment_batch_type: str = DEFAULT_PAYMENT_BATCH_TYPE  # ARS040 BOPE

    def __post_init__(self):
        if self.line_form not in (LINE_FORM_PARM, LINE_FORM_FIELDS):
            raise SettingsError(f"M3_GL_LINE_FORM must be {LINE_FORM_PARM!r} or {LINE_FORM_FIELDS!r}, "
                                f"got {self.line_form!r}")
        if not 1 <= len(self.interface) <= 15 or " " in self.interface:
            raise SettingsError(f"M3_GL_INTERFACE must be an M3 interface name of 1-15 characters, "
                                f"got {self.interface!r}")
        if not 1 <= len(self.payment_batch_type) <= 3:
            raise SettingsError(f"M3_PAYMENT_BATCH_TYPE must be 1-3 characters, got {self.payment_batch_type!r}")

    @classmethod
    def for_layout(cls, layout: ParmLayout, **options) -> "PostingConfig":
        """Post through the layout's own interface unless ``interface`` says otherwise."""
        return cls(layout=layout, interface=options.pop("interface", None) or layout.interface, **options)


def posting_config_from_env(environ: Mapping[str, str] = os.environ) -> PostingConfig:
    layout = ParmLayout.load(environ.get(LAYOUT_VARIABLE) or DEFAULT_LAYOUT_FILE)
    return PostingConfig.for_layout(
        layout, interface=environ.get("M3_GL_INTERFACE", "").strip(),
        line_form=environ.get("M3_GL_LINE_FORM", LINE_FORM_PARM).strip().lower(),
        payment_batch_type=environ.get("M3_PAYMENT_BATCH_TYPE", DEFAULT_PAYMENT_BATCH_TYPE).strip())

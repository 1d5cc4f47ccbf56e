"""Quirks: alternative but plausible readings of each vendor's documentation that the sandbox can serve.

Our sandbox is our guess of each vendor, not the vendor. A quirk switches one vendor server (or the
generated world) to another shape a real server may use, with the same underlying business world, so the
demo and the tests can prove the pipeline reads it completely and books it the same way.
``m3-recon demo --quirks NAME[,NAME…]|all`` and ``m3-recon sandbox --quirks …`` select them.
"""

from __future__ import annotations

QUIRKS: dict[str, str] = {
    "m3_keys_as_filters": "M3 treats the key inputs of ARS200MI list transactions (PYNO/IVDT…) as filters, "
                          "not as start positions, so restart-key paging sees only a part of the open items",
    "m3_no_search_gen_ledger": "M3 does not serve GLS200MI/SearchGenLedger (XTR0001 / not authorised); vouchers "
                               "must be found by accounting date and lines",
    "paytrace_no_settle_time": "PayTrace batch records carry no settlement time",
    "gp_millis_z": "GP API timestamps carry milliseconds and 'Z' (2026-10-05T14:03:11.000Z)",
    "gp_positive_fees": "GP deposit fee and discount components are sent as positive numbers",
    "amounts_as_strings": "amounts arrive as JSON strings instead of numbers where a vendor may send either",
    "multi_invoice_refs": "some payments name several invoices in one reference ('2601831, 2601832 and 2601840')",
    "free_text_refs": "some payments carry their invoice numbers only in free text (description, descriptor)",
    "invoice_number_reused": "some invoice numbers are open in two invoice years",
    "stripe_unknown_category": "Stripe sends a reporting_category the mapping does not know",
}


class QuirkError(ValueError):
    """An unknown quirk name was asked for."""


def parse_quirks(text: str | None) -> frozenset[str]:
    """``"a,b"`` → {"a", "b"}; ``"all"`` → every quirk; empty → none. Unknown names raise QuirkError."""
    names = {part.strip() for part in (text or "").split(",") if part.strip()}
    if "all" in names:
        return frozenset(QUIRKS)
    unknown = sorted(names - set(QUIRKS))
    if unknown:
        raise QuirkError(f"unknown quirk(s) {', '.join(unknown)}; known: all, {', '.join(QUIRKS)}")
    return frozenset(names)

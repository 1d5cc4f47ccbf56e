"""Asset metadata as the Dagster UI shows it: summaries as markdown tables and money totals per currency, never
summed across currencies (cells are formatted by the caller with ``m3_recon.money``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg

from m3_recon.money import money_by_currency


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], *, text_columns: int = 1) -> dg.MetadataValue:
    """``rows`` under ``header``: the first ``text_columns`` are names (left-aligned), the rest counts and amounts
    (right-aligned); a None cell is blank."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = [header, align, *(["" if cell is None else str(cell) for cell in row] for row in rows)]
    return dg.MetadataValue.md("\n".join("| " + " | ".join(cells) + " |" for cells in lines))


def money_totals(name: str, totals: list[tuple[str, int]]) -> dict[str, object]:
    """Metadata ``name`` (``'1.00 EUR; 2.50 USD'``) and ``name_minor`` (``{'EUR': 100, 'USD': 250}``) from
    (currency, minor units) totals: one figure per currency, for people and for machines."""
    return {name: money_by_currency(totals), f"{name}_minor": dg.MetadataValue.json({c: int(a) for c, a in totals})}

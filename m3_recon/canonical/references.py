"""Invoice references found in free text, the way ERP bank-matching "reconciliation models" find them.

Customers write invoice numbers where they can: a Stripe charge's description, statement descriptor or
metadata, a PayTrace description, GP's description. ``data/matching_rules.toml`` names, per processor,
fields of the vendor's record (JSON paths into the record as it was delivered, e.g. ``$.source.description``
for a Stripe balance transaction with its charge expanded) and a regular expression (RE2, DuckDB's
dialect) whose first group — or whole match, when it has none — is an invoice reference. Every match in
every configured field counts. A charge whose structured invoice field is empty gets the references
found this way as its ``invoice_ref`` (distinct, sorted, comma-separated), so the matcher reads them like
a reference the customer keyed; the structured field always wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from m3_recon.canonical.model import PROCESSORS
from m3_recon.sql import literal

JSON_PATH = re.compile(r"^\$(\.[A-Za-z0-9_]+|\[\d+\])+$")


@dataclass(frozen=True)
class TextReference:
    """One place free text may name invoices: a field of one processor's record and a pattern."""

    processor: str
    field: str  # JSON path into the record as delivered (the canonical line's raw payload)
    pattern: str  # RE2; its first group (or the whole match) is an invoice reference

    @property
    def group(self) -> int:
        return 1 if re.compile(self.pattern).groups else 0

    def sql(self, raw: str) -> str:
        """SQL: the list of references this rule finds in the JSON text ``raw``."""
        return (f"regexp_extract_all(coalesce(json_extract_string({raw}, {literal(self.field)}), ''), "
                f"{literal(self.pattern)}, {self.group})")


def load_text_references(entries: list[dict], path: Path) -> tuple[TextReference, ...]:
    """``[[free_text]]`` entries of the rules file, each checked: a known processor, a JSON path, and a
    pattern DuckDB accepts (raises ValueError naming the file and the entry)."""
    rules = []
    conn = duckdb.connect()
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: [[free_text]] entry {number}"
        try:
            rule = TextReference(str(entry["processor"]), str(entry["field"]), str(entry["pattern"]))
        except KeyError as missing:
            raise ValueError(f"{where} needs processor, field and pattern (missing {missing})") from None
        if rule.processor not in PROCESSORS:
            raise ValueError(f"{where}: processor must be one of {', '.join(PROCESSORS)}, not {rule.processor!r}")
        if not JSON_PATH.match(rule.field):
            raise ValueError(f"{where}: field must be a JSON path like $.source.description, not {rule.field!r}")
        try:
            conn.execute(f"SELECT {rule.sql(literal('{}'))}").fetchall()
        except (re.error, duckdb.Error) as exc:
            raise ValueError(f"{where}: pattern {rule.pattern!r} is not a usable regular expression ({exc})") from None
        rules.append(rule)
    conn.close()
    return tuple(rules)


def with_text_references(sql: str, processor: str, rules: tuple[TextReference, ...]) -> str:
    """The canonical mapping ``sql`` of ``processor`` with references from free text filled into the
    ``invoice_ref`` of charges that have none (``raw_payload`` is the record as delivered)."""
    found = [rule.sql("raw_payload") for rule in rules if rule.processor == processor]
    if not found:
        return sql
    references = f"nullif(array_to_string(list_sort(list_distinct(flatten([{', '.join(found)}]))), ', '), '')"
    return (f"SELECT * REPLACE (CASE WHEN invoice_ref IS NULL AND line_type = 'charge' THEN {references} "
            f"ELSE invoice_ref END AS invoice_ref) FROM ({sql})")

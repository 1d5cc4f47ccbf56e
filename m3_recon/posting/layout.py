"""The position layout of a GLS840MI ``PARM`` string: an M3 GLS850 interface template read from TOML.

``GLS840MI/AddBatchLine`` carries one journal line as a single string of at most 900 characters that
M3 cuts into fields at the from/to positions of the interface's GLS850 template. The template is
site configuration, so it lives in ``data/gls840_layout.toml`` (``M3_GL_LAYOUT_FILE``) rather than in
code. ``build`` writes a line into the string (the poster); ``parse`` cuts a string back into raw
field texts (the sandbox's M3 reading the same template). Amounts arrive as ``Decimal`` values with
the currency's decimals, never floats.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Callable, Mapping

from m3_recon.settings import PROJECT_ROOT

DEFAULT_LAYOUT_FILE = PROJECT_ROOT / "data" / "gls840_layout.toml"
LAYOUT_VARIABLE = "M3_GL_LAYOUT_FILE"
PARM_MAX_LENGTH = 900
FORMATS = ("constant", "number", "text", "amount", "date")
REQUIRED_FIELDS = ("AIT1", "CUCD", "CUAM", "ACDT")  # without these no GL line can be posted


class LayoutError(ValueError):
    """The layout file is unusable, or a value does not fit its field."""


@dataclass(frozen=True)
class LayoutField:
    name: str
    start: int  # 1-based, inclusive
    end: int  # 1-based, inclusive
    format: str
    value: str = ""  # the text of a constant

    @cached_property
    def width(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class ParmLayout:
    interface: str
    decimal_separator: str
    fields: tuple[LayoutField, ...]
    source: str

    @classmethod
    def load(cls, path: str | Path = DEFAULT_LAYOUT_FILE) -> "ParmLayout":
        path = Path(path)
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LayoutError(f"{LAYOUT_VARIABLE}: cannot read the GLS840 layout {path} ({exc})") from None
        try:
            fields = tuple(LayoutField(str(f["name"]).upper(), int(f["from"]), int(f["to"]), str(f["format"]),
                                       str(f.get("value", ""))) for f in raw["fields"])
            layout = cls(str(raw["interface"]).strip(), str(raw.get("decimal_separator", ".")), fields, str(path))
        except (KeyError, TypeError, ValueError) as exc:
            raise LayoutError(f"{LAYOUT_VARIABLE}: {path} needs `interface` and `fields` entries with name, from, "
                              f"to and format ({type(exc).__name__}: {exc})") from None
        layout._check()
        return layout

    def _check(self) -> None:
        where = f"{LAYOUT_VARIABLE} ({self.source})"
        if not self.interface or len(self.interface) > 15:
            raise LayoutError(f"{where}: interface must be an M3 interface name of 1-15 characters")
        if self.decimal_separator not in (".", ","):
            raise LayoutError(f"{where}: decimal_separator must be '.' or ','")
        taken = 0
        for field in sorted(self.fields, key=lambda f: f.start):
            if field.format not in FORMATS:
                raise LayoutError(f"{where}: field {field.name} has format {field.format!r}; use one of {FORMATS}")
            if field.start <= taken or field.end < field.start:
                raise LayoutError(f"{where}: field {field.name} ({field.start}-{field.end}) overlaps another "
                                  "field or ends before it starts")
            if field.format == "constant" and len(field.value) != field.width:
                raise LayoutError(f"{where}: constant {field.name} must be exactly {field.width} characters")
            taken = field.end
        if taken > PARM_MAX_LENGTH:
            raise LayoutError(f"{where}: the layout ends at position {taken}; PARM holds {PARM_MAX_LENGTH}")
        names = [f.name for f in self.fields]
        missing = [name for name in REQUIRED_FIELDS if name not in names]
        if missing or len(set(names)) != len(names):
            raise LayoutError(f"{where}: every field once, and {', '.join(REQUIRED_FIELDS)} must be present "
                              f"(missing: {', '.join(missing) or 'none'})")

    @cached_property
    def length(self) -> int:
        return max(f.end for f in self.fields)

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)

    @cached_property
    def _slots(self) -> tuple[tuple[tuple[LayoutField, str, Callable[[LayoutField, object, str], str]], ...], str]:
        """Per value field in position order: the field, the fixed text before it (blanks, constants) and the
        function writing its value; then the fixed text after the last one. Worked out once per layout, not
        per value: a day posts 10^5 lines."""
        slots, fixed, taken = [], "", 0
        for field in sorted(self.fields, key=lambda f: f.start):
            fixed += " " * (field.start - 1 - taken)
            taken = field.end
            if field.format == "constant":
                fixed += field.value
            else:
                slots.append((field, fixed, _WRITERS[field.format]))
                fixed = ""
        return tuple(slots), fixed

    def build(self, values: Mapping[str, object]) -> str:
        """One PARM string; a value for a field the layout lacks, or one too wide for its field, is an error."""
        names = self.names
        unknown = [name for name, value in values.items() if name not in names and value not in (None, "")]
        if unknown:
            raise LayoutError(f"interface {self.interface} has no position for {', '.join(unknown)} "
                              f"({LAYOUT_VARIABLE}: {self.source})")
        pieces = []
        get, separator = values.get, self.decimal_separator
        slots, tail = self._slots
        for field, fixed, write in slots:
            value = get(field.name)
            width = field.width
            text = " " * width if value is None or value == "" else write(field, value, separator)
            if len(text) > width:
                raise LayoutError(f"{field.name} {text.strip()!r} is {len(text.strip())} characters; interface "
                                  f"{self.interface} holds {width} at positions {field.start}-{field.end}")
            pieces += (fixed, text)
        pieces.append(tail)
        return "".join(pieces)

    @cached_property
    def _cuts(self) -> tuple[tuple[str, int, int, bool], ...]:
        return tuple((f.name, f.start - 1, f.end, f.format == "amount") for f in self.fields)

    def parse(self, parm: str) -> dict[str, str]:
        """The raw text of every field (blanks trimmed; amounts with '.' as decimal separator).

        Callers often trim trailing blanks from PARM, so a short string is read as blank-filled; a
        string longer than the template is an error.
        """
        if len(parm) > self.length:
            raise LayoutError(f"PARM is {len(parm)} characters; interface {self.interface} ends at position "
                              f"{self.length}")
        separator = self.decimal_separator
        values = {}
        for name, start, end, is_amount in self._cuts:  # a short string's missing positions slice to ""
            text = parm[start:end].strip()
            values[name] = text.replace(separator, ".") if is_amount else text
        return values


# How a field's (non-blank) value becomes its text, by the field's format.
def _number(field: LayoutField, value: object, separator: str) -> str:
    return str(int(value)).zfill(field.width)


def _date(field: LayoutField, value: object, separator: str) -> str:
    if not isinstance(value, date):
        raise LayoutError(f"{field.name} needs a date, got {value!r}")
    return ("%04d%02d%02d" % (value.year, value.month, value.day)).ljust(field.width)


def _amount(field: LayoutField, value: object, separator: str) -> str:
    if not isinstance(value, Decimal):
        raise LayoutError(f"{field.name} needs a Decimal amount, got {type(value).__name__}")
    return format(value, "f").replace(".", separator).rjust(field.width)


def _text(field: LayoutField, value: object, separator: str) -> str:
    return str(value).ljust(field.width)


_WRITERS = {"number": _number, "date": _date, "amount": _amount, "text": _text}

"""JSON whose fractional numbers are money: read as ``Decimal`` and written back digit for digit.

Some vendors (PayTrace) send amounts as bare JSON numbers (``"amount": 1234.5``), which ``json.loads``
turns into binary floats. ``loads`` keeps them as ``Decimal``; ``dumps`` writes ``Decimal`` values as
bare JSON numbers with exactly their digits, so a record re-serialised for audit says what the vendor
said and no amount ever passes through a float. ``loads_listing`` also hands back each record of a
list response as the exact text the vendor sent, so it need not be re-serialised at all.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

_MARK = "\x00decimal:"  # a NUL cannot occur in the text of real vendor strings
_MARKED = re.compile(r'"\\u0000decimal:(-?\d+(?:\.\d+)?(?:E[+-]?\d+)?)"')


_DECODER = json.JSONDecoder(parse_float=Decimal)
_SPACE = re.compile(r"[ \t\n\r]*")


def loads(text: str | bytes):
    """Parse JSON; numbers with a fraction or exponent become ``Decimal``, integers stay ``int``."""
    return json.loads(text, parse_float=Decimal)


def loads_listing(text: str, key: str) -> tuple[object, list[str]]:
    """``loads``, and the exact text of each element of the top-level object's array ``key`` (none when the
    document is not an object or ``key`` is no array): one pass, each element parsed once. Invalid JSON
    raises ``json.JSONDecodeError`` as ``loads`` does."""
    def space(at: int) -> int:
        return _SPACE.match(text, at).end()

    def members(at: int, closing: str, member) -> int:
        """Parse ``member`` (which returns where it ended) until ``closing``; ``at`` is just past the opening."""
        at = space(at)
        if text[at:at + 1] == closing:
            return at + 1
        while True:
            at = space(member(at))
            if text[at:at + 1] == closing:
                return at + 1
            if text[at:at + 1] != ",":
                raise json.JSONDecodeError(f"Expecting ',' delimiter or '{closing}'", text, at)
            at = space(at + 1)

    start = space(0)
    if text[start:start + 1] != "{":
        return loads(text), []
    document: dict = {}
    texts: list[str] = []

    def element(at: int) -> int:
        item, end = _DECODER.raw_decode(text, at)
        document[key].append(item)
        texts.append(text[at:end])
        return end

    def member(at: int) -> int:
        nonlocal texts
        if text[at:at + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, at)
        name, at = _DECODER.raw_decode(text, at)
        at = space(at)
        if text[at:at + 1] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", text, at)
        at = space(at + 1)
        if name == key:
            texts = []  # a repeated key: the last one wins, as in ``loads``
            if text[at:at + 1] == "[":
                document[name] = []
                return members(at + 1, "]", element)
        document[name], at = _DECODER.raw_decode(text, at)
        return at

    end = space(members(start + 1, "}", member))
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return document, texts


def _mark(value):
    if isinstance(value, Decimal) and value.is_finite():
        return _MARK + str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(obj) -> str:
    """Compact JSON with every finite ``Decimal`` written as a bare number (``Decimal("8.10")`` -> ``8.10``)."""
    return _MARKED.sub(r"\1", json.dumps(obj, default=_mark, separators=(",", ":")))

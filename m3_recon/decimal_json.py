"""JSON whose fractional numbers are money: read as ``Decimal`` and written back digit for digit.

Some vendors (PayTrace) send amounts as bare JSON numbers (``"amount": 1234.5``), which ``json.loads``
turns into binary floats. ``loads`` keeps them as ``Decimal``; ``dumps`` writes ``Decimal`` values as
bare JSON numbers with exactly their digits, so a record re-serialised for audit says what the vendor
said and no amount ever passes through a float.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

_MARK = "\x00decimal:"  # a NUL cannot occur in the text of real vendor strings
_MARKED = re.compile(r'"\\u0000decimal:(-?\d+(?:\.\d+)?(?:E[+-]?\d+)?)"')


def loads(text: str | bytes):
    """Parse JSON; numbers with a fraction or exponent become ``Decimal``, integers stay ``int``."""
    return json.loads(text, parse_float=Decimal)


def _mark(value):
    if isinstance(value, Decimal) and value.is_finite():
        return _MARK + str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(obj) -> str:
    """Compact JSON with every finite ``Decimal`` written as a bare number (``Decimal("8.10")`` -> ``8.10``)."""
    return _MARKED.sub(r"\1", json.dumps(obj, default=_mark, separators=(",", ":")))

"""What vendors' wire values mean: one reader for instants and one for amounts, shared by every connector.

Our sandbox is our guess of each vendor, so a reader accepts every plausible shape of a value and names
the real defect when it cannot read one. Each reader comes in two forms with the same grammar and the
same messages, tested against each other: a Python function for connectors that build rows in Python
(PayTrace, M3) and a DuckDB SQL expression for connectors that project their JSON in SQL (GP API, Stripe).

* **Instants**: ISO 8601 calendar dates and times, extended or basic (``2026-10-05T14:03:11.000Z``,
  ``2026-10-05 14:03:11``, ``2026-10-05T14:03:11.123456789+02:00``, ``20261005T140311-0700``,
  ``2026-10-05``), ``T`` or a space between date and time, seconds and fractions optional (fractions
  beyond microseconds are truncated; ``24:00`` is the next midnight), ``Z``, ``±HH``, ``±HHMM`` or
  ``±HH:MM``. A value without an offset is a wall time of the vendor's zone (UTC for GP,
  PAYTRACE_TIMEZONE for PayTrace); a date alone is its midnight. The Python reader also takes
  PayTrace's US style ``4/10/2026 4:06:30 PM``.
* **Amounts**: a JSON number or a string holding a plain decimal (``110``, ``1234.5``, ``"8.10"``,
  ``"-12"``), scaled to integer minor units by the field's exponent (2 for dollars, 0 for GP's and
  Stripe's minor units). Never through a float: a value with a fraction of a minor unit, a value that
  does not fit a BIGINT, or anything that is not a plain decimal is a defect, never rounded.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal

from m3_recon.sql import quoted

BIGINT_MAX = 2**63 - 1

# Calendar date, optional time (extended or basic), optional fraction, optional offset.
ISO_INSTANT = (r"^(\d{4})-?(\d{2})-?(\d{2})"
               r"(?:[T ](\d{2}):?(\d{2})(?::?(\d{2})(?:[.,](\d+))?)?)?"
               r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$")
ISO_EXAMPLE = "ISO 8601 like 2026-10-05T14:03:11.000Z"
US_INSTANT = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?\s*([AaPp][Mm]))?$")
PLAIN_DECIMAL = r"^([+-]?)([0-9]*)(?:\.([0-9]*))?$"
_ISO = re.compile(ISO_INSTANT)
_DECIMAL = re.compile(PLAIN_DECIMAL)


class WireValueError(ValueError):
    """A vendor value m3-recon cannot read; the message names the value and the defect."""


def _with_parts(parts: str, expression: str) -> str:
    """DuckDB: ``expression`` over ``p``, the struct of regular-expression groups ``parts`` (evaluated once)."""
    return f"list_transform([{parts}], lambda p: {expression})[1]"


# -- instants ------------------------------------------------------------------------------------------
def _offset(text: str | None) -> timezone | None:
    if not text:
        return None
    if text in ("Z", "z"):
        return timezone.utc
    digits = text[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + int(digits[2:4] or 0)
    return timezone(timedelta(minutes=-minutes if text[0] == "-" else minutes))


def instant(value, zone: tzinfo) -> datetime | None:
    """A vendor instant as an aware datetime; ``None`` or ``""`` -> None; anything else unreadable raises.

    ``zone`` is the zone of a wall time without an offset. A wall time repeated when daylight saving
    time ends is read as its first occurrence.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise WireValueError(f"{value!r} is not a time (expected {ISO_EXAMPLE})")
    text = value.strip()
    try:
        if match := _ISO.match(text):
            y, mo, d, h, mi, s, frac, offset = match.groups()
            micro = int((frac or "")[:6].ljust(6, "0"))
            end_of_day = h == "24" and int(mi) == int(s or 0) == micro == 0  # ISO 8601's 24:00 is the next midnight
            wall = datetime(int(y), int(mo), int(d), 0 if end_of_day else int(h or 0), int(mi or 0), int(s or 0), micro)
            return (wall + timedelta(days=end_of_day)).replace(tzinfo=_offset(offset) or zone)
        if match := US_INSTANT.match(text):
            mo, d, y, h, mi, s, half = match.groups()
            if h is not None and not 1 <= int(h) <= 12:
                raise ValueError("hour")
            hour = 0 if h is None else int(h) % 12 + (12 if half.upper() == "PM" else 0)
            return datetime(int(y), int(mo), int(d), hour, int(mi or 0), int(s or 0)).replace(tzinfo=zone)
    except ValueError:
        raise WireValueError(f"'{text}' is not a valid date or time") from None
    raise WireValueError(f"'{text}' is not a time (expected {ISO_EXAMPLE})")


def _iso_parts(text: str) -> str:
    return f"regexp_extract(trim({text}), '{ISO_INSTANT}', ['y', 'mo', 'd', 'h', 'mi', 's', 'f', 'z'])"


def instant_sql(text: str) -> str:
    """DuckDB: the instant in SQL text expression ``text`` as a naive UTC TIMESTAMP, or NULL when it is
    missing or unreadable (``instant_defect_sql`` says why). A wall time without an offset is UTC."""
    wall = ("p.y || '-' || p.mo || '-' || p.d || ' ' || coalesce(nullif(p.h, ''), '00') || ':' "
            "|| coalesce(nullif(p.mi, ''), '00') || ':' || coalesce(nullif(p.s, ''), '00') || '.' "
            "|| rpad(left(p.f, 6), 6, '0')")
    offset_minutes = ("CASE WHEN p.z IN ('', 'Z', 'z') THEN 0 ELSE (CASE WHEN left(p.z, 1) = '-' THEN -1 ELSE 1 END) "
                      "* (CAST(substr(p.z, 2, 2) AS INTEGER) * 60 "
                      "+ coalesce(TRY_CAST(nullif(right(replace(p.z, ':', ''), -3), '') AS INTEGER), 0)) END")
    return _with_parts(_iso_parts(text),
                       f"CASE WHEN p.y <> '' THEN TRY_CAST({wall} AS TIMESTAMP) - to_minutes({offset_minutes}) END")


def instant_defect_sql(text: str) -> str:
    """DuckDB: ``instant``'s message for a non-empty ``text`` that is no instant, else NULL."""
    shown = f"trim({text})"
    return (f"CASE WHEN coalesce({shown}, '') <> '' AND {instant_sql(text)} IS NULL THEN "
            f"CASE WHEN regexp_full_match({shown}, '{ISO_INSTANT}') THEN {quoted(shown)} || ' is not a valid date "
            f"or time' ELSE {quoted(shown)} || ' is not a time (expected {ISO_EXAMPLE})' END END")


def calendar_date(value) -> date | None:
    """The calendar date a vendor wrote (a business date: the date part as written, never shifted)."""
    moment = instant(value, timezone.utc)
    return moment.date() if moment is not None else None


def calendar_date_sql(text: str) -> str:
    """DuckDB: the calendar date as written at the start of ISO 8601 ``text``, or NULL."""
    return _with_parts(_iso_parts(text),
                       "CASE WHEN p.y <> '' THEN TRY_CAST(p.y || '-' || p.mo || '-' || p.d AS DATE) END")


# -- amounts -------------------------------------------------------------------------------------------
def _scaled(sign: str, whole: str, fraction: str, exponent: int) -> int:
    return int(sign + (whole + fraction[:exponent].ljust(exponent, "0") or "0"))


def amount_defect(value, exponent: int, unit: str = "minor units") -> str | None:
    """Why ``value`` (a JSON number or string; ``exponent`` = decimals of one minor unit in it: 2 for
    dollars, 0 for minor units) is no amount, or None when it reads. Empty values are the caller's to judge."""
    if isinstance(value, (bool, float)):
        return f"{value!r} is a binary {type(value).__name__}, not an exact amount"
    if not isinstance(value, (int, Decimal, str)):
        return f"{value!r} is not an amount"
    text = str(value).strip()
    match = _DECIMAL.match(text)
    if not match or not (match.group(2) or match.group(3)):
        return f"'{text}' is not an amount"
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if fraction[exponent:].rstrip("0"):
        return f"{text} is not a whole number of {unit}"
    if abs(_scaled(sign, whole, fraction, exponent)) > BIGINT_MAX:
        return f"{text} is too large: m3-recon stores amounts as 64-bit {unit}"
    return None


def minor_units(value, exponent: int, unit: str = "minor units") -> int | None:
    """A vendor amount as integer minor units: ``minor_units("1234.5", 2)`` -> 123450; ``None``/``""`` -> None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    defect = amount_defect(value, exponent, unit)
    if defect:
        raise WireValueError(defect)
    sign, whole, fraction = _DECIMAL.match(str(value).strip()).groups()
    return _scaled(sign, whole, fraction or "", exponent)


def count(value) -> int | None:
    """A vendor count (a JSON integer or its string) as int; ``None``/``""`` -> None; anything else raises."""
    try:
        return minor_units(value, 0)
    except WireValueError:
        raise WireValueError(f"'{str(value).strip()}' is not a count") from None


def _decimal_parts(text: str) -> str:
    return f"regexp_extract(trim({text}), '{PLAIN_DECIMAL}', ['sign', 'whole', 'fraction'])"


def _scaled_sql(exponent: int) -> str:
    digits = f"p.whole || rpad(left(p.fraction, {exponent}), {exponent}, '0')" if exponent else "p.whole"
    # -2**63 is a BIGINT, but not its negation or absolute value: out of range, as in ``amount_defect``
    return f"nullif(TRY_CAST(p.sign || coalesce(nullif(ltrim({digits}, '0'), ''), '0') AS BIGINT), {-BIGINT_MAX - 1})"


def minor_units_sql(text: str, exponent: int) -> str:
    """DuckDB: the amount in SQL text expression ``text`` (``raw->>'$.amount'``: a JSON number's or
    string's text) as BIGINT minor units, or NULL when missing or unreadable (see ``amount_defect_sql``)."""
    return _with_parts(_decimal_parts(text),
                       f"CASE WHEN (p.whole <> '' OR p.fraction <> '') AND rtrim(substr(p.fraction, {exponent + 1}), "
                       f"'0') = '' THEN {_scaled_sql(exponent)} END")


def amount_defect_sql(text: str, exponent: int, unit: str = "minor units") -> str:
    """DuckDB: ``amount_defect``'s message for a non-empty ``text`` that is no amount, else NULL."""
    shown = f"trim({text})"
    return _with_parts(_decimal_parts(text), (
        f"CASE WHEN coalesce({shown}, '') = '' THEN NULL "
        f"WHEN NOT regexp_full_match({shown}, '{PLAIN_DECIMAL}') OR (p.whole = '' AND p.fraction = '') "
        f"THEN {quoted(shown)} || ' is not an amount' "
        f"WHEN rtrim(substr(p.fraction, {exponent + 1}), '0') <> '' THEN {shown} || ' is not a whole number of {unit}' "
        f"WHEN {_scaled_sql(exponent)} IS NULL "
        f"THEN {shown} || ' is too large: m3-recon stores amounts as 64-bit {unit}' "
        f"END"))

"""Money as people read it: integer minor units shown as ``1,234.56 USD`` with each currency's own
number of decimals (ISO 4217 exponents), never divided by 100 blindly and never summed across currencies.
``money_sql`` writes the same text inside DuckDB, for messages built in SQL (exception details, alerts)."""

from __future__ import annotations

from decimal import Decimal

# ISO 4217 currencies whose minor unit is not the cent; every other currency has two decimals.
CURRENCY_EXPONENTS = {"BHD": 3, "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "IQD": 3, "ISK": 0, "JOD": 3, "JPY": 0,
                      "KMF": 0, "KRW": 0, "KWD": 3, "LYD": 3, "OMR": 3, "PYG": 0, "RWF": 0, "TND": 3, "UGX": 0,
                      "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0}


def exponent(currency: str) -> int:
    return CURRENCY_EXPONENTS.get(currency.strip().upper(), 2)


def major(minor: int, currency: str) -> Decimal:
    """``-12345`` USD -> ``Decimal('-123.45')``; ``500`` JPY -> ``Decimal('500')``."""
    return Decimal(int(minor)).scaleb(-exponent(currency))


def figure(minor: int, currency: str) -> str:
    """The number alone, for a column headed with its currency: ``123456`` USD -> ``'1,234.56'``."""
    return f"{major(minor, currency):,.{exponent(currency)}f}"


def money(minor: int | None, currency: str | None) -> str:
    """``123456`` USD -> ``'1,234.56 USD'``; ``None`` -> ``''``."""
    if minor is None or currency is None:
        return ""
    return f"{figure(minor, currency)} {currency}"


def money_by_currency(totals: dict[str, int] | list[tuple[str, int]]) -> str:
    """``{'USD': 100, 'EUR': 250}`` -> ``'2.50 EUR; 1.00 USD'`` (one figure per currency, never a sum across them)."""
    items = sorted(totals.items() if isinstance(totals, dict) else totals)
    return "; ".join(money(amount or 0, currency) for currency, amount in items) or "0"


def exponent_sql(currency: str) -> str:
    """DuckDB: the exponent of the currency code in SQL expression ``currency``."""
    listed = " ".join(f"WHEN '{code}' THEN {places}" for code, places in sorted(CURRENCY_EXPONENTS.items()))
    return f"CASE upper(trim({currency})) {listed} ELSE 2 END"


def money_sql(minor: str, currency: str) -> str:
    """DuckDB: ``money()`` of SQL expressions ``minor`` (integer minor units; a fraction is rounded half away
    from zero, as a median can have one) and ``currency``, or NULL when either is NULL. Integers only."""
    read = (f"list_transform([{{'m': CAST(round({minor}) AS HUGEINT), 'c': {currency}}}], "
            f"lambda q: {{'m': q.m, 'c': q.c, 'e': {exponent_sql('q.c')}}})")
    unit = "CAST(10 ** p.e AS HUGEINT)"
    return (f"list_transform({read}, lambda p: CASE WHEN p.m < 0 THEN '-' ELSE '' END "
            f"|| format('{{:,}}', abs(p.m) // {unit}) "
            f"|| CASE WHEN p.e > 0 THEN '.' || lpad(CAST(abs(p.m) % {unit} AS VARCHAR), p.e, '0') ELSE '' END "
            f"|| ' ' || p.c)[1]")

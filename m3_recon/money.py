"""The one currency model: ISO 4217 codes and exponents, conversion between currencies in integer minor
units (half-up, no floats: ``convert``, and ``convert_sql`` the same in DuckDB), and money as people read it —
``1,234.56 USD`` with each currency's own decimals, never divided by 100 blindly and never summed across
currencies. ``money_sql`` writes the same text inside DuckDB, for messages built in SQL (exception details,
alerts)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

# Active ISO 4217 alphabetic codes (list one, 2024), so a setting naming a currency can be checked.
ISO_CURRENCIES = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF
CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG
HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA
MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD
RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX
USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWG
""".split())
# ISO 4217 currencies whose minor unit is not the cent; every other currency has two decimals.
CURRENCY_EXPONENTS = {"BHD": 3, "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "IQD": 3, "ISK": 0, "JOD": 3, "JPY": 0,
                      "KMF": 0, "KRW": 0, "KWD": 3, "LYD": 3, "OMR": 3, "PYG": 0, "RWF": 0, "TND": 3, "UGX": 0,
                      "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0}


def exponent(currency: str) -> int:
    return CURRENCY_EXPONENTS.get(currency.strip().upper(), 2)


def known_currency(currency: str, what: str) -> str:
    """``currency`` as an upper-case ISO 4217 code, or ValueError naming ``what`` (a setting, a field)."""
    code = (currency or "").strip().upper()
    if code not in ISO_CURRENCIES:
        raise ValueError(f"{what} must be an ISO 4217 currency code like USD, EUR or JPY, got {currency!r}")
    return code


def major(minor: int, currency: str) -> Decimal:
    """``-12345`` USD -> ``Decimal('-123.45')``; ``500`` JPY -> ``Decimal('500')``."""
    return Decimal(int(minor)).scaleb(-exponent(currency))


def convert(minor: int, source: str, target: str, rate: Decimal) -> int:
    """``minor`` units of ``source`` in minor units of ``target`` at ``rate`` (``target`` per one ``source``),
    rounded half-up (away from zero, so a credit converts to exactly minus its debit):
    ``convert(10000, 'JPY', 'USD', Decimal('0.0067'))`` -> ``6700`` ($67.00)."""
    if not isinstance(rate, Decimal):
        raise TypeError(f"an exchange rate must be a Decimal, not {type(rate).__name__}")
    exact = Decimal(int(minor)) * rate * Decimal(1).scaleb(exponent(target) - exponent(source))
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


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


def convert_sql(minor: str, source: str, target: str, rate: str) -> str:
    """SQL twin of ``convert``: expressions for the amount in minor units, the two currency codes and the
    (DECIMAL) rate; exact decimal arithmetic, half-up rounding (DuckDB rounds DECIMAL half away from zero)."""
    shift = f"({exponent_sql(target)}) - ({exponent_sql(source)})"
    scale = " ".join(f"WHEN {d} THEN {Decimal(1).scaleb(d):f}" for d in range(-3, 4))
    return (f"CAST(round(CAST({minor} AS DECIMAL(38, 0)) * CAST({rate} AS DECIMAL(18, 8)) "
            f"* (CASE {shift} {scale} END), 0) AS BIGINT)")

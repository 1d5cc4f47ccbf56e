"""Anomaly flags over synthetic history with exact thresholds."""

from datetime import date, datetime, timedelta

import duckdb

from m3_recon.canonical.model import PAYOUT_COLUMNS, SETTLEMENT_LINE_COLUMNS
from m3_recon.reconcile.anomalies import flag_anomalies

START = date(2026, 10, 1)


def warehouse(lines, payouts):
    conn = duckdb.connect()
    for table, columns, rows in (("core_settlement_lines", SETTLEMENT_LINE_COLUMNS, lines),
                                 ("core_payouts", PAYOUT_COLUMNS, payouts)):
        conn.execute(f"CREATE TABLE {table} ({', '.join(f'{c} {t}' for c, t in columns.items())})")
        for row in rows:
            conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    return conn


def line(n, day, line_type, amount, fee=0):
    return {"processor": "stripe", "source_id": f"t{n}", "line_type": line_type,
            "occurred_at_utc": datetime.combine(day, datetime.min.time()), "settlement_date": day, "currency": "USD",
            "amount_minor": amount, "fee_minor": fee, "net_minor": amount - fee}


def payout(n, day, amount):
    return {"processor": "stripe", "payout_id": f"po{n}", "currency": "USD", "amount_minor": amount,
            "created_at_utc": datetime.combine(day, datetime.min.time()), "settlement_date": day, "status": "paid",
            "itemised": True, "line_count": 1}


def test_fee_drift_refund_spike_and_unusual_payout_are_flagged_on_the_day_only():
    lines, payouts, n = [], [], 0
    for offset in range(15):
        day = START + timedelta(days=offset)
        spike_day = offset == 14
        fee = 9_000 if spike_day else 3_000  # 9 % instead of 3 % on the last day
        lines.append(line(n := n + 1, day, "charge", 100_000, fee))
        refunds = 6 if spike_day else (1 if offset % 2 else 0)
        lines += [line(n := n + 1 + i, day, "refund", -1_000) for i in range(refunds)]
        n += refunds
        payouts.append(payout(offset, day, 600_000 if spike_day else 97_000 + offset))
    conn = warehouse(lines, payouts)
    flag_anomalies(conn, "2026-10-15", "2026-10-16")
    flags = {r[0]: r[1] for r in conn.execute("SELECT reason_code, detail FROM anomaly_exceptions").fetchall()}
    assert flags == {"fee_rate_drift": "effective fee rate 9.0 % vs trailing 3.0 %",
                     "refund_spike": "6 refunds vs 0.5 a day before",
                     "unusual_payout": "payout 6,000.00 USD vs usual 970.09 USD"}  # median of 970.04 … 970.13
    flag_anomalies(conn, "2026-10-10", "2026-10-15")  # ordinary days: nothing
    assert conn.execute("SELECT count(*) FROM anomaly_exceptions").fetchone() == (0,)


def test_a_normal_sandbox_period_raises_at_most_one_unusual_payout(closed_books):
    with duckdb.connect(closed_books.database, read_only=True) as conn:
        flagged = conn.execute("SELECT count(*) FROM out_recon_exceptions WHERE reason_code = 'unusual_payout'"
                               ).fetchone()[0]
        payouts = conn.execute("SELECT count(*) FROM core_payouts").fetchone()[0]
    assert payouts > 30 and flagged <= 1

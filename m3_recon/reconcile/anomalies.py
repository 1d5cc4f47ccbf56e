"""Anomaly flags, as exceptions: fee rates drifting from their trailing average, payouts far from their
usual size, and days with a spike in refunds or disputes (thresholds in ``data/anomaly_rules.toml``).

``flag_anomalies`` creates temp table ``anomaly_exceptions`` with the exception register's columns for
days in [first, end), comparing each with the history before it; the register and alerts treat them
like any other exception.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

import duckdb

from m3_recon.money import money_sql
from m3_recon.settings import PROJECT_ROOT

DEFAULT_RULES_FILE = PROJECT_ROOT / "data" / "anomaly_rules.toml"
ANOMALY_REASONS = {
    "fee_rate_drift": "the day's effective fee rate is far from its trailing average",
    "unusual_payout": "the payout is far from the processor's usual payout size",
    "refund_spike": "many more refunds than usual on the day",
    "dispute_spike": "many more disputes than usual on the day",
}


def _id(kind: str, key: str) -> str:
    return f"'EX-' || upper(substr(md5('{kind}|' || {key}), 1, 12))"


def flag_anomalies(conn: duckdb.DuckDBPyConnection, first_day: date, end_day: date,
                   rules_file: Path = DEFAULT_RULES_FILE) -> None:
    with open(rules_file, "rb") as handle:
        rules = tomllib.load(handle)
    fee, payout, spikes = rules["fee_rate"], rules["payout_size"], rules["refunds_and_disputes"]
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE anomaly_exceptions AS
        WITH daily AS (
            SELECT processor, currency, settlement_date,
                   sum(amount_minor) FILTER (line_type = 'charge') AS charged,
                   sum(fee_minor) - coalesce(sum(amount_minor) FILTER (line_type = 'fee'), 0) AS fees,
                   count(*) FILTER (line_type = 'refund') AS refunds,
                   count(*) FILTER (line_type = 'dispute') AS disputes
            FROM core_settlement_lines GROUP BY ALL
        ), history AS (
            SELECT *,
                   sum(fees) OVER w_fee / nullif(sum(charged) OVER w_fee, 0) AS trailing_rate,
                   avg(refunds) OVER w_spike AS refunds_avg, avg(disputes) OVER w_spike AS disputes_avg,
                   count(*) OVER w_spike AS history_days
            FROM daily
            WINDOW w_fee AS (PARTITION BY processor, currency ORDER BY settlement_date
                             RANGE BETWEEN INTERVAL {int(fee['trailing_days'])} DAY PRECEDING AND INTERVAL 1 DAY PRECEDING),
                   w_spike AS (PARTITION BY processor, currency ORDER BY settlement_date
                               RANGE BETWEEN INTERVAL {int(spikes['trailing_days'])} DAY PRECEDING AND INTERVAL 1 DAY PRECEDING)
        ), today AS (
            SELECT * FROM history WHERE settlement_date >= $first AND settlement_date < $end
        ), payout_history AS (
            SELECT *, median(amount_minor) OVER w AS usual, count(*) OVER w AS history
            FROM core_payouts
            WINDOW w AS (PARTITION BY processor, currency ORDER BY created_at_utc
                         ROWS BETWEEN {int(payout['trailing_payouts'])} PRECEDING AND 1 PRECEDING)
        ), flags AS (
            SELECT 'fee_rate_drift' AS reason_code, processor, processor || ':fee_rate:' || settlement_date AS source_id,
                   settlement_date, currency, fees AS amount_minor, NULL::BIGINT AS unapplied_minor,
                   'effective fee rate ' || round(100.0 * fees / charged, 2) || ' % vs trailing '
                       || round(100.0 * trailing_rate, 2) || ' %' AS detail
            FROM today WHERE charged >= {int(fee['min_charges_minor'])} AND trailing_rate > 0
              AND abs(fees / charged - trailing_rate) / trailing_rate > {float(fee['max_relative_drift'])}
            UNION ALL
            SELECT 'refund_spike', processor, processor || ':refunds:' || settlement_date, settlement_date, currency,
                   NULL, NULL, refunds || ' refunds vs ' || round(refunds_avg, 1) || ' a day before'
            FROM today WHERE refunds >= {int(spikes['min_count'])} AND history_days > 0
              AND refunds > {float(spikes['spike_factor'])} * refunds_avg
            UNION ALL
            SELECT 'dispute_spike', processor, processor || ':disputes:' || settlement_date, settlement_date, currency,
                   NULL, NULL, disputes || ' disputes vs ' || round(disputes_avg, 1) || ' a day before'
            FROM today WHERE disputes >= {int(spikes['min_count'])} AND history_days > 0
              AND disputes > {float(spikes['spike_factor'])} * disputes_avg
            UNION ALL
            SELECT 'unusual_payout', processor, payout_id, settlement_date, currency, amount_minor, NULL,
                   'payout ' || {money_sql('amount_minor', 'currency')} || ' vs usual '
                       || {money_sql('usual', 'currency')}
            FROM payout_history
            WHERE settlement_date >= $first AND settlement_date < $end
              AND history >= {int(payout['min_history'])} AND usual > 0
              AND (amount_minor > {float(payout['max_ratio'])} * usual OR amount_minor * {float(payout['max_ratio'])} < usual)
        )
        SELECT {_id("anomaly", "reason_code || '|' || processor || '|' || source_id")} AS exception_id, reason_code,
               processor, source_id, settlement_date, currency, amount_minor, unapplied_minor,
               to_json([]) AS candidates, detail
        FROM flags""", {"first": first_day, "end": end_day})

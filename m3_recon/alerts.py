"""Alerts for people: every newly opened exception becomes a row in ``out_alerts`` and, when a
webhook is configured, a message (Slack-compatible ``{"text": …}`` JSON, which generic receivers
accept too). Delivery failures are recorded on the alert and retried on the next run; an alert is
never raised twice for the same exception."""

from __future__ import annotations

from datetime import datetime

import duckdb
import requests

from m3_recon.money import money_sql
from m3_recon.sql import create_table

ALERT_COLUMNS = {
    "alert_id": "VARCHAR NOT NULL", "exception_id": "VARCHAR NOT NULL", "reason_code": "VARCHAR NOT NULL",
    "processor": "VARCHAR NOT NULL", "source_id": "VARCHAR NOT NULL", "settlement_date": "DATE",
    "currency": "VARCHAR", "amount_minor": "BIGINT", "message": "VARCHAR NOT NULL",
    "raised_at_utc": "TIMESTAMP NOT NULL", "delivered_at_utc": "TIMESTAMP", "delivery_error": "VARCHAR",
}
MAX_MESSAGES_PER_POST = 50


def raise_alerts(conn: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Add an alert for every open exception that has none yet; returns how many were raised."""
    conn.execute(create_table("out_alerts", ALERT_COLUMNS))
    return conn.execute(f"""
        INSERT INTO out_alerts
        SELECT 'AL-' || substr(e.exception_id, 4), e.exception_id, e.reason_code, e.processor, e.source_id,
               e.settlement_date, e.currency, e.amount_minor,
               e.processor || ' ' || e.source_id || ': ' || e.reason_code || ' — ' || e.detail
                   || coalesce(' (' || {money_sql('e.amount_minor', 'e.currency')} || ')', ''),
               ?, NULL, NULL
        FROM out_recon_exceptions e
        WHERE e.status = 'open' AND e.exception_id NOT IN (SELECT exception_id FROM out_alerts)""", [now]).fetchone()[0]


def deliver_alerts(conn: duckdb.DuckDBPyConnection, webhook_url: str, now: datetime, timeout: float = 10.0) -> dict:
    """Post undelivered alerts to the webhook in bounded batches; returns counts delivered and failed."""
    pending = conn.execute("SELECT alert_id, message FROM out_alerts WHERE delivered_at_utc IS NULL "
                           "ORDER BY raised_at_utc, alert_id").fetchall()
    delivered = failed = 0
    for start in range(0, len(pending), MAX_MESSAGES_PER_POST):
        batch = pending[start:start + MAX_MESSAGES_PER_POST]
        text = f"m3-recon: {len(batch)} new reconciliation exception(s)\n" + "\n".join(f"• {m}" for _, m in batch)
        ids = [alert_id for alert_id, _ in batch]
        try:
            response = requests.post(webhook_url, json={"text": text}, timeout=timeout)
            error = None if response.ok else f"webhook answered HTTP {response.status_code}"
        except requests.RequestException as exc:
            error = f"webhook unreachable: {type(exc).__name__}"
        if error is None:
            conn.execute("UPDATE out_alerts SET delivered_at_utc = ?, delivery_error = NULL WHERE list_contains(?, alert_id)",
                         [now, ids])
            delivered += len(batch)
        else:
            conn.execute("UPDATE out_alerts SET delivery_error = ? WHERE list_contains(?, alert_id)", [error, ids])
            failed += len(batch)
    return {"delivered": delivered, "failed": failed}

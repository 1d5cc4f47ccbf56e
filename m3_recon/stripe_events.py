"""The durable store of Stripe events the webhook receiver accepted, read by ``stripe_events_sensor``.

A small SQLite file (``M3_RECON_STRIPE_EVENTS_DB``): one row per event id (a redelivery is ignored),
with the raw body exactly as Stripe signed it and an increasing row id the sensor keeps as its
cursor. SQLite, not the DuckDB warehouse, so receiving an event never waits for a close to finish.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = """CREATE TABLE IF NOT EXISTS stripe_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, created INTEGER NOT NULL,
    object_created INTEGER, payload TEXT NOT NULL, received_at_utc TEXT NOT NULL)"""
MAX_EVENTS_PER_READ = 5_000


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    id: str
    type: str
    created: int
    object_created: int | None


class EventStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)
        return conn

    def add(self, payload: bytes | str) -> bool:
        """Store one verified event (its raw body); False when its id was stored before."""
        event = json.loads(payload)
        data_object = (event.get("data") or {}).get("object") or {}
        text = payload.decode() if isinstance(payload, bytes) else payload
        with closing(self._connect()) as conn, conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO stripe_events (id, type, created, object_created, payload, received_at_utc) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (event["id"], event["type"], int(event["created"]), data_object.get("created"), text,
                 datetime.now(timezone.utc).isoformat(timespec="seconds")))
            return cursor.rowcount == 1

    def after(self, seq: int) -> list[StoredEvent]:
        """Events stored after row ``seq``, in the order they arrived (at most MAX_EVENTS_PER_READ)."""
        if not self.path.exists():
            return []
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT seq, id, type, created, object_created FROM stripe_events WHERE seq > ? "
                                "ORDER BY seq LIMIT ?", (seq, MAX_EVENTS_PER_READ)).fetchall()
        return [StoredEvent(*row) for row in rows]

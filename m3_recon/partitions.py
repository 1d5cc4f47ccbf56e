"""Daily partitions and the fetch windows derived from them.

Processor days are UTC days (Stripe's default day). A run over partitions [start, end) re-reads a
look-back of earlier days too, so objects whose status changed since (pending -> available, a payout
paid -> failed) are refreshed; the window never reaches before the first configured partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg

from m3_recon import settings

daily_partitions = dg.DailyPartitionsDefinition(start_date=settings.start_date(), timezone="UTC")


class LookbackConfig(dg.Config):
    """Run config of every daily asset: how many earlier days to re-read and recompute."""

    lookback_days: int = settings.int_setting("M3_RECON_LOOKBACK_DAYS", settings.DEFAULT_LOOKBACK_DAYS)


@dataclass(frozen=True)
class FetchWindow:
    """The half-open UTC interval [start, end) one run reads and replaces."""

    start: datetime
    end: datetime

    @property
    def start_epoch(self) -> int:
        return int(self.start.timestamp())

    @property
    def end_epoch(self) -> int:
        return int(self.end.timestamp())

    def __str__(self) -> str:
        return f"[{self.start:%Y-%m-%d %H:%M} UTC, {self.end:%Y-%m-%d %H:%M} UTC)"


def fetch_window(partition_window: dg.TimeWindow, lookback_days: int, first_day: str | None = None) -> FetchWindow:
    first = datetime.fromisoformat(first_day or settings.start_date()).replace(tzinfo=timezone.utc)
    start = partition_window.start.astimezone(timezone.utc) - timedelta(days=lookback_days)
    return FetchWindow(max(start, first), partition_window.end.astimezone(timezone.utc))

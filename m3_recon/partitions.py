"""Daily partitions and the fetch windows derived from them.

Processor days are UTC days (Stripe's default day). Partitions run from ``M3_RECON_START_DATE`` to the last
complete UTC day, or to ``M3_RECON_END_DATE`` when that is set (the sandbox's closed period), so a closed
month shows complete rather than a share of the days up to today. A run over partitions [start, end) re-reads a
look-back of earlier days too, so objects whose status changed since (pending -> available, a payout
paid -> failed) are refreshed; the window never reaches before the first configured partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import dagster as dg

from m3_recon import settings

def build_daily_partitions() -> dg.DailyPartitionsDefinition:
    """UTC days from M3_RECON_START_DATE to M3_RECON_END_DATE, or to the last complete day when that is unset."""
    last = settings.end_date()
    end = (date.fromisoformat(last) + timedelta(days=1)).isoformat() if last else None  # Dagster's end is exclusive
    return dg.DailyPartitionsDefinition(start_date=settings.start_date(), end_date=end, timezone="UTC")


daily_partitions = build_daily_partitions()


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

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        """The last day the window holds (its end is exclusive), for vendor filters that are inclusive."""
        return (self.end - timedelta(days=1)).date()

    def __str__(self) -> str:
        return f"[{self.start:%Y-%m-%d %H:%M} UTC, {self.end:%Y-%m-%d %H:%M} UTC)"


def fetch_window(partition_window: dg.TimeWindow, lookback_days: int, first_day: str | None = None) -> FetchWindow:
    first = datetime.fromisoformat(first_day or settings.start_date()).replace(tzinfo=timezone.utc)
    start = partition_window.start.astimezone(timezone.utc) - timedelta(days=lookback_days)
    return FetchWindow(max(start, first), partition_window.end.astimezone(timezone.utc))


def logged_fetch_window(context: dg.AssetExecutionContext, config: LookbackConfig, days: str) -> FetchWindow:
    """The run's fetch window (its partitions plus the look-back), logged as the vendor ``days`` it reads, e.g.
    ``GP API deposit dates 2026-10-01..2026-10-05 for partitions 2026-10-03..2026-10-05 (look-back 2 days)``."""
    window = fetch_window(context.partition_time_window, config.lookback_days)
    context.log.info(f"{days} {window.first_day}..{window.last_day} for partitions {context.partition_key_range.start}"
                     f"..{context.partition_key_range.end} (look-back {config.lookback_days} days)")
    return window

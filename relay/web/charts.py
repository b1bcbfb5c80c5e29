"""Charts drawn on the server as SVG: bars per hour, successes stacked on failures.

Pure functions from the metrics buckets (relay/db/aggregates.py) to coordinates; the
template writes the SVG with presentation attributes only (no inline style, which the
Content-Security-Policy forbids), so a chart needs no script and no library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from relay.db.aggregates import Bucket

WIDTH = 720
HEIGHT = 180
LEFT = 40
BOTTOM = 24


@dataclass(frozen=True, slots=True)
class Bar:
    start: datetime
    success: int
    failed: int
    x: float
    width: float
    success_y: float
    success_height: float
    failed_y: float
    failed_height: float

    @property
    def label(self) -> str:
        return (
            f"{self.start.astimezone(UTC):%Y-%m-%d %H:00} UTC: "
            f"{self.success} succeeded, {self.failed} failed"
        )


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    peak: int
    total_success: int
    total_failed: int
    ticks: list[tuple[float, str]]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = BOTTOM

    @property
    def empty(self) -> bool:
        return self.total_success + self.total_failed == 0

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom


def hourly(buckets: Sequence[Bucket], start: datetime, hours: int) -> Chart:
    """One bar per hour from ``start`` (UTC), for ``hours`` hours; empty hours are 0."""
    counts: dict[datetime, tuple[int, int]] = {}
    for b in buckets:
        if b.time_bucket is None:
            continue
        key = b.time_bucket.astimezone(UTC)
        counts[key] = (int(b.values.get("successful_count") or 0), int(b.values["failed_count"]))
    peak = max((s + f for s, f in counts.values()), default=0)
    plot_height = HEIGHT - BOTTOM - 8
    slot = (WIDTH - LEFT) / hours
    bars = []
    for i in range(hours):
        at = start.astimezone(UTC) + timedelta(hours=i)
        success, failed = counts.get(at, (0, 0))
        scale = plot_height / peak if peak else 0.0
        sh, fh = success * scale, failed * scale
        base = HEIGHT - BOTTOM
        bars.append(
            Bar(
                start=at,
                success=success,
                failed=failed,
                x=round(LEFT + i * slot + slot * 0.1, 2),
                width=round(slot * 0.8, 2),
                success_y=round(base - sh, 2),
                success_height=round(sh, 2),
                failed_y=round(base - sh - fh, 2),
                failed_height=round(fh, 2),
            )
        )
    step = max(1, hours // 6)
    ticks = [
        (round(LEFT + i * slot, 2), f"{(start + timedelta(hours=i)).astimezone(UTC):%H:00}")
        for i in range(0, hours, step)
    ]
    return Chart(
        bars=bars,
        peak=peak,
        total_success=sum(b.success for b in bars),
        total_failed=sum(b.failed for b in bars),
        ticks=ticks,
    )

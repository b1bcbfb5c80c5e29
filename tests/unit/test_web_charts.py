"""relay/web/charts.py: metrics buckets to bar coordinates (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from relay.db.aggregates import Bucket
from relay.web import charts

START = datetime(2026, 12, 7, 0, tzinfo=UTC)


def bucket(hour: int, success: int, failed: int) -> Bucket:
    values = {"count": success + failed, "successful_count": success, "failed_count": failed}
    return Bucket(START + timedelta(hours=hour), {}, values)


def test_one_bar_per_hour_stacked_and_scaled_to_the_peak() -> None:
    chart = charts.hourly([bucket(1, 6, 2), bucket(3, 1, 0)], START, 4)
    assert [(b.success, b.failed) for b in chart.bars] == [(0, 0), (6, 2), (0, 0), (1, 0)]
    assert chart.peak == 8 and (chart.total_success, chart.total_failed) == (7, 2)
    tallest = chart.bars[1]
    plot = charts.HEIGHT - charts.BOTTOM - 8
    assert tallest.success_height + tallest.failed_height == plot
    # Failures sit on top of the successes.
    assert tallest.failed_y + tallest.failed_height == tallest.success_y
    assert chart.bars[0].success_height == 0 and not chart.empty
    assert "2026-12-07 01:00 UTC: 6 succeeded, 2 failed" == tallest.label
    assert [label for _, label in chart.ticks] == ["00:00", "01:00", "02:00", "03:00"]


def test_no_attempts_is_an_empty_chart_not_a_division_by_zero() -> None:
    chart = charts.hourly([], START, 24)
    assert chart.empty and chart.peak == 0 and len(chart.bars) == 24
    assert all(b.success_height == b.failed_height == 0 for b in chart.bars)
    assert len(chart.ticks) == 6


def test_buckets_in_another_zone_land_in_their_utc_hour() -> None:
    from zoneinfo import ZoneInfo

    paris = (START + timedelta(hours=2)).astimezone(ZoneInfo("Europe/Paris"))
    chart = charts.hourly([Bucket(paris, {}, {"successful_count": 1, "failed_count": 0})], START, 3)
    assert [b.success for b in chart.bars] == [0, 0, 1]

"""Metrics API time buckets (relay.db.aggregates): parsing and bucket lengths."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from relay.db.aggregates import Granularity, bucket_seconds, parse_granularity


def test_granularity_takes_the_documented_units_and_ranges() -> None:
    assert parse_granularity("1h") == Granularity(1, "h")
    assert parse_granularity("15m") == Granularity(15, "m")
    assert parse_granularity("12M") == Granularity(12, "M")
    assert parse_granularity("4w").text == "4w"
    bad_ones = ("", "h", "0h", "61s", "25h", "32d", "5w", "13M", "1y", "1.5h", "-1h", "01h", "1h\n")
    for bad in bad_ones:
        with pytest.raises(ValueError):
            parse_granularity(bad)


def test_bucket_lengths_for_rates() -> None:
    start = datetime(2026, 2, 1, tzinfo=UTC)
    assert bucket_seconds(start, None, (start, datetime(2026, 2, 3, tzinfo=UTC))) == 2 * 86400
    # Within a window that holds them whole:
    window = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
    assert bucket_seconds(start, Granularity(2, "h"), window) == 7200
    assert bucket_seconds(start, Granularity(1, "w"), window) == 7 * 86400
    # Months are as long as they are: February 2026, then February and March.
    assert bucket_seconds(start, Granularity(1, "M"), window) == 28 * 86400
    assert bucket_seconds(start, Granularity(2, "M"), window) == (28 + 31) * 86400
    december = datetime(2026, 12, 1, tzinfo=UTC)
    assert bucket_seconds(december, Granularity(2, "M"), window) == (31 + 31) * 86400


def test_a_bucket_cut_by_the_window_divides_by_its_part_inside() -> None:
    window = (datetime(2026, 2, 1, 10, 30, tzinfo=UTC), datetime(2026, 2, 1, 12, 15, tzinfo=UTC))
    hour = Granularity(1, "h")
    assert bucket_seconds(datetime(2026, 2, 1, 10, tzinfo=UTC), hour, window) == 1800
    assert bucket_seconds(datetime(2026, 2, 1, 11, tzinfo=UTC), hour, window) == 3600
    assert bucket_seconds(datetime(2026, 2, 1, 12, tzinfo=UTC), hour, window) == 900
